/* Per-step product kernels over packed column panels, with runtime ISA dispatch.
 *
 * Every element is one chain of fused multiply-adds over k = 0..K-1 starting from zero, on
 * every ISA: results are bit-identical across avx512 / avx2 / generic and independent of the
 * number of rows or panels in a call (this is what makes a row's result independent of the
 * thread count and of the other rows in its batch). No -march flags: the ISA variants are
 * compiled with __attribute__((target(...))) and chosen at run time.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include "fastgru.h"
#include "colsum_inline.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FG_X86 1
#endif

/* Software L1 prefetches in the pointer tiles (the grouped one-/two-row products of batch-1/2
 * steps): off by default, since the hardware L1 prefetchers keep up with these four panel
 * streams and the extra requests only compete with the loads for fill buffers. One-process
 * ABBA A/Bs without them: Sapphire Rapids 1x1000x128x256 +2.7% (1 thread) / +5% (2),
 * 1x100x64x128 +5% / +5%, 2x1000x64x128 +3% / +2%; AMD Zen 4 (two runs) 1x1000x128x256 +2-3%
 * / +0-9%, 2x1000x64x128 +6-9% / +3.5-8%, 1x100x64x128 level / +1-6%. (They were added for
 * the contiguous 1 x 4 tiles that came before the pointer tiles, which gained ~10%: FG_PF_K.)
 * Panels beyond FG_PF_L2 in all (streamed from L3) keep them: 1x300x256x512 lost 2.5% / 6.6%
 * without on Sapphire Rapids. FASTGRU_CPU_L1_PREFETCH=0 / 1 overrides (read once);
 * prefetches never change a result. */
static int ptr_pf_state = -1, gate_pf_state = -1, zigzag_state = -1, overlap_state = -1;

/* A switch read once from the environment variable `name` ("0" / "1"; unset or anything else:
 * dflt()), then kept in *state (-1: not read yet; relaxed atomics: racing first calls compute
 * the same value). set_switch: 0 / 1 from now on, -1 the default again (between calls only). */
static int env_switch(int *state, const char *name, int (*dflt)(void))
{
    int v = __atomic_load_n(state, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv(name);
        v = e && (e[0] == '0' || e[0] == '1') && !e[1] ? e[0] == '1' : dflt();
        __atomic_store_n(state, v, __ATOMIC_RELAXED);
    }
    return v;
}

static void set_switch(int *state, int v)
{
    __atomic_store_n(state, v < 0 ? -1 : v != 0, __ATOMIC_RELAXED);
}

static int off(void) { return 0; }

int fg_ptr_prefetch(void) { return env_switch(&ptr_pf_state, "FASTGRU_CPU_L1_PREFETCH", off); }

/* For one-process A/B runs (bench/ab.py). */
void fg_set_ptr_prefetch(int v) { set_switch(&ptr_pf_state, v); }

/* The forward gate pass's L2 prefetch of the next row's gx / gh (gru_impl.h, f26b37f): on AMD
 * Zen 5 it gained 2-3% at 256x50x256x512 (a row's pass too short for the hardware prefetchers
 * to pick up its six streams); on an Intel Xeon with 2 MB L2 (2026-12-05) it cost 0.4-4% in
 * 19 of 20 points of two one-process A/Bs (five shapes, 1 and 2 threads; 256x50x256x512
 * 1.8-3%, 16x500x512x1024 1.2-1.7%; once +1.4% at 64x200x128x256 on two threads): Intel's own
 * streamers keep up with the row-contiguous gx / gh, and the burst of prefetches only takes
 * load slots and fill buffers.
 * So on by default except on Intel CPUs; FASTGRU_CPU_GATE_PREFETCH=0 / 1 overrides (read
 * once). Prefetches never change a result. */
static int not_intel(void)
{
#ifdef FG_X86
    __builtin_cpu_init();
    return !__builtin_cpu_is("intel");
#else
    return 1;
#endif
}

int fg_gate_prefetch(void)
{
    return env_switch(&gate_pf_state, "FASTGRU_CPU_GATE_PREFETCH", not_intel);
}

void fg_set_gate_prefetch(int v) { set_switch(&gate_pf_state, v); }

/* Time loops visit their panels in the opposite order at every other step (the grouped
 * products' `rev`), so that a step starts on the panels the previous one read last, which are
 * still in cache: where a thread's share of the recurrent kernel exceeds L2 (or, at batch 1, L1)
 * by less than the cache holds, part of each step's stream then comes from the nearer cache.
 * The same bits in either order (each element is its own FMA chain). One-process A/B on an
 * Intel Xeon with 2 MB L2 (2026-12-05), forward, 1 / 2 threads: 2x300x512x512 (3 MB of U)
 * +50% / +5%, 1x300x256x512 +80% / +6%, 8x300x256x512 +8-12% / +3-5%, 16x500x512x1024 (12 MB)
 * +1.5-2% / +1-2.5%; 32x100x64x128, 64x200x128x256, 256x50x256x512 and 1x100x64x128 level
 * (within +-1%). On by default; FASTGRU_CPU_ZIGZAG=0 / 1 overrides (read once). */
static int on(void) { return 1; }

int fg_zigzag(void) { return env_switch(&zigzag_state, "FASTGRU_CPU_ZIGZAG", on); }

void fg_set_zigzag(int v) { set_switch(&zigzag_state, v); }

/* Split-units teams of one or two rows overlap the exchange of h with the product (gru_impl.h,
 * team_run): no barrier after each step; a thread awaits its partners inside the next step's
 * product, thread 0 after the part that reads only its own units (the exchange, a flag and
 * then the lines of h from the other core, costs ~0.25 us per step on an Intel Xeon whose
 * core-to-core round trip is ~110-125 ns). The same bits. One-process A/B there (2026-12-05),
 * 2 threads, against the barrier: 1x100x64x128 +7-10%, 2x100x64x128 +7%, 1x1000x128x256
 * +0.5-4.7%, 1x300x256x512 level; one thread unchanged. On by default;
 * FASTGRU_CPU_OVERLAP=0 / 1 overrides (read once). */
int fg_overlap(void) { return env_switch(&overlap_state, "FASTGRU_CPU_OVERLAP", on); }

void fg_set_overlap(int v) { set_switch(&overlap_state, v); }

/* Strips (FG_K4 below): the 4-6 row tiles of the AVX-512 products read A's rows repacked so that
 * a k step's broadcasts share a line; the rows are packed once per product (per step, for all
 * gates), where the product has at least FG_STRIPS_MIN_PANELS panels to amortise the packing.
 * The same bits. One-process ABAB A/B on the 2 MB-L2 Xeon (2026-12-05), forward, strips on
 * against off, 1 / 2 threads: 64x200x128x256 +0.8-1.4% / -1.5 to +1.4%, 256x50x256x512
 * +4.3-8.5% / -0.3 to +0.9%, 16x500x512x1024 +3.0-5.8% / +2.0-3.9%; training steps level
 * (-0.6 to +3.4%); the per-step product alone (in one process, against the build before):
 * 64 x 256 x 768 to 256 x 512 x 1536 +0.3-1.3%, 16 x 1024 x 3072 +5.5%. Products of 6 panels
 * (32x100x64x128, 128x100x128x128) lost 2-5%: hence the bound.
 * The bound is 12 panels since the backward's per-step product (dR rows over 3u: u / 64
 * panels, a third of the forward's per row packed) lost at 8: training step 256x50x256x512
 * with strips there against without +1.9% / +1.0% (2 / 1 threads; one-process A/B, 12 against
 * 8 as the bound, 2026-12-05). Not measured on AMD: on by default on Intel CPUs only (as the
 * gate prefetch's default is per vendor); FASTGRU_CPU_STRIPS=0 / 1 overrides (read once). */
static int strips_state = -1;
static int intel(void) { return !not_intel(); }
int fg_strips(void) { return env_switch(&strips_state, "FASTGRU_CPU_STRIPS", intel); }
void fg_set_strips(int v) { set_switch(&strips_state, v); }

int fg_isa_best(void)
{
#ifdef FG_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return FG_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FG_ISA_AVX2;
#endif
    return FG_ISA_GENERIC;
}

#define FG_DEFINE_PACK(SUF, REAL, W)                                                          \
    void fg_pack_##SUF(const REAL *src, long ld, int K, int col0, int ncols, REAL *dst)       \
    {                                                                                         \
        int np = (ncols + W - 1) / W;                                                         \
        for (int p = 0; p < np; p++) {                                                        \
            int w = ncols - p * W < W ? ncols - p * W : W;                                    \
            for (int k = 0; k < K; k++) {                                                     \
                REAL *d = dst + ((long)p * K + k) * W;                                        \
                memcpy(d, src + (long)k * ld + col0 + (long)p * W, (size_t)w * sizeof(REAL)); \
                if (w < W) memset(d + w, 0, (size_t)(W - w) * sizeof(REAL));                  \
            }                                                                                 \
        }                                                                                     \
    }
FG_DEFINE_PACK(f, float, FG_WF)
FG_DEFINE_PACK(d, double, FG_WD)

/* Whether dst holds exactly columns [col0, col0 + ncols) of src as fg_pack laid them out,
 * compared as 32-bit words (all units here are words: a panel row is 64 of them, 256 bytes):
 * bitwise, so -0.0 and NaN payloads count; padding is not read. One pass over both, no early
 * exit (a difference is the rare case). */
FG_CLONES int fg_same_packed(const uint32_t *src, long ld, int K, long col0, long ncols,
                             const uint32_t *dst)
{
    const long W = 64, np = (ncols + W - 1) / W;
    uint32_t acc = 0;
    /* row-major over src (one sequential run per row); each panel is then read forwards too,
     * one 256-byte row per src row: streams the prefetchers follow (panel-major order read src
     * in 256-byte pieces a whole row apart: 2.4x slower once U outgrew L2) */
    for (long k = 0; k < K; k++) {
        const uint32_t *s = src + k * ld + col0;
        for (long p = 0; p < np; p++) {
            long w = ncols - p * W < W ? ncols - p * W : W;
            const uint32_t *d = dst + (p * K + k) * W, *sp = s + p * W;
            for (long j = 0; j < w; j++) acc |= sp[j] ^ d[j];
        }
    }
    return acc == 0;
}

/* Generic: fma() keeps the bits equal to the vector kernels (hardware FMA where it exists). */
#define FG_DEFINE_GENERIC(SUF, REAL, W, FMA)                                                  \
    static void gemm_generic_##SUF(int M, int K, const REAL *A, long lda, const REAL *P,     \
                                   long pstride, int np, REAL *C, long ldc, int rev)          \
    {                                                                                         \
        REAL acc[W];                                                                          \
        for (int p0 = 0; p0 < np; p0++)                                                       \
            for (int i = 0, p = rev ? np - 1 - p0 : p0; i < M; i++) {                         \
                const REAL *a = A + (long)i * lda, *b = P + (long)p * pstride;                \
                for (int c = 0; c < W; c++) acc[c] = 0;                                       \
                for (int k = 0; k < K; k++, b += W) {                                         \
                    REAL av = a[k];                                                           \
                    for (int c = 0; c < W; c++) acc[c] = FMA(av, b[c], acc[c]);               \
                }                                                                             \
                memcpy(C + (long)i * ldc + (long)p * W, acc, sizeof acc);                     \
            }                                                                                 \
    }
