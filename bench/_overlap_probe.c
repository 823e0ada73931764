/* Standalone probe (no fastgru code): can an input projection hide in the FMA slots that a
 * per-step product streaming its recurrent kernel from L3 leaves idle? The shape of
 * 16x500x512x1024 on one core: 16 rows, u = 1024 (U: 48 panels of 64 columns, 12 MB), D = 512
 * (W: 48 panels, 6 MB), chunks of 36 steps (576 projected rows). The tiles are fastgru's AVX-512
 * 6 / 5 row x one panel tiles, without strips or gates. Variants (timed per chunk, best of 3):
 *   products  the per-step products alone (U's next panel prefetched into L2 as fastgru does)
 *   serial    the chunk's projection up front (panel-major), then its products: fastgru's order
 *   jobs      the projection in jobs of 96 rows x one W panel between the products' panels
 *   stream    jobs, and every tile (jobs too) keeps a prefetch cursor up to one panel ahead in U
 * If jobs / stream come near `products`, pipelining the projection pays on that CPU.
 *   gcc -O3 -march=native -o /tmp/overlap bench/_overlap_probe.c && /tmp/overlap
 * Intel Xeon (2 MB L2, ~19 GB/s per core from L3), 2026-12-05, three alternations (ms):
 * products 324-329, serial 454-474, jobs 481-538, stream 464-476 (an earlier set of three:
 * 349-370, 494-516, 505-539, 471-506): no gain there, as the third session had found in the
 * library (bench/RESULTS.md). fastgru itself at 16x500x512x1024 on one thread: 313 ms with
 * D = 1, 429-437 with D = 512, i.e. the projection runs after the products' stream, not in it. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define K 1024
#define D 512
#define NP 48
#define ROWS 16
#define STEPS 36
#define CH (ROWS * STEPS)
#define JR 96
#define NJ ((CH / JR) * NP) /* jobs per chunk: 8 per step */
#define PB ((long)K * 64 * 4) /* bytes of a U panel */
static float *U, *Wp, *H, *C, *X, *GX;
static long cur, lim, gstep; /* the prefetch cursor: virtual offsets into the cyclic U stream */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* MR rows x one 64-column panel over kk; q lines per k of L2 prefetch from pf; stream: two
 * lines per k of the cursor while it is behind lim */
