/* GRU forward/backward drivers, templated by gru.c on REAL (float / double).
 * Required macros: REAL, SUF, W (panel width), GEMMT (BLAS gemm pointer type), GEMMFIELD (the
 * fg_fwd_args member holding it), PANELS, ACT, DACT (the fg_* kernels for REAL). */

#define FN_CAT2(a, b) a##_##b
#define FN_CAT(a, b) FN_CAT2(a, b)
#define FN(name) FN_CAT(name, SUF)

/* Row-major C (M x N) = A (M x K) @ B (K x N) through column-major BLAS: C^T = B^T A^T. */
static void FN(rgemm)(GEMMT gemm, int M, int N, int K, const REAL *A, int lda, const REAL *B,
                      int ldb, REAL *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++) memset(C + (long)i * ldc, 0, (size_t)N * sizeof(REAL));
        return;
    }
    char tr = 'N';
    REAL one = 1, zero = 0;
    gemm(&tr, &tr, &N, &M, &K, &one, (REAL *)B, &ldb, (REAL *)A, &lda, &zero, C, &ldc);
}

/* gx rows (3 gs apart) = M rows of A (lda apart) times gates [g0, g0 + ng) of the packed input
 * kernel, panels [pl0, pl1) of each: one grouped product, so that A is repacked (fg_strips) once
 * for all its gates. */
static inline void FN(proj_panels)(const fg_fwd_args *a, int M, const REAL *A, long lda, int g0,
                                   int ng, int pl0, int pl1, REAL *gx, int gs)
{
    const int D = a->D, npu = (a->u + W - 1) / W;
    PANELS_GRP(a->isa, M, D, A, lda, (const REAL *)a->wpk + ((long)g0 * npu + pl0) * D * W,
               (long)D * W, (long)npu * D * W, pl1 - pl0, ng, gx + (long)g0 * gs, 3L * gs, gs, 0);
}

/* Threads with at least FG_PROJ_DIRECT_ROWS rows whose share of the packed input kernel is at
 * most FG_PROJ_DIRECT_BYTES (it stays in L2 from step to step) project x where it lies, one
 * product per step, instead of gathering the chunk's rows into xb first (a copy of every
 * input, ~1.5% of a call in perf). The same bits. One-process A/Bs on the 2 MB-L2 Xeon
 * (2026-12-05), 1 / 2 threads: 64x200x128x256 -1.7 to +3.3% / +1 to +4.3% (three runs),
 * 128x100x128x128 -1.5 to +3.4% / +2.2 to +3%, 32x100x64x128 level; without the byte bound,
 * 16x500x512x1024 (6 MB of input kernel, read once per step instead of once per chunk) lost
 * 7% / 11%, 256x50x256x512 (1.5 MB) +2% / level. */
#ifndef FG_PROJ_DIRECT_ROWS
#define FG_PROJ_DIRECT_ROWS 16
#define FG_PROJ_DIRECT_BYTES (512L << 10)
#endif

/* Input projection of chunk rows [i0, i1): row i is (step k0 + i / nr, batch row r0 + i % nr).
 * gx[i] = (x[b, t_k] * input mask) @ kernel, gate g at column g * gs of a row of 3 * gs. The
 * packed kernel a->wpk gives every element one FMA chain over d = 0..D-1, whatever the rows of
 * the call, and projects panels [pl0, pl1) of each gate, gx pointing at panel pl0's column
 * (gs = up for all panels; a split-units thread's own rows hold only its panels). BLAS: all
 * columns, gs = u.
 * BLAS path: xb: private (i1 - i0 + 2) x D scratch, pad: private 2 x 3u. A one-row product is
 * padded to two rows so BLAS never takes its M == 1 (gemv) route, whose rounding differs from
 * the multi-row one. */
static void FN(project)(const fg_fwd_args *a, int r0, int nr, int k0, int i0, int i1, REAL *xb,
                        REAL *pad, REAL *gx, int gs, int pl0, int pl1)
{
    const int T = a->T, D = a->D, u = a->u, u3 = 3 * u, B = a->B;
    const REAL *wpk = (const REAL *)a->wpk;
    const REAL *x = (const REAL *)a->x, *kern = (const REAL *)a->kernel;
    const REAL *mx = (const REAL *)a->mx;
    int M = i1 - i0;
    if (M <= 0) return;
    int ngate = (mx && a->mx_per_gate) ? 3 : 1;
    if (wpk && !mx && nr >= FG_PROJ_DIRECT_ROWS
        && 3L * (pl1 - pl0) * D * W * (long)sizeof(REAL) <= FG_PROJ_DIRECT_BYTES) {
        /* a step's rows of x lie T * D apart */
        for (int i = i0; i < i1;) {
            const int k = k0 + i / nr, ib = i % nr, n = nr - ib < i1 - i ? nr - ib : i1 - i;
            const int t = a->go_backwards ? T - 1 - k : k;
            const REAL *src = x + ((long)(r0 + ib) * T + t) * D;
            FN(proj_panels)(a, n, src, (long)T * D, 0, 3, pl0, pl1, gx + (long)i * 3 * gs, gs);
            i += n;
        }
        fg_took(FG_PATH_PROJ_DIRECT);
        return;
    }
    for (int g = 0; g < ngate; g++) {
        for (int i = i0; i < i1; i++) {
            int k = k0 + i / nr, b = r0 + i % nr, t = a->go_backwards ? T - 1 - k : k;
            const REAL *src = x + ((long)b * T + t) * D;
            REAL *dst = xb + (long)(i - i0) * D;
            if (!mx) {
                memcpy(dst, src, (size_t)D * sizeof(REAL));
            } else {
                const REAL *m = mx + ((long)g * B + b) * D;
                for (int d = 0; d < D; d++) dst[d] = src[d] * m[d];
            }
        }
        if (wpk) { /* per-gate input dropout: this gate's rows; else all three gates */
            FN(proj_panels)(a, M, xb, D, ngate == 3 ? g : 0, ngate == 3 ? 1 : 3, pl0, pl1,
                            gx + (long)i0 * 3 * gs, gs);
            continue;
        }
        int N = ngate == 3 ? u : u3, ldk = u3;
        const REAL *Bm = kern + (ngate == 3 ? g * u : 0);
        if (M == 1) {
            memset(xb + D, 0, (size_t)D * sizeof(REAL));
            FN(rgemm)(a->GEMMFIELD, 2, N, D, xb, D > 0 ? D : 1, Bm, ldk, pad, u3);
            memcpy(gx + (long)i0 * u3 + (ngate == 3 ? g * u : 0), pad, (size_t)N * sizeof(REAL));
        } else {
            FN(rgemm)(a->GEMMFIELD, M, N, D, xb, D > 0 ? D : 1, Bm, ldk,
                      gx + (long)i0 * u3 + (ngate == 3 ? g * u : 0), u3);
        }
    }
}

typedef struct {
    REAL *h[2], *y, *gh, *gx, *q, *zs;
    int gs, c0; /* gx rows: gates gs apart, holding units [c0, c0 + gs) of each */
} FN(team_buf);

typedef struct {
    REAL *xb, *pad, *hg, *tmp, *sink;
} FN(priv_buf);

/* A team's buffers from one block of rows x (5u + 3up) + (chunk rows) x 3gs elements: first
 * those a split-units team exchanges (h, q), then those each of its threads keeps to itself. */