FG_DEFINE_GENERIC(f, float, FG_WF, fmaf)
FG_DEFINE_GENERIC(d, double, FG_WD, fma)

/* One- and two-row tiles (batch-1/2 steps, a matrix-vector product streaming U from L2 or
 * beyond: each weight vector serves one or two FMAs) prefetch the panel rows FG_PF_K rows of
 * k ahead into L1; measured at 1x1000x128x256: 12.8 -> 11.3-11.5 ms, 1x1000x1x128: 3.1 ->
 * 2.0-2.6 ms (distances 2-16 tried, 4 best). Prefetches never fault past the end. */
#define FG_PF_K 4

/* How the AVX-512 product cuts M rows into tiles: returns Mt, the rows of 4-6 (or 3) row tiles,
 * nt tiles (the first `extra` of base + 1 rows, the rest of base), the last M - Mt rows left
 * to one- / two-row tiles. M >= 4: ceil(M / 6) tiles of near-equal height, each one pass over
 * the panel: 8 rows as 4 + 4 rather than 6 + 2 (a two-row pass reads 256 bytes per 8 FMAs,
 * bound by L2). Measured per-step products, % of the FMA peak, old / new: 8 x 256 x 768 70 /
 * 85, 9 x 256 x 768 60 / 82, 8 x 1024 x 3072 68 / 86, 32 x 128 x 384 88 / 92; 16 and 256 rows
 * level. 7 = 6 + 1 (4 + 3 ran at 53% against 66%). */
static inline int fg_row_tiles(int M, int *nt, int *base, int *extra)
{
    const int rest = M == 7 ? 1 : (M >= 3 ? 0 : M), Mt = M - rest;
    *nt = Mt > 3 ? (Mt + 5) / 6 : 1;
    *base = Mt / *nt, *extra = Mt % *nt;
    return Mt;
}

/* Strips (fg_strips): the rows of each 4-6 row tile of A (fg_row_tiles) repacked so that a k
 * step's MR values are adjacent: tile rows i..i+mr at S + i * FG_K4(K), element (r, k) at
 * (k / 4) * 4 mr + 4 r + k % 4 (groups of four k per row, rows side by side). One line holds
 * the broadcasts of several k instead of one line per row per k: in isolation the 6 x 1 tile
 * ran 4-6% faster over 66 x 256 x 768 and 258 x 512 x 1536 on the 2 MB-L2 Xeon (groups of
 * 1, 2 and 4 k alike; 8 k or 16 k per row group no better than rows). */
#define FG_K4(K) (((long)(K) + 3) & ~3L)
#ifndef FG_STRIPS_MIN_PANELS
#define FG_STRIPS_MIN_PANELS 12
#endif
/* Each thread keeps its scratch for strips until it exits: products bigger than this read the
 * rows instead, so that a huge batch or input cannot pin tens of MB per thread for good. */
#define FG_STRIPS_MAX_BYTES ((size_t)8 << 20)

#ifdef FG_X86
/* AVX2 per-step product: with more than 3 rows and K > FG_KC2_MIN_K, k runs in chunks of
 * FG_KC2 so that the half panel a 3 x 4 tile reads (FG_KC2 x 128 bytes) is still in L1 for the
 * next row block. A chunk's tile continues its accumulators from C (a stored float reloads
 * exactly), so every element is still one FMA chain over k = 0..K-1 from zero: the same bits
 * as without chunks and as every other ISA. Measured in one process against the unchunked
 * kernel (forward, float32, 1 / 2 threads): 16x500x512x1024 +14% / +7%, but 256x50x256x512
 * -5% / -6% (K = 512) and the other shapes level, hence the K threshold. */
#define FG_KC2 128
#define FG_KC2_MIN_K 512

/* AVX2 (16 vector registers): a tile is MR rows x NV vectors starting at vector cv0 of one
 * panel (8 vectors). Rows go in blocks of 3 x 4 vectors (12 accumulators, 3 broadcasts and 16
 * registers in all: 6 x 2 tiles, or loading the 4 panel vectors first, spilled or streamed
 * the panel in quarters and ran 15-40% slower); one or two leftover rows take 1 x 8 / 2 x 4
 * so that eight independent FMA chains are in flight, and (a matrix-vector product streaming
 * U from L2 or beyond) prefetch the panel rows FG_PF_K rows of k ahead into L1. */
#define FG_DEFINE_TILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NV)         \
    static inline __attribute__((always_inline, target("avx2,fma"))) void NAME##_##MR##x##NV( \
        int K, const REAL *A, long lda, const REAL *P, int cv0, REAL *C, long ldc, int cont)  \
    {                                                                                         \
        VT acc[MR][NV];                                                                       \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++)                                                      \
                acc[r][v] = cont ? LOAD(C + (long)r * ldc + (cv0 + v) * VW) : ZERO();         \
        const REAL *b = P + cv0 * VW;                                                         \
        for (int k = 0; k < K; k++, b += W) {                                                 \
            if (MR <= 2)                                                                      \
                for (int v = 0; v < NV; v += 64 / (int)sizeof(VT)) /* one per line */          \
                    _mm_prefetch((const char *)(b + FG_PF_K * W + v * VW), _MM_HINT_T0);      \
            VT a[MR];                                                                         \
            for (int r = 0; r < MR; r++) a[r] = SET1(A[(long)r * lda + k]);                   \
            for (int v = 0; v < NV; v++) {                                                    \
                VT bv = LOAD(b + v * VW);                                                     \
                for (int r = 0; r < MR; r++) acc[r][v] = FMADD(a[r], bv, acc[r][v]);          \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++) STORE(C + (long)r * ldc + (cv0 + v) * VW, acc[r][v]); \
    }

#define FG_DEFINE_AVX2(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)                  \
    FG_DEFINE_TILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 3, 4)                \
    FG_DEFINE_TILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 4)                \
    FG_DEFINE_TILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 8)                \
    static __attribute__((target("avx2,fma"))) void NAME(int M, int K, const REAL *A,         \
                                                         long lda, const REAL *P, long pstride, \
                                                         int np, REAL *C, long ldc, int rev)  \
    {                                                                                         \
        int i0 = M - M % 3, rem = M % 3;                                                      \
        /* several row blocks and a long k: chunks whose half panel stays in L1 */           \
        const int kc = M > 3 && K > FG_KC2_MIN_K ? FG_KC2 : K;                                \
        for (int p0 = 0; p0 < np; p0++) {                                                     \
            const int p = rev ? np - 1 - p0 : p0;                                             \
            const REAL *Pp = P + (long)p * pstride;                                           \
            REAL *Cp = C + (long)p * W;                                                       \
            if (rem == 1) NAME##_1x8(K, A + (long)i0 * lda, lda, Pp, 0, Cp + (long)i0 * ldc, ldc, 0); \
            for (int cv = 0; cv < 8; cv += 4)                                                 \
                for (int k0 = 0; k0 < K; k0 += kc) {                                          \
                    const int nk = K - k0 < kc ? K - k0 : kc;                                 \
                    const REAL *Pk = Pp + (long)k0 * W;                                       \
                    for (int i = 0; i < i0; i += 3)                                           \
                        NAME##_3x4(nk, A + (long)i * lda + k0, lda, Pk, cv, Cp + (long)i * ldc, \
                                   ldc, k0 > 0);                                              \
                    if (rem == 2)                                                             \
                        NAME##_2x4(nk, A + (long)i0 * lda + k0, lda, Pk, cv,                  \
                                   Cp + (long)i0 * ldc, ldc, k0 > 0);                         \
                }                                                                             \
        }                                                                                     \
    }

/* AVX-512 (32 vector registers): a tile is MR rows x NP whole panels (4 vectors each).
 * Three or more rows use 3-6 x 1 tiles (6 x 1: 24 accumulators, 4 loads + 6 broadcasts per
 * 24 FMAs; 3 rows alone 3 x 2); one or two rows take several panels at once (1 x 4, 2 x 2) so
 * that enough independent FMA chains are in flight, and (like 3 x 2) prefetch the panel rows
 * they stream: the k order of every element stays the same. */
#define FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NP)          \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NP, 0, , 0)
/* PF > 0: also prefetch PF lines per k, from pf on, into L2 (the next panel; FG_PF_L2).
 * STRIP: A is this tile's rows packed as strips (fg_strips): A[(k / 4) * 4 MR + 4 r + k % 4];
 * else row r of A at A + r * lda. The same FMAs in the same order either way. */
#define FG_T512_K(k, AV, VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                             \
    do {                                                                                       \
        for (int j = 0; j < PF; j++)                                                           \
            _mm_prefetch(pf + ((long)(k) * PF + j) * 64, _MM_HINT_T1);                         \
        if (MR <= 2 || (MR == 3 && NP > 1)) /* see FG_PF_K */                                  \
            for (int q = 0; q < NP; q++)                                                      \
                for (int v = 0; v < 4; v++)                                                   \
                    _mm_prefetch((const char *)(P + q * pstride + (long)((k) + FG_PF_K) * W    \
                                                + v * VW), _MM_HINT_T0);                       \
        VT a[MR];                                                                             \
        for (int r = 0; r < MR; r++) a[r] = SET1(AV);                                          \
        for (int q = 0; q < NP; q++)                                                          \
            for (int v = 0; v < 4; v++) {                                                     \
                VT b = LOAD(P + q * pstride + (long)(k) * W + v * VW);                         \
                for (int r = 0; r < MR; r++)                                                  \
                    acc[r][q * 4 + v] = FMADD(a[r], b, acc[r][q * 4 + v]);                   \
            }                                                                                 \
    } while (0)
