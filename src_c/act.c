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


/* exp(x) for x <= 0 (Cephes polynomial, ~1 ulp), branch-free so loops vectorise.
 * Arguments below -87 give exp(-87) ~ 1.6e-38 (negligible where it is used); NaN stays NaN. */
static inline float fg_expf_neg(float x)
{
    float xc = x >= -87.0f ? x : -87.0f; /* NaN -> -87 here, restored below */
    float fx = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    float y = p * r * r + r + 1.0f;
    union { uint32_t i; float f; } s;
    s.i = (uint32_t)((int32_t)fx + 127) << 23;
    float res = y * s.f;
    return x == x ? res : x;
}

static inline float fg_sigmoidf(float a)
{   /* same branches as activations._sigmoid: exp of a non-positive argument only */
    float e = fg_expf_neg(-fabsf(a));
    float num = a >= 0 ? 1.0f : e; /* select, then one division: vectorises */
    return num / (1.0f + e);
}

static inline float fg_tanhf(float a)
{   /* rational approximation (Eigen's), max rel. error ~4e-7 */
    float x = a > 9.0f ? 9.0f : (a < -9.0f ? -9.0f : a);
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float t = p / q;
    return fabsf(a) < 0.0004f ? a : t;
}

static inline double fg_sigmoid(double a)
{
    double e = exp(-fabs(a));
    double num = a >= 0 ? 1.0 : e;
    return num / (1.0 + e);
}

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
