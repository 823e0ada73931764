/* fastgru C kernels: public entry points used by fastgru/_cpu/_gru.pyx.
 *
 * Plain C11 + OpenMP, no Python API. Every array is C-contiguous (row-major) and was validated
 * by the Python/Cython caller; the functions never allocate Python objects and run without the
 * GIL. Gate order inside every 3u axis is z, r, h (Keras).
 */
#ifndef FASTGRU_H
#define FASTGRU_H

#include <stddef.h>
#include <stdint.h>

/* Packed recurrent weights: column panels of FG_PANEL_BYTES, i.e. 64 floats or 32 doubles. */
#define FG_PANEL_BYTES 256
#define FG_WF 64
#define FG_WD 32

/* Elementwise loops are compiled for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and baseline x86-64,
 * picked at load time; with -ffp-contract=off and FMAs only where written (fmaf) every clone
 * computes the same bits. (arch=x86-64-vN in target_clones needs GCC 12.) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define FG_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FG_CLONES
#endif

enum { FG_ISA_GENERIC = 0, FG_ISA_AVX2 = 1, FG_ISA_AVX512 = 2 };

/* scipy.linalg.cython_blas signatures (Fortran BLAS). */
typedef void (*fg_sgemm_t)(char *, char *, int *, int *, int *, float *, float *, int *, float *,
                           int *, float *, float *, int *);
typedef void (*fg_dgemm_t)(char *, char *, int *, int *, int *, double *, double *, int *,
                           double *, int *, double *, double *, int *);

/* 1 when built with OpenMP (threads), 0 for a single-threaded build. */
int fg_openmp(void);
/* The calling thread's OpenMP thread limit (OMP_NUM_THREADS, omp_set_num_threads, which
 * threadpoolctl calls; 1 without OpenMP). */
int fg_omp_max_threads(void);
/* The process's OpenMP thread limit (OMP_THREAD_LIMIT: no team is ever larger; 1 without
 * OpenMP). */
int fg_omp_thread_limit(void);

/* Best per-step product kernel this CPU runs (FG_ISA_*). */
int fg_isa_best(void);
/* 1 when the one-/two-row grouped products issue software L1 prefetches (see gemm.c). */
int fg_ptr_prefetch(void);
/* ... for a grouped product over panels of `bytes` in all (beyond 1 MB: always). */
int fg_ptr_prefetch_at(long bytes);
void fg_set_ptr_prefetch(int v); /* 0 / 1, or -1: the default (between calls only) */
/* 1 when the forward gate pass prefetches the next row's gate inputs (see gemm.c). */
int fg_gate_prefetch(void);
void fg_set_gate_prefetch(int v); /* 0 / 1, or -1: the default (between calls only) */
/* 1 when time loops alternate the order of their grouped products' panels step by step (`rev`
 * below; see gemm.c). */
int fg_zigzag(void);
void fg_set_zigzag(int v); /* 0 / 1, or -1: the default (between calls only) */
/* 1 when split-units teams overlap the exchange of h with the next step's product (gemm.c). */
int fg_overlap(void);
void fg_set_overlap(int v); /* 0 / 1, or -1: the default (between calls only) */
/* 1 when the AVX-512 products of four or more rows read A repacked as strips (gemm.c). */
int fg_strips(void);
void fg_set_strips(int v); /* 0 / 1, or -1: the default (between calls only) */
/* 1 when the threads of a K-blocked GEMM (fg_gemm_kb) may each pack and multiply their own
 * panels of B (gemm.c). */
int fg_kb_own(void);
void fg_set_kb_own(int v); /* 0 / 1, or -1: the default (between calls only) */

/* Pack columns [col0, col0+ncols) of src (K rows, leading dimension ld) into ceil(ncols/W)
 * panels of K x W, zero-padded; dst holds ceil(ncols/W) * K * W elements. */
void fg_pack_f(const float *src, long ld, int K, int col0, int ncols, float *dst);
void fg_pack_d(const double *src, long ld, int K, int col0, int ncols, double *dst);
/* Whether dst holds exactly what fg_pack put there from src, every unit in 32-bit words (a
 * float is one, a double two): the exact check on a cached packed kernel, reading each once. */
