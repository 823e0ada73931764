/* Measured float32 FMA peak of this CPU: register-blocked FMA chains, no memory traffic.
 *
 * Compiled at run time by bench/_common.py (gcc -O2 -fopenmp -shared) and called through
 * ctypes. Each thread keeps NACC independent accumulators so the FMA latency (4 cycles) times
 * the number of FMA ports (1 or 2) is covered; the chains never touch memory in the loop.
 * Returns the wall time in seconds of `iters` iterations on `nthreads` OpenMP threads and
 * writes each thread's own CPU time to cpu_s[thread]; the caller computes
 * flops = nthreads * iters * NACC * lanes * 2. The CPU-time rate is what the cores can do even
 * when other work on the machine takes time slices away (the wall rate then drops).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>

#define NACC512 16 /* of the 32 zmm registers; 2 ports x 4 cycles needs >= 8 */
#define NACC256 12 /* of the 16 ymm registers */

volatile float fma_peak_sink; /* keeps the results live so the loops are not removed */

int fma_peak_has_avx512(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512f"); }
int fma_peak_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
int fma_peak_acc512(void) { return NACC512; }
int fma_peak_acc256(void) { return NACC256; }

__attribute__((target("avx512f"))) static float run512(long iters)
{
    __m512 acc[NACC512];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < NACC512; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int k = 0; k < NACC512; k++) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
    }
    __m512 s = acc[0];
    for (int k = 1; k < NACC512; k++) s = _mm512_add_ps(s, acc[k]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float run256(long iters)
{
    __m256 acc[NACC256];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < NACC256; k++) acc[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < NACC256; k++) acc[k] = _mm256_fmadd_ps(acc[k], a, b);
    }
    __m256 s = acc[0];
    for (int k = 1; k < NACC256; k++) s = _mm256_add_ps(s, acc[k]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

static double thread_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* width: 512 or 256. Returns wall seconds, -1 when the CPU lacks the instructions, -2 when
 * OpenMP ran fewer threads than asked (OMP_THREAD_LIMIT, a nested region): the rates would be
 * those of fewer cores. */
double fma_peak_run(int width, long iters, int nthreads, double *cpu_s)
{
    if (width == 512 ? !fma_peak_has_avx512() : !fma_peak_has_avx2()) return -1.0;
    double t0 = 0.0, t1 = 0.0;
    float total = 0.0f;
    int ran = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    {
#pragma omp master
        ran = omp_get_num_threads();
#pragma omp barrier
#pragma omp master
        t0 = omp_get_wtime();
        double c0 = thread_cpu_seconds();
        total += (width == 512) ? run512(iters) : run256(iters);
        cpu_s[omp_get_thread_num()] = thread_cpu_seconds() - c0;
#pragma omp barrier
#pragma omp master
        t1 = omp_get_wtime();
    }
    fma_peak_sink = total;
    return ran == nthreads ? t1 - t0 : -2.0;
}

/* Cache read rate: each thread sums a private buffer of `bytes` (64-byte aligned) `reps` times
 * as four sequential streams (quarters of the buffer, a 256-byte row of each per iteration into
 * 16 / 8 independent accumulators: the access pattern of the per-step kernel's one-row tile over
 * four packed panels, which reads faster than a single stream: ~180 against ~150 GB/s from L2
 * on Zen 5), after one untimed pass that brings it into its caches. With `bytes` the share of
 * the recurrent kernel a thread reads per step, the time of one pass is the floor that cache
 * bandwidth sets on a batch-1 step. Returns wall seconds for all passes (-1: allocation
 * failed or no vector loads). */
__attribute__((target("avx512f"))) static float read512(const float *p, long n, long reps)
{
    __m512 acc[16];
    const long len = n / 4; /* a multiple of 64 floats: see cache_read_run */
    for (int k = 0; k < 16; k++) acc[k] = _mm512_setzero_ps();
    for (long r = 0; r < reps; r++)
        for (long i = 0; i < len; i += 64)
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    acc[s * 4 + k] = _mm512_add_ps(acc[s * 4 + k],
                                                   _mm512_load_ps(p + s * len + i + 16 * k));
    for (int k = 1; k < 16; k++) acc[0] = _mm512_add_ps(acc[0], acc[k]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2"))) static float read256(const float *p, long n, long reps)
{
    __m256 acc[8];
    const long len = n / 4;
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (long r = 0; r < reps; r++)
        for (long i = 0; i < len; i += 16)
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++)
#pragma GCC unroll 2
                for (int k = 0; k < 2; k++)
                    acc[s * 2 + k] = _mm256_add_ps(acc[s * 2 + k],
                                                   _mm256_load_ps(p + s * len + i + 8 * k));
    for (int k = 1; k < 8; k++) acc[0] = _mm256_add_ps(acc[0], acc[k]);
    float out[8];
    _mm256_storeu_ps(out, acc[0]);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

double cache_read_run(long bytes, long reps, int nthreads)
{
    const int wide = fma_peak_has_avx512();
    if (!wide && !fma_peak_has_avx2()) return -1.0;
    const long n = (bytes + 1023) / 1024 * 256; /* four streams of whole 256-byte rows */
    double t0 = 0.0, t1 = 0.0;
    float total = 0.0f;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : total) reduction(| : failed)
    {
        float *buf = NULL;
        if (posix_memalign((void **)&buf, 64, (size_t)n * sizeof(float))) {
            buf = NULL;
            failed = 1;
        } else {
            for (long i = 0; i < n; i++) buf[i] = (float)(i & 7);
            total += wide ? read512(buf, n, 1) : read256(buf, n, 1);
        }
#pragma omp barrier
#pragma omp master
        t0 = omp_get_wtime();
        if (buf) total += wide ? read512(buf, n, reps) : read256(buf, n, reps);
#pragma omp barrier
#pragma omp master
        t1 = omp_get_wtime();
        free(buf);
    }
    fma_peak_sink = total;
    return failed ? -1.0 : t1 - t0;
}

/* Core-to-core round trip of one cache line: two OpenMP threads hand a counter back and forth
 * `iters` times (each waits for the other's increment). Returns nanoseconds per round trip,
 * or -1 when OpenMP gives fewer than two threads. A split-units team (batch 1-6 on several
 * threads) pays this latency at every step's barrier and for the partner's lines of h. */
double core_round_trip_ns(long iters)
{
    static _Alignas(64) volatile long flag;
    double t0 = 0.0, t1 = 0.0;
    int got = 0;
    flag = 0;
#pragma omp parallel num_threads(2)
    {
        const int me = omp_get_thread_num();
#pragma omp master
        got = omp_get_num_threads();
#pragma omp barrier
        if (got == 2) {
#pragma omp master
            t0 = omp_get_wtime();
            for (long i = me; i < 2 * iters; i += 2) {
                while (__atomic_load_n(&flag, __ATOMIC_ACQUIRE) != i) __builtin_ia32_pause();
                __atomic_store_n(&flag, i + 1, __ATOMIC_RELEASE);
            }
#pragma omp barrier
#pragma omp master
            t1 = omp_get_wtime();
        }
    }
    return got == 2 ? (t1 - t0) / (double)iters * 1e9 : -1.0;
}
