/* GRU forward/backward drivers for float and double (the code is in gru_impl.h). */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (FASTGRU_NO_OPENMP=1): one thread */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#include "fastgru.h"
#include "act_inline.h"

#define REAL float
#define SUF f
#define W FG_WF
#define GEMMT fg_sgemm_t
#define GEMMFIELD sgemm
#define PANELS fg_gemm_panels_f
#define ACT fg_act_f
#define DACT fg_dact_f
#define SIGV fg_sigmoidf
#define TANHV fg_tanhf
#include "gru_impl.h"
#undef REAL
#undef SUF
#undef W
#undef GEMMT
#undef GEMMFIELD
#undef PANELS
#undef ACT
#undef DACT
#undef SIGV
#undef TANHV

#define REAL double
#define SUF d
#define W FG_WD
#define GEMMT fg_dgemm_t
#define GEMMFIELD dgemm
#define PANELS fg_gemm_panels_d
#define ACT fg_act_d
#define DACT fg_dact_d
#define SIGV fg_sigmoid
#define TANHV tanh
#include "gru_impl.h"

int fg_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fg_forward(const fg_fwd_args *a) { return a->is_double ? forward_d(a) : forward_f(a); }

int fg_backward(const fg_bwd_args *a) { return a->is_double ? backward_d(a) : backward_f(a); }