#define FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NP, PF, SFX, \
                        STRIP)                                                                 \
    static inline __attribute__((always_inline, target("avx512f,fma"))) void                  \
        NAME##_##MR##x##NP##SFX(int K, const REAL *A, long lda, const REAL *P, long pstride,  \
                                REAL *C, long ldc, const char *pf)                            \
    {                                                                                         \
        VT acc[MR][NP * 4];                                                                   \
        (void)pf, (void)lda;                                                                   \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NP * 4; v++) acc[r][v] = ZERO();                              \
        if (STRIP) {                                                                           \
            int k0 = 0;                                                                        \
            for (; k0 + 4 <= K; k0 += 4) {                                                     \
                const REAL *Ag = A + (long)k0 * MR;                                            \
                FG_T512_K(k0, Ag[r * 4], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF);            \
                FG_T512_K(k0 + 1, Ag[r * 4 + 1], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF);    \
                FG_T512_K(k0 + 2, Ag[r * 4 + 2], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF);    \
                FG_T512_K(k0 + 3, Ag[r * 4 + 3], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF);    \
            }                                                                                 \
            const REAL *Ag = A + (long)k0 * MR;                                                \
            for (int kk = 0; k0 + kk < K; kk++)                                               \
                FG_T512_K(k0 + kk, Ag[r * 4 + kk], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF); \
        } else {                                                                              \
            for (int k = 0; k < K; k++)                                                       \
                FG_T512_K(k, A[(long)r * lda + k], VT, W, VW, LOAD, SET1, FMADD, MR, NP, PF); \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NP * 4; v++) STORE(C + (long)r * ldc + v * VW, acc[r][v]);    \
    }

/* Panels bigger than this in all (bytes) are not expected to stay in L2 across steps: the 4-6 row
 * tiles then prefetch the next panel into L2 while they compute on this one (without it only
 * the hardware streamer fetches, during the panel's first tile, and that tile waits on L3).
 * Measured on Sapphire Rapids (2 MB L2, ~22 GB/s from L3 per core), one process A/B: kernel
 * 16x1024x3072 42-53% -> 56-74% of the FMA peak, 8x1024x3072 34 -> 44%; layer 16x500x512x1024
 * +27% (1 thread) / +11% (2), 256x50x256x512 level. Prefetching two panels ahead: no better.
 * A step's product over the three gates (one call per gate) decides by the panels of all three
 * and prefetches across gates: at u = 512 one gate's panels are exactly 1 MB, so none were
 * prefetched while the step streamed 3 MB. One-process A/B on an Intel Xeon with 2 MB of L2
 * (2026-12-05), 1 / 2 threads: 256x50x256x512 +1.7% / +2.5% (a second run +1.4% / +2.9%),
 * 16x500x512x1024 +1.2% / +2.3%, 64x200x128x256 and smaller level. */
#define FG_PF_L2 (1L << 20)
/* The first panel of the w-panel block at visiting position p of np (rev: last to first). */
#define FB(p, w) ((long)(rev ? np - (p) - (w) : (p)))

/* Whether a grouped one-/two-row product over panels of `bytes` in all takes its L1
 * prefetches (fg_ptr_prefetch): panels beyond FG_PF_L2 stream from L3, where they pay. */
int fg_ptr_prefetch_at(long bytes)
{
    return fg_ptr_prefetch() || bytes > FG_PF_L2;
}

/* The four variants of an MR x 1 tile: no prefetch of the next panel, or 1, 2 or 4 lines per k. */
#define FG_DEFINE_T512Q(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR)            \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 0, , 0)      \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 1, _q1, 0)   \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 2, _q2, 0)   \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 4, _q4, 0)   \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 0, _s, 1)    \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 1, _sq1, 1)  \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 2, _sq2, 1)  \
    FG_DEFINE_T512P(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, 1, 4, _sq4, 1)
#define FG_T512_Q(NAME, MR, q, st, ...)                                                        \
    (st ? (q == 0 ? NAME##_##MR##x1_s(__VA_ARGS__) : q == 1 ? NAME##_##MR##x1_sq1(__VA_ARGS__) \
           : q == 2 ? NAME##_##MR##x1_sq2(__VA_ARGS__) : NAME##_##MR##x1_sq4(__VA_ARGS__))     \
        : (q == 0 ? NAME##_##MR##x1(__VA_ARGS__) : q == 1 ? NAME##_##MR##x1_q1(__VA_ARGS__)    \
           : q == 2 ? NAME##_##MR##x1_q2(__VA_ARGS__) : NAME##_##MR##x1_q4(__VA_ARGS__)))
/* An mr x 1 tile (mr of 4-6) with q prefetch lines per k, its rows as strips where st. */
#define FG_T512_CALL(NAME, mr, q, st, ...)                                                     \
    (mr == 6 ? FG_T512_Q(NAME, 6, q, st, __VA_ARGS__)                                          \
     : mr == 5 ? FG_T512_Q(NAME, 5, q, st, __VA_ARGS__) : FG_T512_Q(NAME, 4, q, st, __VA_ARGS__))

/* Rows of 16 floats / 8 doubles per vector: four groups of four k (two of four doubles) each. */
#define FG_DEFINE_STRIPS(SUF, REAL, VT, VW, LOAD, GROUP_STORES)                               \
    static __attribute__((target("avx512f"))) void pack_strips_##SUF(int M, int K,            \
                                                                     const REAL *A, long lda, \
                                                                     REAL *S)                 \
    {                                                                                         \
        int nt, base, extra;                                                                  \
        fg_row_tiles(M, &nt, &base, &extra);                                                  \
        for (int t = 0, i = 0; t < nt; i += base + (t < extra), t++) {                        \
            const int mr = base + (t < extra);                                                \
            for (int r = 0; r < mr; r++) {                                                    \
                const REAL *src = A + (long)(i + r) * lda;                                    \
                REAL *dst = S + (long)i * FG_K4(K) + 4 * r;                                   \
                int k = 0;                                                                    \
                for (; k + VW <= K; k += VW, src += VW, dst += (long)VW * mr) {               \
                    const VT v = LOAD(src);                                                   \
                    GROUP_STORES                                                              \
                }                                                                             \
                for (; k + 4 <= K; k += 4, src += 4, dst += 4L * mr)                          \
                    memcpy(dst, src, 4 * sizeof(REAL));                                       \
                for (int j = 0; k + j < K; j++) dst[j] = src[j];                              \
            }                                                                                 \
        }                                                                                     \
    }
FG_DEFINE_STRIPS(f, float, __m512, 16, _mm512_loadu_ps,
                 _mm_storeu_ps(dst, _mm512_castps512_ps128(v));
                 _mm_storeu_ps(dst + 4 * mr, _mm512_extractf32x4_ps(v, 1));
                 _mm_storeu_ps(dst + 8 * mr, _mm512_extractf32x4_ps(v, 2));
                 _mm_storeu_ps(dst + 12 * mr, _mm512_extractf32x4_ps(v, 3));)
FG_DEFINE_STRIPS(d, double, __m512d, 8, _mm512_loadu_pd,
                 _mm256_storeu_pd(dst, _mm512_castpd512_pd256(v));
                 _mm256_storeu_pd(dst + 4 * mr, _mm512_extractf64x4_pd(v, 1));)

#define FG_DEFINE_512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)                   \
    FG_DEFINE_T512Q(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 6)                 \
    FG_DEFINE_T512Q(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 5)                 \
    FG_DEFINE_T512Q(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 4)                 \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 3, 2)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 3, 1)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 2)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 1)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 4)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 2)                \
    FG_DEFINE_T512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 1)                \
    FG_DEFINE_512_GEMM(NAME, NAME, 0, REAL, W)                                                \
    FG_DEFINE_512_GEMM(NAME, NAME##_s, 1, REAL, W)
/* The product of M rows: FN reads A's rows (ST = 0) or, in its 4-6 row tiles, the strips As
 * (ST = 1). Two functions rather than one choosing per tile: with both tile families in one,
 * the row path ran 2-3.5% slower (64x256x768 to 256x512x1536, in one process). */
#define FG_DEFINE_512_GEMM(NAME, FN, ST, REAL, W)                                              \
    static __attribute__((target("avx512f,fma"))) void FN(int M, int K, const REAL *A,        \
                                                          long lda, const REAL *P,            \
                                                          long pstride, int np, REAL *C,      \
                                                          long ldc, long stream,              \
                                                          const REAL *after, int rev,         \
                                                          const REAL *As)                     \
    {                                                                                         \
        /* rev: the panels last to first; FB(p, w): the first of the w panels that block p    \
         * (counted in visiting order, p of np) covers */                                     \
        /* row tiles: fg_row_tiles; As: the 4-6 row tiles' rows as strips, or NULL */          \
        int nt, base, extra;                                                                   \
        const int Mt = fg_row_tiles(M, &nt, &base, &extra), rest = M - Mt;                     \
        if (Mt == 3) { /* 3 x 2 over panel pairs, two prefetched streams (3 x 1: a few %     \
                        * slower; three rows are bound by L2 either way) */                   \
            int p = 0;                                                                        \
            for (; p + 2 <= np; p += 2)                                                       \
                NAME##_3x2(K, A, lda, P + FB(p, 2) * pstride, pstride, C + FB(p, 2) * W, ldc, 0); \
            if (p < np)                                                                       \
                NAME##_3x1(K, A, lda, P + FB(p, 1) * pstride, pstride, C + FB(p, 1) * W, ldc, 0); \
        } else if (Mt > 3) {                                                                  \
            /* Panels beyond L2 (stream: the bytes of panels the whole step's product       \
             * reads, of which this call may be one gate's): the first tiles of panel p        \
             * prefetch panel p + 1 (after the last, `after`: the next call's first) into L2,  \
             * so that its fetch from L3 overlaps the whole of panel p (FG_PF_L2). */         \
            const long pbytes = (long)K * W * (long)sizeof(REAL);                             \
            const int pfl = stream <= FG_PF_L2 ? 0                                            \
                            : nt == 1 ? 4 : nt <= 3 ? 2 : 1; /* lines per k per tile */       \
            for (int p = 0; p < np; p++) {                                                    \
                const REAL *Pp = P + FB(p, 1) * pstride;                                      \
                const char *next = (const char *)(p + 1 < np ? (rev ? Pp - pstride : Pp + pstride) \
                                                             : after);                       \
                REAL *Cp = C + FB(p, 1) * W;                                                  \
                for (int t = 0, i = 0; t < nt; t++) {                                         \
                    const int mr = base + (t < extra);                                        \
                    const REAL *Ar = ST ? As + (long)i * FG_K4(K) : A + (long)i * lda;         \
                    REAL *Cr = Cp + (long)i * ldc;                                            \
                    const long off = (long)t * pfl * 64 * K; /* this tile's share */          \
                    const int q = next && off < pbytes ? pfl : 0;                             \
                    const char *pf = q ? next + off : 0;                                      \
                    FG_T512_CALL(NAME, mr, q, ST, K, Ar, lda, Pp, pstride, Cr, ldc, pf);  \
                    i += mr;                                                                  \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        if (rest) {                                                                           \
            const REAL *Ar = A + (long)Mt * lda;                                              \
            REAL *Cr = C + (long)Mt * ldc;                                                    \
            int p = 0;                                                                        \
            if (rest == 1) {                                                                  \
                for (; p + 4 <= np; p += 4)                                                   \
                    NAME##_1x4(K, Ar, lda, P + FB(p, 4) * pstride, pstride, Cr + FB(p, 4) * W, ldc, 0); \
                for (; p + 2 <= np; p += 2)                                                   \
                    NAME##_1x2(K, Ar, lda, P + FB(p, 2) * pstride, pstride, Cr + FB(p, 2) * W, ldc, 0); \
                for (; p < np; p++)                                                           \
                    NAME##_1x1(K, Ar, lda, P + FB(p, 1) * pstride, pstride, Cr + FB(p, 1) * W, ldc, 0); \
            } else {                                                                          \
                for (; p + 2 <= np; p += 2)                                                   \
                    NAME##_2x2(K, Ar, lda, P + FB(p, 2) * pstride, pstride, Cr + FB(p, 2) * W, ldc, 0); \
                for (; p < np; p++)                                                           \
                    NAME##_2x1(K, Ar, lda, P + FB(p, 1) * pstride, pstride, Cr + FB(p, 1) * W, ldc, 0); \
            }                                                                                 \
        }                                                                                     \
    }

/* The accumulators of an MR x NP pointer tile: zero, or (kb > 0) the partial sums in C. */
#define FG_ACC_INIT(LOAD, ZERO, VW, MR, NP)                                                   \
    for (int r = 0; r < MR; r++)                                                              \
        for (int q = 0; q < NP; q++)                                                          \
            for (int v = 0; v < 4; v++)                                                       \
                acc[r][q * 4 + v] = kb ? LOAD(Cq[q] + (long)r * ldc + v * VW) : ZERO();
/* One k of an MR x NP pointer tile (FG_DEFINE_PTILE, and the fused tiles below): PF > 0 also
 * prefetches the panel rows FG_PF_K rows of k ahead into L1. */
#define FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                               \
    for (int q = 0; q < NP * PF; q++)                                                         \
        for (int v = 0; v < 4; v++)                                                           \
            _mm_prefetch((const char *)(Pq[q] + (long)(k + FG_PF_K) * W + v * VW), _MM_HINT_T0); \
    {                                                                                         \
        VT a[MR];                                                                             \
        for (int r = 0; r < MR; r++) a[r] = SET1(A[(long)r * lda + k]);                       \
        for (int q = 0; q < NP; q++)                                                          \
            for (int v = 0; v < 4; v++) {                                                     \
                VT b = LOAD(Pq[q] + (long)k * W + v * VW);                                    \
                for (int r = 0; r < MR; r++)                                                  \
                    acc[r][q * 4 + v] = FMADD(a[r], b, acc[r][q * 4 + v]);                   \
            }                                                                                 \
    }
/* One or two rows over NP panels given by pointers (any addresses): the grouped product of a
 * thread's own panels of several gates in one pass (fg_gemm_panels_grp), with as many FMA
 * chains in flight as the contiguous 1 x 4 / 2 x 2 tiles; the k order of every element is the
 * same as theirs. Each comes with (PF 1, _pf) and without (_np) their L1 prefetches, chosen
 * per call by fg_ptr_prefetch(). k runs over [kb, ke): kb > 0 continues the sums stored in C
 * (a stored value reloads exactly: the same bits as one pass). */
#define FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NP, PF, SFX) \
    static inline __attribute__((always_inline, target("avx512f,fma"))) void                  \
        NAME##_p##MR##x##NP##SFX(int kb, int ke, const REAL *A, long lda,                     \
                                 const REAL *const *Pq, REAL *const *Cq, long ldc)            \
    {                                                                                         \
        VT acc[MR][NP * 4];                                                                   \
        FG_ACC_INIT(LOAD, ZERO, VW, MR, NP)                                                   \
        for (int k = kb; k < ke; k++) {                                                       \
            FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                           \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int q = 0; q < NP; q++)                                                      \
                for (int v = 0; v < 4; v++)                                                   \
                    STORE(Cq[q] + (long)r * ldc + v * VW, acc[r][q * 4 + v]);                \
    }

#define FG_DEFINE_PTR512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)                \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 4, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 4, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 3, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 3, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 2, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 2, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 1, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 1, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 3, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 3, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 2, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 2, 1, _pf)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 1, 0, _np)     \
    FG_DEFINE_PTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 2, 1, 1, _pf)     \
    FG_DEFINE_PTRSET(NAME, REAL, _np)                                                         \
    FG_DEFINE_PTRSET(NAME, REAL, _pf)                                                         \
    static __attribute__((target("avx512f,fma"))) void NAME##_ptr(int M, int kb, int ke,       \
                                                                  const REAL *A, long lda,    \
                                                                  const REAL *const *Pq,      \
                                                                  REAL *const *Cq, int n, long ldc, \
                                                                  int pf)                     \
    {                                                                                         \
        if (pf) NAME##_ptr_pf(M, kb, ke, A, lda, Pq, Cq, n, ldc);                             \
        else NAME##_ptr_np(M, kb, ke, A, lda, Pq, Cq, n, ldc);                                \
    }
/* The pointer tiles over n panels, with (SFX _pf) or without their L1 prefetches. */
#define FG_DEFINE_PTRSET(NAME, REAL, SFX)                                                     \
    static inline __attribute__((always_inline, target("avx512f,fma"))) void                  \
        NAME##_ptr##SFX(int M, int kb, int ke, const REAL *A, long lda, const REAL *const *Pq, \
                        REAL *const *Cq, int n, long ldc)                                     \
    {                                                                                         \
        int q = 0;                                                                            \
        if (M == 1) {                                                                         \
            for (; q + 4 <= n; q += 4) NAME##_p1x4##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc); \
            if (n - q == 3) NAME##_p1x3##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc);            \
            if (n - q == 2) NAME##_p1x2##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc);            \
            if (n - q == 1) NAME##_p1x1##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc);            \
        } else {                                                                              \
            for (; q + 3 <= n; q += 3) NAME##_p2x3##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc); \
            if (n - q == 2) NAME##_p2x2##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc);            \
            if (n - q == 1) NAME##_p2x1##SFX(kb, ke, A, lda, Pq + q, Cq + q, ldc);            \
        }                                                                                     \
    }