int fg_same_packed(const uint32_t *src, long ld, int K, long col0, long ncols,
                   const uint32_t *dst);

/* C[i, p*W + c] = sum_{k<K} A[i*lda + k] * P[p*pstride + k*W + c] for i < M, p < np, c < W.
 * The k sum runs in order 0..K-1 with one fused multiply-add per term on every ISA, so each
 * element's bits depend on neither M, the panel range, nor the ISA (avx512, avx2 and generic
 * all use FMA). */
void fg_gemm_panels_f(int isa, int M, int K, const float *A, long lda, const float *P,
                      long pstride, int np, float *C, long ldc);
void fg_gemm_panels_d(int isa, int M, int K, const double *A, long lda, const double *P,
                      long pstride, int np, double *C, long ldc);

/* The same product over ng groups of npg panels: group g's panels start at P + g * gstride
 * and its output columns at C + g * cgstride (e.g. one thread's panels of the three gates).
 * rev != 0 visits the panels in the opposite order (the last group's last panel first): the
 * same bits; a time loop alternates it to start each step on the panels still in cache. */
void fg_gemm_panels_grp_f(int isa, int M, int K, const float *A, long lda, const float *P,
                          long pstride, long gstride, int npg, int ng, float *C, long ldc,
                          long cgstride, int rev);
void fg_gemm_panels_grp_d(int isa, int M, int K, const double *A, long lda, const double *P,
                          long pstride, long gstride, int npg, int ng, double *C, long ldc,
                          long cgstride, int rev);

/* One input-projection job of a fused batch-1 step: rows x[r] (D elements each), r <
 * FG_PJ_ROWS, times half a panel of a packed input kernel (two vectors, W / 2 columns: w points
 * at its first column in panel row 0, rows W apart) into out[r] (W / 2 elements each). Float or
 * double as the call. */
#define FG_PJ_ROWS 8
typedef struct {
    const void *x[FG_PJ_ROWS];
    const void *w;
    void *out[FG_PJ_ROWS];
} fg_proj_job;

/* The most jobs one fused step takes, and whether a time loop of `rows` rows whose thread owns
 * npt panels per gate fuses its input projection so (gru.c). */
#define FG_PJ_MAX_JOBS 64
int fg_fuse_projection(int isa, int is_double, int rows, int npt, int u, int D);

/* A split-units time loop's wait for its partners' parts of A (the state h): fn(arg) returns
 * once they are there. A thread whose own part is the first kw columns of A (k < kw) starts
 * the product on those and waits only before the rest (one- and two-row AVX-512 products; the
 * others wait first), so that the exchange between the cores overlaps its work. */
typedef struct {
    int kw;
    void (*fn)(void *);
    void *arg;
} fg_step_wait;

/* fg_gemm_panels_grp, plus nj projection jobs of depth D computed in the same pass (AVX-512,
 * one row: while the product streams the panels; otherwise one after the other), and wait (or
 * NULL) as above. Every element's bits are those of fg_gemm_panels. */
void fg_gemm_panels_grp_proj_f(int isa, int M, int K, const float *A, long lda, const float *P,
                               long pstride, long gstride, int npg, int ng, float *C, long ldc,
                               long cgstride, int D, const fg_proj_job *jobs, int nj, int rev,
                               const fg_step_wait *wait);
void fg_gemm_panels_grp_proj_d(int isa, int M, int K, const double *A, long lda,
                               const double *P, long pstride, long gstride, int npg, int ng,
                               double *C, long ldc, long cgstride, int D,
                               const fg_proj_job *jobs, int nj, int rev,
                               const fg_step_wait *wait);

/* Elementwise activation (code = fastgru.activations.CODES) and its derivative, out may alias in.
 * Return 0, or -1 for an unknown code. */
int fg_act_f(int code, int n, const float *in, float *out);
int fg_act_d(int code, int n, const double *in, double *out);
int fg_dact_f(int code, int n, const float *in, float *out);
int fg_dact_d(int code, int n, const double *in, double *out);