static FN(team_buf) FN(carve)(REAL *q, int rows, int u, int up, int gs)
{
    FN(team_buf) tb;
    tb.gs = gs, tb.c0 = 0;
    tb.h[0] = q, q += (size_t)rows * u;
    tb.h[1] = q, q += (size_t)rows * u;
    tb.q = q, q += (size_t)rows * u;
    tb.y = q, q += (size_t)rows * u;
    tb.zs = q, q += (size_t)rows * u;
    tb.gh = q, q += (size_t)rows * 3 * up;
    tb.gx = q;
    return tb;
}

/* Elementwise pieces of the gate pass; restrict + simd so they vectorise. */
FG_CLONES static void FN(add3)(int n, const REAL *restrict gx, const REAL *restrict b,
                            const REAL *restrict gh, const REAL *restrict br, REAL *restrict out)
{   /* out = ((gx + b) + gh) (+ br): the reference's summation order */
    if (br) {
#pragma omp simd
        for (int j = 0; j < n; j++) out[j] = ((gx[j] + b[j]) + gh[j]) + br[j];
    } else {
#pragma omp simd
        for (int j = 0; j < n; j++) out[j] = (gx[j] + b[j]) + gh[j];
    }
}

FG_CLONES static void FN(cand_after)(int n, const REAL *restrict gx, const REAL *restrict b,
                                  const REAL *restrict gh, const REAL *restrict br,
                                  const REAL *restrict r, REAL *restrict rp, REAL *restrict ah)
{   /* reset_after candidate: rp = h@Uh + bh_r, ah = (x@Wh + bh_i) + r * rp */
#pragma omp simd
    for (int j = 0; j < n; j++) {
        REAL v = gh[j] + br[j];
        rp[j] = v;
        ah[j] = (gx[j] + b[j]) + r[j] * v;
    }
}

FG_CLONES static void FN(mix)(int n, const REAL *restrict z, const REAL *restrict h,
                           const REAL *restrict hh, REAL *restrict hn, REAL *restrict y)
{
#pragma omp simd
    for (int j = 0; j < n; j++) {
        REAL o = z[j] * h[j] + (1 - z[j]) * hh[j];
        hn[j] = o;
        y[j] = o;
    }
}

/* The whole gate pass of one kept row for reset_after with sigmoid / tanh (Keras' defaults):
 * the operations, in the order, of add3 / ACT / cand_after / mix, fused so that each input is
 * loaded once and only the new state and the outputs are stored; the same bits as the
 * separate passes. g*: gate z, r, h at +0, +gs / +gh_s, +2 gs / +2 gh_s; b / br: the input /
 * recurrent bias (3u, from unit 0 of this span); y2: the output row in `out` or NULL.
 * Training record (pre != NULL): pre (z, r, h rows of 3u), rp, hprev. zt, at: n elements of
 * scratch each. Two loops, z / r / the candidate's pre-activation into zt / at (and the
 * record), then tanh and the mix: in one, an iteration's dependency chain (two exp-division
 * chains, then tanh's) was too long for the out-of-order window to overlap the next. One-process
 * A/B: inference 32x100x64x128 +3-4%, 16x200x32x64 +7-9% (1 thread); training (2026-12-05)
 * 1x100x64x128 +1.9-2.3%, 4x100x64x128 +1.5-1.6%, 64x200x128x256 and 256x50x256x512 level on
 * one thread, -3% to +6% on two (this VM's phases). */
FG_CLONES static void FN(gates_std)(int n, const REAL *restrict gx, long gs, const REAL *restrict gh,
                                    long ghs, const REAL *restrict b, const REAL *restrict br,
                                    long u, const REAL *restrict h, REAL *restrict hn,
                                    REAL *restrict y, REAL *restrict y2, REAL *restrict pre,
                                    REAL *restrict rp, REAL *restrict hp, REAL *restrict zt,
                                    REAL *restrict at)
{
    if (pre) {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            REAL az = ((gx[j] + b[j]) + gh[j]) + br[j];
            REAL ar = ((gx[gs + j] + b[u + j]) + gh[ghs + j]) + br[u + j];
            REAL r = SIGV(ar);
            REAL v = gh[2 * ghs + j] + br[2 * u + j];
            REAL ah = (gx[2 * gs + j] + b[2 * u + j]) + r * v;
            zt[j] = SIGV(az), at[j] = ah;
            pre[j] = az, pre[u + j] = ar, pre[2 * u + j] = ah;
            rp[j] = v, hp[j] = h[j];
        }
    } else {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            REAL az = ((gx[j] + b[j]) + gh[j]) + br[j];
            REAL ar = ((gx[gs + j] + b[u + j]) + gh[ghs + j]) + br[u + j];
            REAL r = SIGV(ar);
            REAL v = gh[2 * ghs + j] + br[2 * u + j];
            zt[j] = SIGV(az), at[j] = (gx[2 * gs + j] + b[2 * u + j]) + r * v;
        }
    }
#pragma omp simd
    for (int j = 0; j < n; j++) {
        REAL z = zt[j], hh = TANHV(at[j]);
        REAL o = z * h[j] + (1 - z) * hh;
        hn[j] = o, y[j] = o;
    }
    if (y2) memcpy(y2, y, (size_t)n * sizeof(REAL));
}

/* Prefetch (into L2) the gate inputs of one row: n units of each gate of gx (gate stride gs)
 * and gh (stride ghs). With many rows the step's gh and the chunk's gx exceed L2, and a row's
 * gate pass is too short (n / 16 iterations over six streams) for the hardware prefetchers to
 * get going: its loads waited on L3. */
static inline void FN(prefetch_gates)(int n, const REAL *gx, long gs, const REAL *gh, long ghs)
{
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < n; j += 64 / (int)sizeof(REAL)) {
            __builtin_prefetch(gx + g * gs + j, 0, 2);
            __builtin_prefetch(gh + g * ghs + j, 0, 2);
        }
}

/* Candidate, mix, mask select and writes for one row b over units [ulo, ulo + nu): ah holds
 * the candidate pre-activations; hr, zr, hnr, yr point at the row's state, update gate, next
 * state and emitted output (full width u, indexed by unit). */
static inline void FN(finish)(const fg_fwd_args *a, const REAL *ah, REAL *hh, const REAL *hr,
                              const REAL *zr, REAL *hnr, REAL *yr, int b, int k, int t, int ulo,
                              int nu)
{
    const int T = a->T, u = a->u;
    const long base = (long)b * T + k;
    const int m = a->mask ? a->mask[(long)b * T + t] != 0 : 1;
    ACT(a->act, nu, ah, hh);
    if (a->pre) memcpy((REAL *)a->pre + base * 3 * u + 2 * u + ulo, ah, (size_t)nu * sizeof(REAL));
    if (a->hprev) memcpy((REAL *)a->hprev + base * u + ulo, hr + ulo, (size_t)nu * sizeof(REAL));
    hr += ulo, zr += ulo, hnr += ulo, yr += ulo;
    if (m) {
        FN(mix)(nu, zr, hr, hh, hnr, yr);
    } else {
        memcpy(hnr, hr, (size_t)nu * sizeof(REAL));
        if (a->zero_output_for_mask) memset(yr, 0, (size_t)nu * sizeof(REAL));
    }
    if (a->return_sequences) memcpy((REAL *)a->out + base * u + ulo, yr, (size_t)nu * sizeof(REAL));
}

/* The n elements of a team's state h, all at once rather than as the k loop reaches each
 * line (the partners' lines would come as serial cross-core misses). */
static inline void FN(prefetch_h)(const REAL *h, long n)
{
    for (long j = 0; j < n; j += 64 / (long)sizeof(REAL)) __builtin_prefetch(h + j, 0, 3);
}

/* What a thread of a team that overlaps the exchange of h (team_run) waits for inside its
 * step's product: its partners' arrival after the previous step; then it prefetches h. */