FG_DEFINE_512(gemm_avx512_f, __m512, float, FG_WF, 16, _mm512_loadu_ps, _mm512_storeu_ps,
              _mm512_set1_ps, _mm512_setzero_ps, _mm512_fmadd_ps)
FG_DEFINE_512(gemm_avx512_d, __m512d, double, FG_WD, 8, _mm512_loadu_pd, _mm512_storeu_pd,
              _mm512_set1_pd, _mm512_setzero_pd, _mm512_fmadd_pd)
FG_DEFINE_PTR512(gemm_avx512_f, __m512, float, FG_WF, 16, _mm512_loadu_ps, _mm512_storeu_ps,
                 _mm512_set1_ps, _mm512_setzero_ps, _mm512_fmadd_ps)
FG_DEFINE_PTR512(gemm_avx512_d, __m512d, double, FG_WD, 8, _mm512_loadu_pd, _mm512_storeu_pd,
                 _mm512_set1_pd, _mm512_setzero_pd, _mm512_fmadd_pd)
FG_DEFINE_AVX2(gemm_avx2_f, __m256, float, FG_WF, 8, _mm256_loadu_ps, _mm256_storeu_ps,
               _mm256_set1_ps, _mm256_setzero_ps, _mm256_fmadd_ps)
FG_DEFINE_AVX2(gemm_avx2_d, __m256d, double, FG_WD, 4, _mm256_loadu_pd, _mm256_storeu_pd,
               _mm256_set1_pd, _mm256_setzero_pd, _mm256_fmadd_pd)
#else /* strips are for the AVX-512 tiles only: never called here (isa is generic) */
static void pack_strips_f(int M, int K, const float *A, long lda, float *S)
{
    (void)M, (void)K, (void)A, (void)lda, (void)S;
}
static void pack_strips_d(int M, int K, const double *A, long lda, double *S)
{
    (void)M, (void)K, (void)A, (void)lda, (void)S;
}
#endif

/* Each thread's scratch for strips, kept for its next product (every step packs a new A; the
 * workspace cache, ws.c, has one lock and 16 slots for all threads, and a miss there is a fresh
 * mmap that page-faults) and freed when the thread exits. */
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
typedef struct {
    void *p;
    size_t n;
} fg_tscratch;
static pthread_key_t strips_key;
static pthread_once_t strips_once = PTHREAD_ONCE_INIT;
static int strips_key_ok;
static void strips_free(void *v)
{
    free(((fg_tscratch *)v)->p);
    free(v);
}
static void strips_key_init(void)
{
    strips_key_ok = pthread_key_create(&strips_key, strips_free) == 0;
}
/* 64-byte aligned, at least `bytes`, contents undefined; NULL without memory */
static void *strips_scratch(size_t bytes)
{
    pthread_once(&strips_once, strips_key_init);
    if (!strips_key_ok) return NULL;
    fg_tscratch *b = pthread_getspecific(strips_key);
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b) return NULL;
        if (pthread_setspecific(strips_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->n < bytes) {
        free(b->p);
        b->p = NULL, b->n = 0;
        if (posix_memalign(&b->p, 64, bytes)) {
            b->p = NULL;
            return NULL;
        }
        b->n = bytes;
    }
    return b->p;
}
#else
static void *strips_scratch(size_t bytes) { (void)bytes; return NULL; } /* rows, as before */
#endif

/* stream: the bytes of panels the whole product reads (a grouped call's, across its groups),
 * after: the panels that follow these in it (or NULL); both only steer L2 prefetches (FG_PF_L2). */
#define FG_DEFINE_DISPATCH(SUF, REAL)                                                         \
    /* A's rows as strips (fg_strips) in this thread's scratch, where the product of isa     \
     * over np panels takes them; else NULL (then the tiles read the rows) */                 \
    static const REAL *strips_##SUF(int isa, int M, int K, const REAL *A, long lda, int np)   \
    {                                                                                         \
        int nt, base, extra;                                                                  \
        if (isa != FG_ISA_AVX512 || K <= 0 || np < FG_STRIPS_MIN_PANELS                       \
            || fg_row_tiles(M, &nt, &base, &extra) <= 3 || !fg_strips())                      \
            return NULL;                                                                      \
        const size_t bytes = (size_t)M * FG_K4(K) * sizeof(REAL);                             \
        REAL *S = bytes <= FG_STRIPS_MAX_BYTES ? strips_scratch(bytes) : NULL;                \
        if (!S) return NULL; /* no memory: the rows as they are */                            \
        pack_strips_##SUF(M, K, A, lda, S);                                                   \
        fg_took(FG_PATH_STRIPS);                                                              \
        return S;                                                                             \
    }                                                                                         \
    static void gemm_stream_##SUF(int isa, int M, int K, const REAL *A, long lda,             \
                                  const REAL *P, long pstride, int np, REAL *C, long ldc,     \
                                  long stream, const REAL *after, int rev, const REAL *As)     \
    {                                                                                         \
        (void)stream, (void)after, (void)As;                                                   \
        if (M <= 0 || np <= 0) return;                                                        \
        FG_X86_DISPATCH(SUF)                                                                  \
        gemm_generic_##SUF(M, K, A, lda, P, pstride, np, C, ldc, rev);                        \
    }                                                                                         \
    void fg_gemm_panels_##SUF(int isa, int M, int K, const REAL *A, long lda, const REAL *P, \
                              long pstride, int np, REAL *C, long ldc)                        \
    {                                                                                         \
        const REAL *As = strips_##SUF(isa, M, K, A, lda, np);                                 \
        gemm_stream_##SUF(isa, M, K, A, lda, P, pstride, np, C, ldc,                          \
                          (long)np * pstride * (long)sizeof(REAL), 0, 0, As);                  \
    }