#define TILE(MR)                                                                              \
    static inline __attribute__((always_inline)) void tile##MR(                               \
        int kk, const float *A, long lda, const float *P, float *Cc, long ldc, const char *pf, \
        int q, int stream)                                                                    \
    {                                                                                         \
        __m512 acc[MR][4];                                                                    \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();                      \
        for (int k = 0; k < kk; k++) {                                                        \
            for (int j = 0; j < q; j++) _mm_prefetch(pf + ((long)k * q + j) * 64, _MM_HINT_T1); \
            for (int j = 0; stream && j < 2 && cur < lim; j++, cur += 64)                     \
                _mm_prefetch((const char *)U + cur % (PB * NP), _MM_HINT_T1);                 \
            __m512 a[MR];                                                                     \
            for (int r = 0; r < MR; r++) a[r] = _mm512_set1_ps(A[(long)r * lda + k]);         \
            for (int v = 0; v < 4; v++) {                                                     \
                __m512 b = _mm512_loadu_ps(P + (long)k * 64 + v * 16);                        \
                for (int r = 0; r < MR; r++) acc[r][v] = _mm512_fmadd_ps(a[r], b, acc[r][v]); \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < 4; v++) _mm512_storeu_ps(Cc + (long)r * ldc + v * 16, acc[r][v]); \
    }
TILE(6)
TILE(5)

/* One step's product (rows 6 + 5 + 5 over every panel), with the jobs the schedule owes after
 * each panel when jobs (8 per step, spread evenly) */
static void step(int s, int *jobi, int jobs, int stream)
{
    for (int p = 0; p < NP; p++) {
        const float *Pp = U + (long)p * K * 64;
        const char *next = (const char *)(p + 1 < NP ? Pp + K * 64 : U);
        if (stream) {
            const long pos = (gstep * NP + p) * PB;
            lim = pos + 2 * PB;
            if (cur < pos) cur = pos;
        }
        for (int t = 0, i = 0; t < 3; t++) {
            const char *pf = !stream && t < 2 ? next + (long)t * 2 * 64 * K : 0;
            float *Cc = C + (long)i * NP * 64 + p * 64;
            if (t == 0) tile6(K, H, K, Pp, Cc, NP * 64, pf, pf ? 2 : 0, stream);
            else tile5(K, H + (long)i * K, K, Pp, Cc, NP * 64, pf, pf ? 2 : 0, stream);
            i += t == 0 ? 6 : 5;
        }
        const long want = jobs ? ((long)s * NP + p + 1) * NJ / (STEPS * NP) : 0;
        for (; *jobi < want; (*jobi)++) { /* panel-major within a block of JR rows */
            const int wp = *jobi % NP, rb = *jobi / NP;
            for (int r = 0; r < JR; r += 6)
                tile6(D, X + (long)(rb * JR + r) * D, D, Wp + (long)wp * D * 64,
                      GX + (long)(rb * JR + r) * NP * 64 + wp * 64, NP * 64, 0, 0, stream);
        }
    }
}

static void projection(void) /* a chunk's rows up front, panel-major, next panel prefetched */
{
    for (int p = 0; p < NP; p++) {
        const float *Wq = Wp + (long)p * D * 64;
        const char *next = (const char *)(p + 1 < NP ? Wq + D * 64 : Wq);
        for (int r = 0; r < CH; r += 6) {
            const char *pf = r < 12 ? next + (long)(r / 6) * 2 * 64 * D : 0;
            tile6(D, X + (long)r * D, D, Wq, GX + (long)r * NP * 64 + p * 64, NP * 64, pf,
                  pf ? 2 : 0, 0);
        }
    }
}

static double run(int v, int chunks)
{
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        const double t0 = now();
        for (int c = 0; c < chunks; c++) {
            int jobi = 0;
            if (v == 1) projection();
            for (int s = 0; s < STEPS; s++, gstep++) step(s, &jobi, v >= 2, v == 3);
        }
        const double t = now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    const int chunks = argc > 1 ? atoi(argv[1]) : 14, rounds = argc > 2 ? atoi(argv[2]) : 2;
    static const char *name[] = {"products", "serial", "jobs", "stream"};
    U = aligned_alloc(64, PB * NP);
    Wp = aligned_alloc(64, (long)D * NP * 64 * 4);
    H = aligned_alloc(64, ROWS * K * 4);
    C = aligned_alloc(64, ROWS * NP * 64 * 4);
    X = aligned_alloc(64, (long)CH * D * 4);
    GX = aligned_alloc(64, (long)CH * NP * 64 * 4);
    if (!U || !Wp || !H || !C || !X || !GX) return 1;
    for (long i = 0; i < (long)K * NP * 64; i++) U[i] = (i % 7) * 0.01f;
    for (long i = 0; i < (long)D * NP * 64; i++) Wp[i] = (i % 5) * 0.01f;
    for (long i = 0; i < ROWS * K; i++) H[i] = 0.001f * (i % 11);
    for (long i = 0; i < (long)CH * D; i++) X[i] = 0.001f * (i % 13);
    memset(C, 0, ROWS * NP * 64 * 4);
    memset(GX, 0, (long)CH * NP * 64 * 4);
    const double fu = 2.0 * ROWS * K * NP * 64 * STEPS * chunks, fx = 2.0 * CH * D * NP * 64 * chunks;
    for (int r = 0; r < rounds; r++)
        for (int v = 0; v < 4; v++) {
            const double t = run(v, chunks);
            printf("%-8s %7.1f ms  %6.1f GFLOP/s\n", name[v], t * 1e3, (v ? fu + fx : fu) / t / 1e9);
        }
    printf("(checksum %g)\n", C[5] + GX[7]);
    return 0;
}