/* One GRU layer forward. Pointers are float* or double* according to is_double.
 * Shapes: x (B,T,D); kernel (D,3u); upk: packed recurrent kernel, per gate g the panels of
 * columns [g*u,(g+1)*u) (3*npu panels of u x W, npu = ceil(u/W)); wpk: the kernel packed the
 * same way (3*npu panels of D x W), or NULL: the input projection then runs through BLAS
 * (sgemm/dgemm) instead of the packed-panel kernel; b_in (3u) and b_rec (3u, or
 * NULL when !reset_after) are never NULL (zeros without bias); h0 (B,u); mask (B,T) uint8 in
 * input time order or NULL; mx (B,D) or (3,B,D) (mx_per_gate) or NULL; mh (3,B,u) or NULL.
 * out (B,T,u) in processing order or (B,u); h_last (B,u).
 * Training record (all NULL in inference), processing order k: pre (B,T,3u) pre-activations
 * of z, r, h; hprev (B,T,u) the state entering step k; rp (B,T,u): reset_after: h_g@Uh + bh_r,
 * else r * h_g where the step is kept and 0 where it is masked.
 * split_units: 1 = all threads share the rows and split the units (one barrier per step),
 * 0 = threads take disjoint rows. chunk: time steps per input-projection GEMM.
 * no_fuse: 1 = the separate gate passes even where the fused one applies (tests compare them).
 * no_fuse_proj: 1 = project whole chunks up front even where batch-1/2 steps could fuse it.
 * verify: bit 1 = first check that upk holds exactly rec_kernel (u,3u) packed, bit 2 = that
 * wpk holds kernel packed (fg_same_packed), each thread its share of the panels (a cached
 * packed kernel is compared with the weights on every call: in parallel, and each core's L2
 * is left holding the panels it is about to stream); nothing runs on a difference.
 * Returns 0, 1 when a verified packed kernel differs (nothing was written), or -1 when memory
 * ran out. */
typedef struct {
    int is_double;
    int B, T, D, u;
    int reset_after, go_backwards, return_sequences, zero_output_for_mask;
    int act, rec_act;
    const void *x, *kernel, *wpk, *upk, *b_in, *b_rec, *h0;
    const unsigned char *mask;
    const void *mx, *mh;
    int mx_per_gate;
    void *out, *h_last;
    void *pre, *hprev, *rp;
    int n_threads, isa, chunk, split_units, no_fuse, no_fuse_proj;
    const void *rec_kernel; /* (u,3u), read only with verify & 1 */
    int verify;
    int *late; /* out, or NULL: barrier waits of a split team that outlasted the spin */
    fg_sgemm_t sgemm;
    fg_dgemm_t dgemm;
} fg_fwd_args;

int fg_forward(const fg_fwd_args *a);
/* Which paths calls took since the last reset (reset != 0: read and clear), OR-ed:
 * alternating panel order, overlapped exchange, split-units backward, input projection reading
 * x in place, AVX-512 products reading A as strips, K-blocked GEMMs on own panels. For
 * tests. */
enum {
    FG_PATH_ZIGZAG = 1, FG_PATH_OVERLAP = 2, FG_PATH_BWD_TEAM = 4, FG_PATH_PROJ_DIRECT = 8,
    FG_PATH_STRIPS = 16, FG_PATH_KB_OWN = 32
};
int fg_paths_taken(int reset);
void fg_took(int path); /* record that a call took these paths */
/* Pause spins of a barrier wait before it yields the core and counts as late; < 0: the
 * default (4096). Between calls only (tests). */
void fg_set_spin_limit(int n);

/* Backpropagation through the recorded steps (per-step work only; the weight and input
 * gradients are GEMMs over all steps done by the caller).
 * Inputs: pre, hprev, rp, mask, mh as recorded by fg_forward; utpk: packed U^T (3u x u), panels
 * over u; dout (B,T,u) when return_sequences else (B,u), or NULL; dhl (B,u) or NULL.
 * Outputs: dA (B,T,3u) pre-activation gradients (z, r, h) per processing step; dR (B,T,3u)
 * gradients of the recurrent projections (reset_after only, else NULL); dh0 (B,u). */