#ifdef FG_X86
#define FG_X86_DISPATCH(SUF)                                                                  \
    if (isa == FG_ISA_AVX512) {                                                               \
        (As ? gemm_avx512_##SUF##_s : gemm_avx512_##SUF)(M, K, A, lda, P, pstride, np, C, ldc,  \
                                                         stream, after, rev, As);             \
        return;                                                                               \
    }                                                                                         \
    if (isa == FG_ISA_AVX2) {                                                                 \
        gemm_avx2_##SUF(M, K, A, lda, P, pstride, np, C, ldc, rev);                           \
        return;                                                                               \
    }
#else
#define FG_X86_DISPATCH(SUF)
#endif
FG_DEFINE_DISPATCH(f, float)
FG_DEFINE_DISPATCH(d, double)


/* ---------------------------------------------------------------------------------------- */
/* The fused batch-1 step: the grouped product of one row (above), with input-projection jobs
 * of future steps riding along (fg_proj_job). The one-row product is bound by reading U from
 * L2 (one load per FMA), leaving about half the FMA issue slots idle; a job (eight future rows x
 * half an input-kernel panel: 16 accumulators, one load per eight FMAs) fills them. A fused
 * tile pairs a 1 x 2 (or 1 x 1) pointer tile of U with one job: 8 + 16 accumulators. A 1 x 2
 * tile's k reads 512 bytes of U from L2 (16 cycles at Zen 4's ~32 bytes per cycle) for 8 FMAs;
 * a d of the job is 16 FMAs: one d per k made those k FMA-bound (24 FMAs), so a 1 x 2 tile
 * takes its job's d at one per two k (rows 0-3, then 4-7: 16 FMAs per k) for as many d as let
 * the job end with the k loop, the rest one per k (1 x 1 tiles: all one per k). One-process
 * A/B on Zen 4, against one d per k, 1 / 2 threads: 1x100x64x128 +2.8% / +1.2-1.6%,
 * 1x1000x128x256 +2.3-3.7% / +1.4-3%, 1x500x128x192 +2% / +3%, 1x1000x64x128 +2.3-3.1% /
 * +0.6-2.8%; 1x200x128x128 (D = K: no d at half rate) level; all d at half rate with the
 * rest after the k loop lost 5% there. Measured against the alternatives (one-process
 * A/Bs on Zen 4): four rows x a whole panel, the same accumulators but twice the jobs' panel
 * loads, matched it up to ~700 KB of panels and lost 1-3% beyond (1x1000x128x256: +4.5% with
 * eight rows); 1 x 4 tiles of U with four-row half-panel jobs lost 1-3%. Every element of
 * either is still one FMA chain from zero over its k in order: the bits of the separate
 * product and projection (tiles above, fg_gemm_panels). */
#ifdef FG_X86
#define FG_DEFINE_FTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, MR, NP, PF, SFX, \
                        HALF)                                                                 \
    static inline __attribute__((always_inline, target("avx512f,fma"))) void                  \
        NAME##_f##MR##x##NP##SFX(int kb, int ke, const REAL *A, long lda,                     \
                                 const REAL *const *Pq, REAL *const *Cq, long ldc, int D,     \
                                 const fg_proj_job *jb)                                       \
    {                                                                                         \
        VT acc[MR][NP * 4], pacc[FG_PJ_ROWS][2];                                              \
        const REAL *xr[FG_PJ_ROWS], *wp = jb->w;                                              \
        for (int r = 0; r < FG_PJ_ROWS; r++) xr[r] = jb->x[r];                                \
        FG_ACC_INIT(LOAD, ZERO, VW, MR, NP)                                                   \
        for (int r = 0; r < FG_PJ_ROWS; r++) pacc[r][0] = pacc[r][1] = ZERO();                \
        /* HALF: h d's of the job at one per two k (8 + 8 FMAs per k), then one per k: the   \
         * job ends with the tile's k loop where D <= L (h = L - D, or D where 2 D <= L) */   \
        const int L = ke - kb, h = HALF ? (L - D < D ? (L > D ? L - D : 0) : D) : 0;          \
        int k = kb, d = 0;                                                                    \
        for (; d < h; d++) {                                                                  \
            FG_FT_JLOAD(VT, W, VW, LOAD, d)                                                   \
            k = kb + 2 * d;                                                                   \
            FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                           \
            FG_FT_JROWS(VT, SET1, FMADD, 0, FG_PJ_ROWS / 2, d)                                \
            k = kb + 2 * d + 1;                                                               \
            FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                           \
            FG_FT_JROWS(VT, SET1, FMADD, FG_PJ_ROWS / 2, FG_PJ_ROWS, d)                       \
        }                                                                                     \
        for (k = kb + 2 * h; k < ke && d < D; k++, d++) {                                     \
            FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                           \
            FG_FT_J(VT, W, VW, LOAD, SET1, FMADD, d)                                          \
        }                                                                                     \
        for (; k < ke; k++) {                                                                 \
            FG_FT_U(VT, REAL, W, VW, LOAD, SET1, FMADD, MR, NP, PF)                           \
        }                                                                                     \
        for (; d < D; d++) {                                                                  \
            FG_FT_J(VT, W, VW, LOAD, SET1, FMADD, d)                                          \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int q = 0; q < NP; q++)                                                      \
                for (int v = 0; v < 4; v++)                                                   \
                    STORE(Cq[q] + (long)r * ldc + v * VW, acc[r][q * 4 + v]);                \
        FG_FT_JSTORE(REAL, VW, STORE)                                                         \
    }
/* The job's panel row DI (b0, b1); one d of the job (rows [R0, R1) with b0, b1 loaded; all
 * rows); the job's stores. */
#define FG_FT_JLOAD(VT, W, VW, LOAD, DI)                                                      \
    const VT b0 = LOAD(wp + (long)(DI) * W), b1 = LOAD(wp + (long)(DI) * W + VW);
#define FG_FT_JROWS(VT, SET1, FMADD, R0, R1, DI)                                              \
    for (int r = R0; r < R1; r++) {                                                           \
        const VT a = SET1(xr[r][DI]);                                                         \
        pacc[r][0] = FMADD(a, b0, pacc[r][0]);                                                \
        pacc[r][1] = FMADD(a, b1, pacc[r][1]);                                                \
    }
#define FG_FT_J(VT, W, VW, LOAD, SET1, FMADD, DI)                                             \
    {                                                                                         \
        FG_FT_JLOAD(VT, W, VW, LOAD, DI)                                                      \
        FG_FT_JROWS(VT, SET1, FMADD, 0, FG_PJ_ROWS, DI)                                       \
    }
#define FG_FT_JSTORE(REAL, VW, STORE)                                                         \
    for (int r = 0; r < FG_PJ_ROWS; r++) {                                                    \
        STORE((REAL *)jb->out[r], pacc[r][0]);                                                \
        STORE((REAL *)jb->out[r] + VW, pacc[r][1]);                                           \
    }

/* A job alone (jobs beyond the step's tiles, or no U work). */
#define FG_DEFINE_JTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)                 \
    static inline __attribute__((always_inline, target("avx512f,fma"))) void NAME##_job(     \
        int D, const fg_proj_job *jb)                                                         \
    {                                                                                         \
        VT pacc[FG_PJ_ROWS][2];                                                               \
        const REAL *xr[FG_PJ_ROWS], *wp = jb->w;                                              \
        for (int r = 0; r < FG_PJ_ROWS; r++) xr[r] = jb->x[r];                                \
        for (int r = 0; r < FG_PJ_ROWS; r++) pacc[r][0] = pacc[r][1] = ZERO();                \
        for (int k = 0; k < D; k++) FG_FT_J(VT, W, VW, LOAD, SET1, FMADD, k)                  \
        FG_FT_JSTORE(REAL, VW, STORE)                                                         \
    }

#define FG_DEFINE_FUSED512(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)              \
    FG_DEFINE_FTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 2, 0, _np, 1)  \
    FG_DEFINE_FTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 2, 1, _pf, 1)  \
    FG_DEFINE_FTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 1, 0, _np, 0)  \
    FG_DEFINE_FTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, 1, 1, 1, _pf, 0)  \
    FG_DEFINE_JTILE(NAME, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD)                    \
    /* one row over n panels Pq / Cq: the first nj tiles of 1 x 2 (or 1 x 1) fused with a job,\
     * the rest on the pointer tiles; then the jobs left alone */                           \
    static __attribute__((target("avx512f,fma"))) void NAME##_fused(                          \
        int kb, int ke, const REAL *A, const REAL *const *Pq, REAL *const *Cq, int n, int pf, \
        int D, const fg_proj_job *jobs, int nj)                                               \
    {                                                                                         \
        int q = 0, j = 0;                                                                     \
        for (; q < n; j++) {                                                                  \
            const int w = n - q >= 2 ? 2 : 1;                                                 \
            if (j >= nj) { /* no job left: the plain pointer tiles */                         \
                NAME##_ptr(1, kb, ke, A, 1, Pq + q, Cq + q, n - q, 0, pf);                    \
                break;                                                                        \
            }                                                                                 \
            const fg_proj_job *jb = jobs + j;                                                 \
            if (w == 2 && pf) NAME##_f1x2_pf(kb, ke, A, 0, Pq + q, Cq + q, 0, D, jb);         \
            else if (w == 2) NAME##_f1x2_np(kb, ke, A, 0, Pq + q, Cq + q, 0, D, jb);          \
            else if (pf) NAME##_f1x1_pf(kb, ke, A, 0, Pq + q, Cq + q, 0, D, jb);              \
            else NAME##_f1x1_np(kb, ke, A, 0, Pq + q, Cq + q, 0, D, jb);                      \
            q += w;                                                                           \
        }                                                                                     \
        for (; j < nj; j++) NAME##_job(D, jobs + j);                                          \
    }

FG_DEFINE_FUSED512(gemm_avx512_f, __m512, float, FG_WF, 16, _mm512_loadu_ps, _mm512_storeu_ps,
                   _mm512_set1_ps, _mm512_setzero_ps, _mm512_fmadd_ps)
