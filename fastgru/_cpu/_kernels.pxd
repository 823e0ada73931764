# Declarations of the C kernels in src_c/fastgru.h (see that header for shapes and contracts).

from libc.stdint cimport uint32_t


cdef extern from "fastgru.h" nogil:
    int FG_WF
    int FG_WD
    int FG_ISA_GENERIC
    int FG_ISA_AVX2
    int FG_ISA_AVX512

    ctypedef void (*fg_sgemm_t)(char *, char *, int *, int *, int *, float *, float *, int *,
                                float *, int *, float *, float *, int *)
    ctypedef void (*fg_dgemm_t)(char *, char *, int *, int *, int *, double *, double *, int *,
                                double *, int *, double *, double *, int *)

    int fg_isa_best()
    int fg_ptr_prefetch()
    int fg_ptr_prefetch_at(long nbytes)
    void fg_set_ptr_prefetch(int v)
    int fg_gate_prefetch()
    void fg_set_gate_prefetch(int v)
    int fg_zigzag()
    void fg_set_zigzag(int v)
    int fg_overlap()
    void fg_set_overlap(int v)
    int fg_strips()
    void fg_set_strips(int v)
    int fg_kb_own()
    void fg_set_kb_own(int v)
    int fg_paths_taken(int reset)
    enum:
        FG_PATH_ZIGZAG
        FG_PATH_OVERLAP
        FG_PATH_BWD_TEAM
        FG_PATH_PROJ_DIRECT
        FG_PATH_STRIPS
        FG_PATH_KB_OWN
    int fg_fuse_projection(int isa, int is_double, int rows, int npt, int u, int D)
    int fg_openmp()
    int fg_omp_max_threads()
    int fg_omp_thread_limit()
    size_t fg_ws_trim()
    size_t fg_ws_kept()
    void fg_ws_poison()
    void fg_pack_f(const float *src, long ld, int K, int col0, int ncols, float *dst)
    void fg_pack_d(const double *src, long ld, int K, int col0, int ncols, double *dst)
    int fg_same_packed(const uint32_t *src, long ld, int K, long col0, long ncols,
                       const uint32_t *dst)
    void fg_gemm_panels_f(int isa, int M, int K, const float *A, long lda, const float *P,
                          long pstride, int np, float *C, long ldc)
    void fg_gemm_panels_d(int isa, int M, int K, const double *A, long lda, const double *P,
                          long pstride, int np, double *C, long ldc)
    int fg_act_f(int code, int n, const float *inp, float *out)
    int fg_act_d(int code, int n, const double *inp, double *out)
    int fg_dact_f(int code, int n, const float *inp, float *out)
    int fg_dact_d(int code, int n, const double *inp, double *out)

    int FG_PJ_ROWS
    ctypedef struct fg_step_wait:
        int kw
        void (*fn)(void *) noexcept nogil
        void *arg
    ctypedef struct fg_proj_job:
        const void *x[8]
        const void *w
        void *out[8]
    void fg_gemm_panels_grp_proj_f(int isa, int M, int K, const float *A, long lda,
                                   const float *P, long pstride, long gstride, int npg, int ng,
                                   float *C, long ldc, long cgstride, int D,
                                   const fg_proj_job *jobs, int nj, int rev,
                                   const fg_step_wait *wait)
    void fg_gemm_panels_grp_proj_d(int isa, int M, int K, const double *A, long lda,
                                   const double *P, long pstride, long gstride, int npg, int ng,
                                   double *C, long ldc, long cgstride, int D,
                                   const fg_proj_job *jobs, int nj, int rev,
                                   const fg_step_wait *wait)

    ctypedef struct fg_fwd_args:
        int is_double
        int B, T, D, u
        int reset_after, go_backwards, return_sequences, zero_output_for_mask
        int act, rec_act
        const void *x
        const void *kernel
        const void *wpk
        const void *upk
        const void *b_in
        const void *b_rec
        const void *h0
        const unsigned char *mask
        const void *mx
        const void *mh
        int mx_per_gate
        void *out
        void *h_last
        void *pre
        void *hprev
        void *rp
        int n_threads, isa, chunk, split_units, no_fuse, no_fuse_proj
        const void *rec_kernel
        int verify
        int *late
        fg_sgemm_t sgemm
        fg_dgemm_t dgemm

    int fg_forward(const fg_fwd_args *a)
    void fg_set_spin_limit(int n)

    ctypedef struct fg_bwd_args:
        int is_double
        int B, T, u
        int reset_after, go_backwards, return_sequences, zero_output_for_mask
        int act, rec_act
        const void *pre
        const void *hprev
        const void *rp
        const unsigned char *mask
        const void *mh
        const void *utpk
        const void *dout
        const void *dhl
        void *dA
        void *dR
        void *dh0
        int n_threads, isa, no_fuse
        int split_units
        int *late

    int fg_backward(const fg_bwd_args *a)
    int fg_gemm_kb_f(int isa, int ta, int tb, int M, int N, int K, const float *A, long lda,
                     const float *B, long ldb, float *C, long ldc, int nthr, float *bsum)
    int fg_gemm_kb_d(int isa, int ta, int tb, int M, int N, int K, const double *A, long lda,
                     const double *B, long ldb, double *C, long ldc, int nthr, double *bsum)
    void fg_gemm_par_f(fg_sgemm_t gemm, int ta, int tb, int M, int N, int K, const float *A,
                       int lda, const float *B, int ldb, float *C, int ldc, int nthr)
    void fg_gemm_par_d(fg_dgemm_t gemm, int ta, int tb, int M, int N, int K, const double *A,
                       int lda, const double *B, int ldb, double *C, int ldc, int nthr)
    void fg_colsum_f(int M, int N, const float *A, long lda, float *out, int nthr)
    void fg_colsum_d(int M, int N, const double *A, long lda, double *out, int nthr)
    void fg_adam_f(long n, float *w, const float *g, float *m, float *v, float *vh, float c1,
                   float c2, float alpha, float eps, int nthr)
    void fg_adam_d(long n, double *w, const double *g, double *m, double *v, double *vh,
                   double c1, double c2, double alpha, double eps, int nthr)
