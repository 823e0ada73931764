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
#include "colsum_inline.h"
#include <sched.h>
#include <stdatomic.h>

/* Barrier of a split-units team (one per time step): each thread publishes the count of
 * barriers it has reached in a cache line of its own and spins (pause) until every partner's
 * count has caught up. One line transfer per partner and direction, against three serial ones
 * for a shared counter and generation (fetch-add, reset, release): ~190 ns per barrier between
 * the two cores of a Zen 3 for the counter. Counts only grow, so a thread that runs ahead into
 * the next barrier never blocks one still leaving this one. After ~4k spins (a partner was
 * descheduled) it yields the core instead of burning it, and counts the wait as late (the
 * call reports it: a team that keeps waiting for a descheduled partner runs far slower than
 * one thread would, and the caller stops splitting for a while). */
typedef struct {
    _Alignas(64) atomic_int n;
} fg_slot;

typedef struct {
    fg_slot *slot; /* one per team member */
    atomic_int late; /* waits that outlasted the spin (a partner was off its core) */
} fg_barrier;

/* The time-loop paths calls have taken since the last fg_paths_taken(1) (FG_PATH_*): so that
 * tests can tell a path that silently stopped running from one that gives the same bits. */
static atomic_int fg_paths;
void fg_took(int path)
{   /* a plain load first: products call this every step, and an unconditional atomic OR from
     * every thread would bounce the line between the cores */
    if ((atomic_load_explicit(&fg_paths, memory_order_relaxed) & path) != path)
        atomic_fetch_or_explicit(&fg_paths, path, memory_order_relaxed);
}
int fg_paths_taken(int reset)
{
    return reset ? atomic_exchange(&fg_paths, 0) : atomic_load(&fg_paths);
}

/* Pause spins before a barrier wait yields the core (fg_set_spin_limit: tests). */
static int fg_spin_limit = 4096;
void fg_set_spin_limit(int n) { fg_spin_limit = n < 0 ? 4096 : n; }

static int fg_barrier_init(fg_barrier *b, int n)
{
    if (posix_memalign((void **)&b->slot, 64, (size_t)(n > 0 ? n : 1) * sizeof(fg_slot)))
        return -1;
    for (int i = 0; i < n; i++) atomic_init(&b->slot[i].n, 0);
    atomic_init(&b->late, 0);
    return 0;
}

static void fg_barrier_free(fg_barrier *b) { free(b->slot); }

/* The barrier in two halves: arrive publishes this thread's count (everything it wrote before
 * is visible to a partner that sees it); await returns once every partner has arrived as often. */
static inline void fg_barrier_arrive(fg_barrier *b, int tid, int *my_gen)
{
    atomic_store_explicit(&b->slot[tid].n, ++*my_gen, memory_order_release);
}

static void fg_barrier_await(fg_barrier *b, int tid, int n, int g)
{
    const int limit = fg_spin_limit;
    for (int j = 0; j < n; j++) {
        if (j == tid) continue;
        int spins = 0;
        while (atomic_load_explicit(&b->slot[j].n, memory_order_acquire) < g) {
            if (spins++ < limit) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            } else {
                if (spins == limit + 1)
                    atomic_fetch_add_explicit(&b->late, 1, memory_order_relaxed);
                sched_yield();
            }
        }
    }
}

static void fg_barrier_wait(fg_barrier *b, int tid, int n, int *my_gen)
{
    if (n <= 1) return;
    fg_barrier_arrive(b, tid, my_gen);
    fg_barrier_await(b, tid, n, *my_gen);
}

/* Part i of n things split into `parts` contiguous parts: [fg_part(n, i, parts),
 * fg_part(n, i + 1, parts)). */
static inline int fg_part(int n, int i, int parts) { return (int)((long)n * i / parts); }

/* Whether a time loop of `rows` rows whose thread owns npt panels per gate projects its inputs
 * inside the steps' products (fg_gemm_panels_grp_proj): AVX-512, one row, D <= u (a job then
 * hides in the product's k loop), and the thread's panels of U and of the input kernel within
 * FG_PJ_BYTES. One-process A/B on Zen 4 (`bench/ab.py --stat min --rounds 30`), fused / not, 1 /
 * 2 threads: 1x100x64x128 +4% / level, 1x200x128x128 +10-14% / +8-9%, 1x1000x64x128 +6% / +2%,
 * 1x500x128x192 +7-11% / +4%, 1x1000x128x256 (1.2 MB of panels on one thread) +2.5-4.5% / +6%.
 * Beyond 1.5 MB it varies: 1x100x256x512 (4.7 / 2.4 MB) +5% / +6%, but 1x300x64x512 (3.5 /
 * 1.8 MB) level / -2% and 1x50x512x1024 (18 MB: U and the jobs' panels stream from L3 side by
 * side) -8% / -14%; D > u (1x200x256x128) -1 to -3%. */
#define FG_PJ_BYTES (1536L << 10)
int fg_fuse_projection(int isa, int is_double, int rows, int npt, int u, int D)
{
    const long w = is_double ? FG_WD : FG_WF, size = is_double ? 8 : 4;
    return isa == FG_ISA_AVX512 && rows == 1 && npt > 0 && D <= u
           && 6L * npt <= (long)FG_PJ_ROWS * FG_PJ_MAX_JOBS - (FG_PJ_ROWS - 1)
           && 3L * npt * (u + D) * w * size <= FG_PJ_BYTES;
}

#define REAL float
#define SUF f
#define W FG_WF
#define GEMMT fg_sgemm_t
#define GEMMFIELD sgemm
#define PANELS fg_gemm_panels_f
#define PANELS_GRP fg_gemm_panels_grp_f
#define PANELS_GRP_PROJ fg_gemm_panels_grp_proj_f
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
#undef PANELS_GRP_PROJ
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
#define PANELS_GRP_PROJ fg_gemm_panels_grp_proj_d
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

int fg_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int fg_omp_thread_limit(void)
{
#ifdef _OPENMP
    return omp_get_thread_limit();
#else
    return 1;
#endif
}

int fg_forward(const fg_fwd_args *a) { return a->is_double ? forward_d(a) : forward_f(a); }

int fg_backward(const fg_bwd_args *a) { return a->is_double ? backward_d(a) : backward_f(a); }