FG_DEFINE_FUSED512(gemm_avx512_d, __m512d, double, FG_WD, 8, _mm512_loadu_pd, _mm512_storeu_pd,
                   _mm512_set1_pd, _mm512_setzero_pd, _mm512_fmadd_pd)
#endif

/* Grouped: ng groups of npg panels (group g at P + g * gstride, its output at C + g * cgstride),
 * and nj projection jobs of depth D (fg_gemm_panels_grp_proj); rev visits the ng * npg panels
 * last to first (fg_zigzag); wait (or NULL): see fastgru.h. One or two rows with AVX-512 run
 * all ng * npg panels through the pointer tiles in one pass (k < wait->kw, then the rest after
 * wait->fn, continuing the sums stored in C), one row with its jobs fused in; otherwise
 * wait->fn, one fg_gemm_panels call per group, then the jobs. The same bits either way. */
#define FG_DEFINE_GRP(SUF, REAL, W, FMA)                                                      \
    void fg_gemm_panels_grp_proj_##SUF(int isa, int M, int K, const REAL *A, long lda,        \
                                       const REAL *P, long pstride, long gstride, int npg,    \
                                       int ng, REAL *C, long ldc, long cgstride, int D,       \
                                       const fg_proj_job *jobs, int nj, int rev,              \
                                       const fg_step_wait *wait)                              \
    {                                                                                         \
        if (M <= 0 || npg <= 0 || ng <= 0) { /* nothing to multiply: still the wait */       \
            if (wait) wait->fn(wait->arg);                                                    \
        } else {                                                                              \
            FG_X86_GRP(SUF, REAL, W)                                                          \
            if (wait) wait->fn(wait->arg);                                                    \
            const REAL *As = strips_##SUF(isa, M, K, A, lda, ng * npg); /* once for all */    \
            const long stream = (long)ng * npg * pstride * (long)sizeof(REAL);                \
            for (int i = 0; i < ng; i++) {                                                    \
                const int g = rev ? ng - 1 - i : i;                                           \
                /* the first panel the next group's call visits (its L2 prefetch target) */   \
                const REAL *after = i + 1 == ng ? 0                                           \
                                    : rev ? P + (g - 1) * gstride + (long)(npg - 1) * pstride \
                                          : P + (g + 1) * gstride;                            \
                gemm_stream_##SUF(isa, M, K, A, lda, P + g * gstride, pstride, npg,           \
                                  C + g * cgstride, ldc, stream, after, rev, As);              \
            }                                                                                 \
        }                                                                                     \
        for (int j = 0; j < nj; j++) /* the tiles' sums: one fma chain over d per element */ \
            for (int r = 0; r < FG_PJ_ROWS; r++)                                              \
                for (int c = 0; c < W / 2; c++) {                                             \
                    const REAL *x = jobs[j].x[r], *w = (const REAL *)jobs[j].w + c;           \
                    REAL acc = 0;                                                             \
                    for (int d = 0; d < D; d++) acc = FMA(x[d], w[(long)d * W], acc);         \
                    ((REAL *)jobs[j].out[r])[c] = acc;                                        \
                }                                                                             \
    }                                                                                         \
    void fg_gemm_panels_grp_##SUF(int isa, int M, int K, const REAL *A, long lda,             \
                                  const REAL *P, long pstride, long gstride, int npg, int ng, \
                                  REAL *C, long ldc, long cgstride, int rev)                  \
    {                                                                                         \
        fg_gemm_panels_grp_proj_##SUF(isa, M, K, A, lda, P, pstride, gstride, npg, ng, C, ldc, \
                                      cgstride, 0, 0, 0, rev, 0);                             \
    }
#ifdef FG_X86
#define FG_X86_GRP(SUF, REAL, W)                                                              \
    if (isa == FG_ISA_AVX512 && M <= 2) {                                                     \
        enum { CH = 24 }; /* pointer batches; a multiple of 2, 3 and 4 */                     \
        const REAL *pq[CH];                                                                   \
        REAL *cq[CH];                                                                         \
        const int tot = npg * ng;                                                             \
        const long bytes = (long)tot * K * W * (long)sizeof(REAL);                            \
        const int pf = fg_ptr_prefetch_at(bytes);                                             \
        /* k < kw before the wait only where the panels fit in FG_PF_L2: beyond, two half-     \
         * length passes over each panel cost the prefetchers more than the wait they hide    \
         * (1x300x256x512 on two threads, 1.5 MB each: 2-3.5% slower than waiting first) */    \
        const int kw = wait && wait->kw > 0 && wait->kw < K && bytes <= FG_PF_L2 ? wait->kw : 0; \
        /* pass 0 (kw > 0): k < kw, no jobs; then the wait; pass 1: the rest, with the jobs */ \
        for (int pass = !kw; pass < 2; pass++) {                                              \
            const int kb = pass ? kw : 0, ke = pass ? K : kw;                                 \
            int n = 0;                                                                        \
            if (pass && wait) wait->fn(wait->arg);                                            \
            for (int i = 0; i < tot; i++) {                                                   \
                const int v = rev ? tot - 1 - i : i, g = v / npg, p = v % npg;                \
                pq[n] = P + g * gstride + p * pstride;                                        \
                cq[n] = C + g * cgstride + (long)p * W;                                       \
                if (++n == CH || i == tot - 1) {                                              \
                    /* one row: as many jobs as this batch has fused tiles (the last: all) */ \
                    const int take = M > 1 || !pass ? 0 : i == tot - 1 ? nj                   \
                                     : nj < (n + 1) / 2 ? nj : (n + 1) / 2;                   \
                    if (take) gemm_avx512_##SUF##_fused(kb, ke, A, pq, cq, n, pf, D, jobs, take); \
                    else gemm_avx512_##SUF##_ptr(M, kb, ke, A, lda, pq, cq, n, ldc, pf);      \
                    jobs += take, nj -= take;                                                 \
                    n = 0;                                                                    \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        if (nj) gemm_avx512_##SUF##_fused(0, K, A, pq, cq, 0, pf, D, jobs, nj); /* 2 rows */  \
        return;                                                                               \
    }
#else
#define FG_X86_GRP(SUF, REAL, W)
#endif
FG_DEFINE_GRP(f, float, FG_WF, fmaf)
FG_DEFINE_GRP(d, double, FG_WD, fma)

/* ---------------------------------------------------------------------------------------- */
/* Weight- and input-gradient GEMMs (row-major C = op(A) @ op(B), K of tens of thousands) on the
 * AVX-512 tiles: K in blocks of FG_KB rows whose B panels are packed once per block and used by
 * every row of a block of FG_MB rows while both sit in L2; each C element is the in-order sum
 * of its blocks' partial sums, each one FMA chain from zero over its k (two levels: one chain
 * over K = B*T = 12800 terms lost ~15x the accuracy of BLAS), so its bits depend on neither the
 * thread count nor the other rows. OpenBLAS ran these (K = B*T, transposed A) at 50-60% of the
 * FMA peak. B is packed by its rows and, beyond FG_PF_L2 per block, the first tiles of a panel
 * prefetch the next one into L2: on Sapphire Rapids (one process A/B) x^T dA 256x1536x12800
 * +18% (1 thread) / +27% (2), h^T dR 512x1536x12800 +15% / +9%; training steps +2-8%. */
#define FG_KB 512
#define FG_MB 192
#define FG_MB2 48 /* AVX2: 24, 48 and 96 rows tried on Zen 3 (512 KB L2), 48 best */

#ifdef FG_X86
#define FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, MR) \
    FG_DEFINE_KBTILEP(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, MR, 0, )
/* PF > 0: also prefetch PF lines per k, from pf on, into L2 (the next panel, see FG_PF_L2). */
#define FG_DEFINE_KBTILEP(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, MR, \
                          PF, SFX)                                                            \
    static inline __attribute__((always_inline, target(TGT))) void NAME##_kb##MR##SFX(        \
        int K, const REAL *A, long rs, long ks, const REAL *P, REAL *C, long ldc, int beta,   \
        const char *pf)                                                                       \
    {                                                                                         \
        VT acc[MR][NV];                                                                       \
        (void)pf;                                                                             \
        /* the partial sums this tile adds to at its end, fetched into L2 meanwhile (they     \
         * were last touched a K block ago, beyond L2: the tile's last step waited on them):  \
         * x^T dA, h^T dR and dA W^T alone +1-3% in two of three one-process A/B runs (the    \
         * third -4 to +3%); the same bits */                                                 \
        if (beta)                                                                             \
            for (int r = 0; r < MR; r++)                                                      \
                for (int v = 0; v < NV * VW; v += 64 / (int)sizeof(REAL))                     \
                    _mm_prefetch((const char *)(C + (long)r * ldc + v), _MM_HINT_T1);         \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++) acc[r][v] = ZERO();                                  \
        const REAL *ak = A;                                                                   \
        for (int k = 0; k < K; k++, ak += ks) {                                               \
            for (int j = 0; j < PF; j++)                                                      \
                _mm_prefetch(pf + ((long)k * PF + j) * 64, _MM_HINT_T1);                      \
            VT b[NV];                                                                         \
            for (int v = 0; v < NV; v++) b[v] = LOAD(P + (long)k * W + v * VW);               \
            for (int r = 0; r < MR; r++) {                                                    \
                VT a = SET1(ak[r * rs]);                                                      \
                for (int v = 0; v < NV; v++) acc[r][v] = FMADD(a, b[v], acc[r][v]);           \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++)                                                      \
                STORE(C + (long)r * ldc + v * VW,                                             \
                      beta ? ADD(LOAD(C + (long)r * ldc + v * VW), acc[r][v]) : acc[r][v]);   \
    }

/* Tiles of MR = 1..6 rows x NV vectors, and rows [0, m <= 6) of one whole panel (NPV vectors)
 * as NPV / NV tiles side by side. AVX-512: 6 x 4 (the whole panel, 24 accumulators); AVX2 (16
 * registers): 6 x 2 (12 accumulators, 2 panel loads and 6 broadcasts per 12 FMAs: half the L2
 * traffic of 3 x 4, which ran at 52 GFLOP/s of 92). The k order of every element is the same
 * on both, so they give the same bits. */
#define FG_DEFINE_KB(NAME, TGT, NV, NPV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD)  \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 6)   \
    FG_DEFINE_KBTILEP(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 6,   \
                      1, _q1)                                                                   \
    FG_DEFINE_KBTILEP(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 6,   \
                      2, _q2)                                                                   \
    FG_DEFINE_KBTILEP(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 6,   \
                      4, _q4)                                                                   \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 5)   \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 4)   \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 3)   \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 2)   \
    FG_DEFINE_KBTILE(NAME, TGT, NV, VT, REAL, W, VW, LOAD, STORE, SET1, ZERO, FMADD, ADD, 1)   \
    /* q (0, 1, 2 or 4): 6-row tiles prefetch q lines per k from pf on (in the first cv pass) */ \
    static __attribute__((target(TGT))) void NAME##_rows(int m, int K, const REAL *A, long rs, \
                                                         long ks, const REAL *P, REAL *C,     \
                                                         long ldc, int beta, const char *pf,  \
                                                         int q)                               \
    {                                                                                         \
        for (int cv = 0; cv < NPV; cv += NV, q = 0) {                                         \
            const REAL *Pc = P + cv * VW;                                                     \
            REAL *Cc = C + cv * VW;                                                           \
            switch (m == 6 ? 6 + q : m) {                                                     \
            case 6: NAME##_kb6(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            case 7: NAME##_kb6_q1(K, A, rs, ks, Pc, Cc, ldc, beta, pf); break;                \
            case 8: NAME##_kb6_q2(K, A, rs, ks, Pc, Cc, ldc, beta, pf); break;                \
            case 10: NAME##_kb6_q4(K, A, rs, ks, Pc, Cc, ldc, beta, pf); break;               \
            case 5: NAME##_kb5(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            case 4: NAME##_kb4(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            case 3: NAME##_kb3(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            case 2: NAME##_kb2(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            case 1: NAME##_kb1(K, A, rs, ks, Pc, Cc, ldc, beta, 0); break;                    \
            }                                                                                 \
        }                                                                                     \
    }
