# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin binding over the C kernels in src_c/: no maths here.

The Python engine (fastgru/engines/cpu.py) validates shapes and dtypes and allocates every
array; these functions re-check the few facts that would otherwise crash (ndarray, dtype,
C-contiguity, size) and then run the kernels without the GIL.
"""

cimport numpy as cnp
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, getenv, malloc
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, sgemm

from ._kernels cimport *

cnp.import_array()

PANEL_F = FG_WF
PROJ_JOB_ROWS = FG_PJ_ROWS
PANEL_D = FG_WD
ISA_NAMES = {FG_ISA_GENERIC: "generic", FG_ISA_AVX2: "avx2", FG_ISA_AVX512: "avx512"}


def openmp():
    """True when the kernels were built with OpenMP (else they run on one thread)."""
    return bool(fg_openmp())


def omp_max_threads():
    """The calling thread's OpenMP thread limit: OMP_NUM_THREADS, or what omp_set_num_threads
    (threadpoolctl's limits) set; the CPU count when neither; 1 without OpenMP."""
    return fg_omp_max_threads()


def omp_thread_limit():
    """The process's OpenMP thread limit (OMP_THREAD_LIMIT; no team is larger), 1 without
    OpenMP."""
    return fg_omp_thread_limit()


def env(str name, default):
    """``os.environ.get(name, default)`` read from the C environment, which os.environ writes
    through (putenv / unsetenv): ~0.1 us, against ~0.6 for os.environ.get of a missing key,
    and the engine reads several such settings on every call."""
    cdef bytes key = name.encode()
    cdef char *v = getenv(key)
    return default if v == NULL else (<bytes>v).decode("utf-8", "surrogateescape")


def workspace(str action="kept"):
    """The kernels' kept scratch blocks (src_c/ws.c): "kept" returns their bytes, "trim" frees
    them (returns the bytes freed), "poison" fills them with NaN bytes (for tests)."""
    if action == "kept":
        return fg_ws_kept()
    if action == "trim":
        return fg_ws_trim()
    if action == "poison":
        fg_ws_poison()
        return None
    raise ValueError(f"action must be 'kept', 'trim' or 'poison', got {action!r}")


cdef int _switch(object v):
    """A run-time switch's setting from a setter's argument (the set_* functions below, for
    one-process A/B runs in bench/ab.py): True / False from now on, None the default again;
    not while a call runs."""
    return -1 if v is None else (1 if v else 0)


def isa_best():
    """The fastest per-step product kernel this CPU runs: 0 generic, 1 avx2, 2 avx512."""
    return fg_isa_best()


def ptr_prefetch(long panel_bytes=0):
    """Whether the one-/two-row grouped AVX-512 products over panels of ``panel_bytes`` in all
    issue software L1 prefetches (off by default; FASTGRU_CPU_L1_PREFETCH=0/1, read once,
    overrides). Panels beyond 1 MB (streamed from L3) take them regardless."""
    return bool(fg_ptr_prefetch_at(panel_bytes))


def gate_prefetch():
    """Whether the forward gate pass prefetches the next row's gate inputs into L2 (on by
    default except on Intel CPUs; FASTGRU_CPU_GATE_PREFETCH=0/1, read once, overrides)."""
    return bool(fg_gate_prefetch())


def set_gate_prefetch(v):
    """For one-process A/B runs (bench/ab.py --gate-prefetch): see _switch."""
    fg_set_gate_prefetch(_switch(v))


def zigzag():
    """Whether time loops visit the panels of their per-step products in the opposite order at
    every other step, starting each step on those still in cache (on by default;
    FASTGRU_CPU_ZIGZAG=0/1, read once, overrides). Never changes a result."""
    return bool(fg_zigzag())


def set_zigzag(v):
    """For one-process A/B runs (bench/ab.py --zigzag): see _switch."""
    fg_set_zigzag(_switch(v))


def overlap():
    """Whether split-units teams overlap the exchange of h between the cores with the next
    step's product instead of meeting at a barrier after each step (on by default;
    FASTGRU_CPU_OVERLAP=0/1, read once, overrides). Never changes a result."""
    return bool(fg_overlap())


def set_overlap(v):
    """For one-process A/B runs (bench/ab.py --overlap): see _switch."""
    fg_set_overlap(_switch(v))


def strips():
    """Whether the AVX-512 products of four or more rows read their left operand repacked so
    that a step of k's values share a cache line (on by default on Intel CPUs;
    FASTGRU_CPU_STRIPS=0/1, read once, overrides). Never changes a result."""
    return bool(fg_strips())


def set_strips(v):
    """For one-process A/B runs (bench/ab.py --strips): see _switch."""
    fg_set_strips(_switch(v))


def kb_own():
    """Whether the threads of the backward's K-blocked GEMMs each pack and multiply their own
    panels of B where the panels share out evenly (on by default; FASTGRU_CPU_KB_OWN=0/1, read
    once, overrides). Never changes a result."""
    return bool(fg_kb_own())


def set_kb_own(v):
    """For one-process A/B runs (bench/ab.py --kb-own): see _switch."""
    fg_set_kb_own(_switch(v))


cdef struct _fill:  # gemm_panels_proj's wait: the rest of A arrives (as a partner's h would)
    char *dst
    const char *src
    size_t n
    int calls


cdef void _fill_a(void *arg) noexcept nogil:
    cdef _fill *f = <_fill *>arg
    memcpy(f.dst, f.src, f.n)
    f.calls += 1


def paths_taken(bint reset=True):
    """The paths calls took since the last reset, as a set of names ("zigzag", "overlap",
    "backward_team", "projection_in_place", "strips", "own_panels"); reset clears the record.
    For tests: a path that silently stops running gives the same bits as one that runs."""
    cdef int p = fg_paths_taken(reset)
    return {name for bit, name in ((FG_PATH_ZIGZAG, "zigzag"), (FG_PATH_OVERLAP, "overlap"),
                                   (FG_PATH_BWD_TEAM, "backward_team"),
                                   (FG_PATH_PROJ_DIRECT, "projection_in_place"),
                                   (FG_PATH_STRIPS, "strips"),
                                   (FG_PATH_KB_OWN, "own_panels")) if p & bit}


def fuse_projection(int isa, bint is_double, int rows, int npt, int units, int D):
    """Whether a time loop of ``rows`` batch rows, on a thread owning ``npt`` panels of each
    gate, projects its inputs inside the steps' recurrent products (src_c/gru.c), given a
    packed input kernel and no dropout."""
    return bool(fg_fuse_projection(isa, is_double, rows, npt, units, D))


def set_ptr_prefetch(v):
    """For one-process A/B runs (bench/ab.py --l1-prefetch): True / False from now on, None
    the default again (off, or FASTGRU_CPU_L1_PREFETCH). Not while a call runs."""
    fg_set_ptr_prefetch(_switch(v))


cdef void *_p(object arr, int typenum, Py_ssize_t size, str name,
              bint required=False) except? NULL:
    """Data pointer of a C-contiguous ndarray of typenum with at least `size` elements;
    None gives NULL, or a ValueError where the kernels always read the array (required)."""
    if arr is None:
        if required:
            raise ValueError(f"{name} is required")
        return NULL
    if not isinstance(arr, cnp.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    if cnp.PyArray_TYPE(a) != typenum:
        raise TypeError(f"{name}: wrong dtype {a.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name}: array must be C-contiguous")
    if cnp.PyArray_SIZE(a) < size:
        raise ValueError(f"{name}: expected at least {size} elements, got {cnp.PyArray_SIZE(a)}")
    return cnp.PyArray_DATA(a)


cdef int _typenum(object x) except -1:
    if not isinstance(x, cnp.ndarray):
        raise TypeError("expected a numpy array")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"expected float32 or float64, got {x.dtype}")
    return t


def pack(src, int col0, int ncols, dst):
    """Pack columns [col0, col0+ncols) of src (K, ld) into panels in dst (1-D)."""
    cdef int t = _typenum(src)
    cdef int K = src.shape[0]
    cdef long ld = src.shape[1]
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    if src.ndim != 2 or col0 < 0 or ncols < 0 or col0 + ncols > ld:
        raise ValueError("pack: bad column range")
    cdef Py_ssize_t need = <Py_ssize_t>((ncols + W - 1) // W) * K * W
    cdef void *s = _p(src, t, <Py_ssize_t>K * ld, "src")
    cdef void *d = _p(dst, t, need, "dst")
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_pack_d(<double *>s, ld, K, col0, ncols, <double *>d)
        else:
            fg_pack_f(<float *>s, ld, K, col0, ncols, <float *>d)


def same_packed(src, packed, int ngroups):
    """Whether ``packed`` holds exactly what packing src's columns in ``ngroups`` equal groups
    (each into its own panels, as engines.cpu._pack_recurrent does) put there: bitwise, one
    pass over each (no kept copy of src needed). src (K, ngroups * n) C-contiguous."""
    cdef int t = _typenum(src)
    if _typenum(packed) != t or src.ndim != 2 or ngroups < 1 or src.shape[1] % ngroups:
        return False
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    cdef int K = src.shape[0]
    cdef long ld = src.shape[1], n = ld // ngroups
    cdef long per = ((n + W - 1) // W) * K * W  # elements of one group's panels
    if packed.size != ngroups * per:
        return False
    cdef const uint32_t *s = <const uint32_t *>_p(src, t, <Py_ssize_t>K * ld, "src")
    cdef const uint32_t *d = <const uint32_t *>_p(packed, t, ngroups * per, "packed")
    cdef long m = 2 if t == cnp.NPY_FLOAT64 else 1  # 32-bit words per element
    cdef int g, ok = 1
    with nogil:
        for g in range(ngroups):
            if not fg_same_packed(s, ld * m, K, g * n * m, n * m, d + g * per * m):
                ok = 0
                break
    return ok == 1


cdef int _check_isa(int isa) except -1:
    """A per-step kernel's isa code this CPU runs (a higher one would fault: SIGILL)."""
    if isa < FG_ISA_GENERIC or isa > fg_isa_best():
        raise ValueError(f"isa must be {FG_ISA_GENERIC}..{fg_isa_best()} on this CPU, got {isa}")
    return 0


def gemm_panels(int isa, A, P, int K, int npanels, C):
    """C (M, npanels*W) = A (M, K) @ the packed panels P (npanels panels of K x W)."""
    _check_isa(isa)
    cdef int t = _typenum(A)
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    if A.ndim != 2 or C.ndim != 2 or A.shape[1] != K or C.shape[0] != A.shape[0] \
            or C.shape[1] != npanels * W:
        raise ValueError("gemm_panels: inconsistent shapes")
    cdef int M = A.shape[0]
    cdef void *a = _p(A, t, <Py_ssize_t>M * K, "A")
    cdef void *p = _p(P, t, <Py_ssize_t>npanels * K * W, "P")
    cdef void *c = _p(C, t, <Py_ssize_t>M * npanels * W, "C")
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_gemm_panels_d(isa, M, K, <double *>a, K, <double *>p, <long>K * W, npanels,
                             <double *>c, <long>npanels * W)
        else:
            fg_gemm_panels_f(isa, M, K, <float *>a, K, <float *>p, <long>K * W, npanels,
                             <float *>c, <long>npanels * W)


def gemm_panels_proj(int isa, A, P, int npanels, C, X, WP, Y, bint rev=False, int groups=1,
                     int kw=0, A_later=None):
    """A step product with projection jobs (fg_gemm_panels_grp_proj): C (M, npanels*W) = A
    (M, K) @ the packed panels P (npanels of K x W), and per job j, Y[8j:8j+8] (8, W/2) =
    X[8j:8j+8] (rows of D) @ half j % 2 of panel j // 2 of WP (panels of D x W). The panels go
    as `groups` groups of npanels / groups, visited last to first with rev. With A_later (the
    shape of A), the product's wait (fg_step_wait, k < kw first) copies it into A, as a
    partner's part of h arrives: returns how often it was called. For tests."""
    _check_isa(isa)
    if groups < 1 or npanels % groups:
        raise ValueError("gemm_panels_proj: groups must divide npanels")
    cdef int t = _typenum(A)
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    cdef Py_ssize_t it = 8 if t == cnp.NPY_FLOAT64 else 4
    cdef int R = FG_PJ_ROWS
    if A.ndim != 2 or C.shape != (A.shape[0], npanels * W) or X.ndim != 2 \
            or X.shape[0] % R or Y.shape != (X.shape[0], W // 2):
        raise ValueError("gemm_panels_proj: inconsistent shapes")
    cdef int M = A.shape[0], K = A.shape[1], D = X.shape[1], nj = X.shape[0] // R, j, r
    cdef int npg = npanels // groups
    cdef char *a = <char *>_p(A, t, <Py_ssize_t>M * K, "A")
    cdef char *p = <char *>_p(P, t, <Py_ssize_t>npanels * K * W, "P")
    cdef char *c = <char *>_p(C, t, <Py_ssize_t>M * npanels * W, "C")
    cdef char *x = <char *>_p(X, t, <Py_ssize_t>R * nj * D, "X")
    cdef char *wp = <char *>_p(WP, t, <Py_ssize_t>(nj + 1) // 2 * D * W, "WP")
    cdef char *y = <char *>_p(Y, t, <Py_ssize_t>R * nj * (W // 2), "Y")
    cdef _fill fill
    cdef fg_step_wait sw
    if A_later is not None:
        if A_later.shape != A.shape:
            raise ValueError("gemm_panels_proj: A_later must have the shape of A")
        fill.dst, fill.n, fill.calls = a, <size_t>M * K * it, 0
        fill.src = <const char *>_p(A_later, t, <Py_ssize_t>M * K, "A_later")
        sw.kw, sw.fn, sw.arg = kw, _fill_a, &fill
    cdef const fg_step_wait *wp_ = &sw if A_later is not None else NULL
    cdef fg_proj_job *jobs = <fg_proj_job *>malloc(max(nj, 1) * sizeof(fg_proj_job))
    if jobs == NULL:
        raise MemoryError()
    for j in range(nj):
        jobs[j].w = wp + (<Py_ssize_t>(j // 2) * D * W + (j % 2) * (W // 2)) * it
        for r in range(R):
            jobs[j].x[r] = x + (<Py_ssize_t>R * j + r) * D * it
            jobs[j].out[r] = y + (<Py_ssize_t>R * j + r) * (W // 2) * it
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_gemm_panels_grp_proj_d(isa, M, K, <double *>a, K, <double *>p, <long>K * W,
                                      <long>npg * K * W, npg, groups, <double *>c,
                                      <long>npanels * W, <long>npg * W, D, jobs, nj, rev,
                                      wp_)
        else:
            fg_gemm_panels_grp_proj_f(isa, M, K, <float *>a, K, <float *>p, <long>K * W,
                                      <long>npg * K * W, npg, groups, <float *>c,
                                      <long>npanels * W, <long>npg * W, D, jobs, nj, rev,
                                      wp_)
    free(jobs)
    return fill.calls if A_later is not None else 0


cdef int _ld(object m, str name) except -1:
    """Leading dimension (elements) of a 2-D ndarray with unit-stride rows."""
    cdef cnp.ndarray a = <cnp.ndarray>m
    cdef Py_ssize_t it = a.itemsize
    if a.ndim == 2 and a.size == 0:
        return max(<int>a.shape[1], 1)  # never read
    if a.ndim != 2 or (a.shape[1] > 1 and a.strides[1] != it) or a.strides[0] % it \
            or a.strides[0] < 0 or (a.shape[0] > 1 and a.strides[0] < a.shape[1] * it):
        # rows closer than a row apart (a zero stride from broadcasting) would have the
        # kernels read, or write, rows that overlap
        raise ValueError(f"{name}: expected a 2-D array with contiguous, non-overlapping rows")
    return max(<int>(a.strides[0] // it), <int>a.shape[1], 1)


def gemm(A, bint trans_a, B, bint trans_b, C, int n_threads, bint packed=False, int isa=-1,
         bsum=None):
    """C (M, N) = op(A) @ op(B) (op = transpose where trans_*) on n_threads OpenMP threads:
    each running single-threaded BLAS on a block (pin BLAS to one thread around the call), or,
    with ``packed``, the K-blocked packed-panel kernel (fg_gemm_kb) of ``isa`` (AVX2 or
    AVX-512; -1: the best this CPU runs), whose bits do not depend on n_threads or the ISA.
    Operands: 2-D arrays with contiguous rows (column slices allowed). ``bsum`` (N,) (packed,
    B not transposed): also B's column sums, the bits of colsum(B), taken while B is packed."""
    cdef int t = _typenum(A)
    if _typenum(B) != t or _typenum(C) != t:
        raise TypeError("gemm: A, B and C must share one dtype")
    cdef int lda = _ld(A, "A"), ldb = _ld(B, "B"), ldc = _ld(C, "C")
    cdef int M = A.shape[1] if trans_a else A.shape[0]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    cdef int N = B.shape[0] if trans_b else B.shape[1]
    if (B.shape[1] if trans_b else B.shape[0]) != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError("gemm: inconsistent shapes")
    if not C.flags.writeable:
        raise ValueError("gemm: C is read-only")
    cdef void *a = cnp.PyArray_DATA(<cnp.ndarray>A)
    cdef void *b = cnp.PyArray_DATA(<cnp.ndarray>B)
    cdef void *c = cnp.PyArray_DATA(<cnp.ndarray>C)
    cdef void *s = NULL
    cdef int rc = 0
    if bsum is not None:
        if not packed or trans_b:
            raise ValueError("gemm: bsum needs packed=True and B not transposed")
        if _typenum(bsum) != t or bsum.ndim != 1 or bsum.shape[0] != N \
                or not bsum.flags.writeable:
            raise ValueError(f"gemm: bsum must be a writeable ({N},) array of C's dtype")
        s = _p(bsum, t, N, "bsum")
    if packed:
        if isa < 0:
            isa = fg_isa_best()
        if isa < FG_ISA_AVX2 or isa > fg_isa_best():
            raise ValueError(f"gemm: packed=True needs isa AVX2 or AVX-512 that this CPU runs; "
                             f"got isa={isa} (best: {fg_isa_best()})")
        with nogil:
            if t == cnp.NPY_FLOAT64:
                rc = fg_gemm_kb_d(isa, trans_a, trans_b, M, N, K, <double *>a, lda,
                                  <double *>b, ldb, <double *>c, ldc, n_threads, <double *>s)
            else:
                rc = fg_gemm_kb_f(isa, trans_a, trans_b, M, N, K, <float *>a, lda,
                                  <float *>b, ldb, <float *>c, ldc, n_threads, <float *>s)
        if rc == -1:
            raise MemoryError("gemm: out of memory for the packed panels")
        if rc:
            raise ValueError("gemm: packed kernel unavailable in this build")
        return
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_gemm_par_d(dgemm, trans_a, trans_b, M, N, K, <double *>a, lda, <double *>b, ldb,
                          <double *>c, ldc, n_threads)
        else:
            fg_gemm_par_f(sgemm, trans_a, trans_b, M, N, K, <float *>a, lda, <float *>b, ldb,
                          <float *>c, ldc, n_threads)


def colsum(A, out, int n_threads):
    """out (N,) = the column sums of A (M, N; contiguous rows, column slices allowed) on
    n_threads OpenMP threads: blocks of 256 rows in A's dtype, then double (fg_colsum); the
    bits do not depend on n_threads."""
    cdef int t = _typenum(A)
    if _typenum(out) != t:
        raise TypeError("colsum: A and out must share one dtype")
    cdef int lda = _ld(A, "A")
    cdef int M = A.shape[0], N = A.shape[1]
    if out.ndim != 1 or out.shape[0] != N:
        raise ValueError(f"colsum: out must have shape ({N},), got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("colsum: out is read-only")
    cdef void *a = cnp.PyArray_DATA(<cnp.ndarray>A)
    cdef void *o = _p(out, t, N, "out")
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_colsum_d(M, N, <double *>a, lda, <double *>o, n_threads)
        else:
            fg_colsum_f(M, N, <float *>a, lda, <float *>o, n_threads)


def adam(w, g, m, v, vh, double c1, double c2, double alpha, double eps, int n_threads):
    """One Adam step in place (fg_adam): w, m, v (and vh under amsgrad, else None) updated from
    g, all C-contiguous arrays of one dtype and size that do not overlap; the bits of
    optim.Adam's NumPy expression, whatever n_threads."""
    cdef int t = _typenum(w)
    cdef Py_ssize_t n = w.size
    # type, dtype, contiguity and at least n elements first (_p), then exactly n, writeable
    cdef void *pw = _p(w, t, n, "w", True)
    cdef void *pg = _p(g, t, n, "g", True)
    cdef void *pm = _p(m, t, n, "m", True)
    cdef void *pv = _p(v, t, n, "v", True)
    cdef void *ph = _p(vh, t, n, "vh")
    for name, a in (("g", g), ("m", m), ("v", v), ("vh", vh)):
        if a is not None and a.size != n:
            raise ValueError(f"adam: {name} has {a.size} elements, w {n}")
    for name, a in (("w", w), ("m", m), ("v", v), ("vh", vh)):
        if a is not None and not a.flags.writeable:
            raise ValueError(f"adam: {name} is read-only")
    with nogil:
        if t == cnp.NPY_FLOAT64:
            fg_adam_d(n, <double *>pw, <double *>pg, <double *>pm, <double *>pv, <double *>ph,
                      c1, c2, alpha, eps, n_threads)
        else:
            fg_adam_f(n, <float *>pw, <float *>pg, <float *>pm, <float *>pv, <float *>ph,
                      <float>c1, <float>c2, <float>alpha, <float>eps, n_threads)


def activation(int code, x, out, bint derivative=False):
    """out = act(x) (or act'(x)) elementwise, the C definitions used by the kernels."""
    cdef int t = _typenum(x)
    cdef Py_ssize_t n = x.size
    cdef void *pi = _p(x, t, n, "x")
    cdef void *po = _p(out, t, n, "out")
    cdef int rc
    with nogil:
        if t == cnp.NPY_FLOAT64:
            rc = fg_dact_d(code, n, <double *>pi, <double *>po) if derivative else \
                fg_act_d(code, n, <double *>pi, <double *>po)
        else:
            rc = fg_dact_f(code, n, <float *>pi, <float *>po) if derivative else \
                fg_act_f(code, n, <float *>pi, <float *>po)
    if rc:
        raise ValueError(f"unknown activation code {code}")


def forward(x, kernel, wpk, upk, b_in, b_rec, h0, mask, mx, bint mx_per_gate, mh, out, h_last,
            pre, hprev, rp, int units, bint reset_after, bint go_backwards,
            bint return_sequences, bint zero_output_for_mask, int act, int rec_act,
            int n_threads, int isa, int chunk, bint split_units, bint fused=True,
            bint fuse_projection=True, rec_kernel=None, bint verify_wpk=False):
    """Run fg_forward; see src_c/fastgru.h for every argument's shape. With rec_kernel (the
    (u, 3u) weights upk was packed from) and / or verify_wpk, the packed kernels are first
    compared with the weights (by the threads of the call): -1 when one differs (nothing was
    computed). Else the number of a split team's barrier waits that outlasted the spin (a
    thread off its core), 0 normally."""
    if x is None:
        raise ValueError("x is required")
    if kernel is None and wpk is None:
        raise ValueError("kernel or its packed form wpk is required")
    cdef int t = _typenum(x)
    cdef fg_fwd_args a
    cdef int B = x.shape[0], T = x.shape[1], D = x.shape[2], u = units
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    cdef Py_ssize_t npu = (u + W - 1) // W
    cdef Py_ssize_t BT = <Py_ssize_t>B * T
    a.is_double = t == cnp.NPY_FLOAT64
    a.B, a.T, a.D, a.u = B, T, D, u
    a.reset_after, a.go_backwards = reset_after, go_backwards
    a.return_sequences, a.zero_output_for_mask = return_sequences, zero_output_for_mask
    a.act, a.rec_act = act, rec_act
    a.x = _p(x, t, BT * D, "x")
    a.kernel = _p(kernel, t, <Py_ssize_t>D * 3 * u, "kernel")
    a.wpk = _p(wpk, t, 3 * npu * D * W, "packed kernel")
    a.upk = _p(upk, t, 3 * npu * u * W, "packed recurrent kernel", True)
    a.b_in = _p(b_in, t, 3 * u, "input bias", True)
    if reset_after and b_rec is None:
        raise ValueError("recurrent bias required with reset_after")
    a.b_rec = _p(b_rec, t, 3 * u, "recurrent bias")
    a.h0 = _p(h0, t, <Py_ssize_t>B * u, "h0", True)
    a.mask = <const unsigned char *>_p(mask, cnp.NPY_UINT8, BT, "mask")
    a.mx = _p(mx, t, (3 if mx_per_gate else 1) * <Py_ssize_t>B * D, "input dropout mask")
    a.mx_per_gate = mx_per_gate
    a.mh = _p(mh, t, 3 * <Py_ssize_t>B * u, "recurrent dropout mask")
    a.out = _p(out, t, (BT if return_sequences else B) * u, "out", True)
    a.h_last = _p(h_last, t, <Py_ssize_t>B * u, "h_last", True)
    a.pre = _p(pre, t, BT * 3 * u, "pre")
    a.hprev = _p(hprev, t, BT * u, "hprev")
    a.rp = _p(rp, t, BT * u, "rp")
    a.n_threads, a.isa, a.chunk, a.split_units = n_threads, isa, chunk, split_units
    a.no_fuse = not fused
    a.no_fuse_proj = not fuse_projection
    a.rec_kernel = _p(rec_kernel, t, <Py_ssize_t>u * 3 * u, "recurrent kernel")
    a.verify = (1 if rec_kernel is not None else 0) | (2 if verify_wpk else 0)
    if verify_wpk and wpk is None:
        raise ValueError("verify_wpk needs the packed kernel wpk")
    if (pre is None) != (hprev is None) or (pre is None) != (rp is None):
        raise ValueError("pre, hprev and rp: all three (training) or none (inference)")
    a.sgemm = sgemm
    a.dgemm = dgemm
    cdef int rc, late = 0
    a.late = &late
    with nogil:
        rc = fg_forward(&a)
    if rc < 0:
        raise MemoryError("fastgru cpu forward: out of memory for its workspace")
    return -1 if rc else late


def set_spin_limit(n):
    """Pause spins of a split team's barrier wait before it yields the core and counts as late
    (None: the default, 4096); between calls only. For tests."""
    fg_set_spin_limit(-1 if n is None else max(0, int(n)))


def backward(pre, hprev, rp, mask, mh, utpk, dout, dhl, dA, dR, dh0, int units,
             bint reset_after, bint go_backwards, bint return_sequences,
             bint zero_output_for_mask, int act, int rec_act, int n_threads, int isa,
             bint fused=True, bint split_units=False):
    """Run fg_backward; see src_c/fastgru.h for every argument's shape."""
    if pre is None:
        raise ValueError("pre is required")
    cdef int t = _typenum(pre)
    cdef fg_bwd_args a
    cdef int B = pre.shape[0], T = pre.shape[1], u = units
    cdef int W = FG_WD if t == cnp.NPY_FLOAT64 else FG_WF
    cdef Py_ssize_t npu = (u + W - 1) // W
    cdef Py_ssize_t BT = <Py_ssize_t>B * T
    a.is_double = t == cnp.NPY_FLOAT64
    a.B, a.T, a.u = B, T, u
    a.reset_after, a.go_backwards = reset_after, go_backwards
    a.return_sequences, a.zero_output_for_mask = return_sequences, zero_output_for_mask
    a.act, a.rec_act = act, rec_act
    a.pre = _p(pre, t, BT * 3 * u, "pre", True)
    a.hprev = _p(hprev, t, BT * u, "hprev", True)
    a.rp = _p(rp, t, BT * u, "rp", True)
    a.mask = <const unsigned char *>_p(mask, cnp.NPY_UINT8, BT, "mask")
    a.mh = _p(mh, t, 3 * <Py_ssize_t>B * u, "recurrent dropout mask")
    a.utpk = _p(utpk, t, npu * 3 * u * W, "packed transposed recurrent kernel", True)
    a.dout = _p(dout, t, (BT if return_sequences else B) * u, "d_outputs")
    a.dhl = _p(dhl, t, <Py_ssize_t>B * u, "d_h_last")
    a.dA = _p(dA, t, BT * 3 * u, "dA", True)
    if reset_after and dR is None:
        raise ValueError("dR required with reset_after")
    a.dR = _p(dR, t, BT * 3 * u, "dR")
    a.dh0 = _p(dh0, t, <Py_ssize_t>B * u, "dh0", True)
    a.n_threads, a.isa = n_threads, isa
    a.no_fuse = not fused
    a.split_units = split_units
    cdef int rc, late = 0
    a.late = &late
    with nogil:
        rc = fg_backward(&a)
    if rc:
        raise MemoryError("fastgru cpu backward: out of memory for its workspace")
    return late