typedef struct {
    fg_barrier *bar;
    int tid, nteam, gen;
    const REAL *h;
    long n;
} FN(step_wait_ctx);

static void FN(step_wait)(void *arg)
{
    const FN(step_wait_ctx) *c = (const FN(step_wait_ctx) *)arg;
    fg_barrier_await(c->bar, c->tid, c->nteam, c->gen);
    FN(prefetch_h)(c->h, c->n);
}

/* The time loop of one team over batch rows [r0, r0 + nr): thread tid of nteam owns the unit
 * panels [p_lo, p_hi) of every gate (nteam == 1: all of them, no barriers). */
static void FN(team_run)(const fg_fwd_args *a, const FN(team_buf) *tb, const FN(priv_buf) *pb,
                         int r0, int nr, int tid, int nteam, int p_lo, int p_hi, int tc,
                         fg_barrier *bar)
{
    int bgen = 0; /* this thread's count of passed barriers */
    const int B = a->B, T = a->T, D = a->D, u = a->u, u3 = 3 * u;
    const int npu = (u + W - 1) / W, up = npu * W, ldgh = 3 * up;
    const long pstride = (long)u * W;
    const int ulo = p_lo * W < u ? p_lo * W : u, uhi = p_hi * W < u ? p_hi * W : u;
    const int nu = uhi - ulo;
    const int gs = tb->gs, ldgx = 3 * gs, gxo = ulo - tb->c0; /* gx layout, see project() */
    const REAL *upk = (const REAL *)a->upk, *h0 = (const REAL *)a->h0;
    const REAL *bi = (const REAL *)a->b_in, *br = (const REAL *)a->b_rec;
    const REAL *mh = (const REAL *)a->mh;
    const unsigned char *mask = a->mask;
    REAL *out = (REAL *)a->out, *hl = (REAL *)a->h_last;
    REAL *pre = (REAL *)a->pre, *rpt = (REAL *)a->rp;
    const int rs = a->return_sequences, ra = a->reset_after;
    /* tanh / sigmoid with reset_after (Keras' defaults) take the fused gate pass */
    const int fused = ra && a->act == 1 && a->rec_act == 2 && !a->no_fuse;
    REAL *az = pb->tmp, *ar = az + u, *ah = ar + u, *zv = ah + u, *rv = zv + u, *hh = rv + u;
    /* One row per step (packed input kernel, no dropout, fg_fuse_projection): only the first
     * FG_PJ_ROWS rows of a chunk are projected up front; the rest by jobs of FG_PJ_ROWS future
     * rows x half of one of this thread's input-kernel panels, riding along each step's product
     * (fg_gemm_panels_grp_proj), one block ahead of the steps. One decision for the whole team
     * (by its busiest thread): the rows projected up front are split between its threads. */
    const int npt = p_hi - p_lo, npw = 6 * npt; /* jobs per block: 3 gates x 2 halves */
    const int fproj = !a->no_fuse_proj && a->wpk && !a->mx && !mh
                      && fg_fuse_projection(a->isa, a->is_double, nr, (npu + nteam - 1) / nteam,
                                            u, D);
    const REAL *x = (const REAL *)a->x, *wpk = (const REAL *)a->wpk;
    const int gpf = fg_gate_prefetch(), zz = fg_zigzag();
    /* Overlapped exchange (fg_overlap): where a step is the grouped one-/two-row AVX-512
     * product then the gate pass of this thread's own units (reset_after, no recurrent
     * dropout, and gx in columns of its own: the packed projection), the team does not meet at
     * a barrier after each step: a thread publishes its units of h (arrive) and awaits its
     * partners' inside the next step's product (fg_step_wait); thread 0, whose units are the
     * first rows of U, after the part of the product that reads only them. Thread i writes
     * its units of the buffer h[j] again two steps after it last wrote them, after it has
     * seen every partner arrive from the step between, in which they read them: the one
     * barrier per step is no longer needed. (With more rows the product waits first: no
     * gain, and 1-2% lost at 4x200x128x256, so those teams keep the barrier.) */
    const int ovl = nteam > 1 && nr <= 2 && a->isa == FG_ISA_AVX512 && ra && !mh && a->wpk
                    && fg_overlap();
    FN(step_wait_ctx) wctx = {bar, tid, nteam, 0, NULL, (long)nr * u};
    const fg_step_wait sw = {tid == 0 ? uhi : 0, FN(step_wait), &wctx};
    if (tid == 0) fg_took((ovl ? FG_PATH_OVERLAP : 0) | (zz && T > 1 ? FG_PATH_ZIGZAG : 0));

    for (int i = 0; i < nr; i++)
        for (int j = ulo; j < uhi; j++) {
            tb->h[0][(long)i * u + j] = h0[(long)(r0 + i) * u + j];
            tb->y[(long)i * u + j] = 0;
        }
    fg_barrier_wait(bar, tid, nteam, &bgen);
    /* next k0 = min(k0 + tc, T), without forming k0 + tc (int overflow near INT_MAX steps
     * wrapped k0 negative and restarted the sequence forever) */
    for (int k0 = 0; k0 < T; k0 = T - k0 > tc ? k0 + tc : T) {
        int kc = T - k0 < tc ? T - k0 : tc, M = kc * nr;
        const int Mup = fproj && M > FG_PJ_ROWS ? FG_PJ_ROWS : M; /* rows projected up front */
        if (a->wpk) { /* packed kernel: each thread projects its own panels of every row */
            FN(project)(a, r0, nr, k0, 0, Mup, pb->xb, pb->pad, tb->gx + (p_lo * W - tb->c0), gs,
                        p_lo, p_hi);
        } else { /* BLAS: the rows split, all columns, into the team's shared gx */
            FN(project)(a, r0, nr, k0, fg_part(Mup, tid, nteam), fg_part(Mup, tid + 1, nteam),
                        pb->xb, pb->pad, tb->gx, gs, 0, npu);
            fg_barrier_wait(bar, tid, nteam, &bgen);
        }
        /* this chunk's jobs: block b >= 1 of FG_PJ_ROWS rows x half panel p is job (b-1) npw + p */
        const int jtot = Mup < M ? ((M + FG_PJ_ROWS - 1) / FG_PJ_ROWS - 1) * npw : 0;
        int jdone = 0;
        for (int kk = 0; kk < kc; kk++) {
            const int k = k0 + kk, t = a->go_backwards ? T - 1 - k : k;
            const REAL *hc = tb->h[k & 1];
            REAL *hn = tb->h[(k + 1) & 1];
            const REAL *Ag[3] = {hc, hc, hc};
            const int rev = zz && (k & 1); /* every other step its panels last to first */
            wctx.gen = bgen, wctx.h = hc;
            if (nteam > 1 && !ovl) FN(prefetch_h)(hc, (long)nr * u); /* (ovl: in its wait) */
            if (mh) {
                for (int g = 0; g < 3; g++) {
                    REAL *hg = pb->hg + (long)g * nr * u;
                    for (int i = 0; i < nr; i++) {
                        const REAL *m = mh + ((long)g * B + r0 + i) * u;
                        for (int j = 0; j < u; j++) hg[(long)i * u + j] = hc[(long)i * u + j] * m[j];
                    }
                    Ag[g] = hg;
                }
            }
            if (!mh) { /* this thread's panels of every gate in one pass, with projection jobs */
                /* by the end of step kk, ceil((kk + 1) nr npw / FG_PJ_ROWS) jobs: block b is
                 * complete before the step that first reads it */
                long want = ((long)(kk + 1) * nr * npw + FG_PJ_ROWS - 1) / FG_PJ_ROWS;
                int nj = 0;
                fg_proj_job jobs[FG_PJ_MAX_JOBS];
                for (; jdone < jtot && jdone < want; jdone++, nj++) {
                    const int b = 1 + jdone / npw, pw = jdone % npw, g = pw / (2 * npt);
                    const int pl = p_lo + pw / 2 % npt, c0 = pw % 2 * (W / 2);
                    jobs[nj].w = wpk + ((long)g * npu + pl) * D * W + c0;
                    for (int r = 0; r < FG_PJ_ROWS; r++) {
                        const int i = b * FG_PJ_ROWS + r, ic = i < M ? i : M - 1;
                        const int kx = k0 + ic / nr, tx = a->go_backwards ? T - 1 - kx : kx;
                        jobs[nj].x[r] = x + ((long)(r0 + ic % nr) * T + tx) * D;
                        jobs[nj].out[r] = i < M ? tb->gx + (long)i * ldgx + g * gs + (pl * W - tb->c0) + c0
                                                : pb->sink;
                    }
                }
                PANELS_GRP_PROJ(a->isa, nr, u, hc, u, upk + (long)p_lo * pstride, pstride,
                                (long)npu * pstride, p_hi - p_lo, ra ? 3 : 2, tb->gh + p_lo * W,
                                ldgh, up, D, jobs, nj, rev, ovl ? &sw : NULL);
            } else
                for (int gi = 0, ng = ra ? 3 : 2; gi < ng; gi++) {
                    const int g = rev ? ng - 1 - gi : gi;
                    PANELS_GRP(a->isa, nr, u, Ag[g], u, upk + ((long)g * npu + p_lo) * pstride,
                               pstride, 0, p_hi - p_lo, 1, tb->gh + g * up + p_lo * W, ldgh, 0,
                               rev);
                }
            for (int i = 0; i < nr; i++) {
                const REAL *gxr = tb->gx + ((long)kk * nr + i) * ldgx + gxo, *ghr = tb->gh + (long)i * ldgh;
                if (gpf && i + 1 < nr) /* the next row's inputs, on their way while this row
                                        * computes (not on Intel: fg_gate_prefetch) */
                    FN(prefetch_gates)(nu, gxr + ldgx, gs, ghr + ldgh + ulo, up);
                if (fused && (!mask || mask[(long)(r0 + i) * T + t])) {
                    long base = (long)(r0 + i) * T + k;
                    /* without a mask the last output is needed only for !rs: with rs the
                     * pass writes the outputs in place of it (no copy) */
                    REAL *yo = rs ? out + base * u + ulo : NULL;
                    FN(gates_std)(nu, gxr, gs, ghr + ulo, up, bi + ulo, br + ulo, u,
                                  hc + (long)i * u + ulo, hn + (long)i * u + ulo,
                                  yo && !mask ? yo : tb->y + (long)i * u + ulo,
                                  mask ? yo : NULL,
                                  pre ? pre + base * u3 + ulo : NULL,
                                  pre ? rpt + base * u + ulo : NULL,
                                  pre ? (REAL *)a->hprev + base * u + ulo : NULL, zv, ah);
                    continue;
                }
                FN(add3)(nu, gxr, bi + ulo, ghr + ulo, ra ? br + ulo : NULL, az);
                FN(add3)(nu, gxr + gs, bi + u + ulo, ghr + up + ulo, ra ? br + u + ulo : NULL, ar);
                ACT(a->rec_act, nu, az, zv);
                ACT(a->rec_act, nu, ar, rv);
                long base = (long)(r0 + i) * T + k;
                if (pre) {
                    memcpy(pre + base * u3 + ulo, az, (size_t)nu * sizeof(REAL));
                    memcpy(pre + base * u3 + u + ulo, ar, (size_t)nu * sizeof(REAL));
                }
                if (ra) {
                    REAL *rpv = hh; /* reuse as scratch until act() overwrites it */
                    FN(cand_after)(nu, gxr + 2 * gs, bi + 2 * u + ulo, ghr + 2 * up + ulo,
                                   br + 2 * u + ulo, rv, rpv, ah);
                    if (rpt) memcpy(rpt + base * u + ulo, rpv, (size_t)nu * sizeof(REAL));
                    memcpy(tb->zs + (long)i * u + ulo, zv, (size_t)nu * sizeof(REAL));
                } else {
                    const REAL *h2 = Ag[2] + (long)i * u;
                    int m = mask ? mask[(long)(r0 + i) * T + t] != 0 : 1;
                    for (int j = 0; j < nu; j++) tb->q[(long)i * u + ulo + j] = rv[j] * h2[ulo + j];
                    if (rpt)
                        for (int j = 0; j < nu; j++)
                            rpt[base * u + ulo + j] = m ? tb->q[(long)i * u + ulo + j] : 0;
                    memcpy(tb->zs + (long)i * u + ulo, zv, (size_t)nu * sizeof(REAL));
                    continue;
                }
                FN(finish)(a, ah, hh, hc + (long)i * u, tb->zs + (long)i * u, hn + (long)i * u,
                           tb->y + (long)i * u, r0 + i, k, t, ulo, nu);
            }
            if (!ra) {
                fg_barrier_wait(bar, tid, nteam, &bgen);
                PANELS_GRP(a->isa, nr, u, tb->q, u, upk + ((long)2 * npu + p_lo) * pstride,
                           pstride, 0, p_hi - p_lo, 1, tb->gh + 2 * up + p_lo * W, ldgh, 0, rev);
                for (int i = 0; i < nr; i++) {
                    const REAL *gxr = tb->gx + ((long)kk * nr + i) * ldgx + gxo, *ghr = tb->gh + (long)i * ldgh;
                    FN(add3)(nu, gxr + 2 * gs, bi + 2 * u + ulo, ghr + 2 * up + ulo, NULL, ah);
                    FN(finish)(a, ah, hh, hc + (long)i * u, tb->zs + (long)i * u, hn + (long)i * u,
                               tb->y + (long)i * u, r0 + i, k, t, ulo, nu);
                }
            }
            if (ovl)
                fg_barrier_arrive(bar, tid, &bgen);
            else
                fg_barrier_wait(bar, tid, nteam, &bgen);
        }
    }
    const REAL *hf = tb->h[T & 1];
    for (int i = 0; i < nr; i++) {
        memcpy(hl + (long)(r0 + i) * u + ulo, hf + (long)i * u + ulo, (size_t)nu * sizeof(REAL));
        if (!rs) memcpy(out + (long)(r0 + i) * u + ulo, tb->y + (long)i * u + ulo, (size_t)nu * sizeof(REAL));
    }
}

