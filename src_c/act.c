/* Keras activations and derivatives in C, float and double (see act_impl.h). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "fastgru.h"

#define FG_MAX_CODE 24
#define SELU_ALPHA 1.6732632423543772848170429916717
#define SELU_SCALE 1.0507009873554804934193349852946
#define LEAKY_SLOPE 0.2
#define SQUAREPLUS_B 4.0
#define SHRINK 0.5
#define SQRT2 1.4142135623730951
#define INV_SQRT_2PI 0.3989422804014327


#include "act_inline.h"

#define REAL float
#define SUF f
#define EXP expf
#define EXPM1 expm1f
#define LOG1P log1pf
#define TANH tanhf
#define ERF erff
#define SQRT sqrtf
#define FABS fabsf
#define SIGMOID fg_sigmoidf
#define TANHV fg_tanhf
#include "act_impl.h"
#undef REAL
#undef SUF
#undef EXP
#undef EXPM1
#undef LOG1P
#undef TANH
#undef ERF
#undef SQRT
#undef FABS
#undef SIGMOID
#undef TANHV

#define REAL double
#define SUF d
#define EXP exp
#define EXPM1 expm1
#define LOG1P log1p
#define TANH tanh
#define ERF erf
#define SQRT sqrt
#define FABS fabs
#define SIGMOID fg_sigmoid
#define TANHV tanh
#include "act_impl.h"
