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
#include <sched.h>
#include <stdatomic.h>

/* Barrier of a split-units team (one per time step): a counter and a generation on separate
 * cache lines, spinning with pause. ~190 ns per barrier between the two cores here against
 * ~350-430 ns for GNU OpenMP's. After ~4k spins (the partner was descheduled) it yields the
 * core instead of burning it. */
typedef struct {
    _Alignas(64) atomic_int count;
    _Alignas(64) atomic_int gen;
} fg_barrier;

static void fg_barrier_init(fg_barrier *b)
{
    atomic_init(&b->count, 0);
    atomic_init(&b->gen, 0);
}

static void fg_barrier_wait(fg_barrier *b, int n, int *my_gen)
{
    if (n <= 1) return;
    int g = *my_gen;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->gen, g + 1, memory_order_release);
    } else {
        unsigned spins = 0;
        while (atomic_load_explicit(&b->gen, memory_order_acquire) == g) {
            if (++spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            } else {
                sched_yield();
            }
        }
    }
    *my_gen = g + 1;
}

#define REAL float
#define SUF f
#define W FG_WF
#define GEMMT fg_sgemm_t
#define GEMMFIELD sgemm
#define PANELS fg_gemm_panels_f
#define PANELS_GRP fg_gemm_panels_grp_f
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
#undef PANELS_GRP
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
#define PANELS_GRP fg_gemm_panels_grp_d
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