/* Whether thread tid of n finds its share of the packed kernels a->verify names (panels
 * [npu tid / n, npu (tid + 1) / n) of each gate: in a split-units team, the ones it streams)
 * holding exactly the weights (fg_same_packed, in 32-bit words). */
static int FN(verify_share)(const fg_fwd_args *a, int tid, int n)
{
    const int u = a->u, npu = (u + W - 1) / W;
    const int p0 = fg_part(npu, tid, n), p1 = fg_part(npu, tid + 1, n);
    const long m = sizeof(REAL) / 4, c0 = (long)p0 * W, c1 = (long)p1 * W < u ? (long)p1 * W : u;
    int ok = 1;
    if (p0 >= p1) return 1;
    for (int g = 0; g < 3; g++) {
        if (a->verify & 1)
            ok &= fg_same_packed((const uint32_t *)a->rec_kernel, 3L * u * m, u,
                                 ((long)g * u + c0) * m, (c1 - c0) * m,
                                 (const uint32_t *)a->upk + ((long)g * npu + p0) * u * W * m);
        if (a->verify & 2)
            ok &= fg_same_packed((const uint32_t *)a->kernel, 3L * u * m, a->D,
                                 ((long)g * u + c0) * m, (c1 - c0) * m,
                                 (const uint32_t *)a->wpk + ((long)g * npu + p0) * a->D * W * m);
    }
    return ok;
}