FG_DEFINE_KB(kbt_f, "avx512f,fma", 4, 4, __m512, float, FG_WF, 16, _mm512_loadu_ps,
             _mm512_storeu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_add_ps)
FG_DEFINE_KB(kbt_d, "avx512f,fma", 4, 4, __m512d, double, FG_WD, 8, _mm512_loadu_pd,
             _mm512_storeu_pd, _mm512_set1_pd, _mm512_setzero_pd, _mm512_fmadd_pd, _mm512_add_pd)
FG_DEFINE_KB(kbt2_f, "avx2,fma", 2, 8, __m256, float, FG_WF, 8, _mm256_loadu_ps,
             _mm256_storeu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_add_ps)
FG_DEFINE_KB(kbt2_d, "avx2,fma", 2, 8, __m256d, double, FG_WD, 4, _mm256_loadu_pd,
             _mm256_storeu_pd, _mm256_set1_pd, _mm256_setzero_pd, _mm256_fmadd_pd, _mm256_add_pd)
#endif

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#include <stdlib.h>

/* Own panels (FG_KB_BODY): with several threads and B's panels shared out evenly (at most
 * 1/8 above the mean per thread), each thread packs its own panels of B and multiplies them
 * for all rows of C, without a barrier between the packing and the tiles (A's strips, where
 * A is transposed, are packed by all, with one barrier per K block); before, the threads
 * packed every panel together and then split C's rows, so that each read half of every panel
 * from the other core's L2. The same bits (every C element the same tile sequence). One-process
 * ABAB A/B on the 2 MB-L2 Xeon (2026-12-05), 2 threads, with B's column sums: x^T dA
 * 256x1536x12800 +6%, h^T dR 512x1536x12800 +1.5%, 128x384x12800 +6%; training step
 * 256x50x256x512 +0.8%, 64x200x128x256 / 32x100x64x128 level. FASTGRU_CPU_KB_OWN=0 / 1
 * overrides (read once). */
static int kb_own_state = -1;
int fg_kb_own(void) { return env_switch(&kb_own_state, "FASTGRU_CPU_KB_OWN", on); }
void fg_set_kb_own(int v) { set_switch(&kb_own_state, v); }

/* Own panels where the panels share out evenly and, with A transposed, one K block's strips of
 * all M rows (one of the two buffers) stay within FG_KB_OWN_STRIPS: at M = 8192 (two 16 MB
 * buffers) own panels ran 20-30% slower than shared ones, at M = 2048 2% slower. */
#define FG_KB_OWN_STRIPS ((size_t)1 << 20)
static int kb_own_for(int np, int nthr, int ta, int M, size_t real)
{
    return nthr > 1 && (long)(np + nthr - 1) / nthr * nthr * 8 <= (long)np * 9
           && (!ta || (size_t)M * FG_KB * real <= FG_KB_OWN_STRIPS) && fg_kb_own();
}

/* Column sums taken while B is packed (colsum_inline.h): column chunks in multiples of
 * FG_BS_COLS (whole panels); the steps compiled per ISA here, since the packing code is not. */
#define FG_BS_COLS 256
#define FG_DEFINE_SUMROW(SUF, REAL)                                                           \
    FG_CLONES static void fg_sum_row_##SUF(int n, const REAL *restrict row, REAL *restrict acc) \
    {                                                                                         \
        fg_cs_add_##SUF(n, row, acc);                                                         \
    }                                                                                         \
    FG_CLONES static void fg_sum_tail_##SUF(int n, const REAL *restrict row,                  \
                                            double *restrict acc)                             \
    {                                                                                         \
        fg_cs_addd_##SUF(n, row, acc);                                                        \
    }
#ifdef FG_X86
FG_DEFINE_SUMROW(f, float)
FG_DEFINE_SUMROW(d, double)
#endif
#if FG_KB % FG_CS_ROWS || FG_BS_COLS % FG_WF || FG_BS_COLS % FG_WD
#error "K blocks must hold whole column-sum blocks, and sum chunks whole panels"
#endif

#define FG_DEFINE_GEMM_KB(SUF, REAL, W)                                                       \
    int fg_gemm_kb_##SUF(int isa, int ta, int tb, int M, int N, int K, const REAL *A,        \
                         long lda, const REAL *B, long ldb, REAL *C, long ldc, int nthr,      \
                         REAL *bsum)                                                          \
    {                                                                                         \
        if (isa != FG_ISA_AVX512 && isa != FG_ISA_AVX2) return -2;                            \
        if (bsum && tb) return -3;                                                            \
        if (N <= 0) return 0;                                                                 \
        if (M <= 0 || K <= 0) { /* nothing to pack: the sums on their own */                  \
            if (bsum) fg_colsum_##SUF(K > 0 ? K : 0, N, B, ldb, bsum, nthr);                  \
            for (int i = 0; i < M; i++) memset(C + (long)i * ldc, 0, (size_t)N * sizeof(REAL)); \
            return 0;                                                                         \
        }                                                                                     \
        FG_KB_BODY(SUF, REAL, W)                                                              \
    }
/* Row k of the K block at k0: its pieces in panels [p0, p1), zero-padded past column N. */
#define FG_KB_PACK_ROW(REAL, W, p0, p1)                                                       \
    for (int p = p0; p < p1; p++) {                                                           \
        const int w = N - p * W < W ? N - p * W : W;                                          \
        REAL *d = pk + (long)p * FG_KB * W + (long)k * W;                                     \
        memcpy(d, B + (long)(k0 + k) * ldb + (long)p * W, (size_t)w * sizeof(REAL));          \
        for (int c = w; c < W; c++) d[c] = 0;                                                 \
    }
#ifdef FG_X86
/* Rows [r0, r1) of the K block at k0, columns [c0, c0 + nc) (panels p0..p1): packed row by row
 * with each column summed in row order (blocks of FG_CS_ROWS rows in REAL into bpart, a partial
 * last block in double into btail; as fg_colsum), so no column partition changes a sum's bits. */
#define FG_KB_PACK_SUMS(SUF, REAL, W, r0, r1, c0, nc)                                         \
    {                                                                                         \
        const int p0 = (c0) / W, p1 = ((c0) + (nc) + W - 1) / W;                              \
        /* only the last block of the last K block can be partial: the tail */                \
        const int full = (r1) - (r0) == FG_CS_ROWS;                                           \
        REAL *bp = full ? bpart + (long)((k0 + (r0)) / FG_CS_ROWS) * N + (c0) : 0;            \
        for (int k = r0; k < (r1); k++) {                                                     \
            FG_KB_PACK_ROW(REAL, W, p0, p1)                                                   \
            const REAL *row = B + (long)(k0 + k) * ldb + (c0);                                \
            if (!full)                                                                        \
                fg_sum_tail_##SUF(nc, row, btail + (c0));                                     \
            else if (k == (r0))                                                               \
                memcpy(bp, row, (size_t)(nc) * sizeof(REAL));                                 \
            else                                                                              \
                fg_sum_row_##SUF(nc, row, bp);                                                \
        }                                                                                     \
    }
/* Transposed A, rows [ka, kz) of the K block at k0, columns [c0, c0 + ml): as 6-row strips
 * (k-major) from S on, k outer so that each row of A is read once, in order (a 6-value memcpy
 * per strip and k through libc took 3-4% of a training step; of constant size GCC inlines it
 * as two moves, where the element loop took twelve and their index arithmetic: training step
 * 256x50x256x512 +2.8% / +0.8% on 2 / 1 threads, one-process A/B) */
#define FG_KB_PACK_A(REAL, S, c0, ml, ka, kz)                                                 \
    for (int k = ka; k < (kz); k++) {                                                         \
        const REAL *s = A + (long)(k0 + k) * lda + (c0);                                      \
        REAL *d = (S) + (long)k * 6;                                                          \
        int c = 0;                                                                            \
        for (; c + 6 <= (ml); c += 6, d += 6L * kb)                                           \
            memcpy(d, s + c, 6 * sizeof(REAL));                                               \
        for (int r = 0; c + r < (ml); r++) d[r] = s[c + r];                                   \
    }
/* The tiles of row block mb and panel p of the K block at k0; the panels this thread takes
 * run from pfirst to pend (where the L2 prefetch of the next one looks); transposed A's strips
 * for row i at S + (i - s0) * kb. */
