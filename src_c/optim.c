/* Optimizer updates over whole arrays, elementwise in one pass (fastgru.optim). */
#include <math.h>
#include "fastgru.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Adam, in place over n elements: Keras' operations in Keras' order, each rounded to REAL as
 * NumPy rounds its ufuncs (-ffp-contract=off keeps products and sums apart), so the bits of
 * the NumPy expression in optim.Adam; vh (amsgrad, or NULL) takes the running maximum of v
 * as np.maximum does (a NaN on either side wins, a tie gives v: -0 and +0). The operands must
 * not overlap (restrict; the caller checks g against w). Elementwise: the bits do not depend on
 * nthr. Whole arrays in one pass, where NumPy's dozen passes over a GRU's 1.2M weights took
 * 2-3.6 ms per step (a percent of a two-thread training step at 256x50x256x512). */
#define FG_DEFINE_ADAM(SUF, REAL, SQRT)                                                       \
    FG_CLONES static void adam_part_##SUF(long n, REAL *restrict w, const REAL *restrict g,  \
                                          REAL *restrict m, REAL *restrict v,                \
                                          REAL *restrict vh, REAL c1, REAL c2, REAL alpha,   \
                                          REAL eps)                                           \
    {                                                                                         \
        if (vh) {                                                                             \
            for (long j = 0; j < n; j++) {                                                    \
                REAL gj = g[j], mj = m[j] + (gj - m[j]) * c1;                                 \
                REAL vj = v[j] + (gj * gj - v[j]) * c2, hj = vh[j];                           \
                hj = hj != hj ? hj : hj > vj ? hj : vj; /* a tie: v, as np.maximum */        \
                m[j] = mj, v[j] = vj, vh[j] = hj;                                             \
                w[j] = w[j] - (mj * alpha) / (SQRT(hj) + eps);                                \
            }                                                                                 \
            return;                                                                           \
        }                                                                                     \
        _Pragma("omp simd")                                                                   \
        for (long j = 0; j < n; j++) {                                                        \
            REAL gj = g[j], mj = m[j] + (gj - m[j]) * c1;                                     \
            REAL vj = v[j] + (gj * gj - v[j]) * c2;                                           \
            m[j] = mj, v[j] = vj;                                                             \
            w[j] = w[j] - (mj * alpha) / (SQRT(vj) + eps);                                    \
        }                                                                                     \
    }                                                                                         \
    void fg_adam_##SUF(long n, REAL *w, const REAL *g, REAL *m, REAL *v, REAL *vh, REAL c1,   \
                       REAL c2, REAL alpha, REAL eps, int nthr)                               \
    {                                                                                         \
        /* threads only for arrays worth a team (chunks of at least 64K elements) */         \
        const long per = 1L << 16;                                                            \
        int nt = nthr < 1 ? 1 : nthr;                                                         \
        if (nt > (n + per - 1) / per) nt = (int)((n + per - 1) / per);                        \
        if (nt <= 1) {                                                                        \
            adam_part_##SUF(n, w, g, m, v, vh, c1, c2, alpha, eps);                           \
            return;                                                                           \
        }                                                                                     \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                          \
        for (int t = 0; t < nt; t++) {                                                        \
            const long lo = n * t / nt, hi = n * (t + 1) / nt;                                \
            adam_part_##SUF(hi - lo, w + lo, g + lo, m + lo, v + lo, vh ? vh + lo : NULL, c1, \
                            c2, alpha, eps);                                                  \
        }                                                                                     \
    }
FG_DEFINE_ADAM(f, float, sqrtf)
FG_DEFINE_ADAM(d, double, sqrt)