typedef struct {
    int is_double;
    int B, T, u;
    int reset_after, go_backwards, return_sequences, zero_output_for_mask;
    int act, rec_act;
    const void *pre, *hprev, *rp;
    const unsigned char *mask;
    const void *mh, *utpk, *dout, *dhl;
    void *dA, *dR, *dh0;
    int n_threads, isa, no_fuse;
    int split_units; /* 1: fewer rows than threads; the threads split the units (where the
                      * configuration allows: reset_after, tanh / sigmoid, no recurrent
                      * dropout), else rows */
    int *late; /* out, or NULL: barrier waits of a split team that outlasted the spin */
} fg_bwd_args;

int fg_backward(const fg_bwd_args *a);

/* Row-major C (M x N) = op(A) @ op(B), op = transpose where ta / tb; A is M x K (K x M when
 * ta), B is K x N (N x K when tb); leading dimensions in elements. nthr OpenMP threads split
 * the larger of M and N, each calling gemm (a single-threaded BLAS) on its block. */
void fg_gemm_par_f(fg_sgemm_t gemm, int ta, int tb, int M, int N, int K, const float *A,
                   int lda, const float *B, int ldb, float *C, int ldc, int nthr);
void fg_gemm_par_d(fg_dgemm_t gemm, int ta, int tb, int M, int N, int K, const double *A,
                   int lda, const double *B, int ldb, double *C, int ldc, int nthr);

/* The same product on the packed-panel tiles of isa (FG_ISA_AVX512 or FG_ISA_AVX2; call only
 * where the CPU runs it): K blocked through L2, one FMA chain per element over k in order, so
 * the bits are independent of nthr, of the other rows and of the ISA. bsum (N), or NULL: also
 * the column sums of B (K x N; !tb only), the very bits of fg_colsum, taken while B is packed
 * (one pass over B fewer). Returns 0, -1 when memory ran out, -2 for another isa or a build for
 * a CPU family without these kernels, -3 for bsum with tb. */
int fg_gemm_kb_f(int isa, int ta, int tb, int M, int N, int K, const float *A, long lda,
                 const float *B, long ldb, float *C, long ldc, int nthr, float *bsum);
int fg_gemm_kb_d(int isa, int ta, int tb, int M, int N, int K, const double *A, long lda,
                 const double *B, long ldb, double *C, long ldc, int nthr, double *bsum);

/* Column sums of A (M x N, rows lda apart) on nthr threads, the same bits for every nthr:
 * blocks of FG_CS_ROWS rows each summed in A's type in row order, the block sums and (as one
 * running sum) the rows after the last whole block added in double, in order (gru_impl.h). */
#define FG_CS_ROWS 256
void fg_colsum_f(int M, int N, const float *A, long lda, float *out, int nthr);
void fg_colsum_d(int M, int N, const double *A, long lda, double *out, int nthr);

/* One Adam step in place over n contiguous elements (optim.c): m += (g - m) * c1,
 * v += (g * g - v) * c2, vh = max(vh, v) where vh (amsgrad) is not NULL, then
 * w -= (m * alpha) / (sqrt(vh or v) + eps); NumPy's bits, whatever nthr. */
void fg_adam_f(long n, float *w, const float *g, float *m, float *v, float *vh, float c1,
               float c2, float alpha, float eps, int nthr);
void fg_adam_d(long n, double *w, const double *g, double *m, double *v, double *vh, double c1,
               double c2, double alpha, double eps, int nthr);

/* Workspace cache (ws.c): 64-byte aligned scratch of at least `bytes` (contents undefined),
 * *got its real size (give it back to fg_ws_free); kept blocks are reused by later calls
 * instead of freed (up to 16 blocks, 256 MB). fg_ws_trim frees the kept ones (returns their
 * bytes), fg_ws_kept tells how many bytes are kept. */
void *fg_ws_alloc(size_t bytes, size_t *got);
void fg_ws_free(void *p, size_t bytes);
size_t fg_ws_trim(void);
size_t fg_ws_kept(void);
void fg_ws_poison(void); /* fills the kept blocks with NaN bytes (tests: no call may read a
                          * workspace before writing it) */

#endif