static int FN(forward)(const fg_fwd_args *a)
{
    const int B = a->B, T = a->T, D = a->D, u = a->u, u3 = 3 * u;
    const int npu = (u + W - 1) / W, up = npu * W;
    if (B <= 0 || T <= 0) return 0;
    int nthr = a->n_threads > 0 ? a->n_threads : 1;
    int split = a->split_units && nthr > 1 && npu > 1;
    int ngroups;
    if (split) {
        if (nthr > npu) nthr = npu;
        ngroups = 1;
    } else {
        if (nthr > B) nthr = B;
        ngroups = nthr;
    }
    int rows_max = (B + ngroups - 1) / ngroups;
    int tc = a->chunk < 1 ? 1 : (a->chunk > T ? T : a->chunk);
    int proj_rows = tc * rows_max;
    /* team buffers: h[2], q, y, zs (rows x u), gh (rows x 3up), gx (tc*rows x 3gs: gs = up with
     * the packed kernel, else u), each set in whole cache lines. A split-units team shares one
     * set for h and q (and its full-width gx without the packed kernel, or when OpenMP grants the
     * team one thread) and gives each thread a set of its own for the rest, its gx rows holding
     * only its own panels (so ~2x the memory of one shared set): a thread's units of a row sat next
     * to its partner's, and the cores' spatial prefetchers pulled the partner's lines of gh, gx
     * and y across, each then crossing back when its owner wrote it. With a ~330 ns core-to-core
     * round trip (some phases of this Zen 4 VM) that cost ~1,000 of ~6,250 TSC cycles per step
     * at 1x1000x64x128 on two threads (the gate pass 850 -> 330); see the README. */
    const size_t line = 64 / sizeof(REAL), rows_n = (size_t)rows_max * (5 * u + 3 * up);
    const int gs_all = a->wpk ? up : u, nptm = (npu + nthr - 1) / nthr;
    size_t team_n = rows_n + (size_t)tc * rows_max * 3 * gs_all, own_n = 0;
    team_n = (team_n + line - 1) / line * line;
    if (split) {
        own_n = rows_n + (a->wpk ? (size_t)tc * rows_max * 3 * nptm * W : 0);
        own_n = (own_n + line - 1) / line * line;
    }
    /* private: xb ((proj_rows + 2) x D), pad (2 x 3u), hg (3 x rows x u), tmp (6u), sink (W) */
    size_t priv_n = (size_t)(proj_rows + 2) * D + 2 * (size_t)u3
                    + (a->mh ? 3 * (size_t)rows_max * u : 0) + 6 * (size_t)u + W;
    size_t team_got = 0, priv_got = 0;
    REAL *team_mem = fg_ws_alloc((team_n * (split ? 1 : ngroups) + own_n * nthr) * sizeof(REAL),
                                 &team_got);
    REAL *priv_mem = fg_ws_alloc(priv_n * nthr * sizeof(REAL), &priv_got);
    fg_barrier bar;
    if (!team_mem || !priv_mem || fg_barrier_init(&bar, nthr)) {
        fg_ws_free(team_mem, team_got);
        fg_ws_free(priv_mem, priv_got);
        return -1;
    }
    atomic_int stale = 0;
#pragma omp parallel num_threads(nthr)
    {
        int tid = omp_get_thread_num(), nact = omp_get_num_threads();
        if (a->verify) {
            if (!FN(verify_share)(a, tid, nact))
                atomic_store_explicit(&stale, 1, memory_order_relaxed);
#pragma omp barrier
        }
        if (!atomic_load_explicit(&stale, memory_order_relaxed)) { /* agreed: all or none */
            FN(priv_buf) pb;
            REAL *p = priv_mem + (size_t)tid * priv_n;
            pb.xb = p, p += (size_t)(proj_rows + 2) * D;
            pb.pad = p, p += 2 * (size_t)u3;
            pb.hg = p, p += a->mh ? 3 * (size_t)rows_max * u : 0;
            pb.tmp = p, p += 6 * (size_t)u;
            pb.sink = p;
            if (split) {
                /* nact may be below nthr (OMP_THREAD_LIMIT): then one thread does it all, since
                 * the barriers need the whole planned team. */
                int team = (nact == nthr) ? nact : 1;
                if (tid < team) {
                    const int p_lo = fg_part(npu, tid, team), p_hi = fg_part(npu, tid + 1, team);
                    FN(team_buf) sh = FN(carve)(team_mem, rows_max, u, up, gs_all);
                    FN(team_buf) tb = FN(carve)(team_mem + team_n + own_n * tid, rows_max, u, up,
                                                (p_hi - p_lo) * W);
                    tb.h[0] = sh.h[0], tb.h[1] = sh.h[1], tb.q = sh.q, tb.c0 = p_lo * W;
                    if (!a->wpk || team == 1) /* the shared gx, all columns */
                        tb.gx = sh.gx, tb.gs = gs_all, tb.c0 = 0;
                    FN(team_run)(a, &tb, &pb, 0, B, tid, team, p_lo, p_hi, tc, &bar);
                }
            } else {
                for (int g = tid; g < ngroups; g += nact) {
                    int r0 = fg_part(B, g, ngroups), r1 = fg_part(B, g + 1, ngroups);
                    FN(team_buf) tb = FN(carve)(team_mem + team_n * g, rows_max, u, up, gs_all);
                    FN(team_run)(a, &tb, &pb, r0, r1 - r0, 0, 1, 0, npu, tc, NULL);
                }
            }
        }
    }
    if (a->late) *a->late = atomic_load_explicit(&bar.late, memory_order_relaxed);
    fg_barrier_free(&bar);
    fg_ws_free(team_mem, team_got);
    fg_ws_free(priv_mem, priv_got);
    return atomic_load_explicit(&stale, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------------------- */

/* f(a) and f'(a): for tanh and sigmoid the derivative comes from the value (1 - t*t,
 * s*(1 - s): the very operations DACT performs after recomputing the value, so the same bits)
 * instead of a second transcendental evaluation. */
FG_CLONES static void FN(act_dact)(int code, int n, const REAL *restrict in, REAL *restrict f,
                                   REAL *restrict df)
{
    ACT(code, n, in, f);
    if (code == 1) {
#pragma omp simd
        for (int j = 0; j < n; j++) df[j] = 1 - f[j] * f[j];
    } else if (code == 2) {
#pragma omp simd
        for (int j = 0; j < n; j++) df[j] = f[j] * (1 - f[j]);
    } else {
        DACT(code, n, in, df);
    }
}

/* Backward elementwise pieces for one row (m: the step is kept); restrict + simd so they
 * vectorise, with the operations and their order of the scalar definitions. */
FG_CLONES static void FN(bwd_zh)(int n, int m, int zofm, const REAL *restrict hp,
                                 const REAL *restrict hh, const REAL *restrict zv,
                                 const REAL *restrict dz, const REAL *restrict dhv,
                                 REAL *restrict gy, REAL *restrict gs, REAL *restrict dor,
                                 REAL *restrict zr, REAL *restrict daz, REAL *restrict dah)
{
    if (m) {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            REAL d = gy[j] + gs[j];
            dor[j] = d;
            zr[j] = zv[j];
            daz[j] = (hp[j] - hh[j]) * d * dz[j];
            dah[j] = (1 - zv[j]) * d * dhv[j];
            gy[j] = 0;
            gs[j] = 0;
        }
    } else {
#pragma omp simd
        for (int j = 0; j < n; j++) {
            dor[j] = 0;
            zr[j] = zv[j];
            daz[j] = 0;
            dah[j] = 0;
            gy[j] = zofm ? 0 : gy[j];
        }
    }
}

FG_CLONES static void FN(bwd_r_after)(int n, int m, const REAL *restrict rp,
                                      const REAL *restrict rv, const REAL *restrict drv,
                                      const REAL *restrict daz, REAL *restrict dar,
                                      const REAL *restrict dah, REAL *restrict dR)
{   /* reset_after: dR rows (z, r, h) = (da_z, da_r, da_h * r) */
    /* gate rows as pointers: under -fwrapv (Python's CFLAGS) an int index n + j may wrap, and
     * GCC vectorised dR[n + j] as a scatter */
    REAL *restrict dRr = dR + n, *restrict dRh = dR + 2 * (long)n;
#pragma omp simd
    for (int j = 0; j < n; j++) {
        REAL v = m ? dah[j] * rp[j] * drv[j] : 0;
        dar[j] = v;
        dR[j] = daz[j];
        dRr[j] = v;
        dRh[j] = m ? dah[j] * rv[j] : 0;
    }
}

FG_CLONES static void FN(bwd_dh)(int n, const REAL *restrict zr, const REAL *restrict dor,
                                 const REAL *restrict p, const REAL *restrict dhr,
                                 REAL *restrict gs)
{   /* gs += (z * do + dh_rec) (+ dh through the reset gate), a kept step */
    if (dhr) {
#pragma omp simd
        for (int j = 0; j < n; j++) gs[j] = gs[j] + ((zr[j] * dor[j] + p[j]) + dhr[j]);
    } else {
#pragma omp simd
        for (int j = 0; j < n; j++) gs[j] = gs[j] + (zr[j] * dor[j] + p[j]);
    }
}

/* One kept row of a step for reset_after with sigmoid / tanh (Keras' defaults): act_dact of
 * the three gates, bwd_zh and bwd_r_after fused into one loop with their operations in their
 * order (the same bits; FASTGRU_CPU_FUSED=0 runs those). n units from the row's first (or a
 * split team's own first), gates gst apart: pre: the (z, r, h) pre-activations; dy: this
 * step's output gradient or NULL; dA / dR: the 3 x n outputs. */
FG_CLONES static void FN(bwd_std)(int n, long gst, const REAL *restrict pre,
                                  const REAL *restrict hp, const REAL *restrict rp,
                                  const REAL *restrict dy, REAL *restrict gy, REAL *restrict gs,
                                  REAL *restrict dor, REAL *restrict zr, REAL *restrict dA,
                                  REAL *restrict dR)
{
    /* gate rows as pointers (see bwd_r_after: int offsets under -fwrapv became scatters) */
    const long g2 = 2 * gst;
    const REAL *restrict pz = pre, *restrict pr = pre + gst, *restrict ph = pre + g2;
    REAL *restrict dAz = dA, *restrict dAr = dA + gst, *restrict dAh = dA + g2;
    REAL *restrict dRz = dR, *restrict dRr = dR + gst, *restrict dRh = dR + g2;
#pragma omp simd
    for (int j = 0; j < n; j++) {
        REAL g = dy ? gy[j] + dy[j] : gy[j];
        REAL z = SIGV(pz[j]), hh = TANHV(ph[j]), r = SIGV(pr[j]);
        REAL dz = z * (1 - z), dh = 1 - hh * hh, dr = r * (1 - r);
        REAL d = g + gs[j];
        REAL daz = (hp[j] - hh) * d * dz, dah = (1 - z) * d * dh;
        REAL dar = dah * rp[j] * dr;
        dor[j] = d, zr[j] = z, gy[j] = 0, gs[j] = 0;
        dAz[j] = daz, dAr[j] = dar, dAh[j] = dah;
        dRz[j] = daz, dRr[j] = dar, dRh[j] = dah * r;
    }
}

/* The backward's running gradients entering the last step, rows [r0, r0 + nr) (row i of gy
 * and gs is batch row r0 + i), units [ulo, uhi): gy the output gradient (d_outputs without
 * return_sequences, else 0), gs that of the state (d_h_last, or 0). */
static void FN(bwd_init)(const fg_bwd_args *a, int r0, int nr, int ulo, int uhi, REAL *gy,
                         REAL *gs)
{
    const int u = a->u;
    const REAL *dout = a->return_sequences ? NULL : (const REAL *)a->dout;
    const REAL *dhl = (const REAL *)a->dhl;
    for (int i = 0; i < nr; i++) {
        const long b = r0 + i;
        for (int j = ulo; j < uhi; j++) {
            gy[(long)i * u + j] = dout ? dout[b * u + j] : 0;
            gs[(long)i * u + j] = dhl ? dhl[b * u + j] : 0;
        }
    }
}

static void FN(bwd_rows)(const fg_bwd_args *a, int r0, int nr, REAL *mem)
{
    const int B = a->B, T = a->T, u = a->u, u3 = 3 * u;
    const int npu = (u + W - 1) / W, up = npu * W;
    const int ra = a->reset_after, rs = a->return_sequences, zofm = a->zero_output_for_mask;
    const REAL *pre = (const REAL *)a->pre, *hprev = (const REAL *)a->hprev;
    const REAL *rpt = (const REAL *)a->rp, *mh = (const REAL *)a->mh;
    const REAL *utpk = (const REAL *)a->utpk, *dout = (const REAL *)a->dout;
    REAL *dA = (REAL *)a->dA, *dR = (REAL *)a->dR, *dh0 = (REAL *)a->dh0;
    const long pstride = (long)u3 * W, lda = (long)T * u3;
    const int fused = ra && a->act == 1 && a->rec_act == 2 && !a->no_fuse;
    const int zz = fg_zigzag();
    if (r0 == 0) fg_took(zz && T > 1 ? FG_PATH_ZIGZAG : 0);

    REAL *gy = mem, *gs = gy + (size_t)nr * u, *dos = gs + (size_t)nr * u, *zs = dos + (size_t)nr * u;
    REAL *dhh = zs + (size_t)nr * u, *P = dhh + (size_t)nr * u; /* P: 3 x nr x up */
    REAL *tmp = P + 3 * (size_t)nr * up;
    REAL *zv = tmp, *dz = zv + u, *hh = dz + u, *dhv = hh + u, *rv = dhv + u, *drv = rv + u;

    FN(bwd_init)(a, r0, nr, 0, u, gy, gs);
    for (int k = T - 1; k >= 0; k--) {
        const int t = a->go_backwards ? T - 1 - k : k;
        for (int i = 0; i < nr; i++) {
            const long b = r0 + i, base = b * T + k;
            const REAL *pr = pre + base * u3, *hp = hprev + base * u;
            REAL *gyr = gy + (long)i * u, *gsr = gs + (long)i * u;
            REAL *dor = dos + (long)i * u, *zr = zs + (long)i * u, *dAr = dA + base * u3;
            const int m = a->mask ? a->mask[b * T + t] != 0 : 1;
            if (fused && m) {
                FN(bwd_std)(u, u, pr, hp, rpt + base * u, (rs && dout) ? dout + base * u : NULL,
                            gyr, gsr, dor, zr, dAr, dR + base * u3);
                continue;
            }
            if (rs && dout)
                for (int j = 0; j < u; j++) gyr[j] += dout[base * u + j];
            FN(act_dact)(a->rec_act, u, pr, zv, dz);
            FN(act_dact)(a->act, u, pr + 2 * u, hh, dhv);
            FN(bwd_zh)(u, m, zofm, hp, hh, zv, dz, dhv, gyr, gsr, dor, zr, dAr, dAr + 2 * u);
            if (ra) {
                FN(act_dact)(a->rec_act, u, pr + u, rv, drv);
                FN(bwd_r_after)(u, m, rpt + base * u, rv, drv, dAr, dAr + u, dAr + 2 * u,
                                dR + base * u3);
            }
        }
        const long row0 = (long)r0 * T + k;
        const int rev = zz && (k & 1); /* every other step the panels last to first */
        if (!ra) {
            /* dq = da_h @ Uh^T, then the reset gate and the candidate's state path */
            PANELS_GRP(a->isa, nr, u, dA + row0 * u3 + 2 * u, lda, utpk + 2 * (long)u * W,
                       pstride, 0, npu, 1, P, up, 0, rev);
            for (int i = 0; i < nr; i++) {
                const long b = r0 + i, base = b * T + k;
                const REAL *pr = pre + base * u3, *hp = hprev + base * u, *dq = P + (long)i * up;
                const REAL *m2 = mh ? mh + (2L * B + b) * u : NULL;
                const int m = a->mask ? a->mask[b * T + t] != 0 : 1;
                REAL *dAr = dA + base * u3, *dhr = dhh + (long)i * u;
                FN(act_dact)(a->rec_act, u, pr + u, rv, drv);
                for (int j = 0; j < u; j++) {
                    REAL hg2 = m2 ? hp[j] * m2[j] : hp[j];
                    dAr[u + j] = m ? dq[j] * hg2 * drv[j] : 0;
                    dhr[j] = m ? dq[j] * rv[j] : 0;
                }
            }
        }
        const REAL *Asrc = ra ? dR : dA;
        const int G = ra ? 3 : 2;
        if (!mh) {
            PANELS_GRP(a->isa, nr, G * u, Asrc + row0 * u3, lda, utpk, pstride, 0, npu, 1, P, up,
                       0, rev);
        } else {
            for (int gi = 0; gi < G; gi++) {
                const int g = rev ? G - 1 - gi : gi;
                PANELS_GRP(a->isa, nr, u, Asrc + row0 * u3 + g * u, lda, utpk + (long)g * u * W,
                           pstride, 0, npu, 1, P + (size_t)g * nr * up, up, 0, rev);
            }
        }
        for (int i = 0; i < nr; i++) {
            const long b = r0 + i;
            const int m = a->mask ? a->mask[b * T + t] != 0 : 1;
            const REAL *dor = dos + (long)i * u, *zr = zs + (long)i * u, *dhr = dhh + (long)i * u;
            REAL *gsr = gs + (long)i * u;
            if (!mh) {
                if (m) FN(bwd_dh)(u, zr, dor, P + (long)i * up, ra ? NULL : dhr, gsr);
                continue;
            }
            for (int j = 0; j < u; j++) {
                REAL dh = zr[j] * dor[j];
                if (!mh) {
                    dh = dh + P[(long)i * up + j];
                    if (!ra) dh = dh + dhr[j];
                } else {
                    for (int g = 0; g < G; g++)
                        dh = dh + P[((size_t)g * nr + i) * up + j] * mh[((long)g * B + b) * u + j];
                    if (!ra) dh = dh + dhr[j] * mh[(2L * B + b) * u + j];
                }
                gsr[j] = m ? gsr[j] + dh : gsr[j];
            }
        }
    }
    for (int i = 0; i < nr; i++) memcpy(dh0 + (long)(r0 + i) * u, gs + (long)i * u, (size_t)u * sizeof(REAL));
}

/* The backward of a split-units team (split_units: fewer rows than threads; reset_after with
 * tanh / sigmoid, no recurrent dropout): thread tid of nteam runs every row's steps for the
 * units of its panels [p_lo, p_hi) of U^T, as bwd_rows does for whole rows (the same
 * operations per unit, the same product per element: the same bits). Per step, one barrier
 * between the elementwise pass (this thread's entries of each row's dR) and the product, which
 * reads all of them; dR keeps every step's rows apart, so a thread that runs ahead into the
 * next step's elementwise pass overwrites nothing a partner still reads. */
static void FN(bwd_team)(const fg_bwd_args *a, int tid, int nteam, int p_lo, int p_hi,
                         REAL *mem, fg_barrier *bar)
{
    const int T = a->T, u = a->u, u3 = 3 * u, nr = a->B;
    const int npu = (u + W - 1) / W, up = npu * W;
    const int ulo = p_lo * W < u ? p_lo * W : u, uhi = p_hi * W < u ? p_hi * W : u;
    const int nu = uhi - ulo, rs = a->return_sequences, zofm = a->zero_output_for_mask;
    const REAL *pre = (const REAL *)a->pre, *hprev = (const REAL *)a->hprev;
    const REAL *rpt = (const REAL *)a->rp, *utpk = (const REAL *)a->utpk;
    const REAL *dout = (const REAL *)a->dout;
    REAL *dA = (REAL *)a->dA, *dR = (REAL *)a->dR, *dh0 = (REAL *)a->dh0;
    const long pstride = (long)u3 * W, lda = (long)T * u3;
    const int zz = fg_zigzag();
    REAL *gy = mem, *gs = gy + (size_t)nr * u, *dos = gs + (size_t)nr * u, *zs = dos + (size_t)nr * u;
    REAL *P = zs + 2 * (size_t)nr * u; /* nr x up, this thread's columns */
    int bgen = 0;
    if (tid == 0) fg_took(FG_PATH_BWD_TEAM | (zz && T > 1 ? FG_PATH_ZIGZAG : 0));

    FN(bwd_init)(a, 0, nr, ulo, uhi, gy, gs);
    for (int k = T - 1; k >= 0; k--) {
        const int t = a->go_backwards ? T - 1 - k : k;
        for (int i = 0; i < nr; i++) {
            const long base = (long)i * T + k;
            REAL *gyr = gy + (long)i * u + ulo, *dAr = dA + base * u3 + ulo, *dRr = dR + base * u3 + ulo;
            const REAL *dy = (rs && dout) ? dout + base * u + ulo : NULL;
            if (!a->mask || a->mask[(long)i * T + t]) {
                FN(bwd_std)(nu, u, pre + base * u3 + ulo, hprev + base * u + ulo,
                            rpt + base * u + ulo, dy, gyr, gs + (long)i * u + ulo,
                            dos + (long)i * u + ulo, zs + (long)i * u + ulo, dAr, dRr);
                continue;
            }
            /* a masked step, as bwd_rows' separate passes leave it (bwd_zh, bwd_r_after) */
            for (int j = 0; j < nu; j++) {
                const REAL g = dy ? gyr[j] + dy[j] : gyr[j];
                gyr[j] = zofm ? 0 : g;
                dos[(long)i * u + ulo + j] = 0;
                for (int q = 0; q < 3; q++) dAr[(long)q * u + j] = 0, dRr[(long)q * u + j] = 0;
            }
        }
        fg_barrier_wait(bar, tid, nteam, &bgen);
        PANELS_GRP(a->isa, nr, u3, dR + (long)k * u3, lda, utpk + (long)p_lo * pstride, pstride,
                   0, p_hi - p_lo, 1, P + p_lo * W, up, 0, zz && (k & 1));
        for (int i = 0; i < nr; i++)
            if (!a->mask || a->mask[(long)i * T + t])
                FN(bwd_dh)(nu, zs + (long)i * u + ulo, dos + (long)i * u + ulo,
                           P + (long)i * up + ulo, NULL, gs + (long)i * u + ulo);
    }
    for (int i = 0; i < nr; i++)
        memcpy(dh0 + (long)i * u + ulo, gs + (long)i * u + ulo, (size_t)nu * sizeof(REAL));
}

static int FN(backward)(const fg_bwd_args *a)
{
    const int B = a->B, T = a->T, u = a->u;
    const int npu = (u + W - 1) / W, up = npu * W;
    if (B <= 0 || T <= 0) return 0;
    int nthr = a->n_threads > 0 ? a->n_threads : 1;
    /* split units: reset_after with tanh / sigmoid (bwd_std), no recurrent dropout, and a
     * panel of U^T for every thread */
    const int split = a->split_units && nthr > 1 && a->reset_after && a->act == 1
                      && a->rec_act == 2 && !a->no_fuse && !a->mh && npu >= 2;
    if (split && nthr > npu) nthr = npu;
    if (!split && nthr > B) nthr = B;
    const int rows_max = split ? B : (B + nthr - 1) / nthr;
    size_t per = (size_t)rows_max * (5 * (size_t)u + 3 * (size_t)up) + 6 * (size_t)u;
    size_t got = 0;
    REAL *mem = fg_ws_alloc(per * nthr * sizeof(REAL), &got);
    if (!mem) return -1;
    fg_barrier bar;
    if (split && fg_barrier_init(&bar, nthr)) {
        fg_ws_free(mem, got);
        return -1;
    }
#pragma omp parallel num_threads(nthr)
    {
        int tid = omp_get_thread_num(), nact = omp_get_num_threads();
        if (split) {
            /* the barriers need the whole planned team; with fewer threads (OMP_THREAD_LIMIT)
             * those there take the rows (a block per thread holds all B rows' scratch) */
            if (nact == nthr)
                FN(bwd_team)(a, tid, nthr, fg_part(npu, tid, nthr), fg_part(npu, tid + 1, nthr),
                             mem + per * tid, &bar);
            else if (tid < B) {
                const int ng = nact < B ? nact : B, r0 = fg_part(B, tid, ng);
                FN(bwd_rows)(a, r0, fg_part(B, tid + 1, ng) - r0, mem + per * tid);
            }
        } else {
            for (int g = tid; g < nthr; g += nact) {
                int r0 = (int)((long)B * g / nthr), r1 = (int)((long)B * (g + 1) / nthr);
                FN(bwd_rows)(a, r0, r1 - r0, mem + per * g);
            }
        }
    }
    if (split) {
        if (a->late) *a->late = atomic_load_explicit(&bar.late, memory_order_relaxed);
        fg_barrier_free(&bar);
    }
    fg_ws_free(mem, got);
    return 0;
}

/* Row-major C (M x N) = op(A) @ op(B) (op = transpose where ta / tb) over nthr OpenMP threads,
 * each running a single-threaded BLAS call on its block of the larger of M and N (in steps of
 * 16). Keeping the threads in this OpenMP team instead of BLAS's own: OpenBLAS's worker threads
 * busy-wait ~0.1 s after a multi-threaded call and then steal the core from the next forward's
 * OpenMP threads. Alignment of operands is the caller's (leading dimensions in elements). */
void FN(fg_gemm_par)(GEMMT gemm, int ta, int tb, int M, int N, int K, const REAL *A, int lda,
                     const REAL *B, int ldb, REAL *C, int ldc, int nthr)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++) memset(C + (long)i * ldc, 0, (size_t)N * sizeof(REAL));
        return;
    }
    const int by_rows = M > N;
    const int L = by_rows ? M : N;
    if (nthr < 1) nthr = 1;
    if (nthr > (L + 15) / 16) nthr = (L + 15) / 16;
    int blk = ((L + nthr - 1) / nthr + 15) / 16 * 16;
    /* never a one-row/column block: BLAS may take its gemv route, whose rounding differs */
    while (L > blk && L % blk == 1) blk += 16;