#define FG_KB_ITEM(SUF, REAL, W, mb, p, pfirst, pend, S, s0)                                  \
    {                                                                                         \
        const int w = N - (p) * W < W ? N - (p) * W : W;                                      \
        const REAL *P = pk + (long)(p) * FG_KB * W;                                           \
        const int i1 = ((mb) + 1) * mbs < M ? ((mb) + 1) * mbs : M;                           \
        /* packed B beyond L2: the first tiles prefetch this thread's likely next panel (p +  \
         * 1, or the first of the next row block) into L2, q lines per k per tile (FG_PF_L2;  \
         * AVX-512 only, measured there) */                                                   \
        const int nt = (i1 - (mb) * mbs + 5) / 6, q0 = nt >= 4 ? 1 : nt >= 2 ? 2 : 4;         \
        const char *next =                                                                    \
            isa != FG_ISA_AVX512 || (long)np * kb * W * (long)sizeof(REAL) <= FG_PF_L2 ? 0    \
            : (p) + 1 < (pend)  ? (const char *)(P + (long)FG_KB * W)                         \
            : (mb) + 1 < nmb    ? (const char *)(pk + (long)(pfirst) * FG_KB * W)             \
                                : 0;                                                          \
        const long pbytes = (long)kb * W * (long)sizeof(REAL);                                \
        for (int i = (mb) * mbs; i < i1; i += 6) {                                            \
            const int m = i1 - i < 6 ? i1 - i : 6;                                            \
            const long off = (long)((i - (mb) * mbs) / 6) * q0 * 64 * kb;                     \
            const int q = next && off < pbytes ? q0 : 0;                                      \
            const char *pf = q ? next + off : 0;                                              \
            const REAL *Ai = ta ? (S) + (long)(i - (s0)) * kb                                 \
                                : A + (long)i * rs + (long)k0 * ks;                           \
            const long rsi = ta ? 1 : rs, ksi = ta ? 6 : ks;                                  \
            REAL *Ci = C + (long)i * ldc + (long)(p) * W;                                     \
            if (w == W) {                                                                     \
                rows(m, kb, Ai, rsi, ksi, P, Ci, ldc, k0 > 0, pf, q);                         \
                continue;                                                                     \
            }                                                                                 \
            /* a partial last panel: through a full-width scratch tile */                     \
            for (int r = 0; r < m; r++)                                                       \
                for (int c = 0; c < W; c++)                                                   \
                    tmp[r * W + c] = (k0 > 0 && c < w) ? Ci[(long)r * ldc + c] : 0;           \
            rows(m, kb, Ai, rsi, ksi, P, tmp, W, k0 > 0, pf, q);                              \
            for (int r = 0; r < m; r++)                                                       \
                memcpy(Ci + (long)r * ldc, tmp + r * W, (size_t)w * sizeof(REAL));           \
        }                                                                                     \
    }
#define FG_KB_BODY(SUF, REAL, W)                                                              \
        /* equal row blocks (multiples of 6, at most FG_MB): with M = 256 and blocks of 192 \
         * and 64 one thread of two got three quarters of the work; and at least one (block, \
         * panel) per thread while blocks keep two 6-row tiles (dx = dA W^T at 1x100x64x128: \
         * one panel, 100 rows, was one block: the second thread idled) */                    \
        const int mbmax = isa == FG_ISA_AVX512 ? FG_MB : FG_MB2;                              \
        const int np = (N + W - 1) / W, nmb_thr = (nthr + np - 1) / np, m12 = (M + 11) / 12;  \
        int nmb0 = (M + mbmax - 1) / mbmax;                                                   \
        if (nmb0 < nmb_thr) nmb0 = nmb_thr < m12 ? nmb_thr : m12;                             \
        const int mbs = ((M + nmb0 - 1) / nmb0 + 5) / 6 * 6, nmb = (M + mbs - 1) / mbs;       \
        const long rs = ta ? 1 : lda, ks = ta ? lda : 1;                                      \
        void (*rows)(int, int, const REAL *, long, long, const REAL *, REAL *, long, int,      \
                     const char *, int) =                                                     \
            isa == FG_ISA_AVX512 ? kbt_##SUF##_rows : kbt2_##SUF##_rows;                          \
        if (nthr < 1) nthr = 1;                                                               \
        /* own panels: each thread packs and multiplies its own share of B's panels for all  \
         * rows, without a barrier (FG_KB_OWN) */                                             \
        const int own = !tb && kb_own_for(np, nthr, ta, M, sizeof(REAL));                     \
        size_t pk_n = 0, bpart_n = 0, btail_n = 0, ap_n = 0;                                  \
        REAL *pk = fg_ws_alloc((size_t)np * FG_KB * W * sizeof(REAL), &pk_n);                  \
        /* bsum: each whole block of FG_CS_ROWS rows of B summed in REAL (bpart, one row of N \
         * per block), the rows after the last whole block in double (btail: N tail sums, then \
         * N block sums), as fg_colsum */                                                     \
        const int nfull = K / FG_CS_ROWS;                                                     \
        REAL *bpart =                                                                         \
            bsum ? fg_ws_alloc(((size_t)nfull * N + 1) * sizeof(REAL), &bpart_n) : NULL;       \
        double *btail = bsum ? fg_ws_alloc(2 * (size_t)N * sizeof(double), &btail_n) : NULL;  \
        /* transposed A: each thread's m-block packed as 6-row strips (k-major), since reading \
         * 6 adjacent values from kb different rows touched a line per k; one block for all   \
         * threads (per-thread blocks filled the workspace cache's slots on many cores). Own   \
         * panels: every row's strips, in two buffers used in turn */                         \
        const size_t ap_per = (size_t)mbmax * FG_KB, ap_own = (size_t)(M + 5) / 6 * 6 * FG_KB; \
        REAL *ap_all =                                                                        \
            ta ? fg_ws_alloc((own ? 2 * ap_own : ap_per * nthr) * sizeof(REAL), &ap_n) : NULL; \
        if (!pk || (bsum && (!bpart || !btail)) || (ta && !ap_all)) {                         \
            fg_ws_free(ap_all, ap_n); /* NULL: a no-op */                                     \
            fg_ws_free(btail, btail_n);                                                       \
            fg_ws_free(bpart, bpart_n);                                                       \
            fg_ws_free(pk, pk_n);                                                             \
            return -1;                                                                        \
        }                                                                                     \
        if (btail) memset(btail, 0, 2 * (size_t)N * sizeof(double));                          \
        if (own) fg_took(FG_PATH_KB_OWN);                                                     \
        _Pragma("omp parallel num_threads(nthr)")                                             \
        {                                                                                     \
            REAL tmp[6 * W] __attribute__((aligned(64)));                                     \
            const int tid = omp_get_thread_num(), nact = omp_get_num_threads();               \
            REAL *ap = ta && !own ? ap_all + ap_per * tid : NULL;                             \
            const int tp0 = (int)((long)np * tid / nact);                                     \
            const int tp1 = (int)((long)np * (tid + 1) / nact);                               \
            for (int k0 = 0; k0 < K; k0 += FG_KB) {                                           \
                const int kb = K - k0 < FG_KB ? K - k0 : FG_KB;                               \
                int packed_mb = -1;                                                           \
                if (own) { /* A's strips: packed by all (each a share of the rows), for    \
                            * all rows of C; two buffers, used in turn, so one barrier per K   \
                            * block keeps a strip from changing while another thread reads it */ \
                    REAL *apg = ta ? ap_all + (size_t)(k0 / FG_KB % 2) * ap_own : NULL;       \
                    if (ta)                                                                   \
                        FG_KB_PACK_A(REAL, apg, 0, M, kb * tid / nact, kb * (tid + 1) / nact)     \
                    const int c0 = tp0 * W, nc = (tp1 * W < N ? tp1 * W : N) - c0;            \
                    if (nc > 0 && !bsum)                                                      \
                        for (int k = 0; k < kb; k++) FG_KB_PACK_ROW(REAL, W, tp0, tp1)        \
                    else if (nc > 0)                                                          \
                        for (int r0 = 0; r0 < kb; r0 += FG_CS_ROWS)                           \
                            FG_KB_PACK_SUMS(SUF, REAL, W, r0,                                 \
                                            kb - r0 < FG_CS_ROWS ? kb : r0 + FG_CS_ROWS, c0, nc) \
                    if (ta) { _Pragma("omp barrier") }                                        \
                    for (int it = 0, nown = tp1 - tp0; it < nmb * nown; it++)                 \
                        FG_KB_ITEM(SUF, REAL, W, it / nown, tp0 + it % nown, tp0, tp1, apg, 0)    \
                    continue;                                                                 \
                }                                                                             \
                if (tb) {                                                                     \
                    _Pragma("omp for schedule(static)")                                       \
                    for (int p = 0; p < np; p++) {                                            \
                        const int w = N - p * W < W ? N - p * W : W;                          \
                        REAL *d = pk + (long)p * FG_KB * W;                                   \
                        for (int k = 0; k < kb; k++, d += W) {                                \
                            for (int c = 0; c < w; c++) d[c] = B[(long)(p * W + c) * ldb + k0 + k]; \
                            for (int c = w; c < W; c++) d[c] = 0;                             \
                        }                                                                     \
                    }                                                                         \
                } else if (!bsum) { /* by rows of B, each read once in order (panel by     \
                                     * panel, every 256-byte piece was a new line at a stride \
                                     * of ldb: TLB and prefetcher misses) */                 \
                    _Pragma("omp for schedule(static)")                                       \
                    for (int k = 0; k < kb; k++)                                              \
                        FG_KB_PACK_ROW(REAL, W, 0, np)                                        \
                } else { /* by (block of FG_CS_ROWS rows, column chunk): one thread packs   \
                          * them row by row and sums each column in row order; whole rows    \
                          * unless the blocks are fewer than the threads */                   \
                    const int nsb = (kb + FG_CS_ROWS - 1) / FG_CS_ROWS;                       \
                    const int want = nsb >= nthr ? 1 : (nthr + nsb - 1) / nsb;                \
                    const int cw = ((N + want - 1) / want + FG_BS_COLS - 1) / FG_BS_COLS * FG_BS_COLS; \
                    const int ncc = (N + cw - 1) / cw;                                        \
                    _Pragma("omp for schedule(static)")                                       \
                    for (int it = 0; it < nsb * ncc; it++) {                                  \
                        const int r0 = it / ncc * FG_CS_ROWS, c0 = it % ncc * cw;             \
                        const int r1 = kb - r0 < FG_CS_ROWS ? kb : r0 + FG_CS_ROWS;           \
                        const int nc = N - c0 < cw ? N - c0 : cw;                             \
                        FG_KB_PACK_SUMS(SUF, REAL, W, r0, r1, c0, nc)                         \
                    }                                                                         \
                }                                                                             \
                _Pragma("omp for schedule(static)")                                           \
                for (int it = 0; it < nmb * np; it++) {                                       \
                    const int mb = it / np;                                                   \
                    if (ta && mb != packed_mb) {                                              \
                        const int i0 = mb * mbs, ml = (i0 + mbs < M ? i0 + mbs : M) - i0;     \
                        FG_KB_PACK_A(REAL, ap, i0, ml, 0, kb)                                 \
                        packed_mb = mb;                                                       \
                    }                                                                         \
                    FG_KB_ITEM(SUF, REAL, W, mb, it % np, 0, np, ap, mb * mbs)                \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        fg_ws_free(ap_all, ap_n);                                                             \
        fg_ws_free(pk, pk_n);                                                                 \
        if (bsum) {                                                                           \
            for (int b = 0; b < nfull; b++) fg_sum_tail_##SUF(N, bpart + (long)b * N, btail + N); \
            fg_cs_out_##SUF(N, btail + N, btail, bsum);                                       \
        }                                                                                     \
        fg_ws_free(bpart, bpart_n);                                                           \
        fg_ws_free(btail, btail_n);                                                           \
        return 0;
#else
#define FG_KB_BODY(SUF, REAL, W) return -2;
#endif
FG_DEFINE_GEMM_KB(f, float, FG_WF)
FG_DEFINE_GEMM_KB(d, double, FG_WD)