#pragma omp parallel num_threads(nthr)
    {
        int tid = omp_get_thread_num(), nact = omp_get_num_threads();
        for (int g = tid; g < nthr; g += nact) {
            int j0 = g * blk, j1 = j0 + blk < L ? j0 + blk : L;
            if (j1 <= j0) continue;
            int n = j1 - j0, m = M, nn = N;
            const REAL *Ap = A, *Bp = B;
            REAL *Cp = C;
            if (by_rows) {
                m = n;
                Ap = ta ? A + j0 : A + (long)j0 * lda;
                Cp = C + (long)j0 * ldc;
            } else {
                nn = n;
                Bp = tb ? B + (long)j0 * ldb : B + j0;
                Cp = C + j0;
            }
            /* column-major view: C^T (nn x m) = op(B)^T (nn x K) @ op(A)^T (K x m) */
            char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
            REAL one = 1, zero = 0;
            int k = K, la = lda, lb = ldb, lc = ldc;
            gemm(&cb, &ca, &nn, &m, &k, &one, (REAL *)Bp, &lb, (REAL *)Ap, &la, &zero, Cp, &lc);
        }
    }
}

/* Column sums of A (M x N, rows lda apart) into out: blocks of 256 rows each summed in REAL in
 * row order, the block sums and (as one running sum) the rows after the last whole block added
 * in double, in order. Exactly cpu._column_sums' NumPy expression, whatever nthr (threads take
 * whole column chunks; the vector lanes run across columns): as accurate as a double sum at
 * the speed of a float one. */
#ifndef FG_CS_COLS
#define FG_CS_COLS 2048 /* columns per chunk at most (rows read in long contiguous runs) */
#endif
FG_CLONES static void FN(colsum_chunk)(int M, int nc, const REAL *restrict A, long lda,
                                       REAL *restrict out)
{
    double tot[FG_CS_COLS], tail[FG_CS_COLS];
    REAL blk[FG_CS_COLS];
    const int nb = M / FG_CS_ROWS;
    for (int c = 0; c < nc; c++) tot[c] = 0, tail[c] = 0;
    for (int b = 0; b < nb; b++) {
        const REAL *r0 = A + (long)b * FG_CS_ROWS * lda;
        memcpy(blk, r0, (size_t)nc * sizeof(REAL));
        for (int r = 1; r < FG_CS_ROWS; r++) FN_CAT(fg_cs_add, SUF)(nc, r0 + (long)r * lda, blk);
        FN_CAT(fg_cs_addd, SUF)(nc, blk, tot);
    }
    for (int r = nb * FG_CS_ROWS; r < M; r++) FN_CAT(fg_cs_addd, SUF)(nc, A + (long)r * lda, tail);
    FN_CAT(fg_cs_out, SUF)(nc, tot, tail, out);
}

void FN(fg_colsum)(int M, int N, const REAL *A, long lda, REAL *out, int nthr)
{
    if (N <= 0) return;
    if (nthr < 1) nthr = 1;
    /* one chunk per thread (columns in multiples of 16), at most FG_CS_COLS wide */
    int cw = ((N + nthr - 1) / nthr + 15) / 16 * 16;
    if (cw > FG_CS_COLS) cw = FG_CS_COLS;
    const int nchunk = (N + cw - 1) / cw;
    if (nthr > nchunk) nthr = nchunk;
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int ch = 0; ch < nchunk; ch++) {
        const int c0 = ch * cw;
        FN(colsum_chunk)(M, N - c0 < cw ? N - c0 : cw, A + c0, lda, out + c0);
    }
}

#undef FN
#undef FN_CAT
#undef FN_CAT2
