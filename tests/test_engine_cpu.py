"""The compiled CPU engine's forward pass against the float64 reference engine, plus its C
activations, per-step kernels (every ISA path), determinism, threads and input validation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgru import _threads, activations
from fastgru.engines import cpu, reference
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights

pytestmark = pytest.mark.skipif(not cpu.available(), reason="CPU extension not built")


BWD_SPLIT_MIN_WORK = cpu._BWD_SPLIT_MIN_WORK  # the engine's own, for the tests of that rule


def team_forms(n, u, dtype):
    """Whether a split-units team of n threads over u units runs as one (not under an OpenMP
    thread limit below its size: the kernels then run its work on fewer threads, by rows)."""
    size = min(cpu._max_threads(n), -(-u // (256 // np.dtype(dtype).itemsize)))
    return size > 1 and int(os.environ.get("OMP_THREAD_LIMIT") or size) >= size


@pytest.fixture(autouse=True)
def threads_even_for_small_work(monkeypatch):
    """The tests' problems are tiny: without this the work caps would run them all on one
    thread (a training call on fewer rows than threads too: _training_forward_alone) and the
    threaded paths would go untested."""
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)
    monkeypatch.setattr(cpu, "_BWD_SPLIT_MIN_WORK", 0)
    # plans as without an OpenMP thread limit, whatever the environment running the tests (the
    # kernels' own fallback then runs a team's work on the threads granted); the limit's own
    # test runs in a child
    monkeypatch.setattr(cpu, "_OMP_THREAD_LIMIT", 1 << 16)

TOL = {np.float64: 1e-10, np.float32: 2e-5}
ISAS = ["generic", "avx2", "avx512"]


def supported_isas():
    if not cpu.available():
        return []
    from fastgru._cpu import _gru

    return ISAS[: _gru.isa_best() + 1]


def make_case(rng, B=3, T=5, D=4, u=6, *, reset_after=True, act="tanh", rec_act="sigmoid",
              mask="none", go_backwards=False, return_sequences=False, h0=True,
              dropout="none", zero_output_for_mask=False, use_bias=True, dtype=np.float64,
              scale=0.5):
    """Inputs for one layer call, already rounded to ``dtype`` (so the float64 reference sees
    exactly the values the engine sees). Returns (args, kwargs) for engine.forward."""
    spec = GRUSpec(u, activations.get(act), activations.get(rec_act), reset_after=reset_after,
                   use_bias=use_bias, go_backwards=go_backwards,
                   return_sequences=return_sequences,
                   zero_output_for_mask=zero_output_for_mask)

    def r(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    bias = r(*((2, 3 * u) if reset_after else (3 * u,)), s=0.3) if use_bias else None
    weights = Weights(r(D, 3 * u, s=scale), r(u, 3 * u, s=scale), bias)
    h = r(B, u) if h0 else np.zeros((B, u), dtype)
    m = None
    if mask == "right":
        lengths = rng.integers(0, T + 1, size=B)
        m = np.arange(T)[None, :] < lengths[:, None]
    elif mask == "arbitrary":
        m = rng.random((B, T)) < 0.6
        if B > 1:
            m[0] = False  # one all-masked row
    drop = None
    if dropout != "none":
        def keep(*s):
            return ((rng.random(s) > 0.3) / 0.7).astype(dtype)

        inputs = {"shared": keep(B, D), "per_gate": keep(3, B, D), "recurrent": None}[dropout]
        rec = keep(3, B, u) if dropout in ("per_gate", "recurrent") else None
        drop = DropoutMasks(inputs, rec)
    return (r(B, T, D), weights, h, spec), {"mask": m, "dropout": drop}


def as64(a):
    return None if a is None else np.asarray(a, np.float64)


def ref_forward(args, kw, training=False):
    x, w, h0, spec = args
    d = kw["dropout"]
    d64 = None if d is None else DropoutMasks(as64(d.inputs), as64(d.recurrent))
    return reference.forward(as64(x), Weights(*map(as64, w)), as64(h0), spec, kw["mask"], d64,
                             training=training)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _rounding_sensitivity(args, kw, ro, rh, trials=2):
    """How far the float64 reference moves when x, the weights and h0 are each perturbed by
    a float32 rounding (relative 2^-24, random signs): the problem's own amplification of
    float32-level errors (largest of a few trials, over outputs and final state)."""
    x, w, h0, spec = args
    rng = np.random.default_rng(12345)

    def jig(a):
        if a is None:
            return None
        a = np.asarray(a, np.float64)
        return a * (1 + 2.0 ** -24 * rng.uniform(-1, 1, a.shape))

    worst = 0.0
    for _ in range(trials):
        o, h, _ = ref_forward((jig(x), Weights(*map(jig, w)), jig(h0), spec), kw)
        worst = max(worst, rel_err(o, ro), rel_err(h, rh))
    return worst


def check_forward(args, kw, dtype, **engine_kw):
    out, h, tape = cpu.forward(*args, **kw, **engine_kw)
    ro, rh, _ = ref_forward(args, kw)
    assert out.dtype == dtype and h.dtype == dtype
    assert out.shape == ro.shape and h.shape == rh.shape
    assert tape is None
    tol = TOL[dtype]
    if dtype == np.float32:
        # Unbounded activations amplify float32 rounding over the steps: allow a few times the
        # float32 reference's own error against float64, and a few times what perturbing the
        # inputs by float32 rounding does to the float64 result (one rounding pattern's
        # amplified error can be ~20x another's: linear activation, u=70, found by hypothesis).
        x, w, h0, spec = args
        r32 = reference.forward(x, w, h0, spec, kw["mask"], kw["dropout"])
        tol = max(tol, 4 * rel_err(r32[0], ro), 4 * rel_err(r32[1], rh),
                  16 * _rounding_sensitivity(args, kw, ro, rh))
    assert rel_err(out, ro) < tol, rel_err(out, ro)
    assert rel_err(h, rh) < tol, rel_err(h, rh)
    return out, h


# ---------------------------------------------------------------------------------------------
# C activations vs activations.py


def _grid(dtype):
    kinks = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 0.5, -0.5, 1e-6, -1e-6, 1e-30]
    big = [20.0, -20.0, 80.0, -80.0, 100.0, -100.0, 700.0, -700.0]
    x = np.concatenate([np.linspace(-8, 8, 1601), kinks, big]).astype(dtype)
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", activations.NAMES)
def test_c_activation_matches_python(name, dtype):
    from fastgru._cpu import _gru

    act = activations.get(name)
    x = _grid(dtype)
    if dtype == np.float32 or name == "exponential":
        x = x[np.abs(x) < 80]  # exp overflows differently in float32 libm near the limit
    with np.errstate(all="ignore"):
        for deriv in (False, True):
            out = np.empty_like(x)
            _gru.activation(act.code, x, out, deriv)
            want = (act.derivative if deriv else act)(x.astype(np.float64))
            err = np.abs(out - want) / np.maximum(1.0, np.abs(want))
            tol = 1e-13 if dtype == np.float64 else 2e-6
            assert np.all(np.isfinite(out) == np.isfinite(want)), (name, deriv)
            fin = np.isfinite(want)
            assert np.max(err[fin]) < tol, (name, deriv, float(np.max(err[fin])))


def test_c_float32_sigmoid_tanh_ulp_and_saturation():
    """The gate pass's float32 sigmoid and tanh (polynomials and a division): a few ulp
    everywhere on a dense grid, exact 0.5 / 0 at 0, and exactly +-1 where tanh rounds to it."""
    from fastgru._cpu import _gru

    x = np.concatenate([np.linspace(-30, 30, 600_001, dtype=np.float32),
                        np.geomspace(1e-9, 1, 20_001).astype(np.float32) * -1,
                        np.geomspace(1e-9, 1, 20_001).astype(np.float32)])
    x64 = x.astype(np.float64)
    for code, ref in ((2, 1 / (1 + np.exp(-x64))), (1, np.tanh(x64))):
        out = np.empty_like(x)
        _gru.activation(code, x, out)
        ulp = np.abs(out - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        assert ulp.max() < 5, (code, float(ulp.max()))  # 2.25 (sigmoid), 4.31 (tanh)
    out = np.empty(6, np.float32)
    _gru.activation(1, np.array([0, 8.8, -9.5, 50, np.inf, -np.inf], np.float32), out)
    assert out[0] == 0 and out[2:].tolist() == [-1, 1, 1, -1] and 1 - 6e-8 <= out[1] <= 1
    _gru.activation(2, np.array([0, np.inf, -np.inf, 100, -200, 17], np.float32), out)
    assert out[:2].tolist() == [0.5, 1] and 0 <= out[2] < 1e-37 and out[3] == 1 and out[5] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_activations_propagate_nan(dtype):
    from fastgru._cpu import _gru

    x = np.array([np.nan], dtype)
    out = np.empty_like(x)
    for name in activations.NAMES:
        act = activations.get(name)
        _gru.activation(act.code, x, out)
        with np.errstate(all="ignore"):
            want = act(x.astype(np.float64))
        # NaN in, NaN out, here and in the Python definition, as in Keras, except for the
        # shrink functions, which give 0 there too (Keras 3.15: where(|x| > t, ..., 0))
        keras_nan = name not in ("soft_shrink", "hard_shrink")
        assert np.isnan(out[0]) == np.isnan(want[0]) == keras_nan, name


def test_c_float32_tanh_never_passes_one():
    """The rational approximant overshoots 1.0f by up to 2^-22 between 8.127 and 9 (so that
    1 - t*t went negative); the select to +-1 above 8.125 keeps |tanh| <= 1 and its derivative
    >= 0 for every float there, within the approximant's 5 ulp."""
    from fastgru._cpu import _gru

    pos = np.arange(np.float32(7.9).view(np.int32), np.float32(9.1).view(np.int32),
                    dtype=np.int32).view(np.float32)
    x = np.concatenate([pos, -pos])
    t, d = np.empty_like(x), np.empty_like(x)
    _gru.activation(1, x, t)
    _gru.activation(1, x, d, True)
    assert np.abs(t).max() <= 1 and d.min() >= 0
    ref = np.tanh(x.astype(np.float64))
    assert (np.abs(t - ref) / np.spacing(np.abs(ref).astype(np.float32))).max() < 5


def test_c_float32_sigmoid_tanh_keep_every_nan():
    """NaNs of any sign and payload (quiet and signalling) stay NaN in the float32 sigmoid and
    tanh and their derivatives: exp's scaling adds the rounding sum's low bits to the result's
    exponent field, where a NaN's payload bits would make a number of it."""
    from fastgru._cpu import _gru

    bits = np.array([0x7FC00000, 0x7FC001FF, 0xFFC00001, 0x7F800001, 0xFF8000FF, 0x7FFFFFFF,
                     0xFFFFFFFF, 0x7FC00100] * 3, np.uint32)  # 24: vector body and tail
    x = bits.view(np.float32)
    for code in (1, 2):
        for deriv in (False, True):
            out = np.zeros_like(x)
            _gru.activation(code, x, out, deriv)
            assert np.all(np.isnan(out)), (code, deriv, out)


def test_c_activation_rejects_unknown_code():
    from fastgru._cpu import _gru

    x = np.zeros(3)
    with pytest.raises(ValueError, match="unknown activation code"):
        _gru.activation(99, x, np.empty_like(x))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threaded_gemm_matches_numpy_every_layout(dtype, rng):
    """_gru.gemm (the backward's weight/input-gradient GEMMs): both transpositions, column-slice
    operands and output, blocks split over rows or columns; the same values on 1 and 2 threads."""
    from fastgru._cpu import _gru

    tol = 1e-12 if dtype == np.float64 else 1e-5
    for M, N, K in [(1, 5, 3), (33, 7, 4), (7, 50, 9), (17, 17, 0), (40, 96, 31)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
                big = rng.standard_normal((N, K + 3) if tb else (K, N + 3)).astype(dtype)
                b = big[:, 1 : K + 1] if tb else big[:, 1 : N + 1]  # a column slice
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                outs = []
                for n in (1, 2):
                    c = np.full((M, N + 2), 7, dtype)
                    _gru.gemm(a, ta, b, tb, c[:, 1 : N + 1], n)
                    assert np.all(c[:, 0] == 7) and np.all(c[:, -1] == 7)  # untouched
                    assert rel_err(c[:, 1 : N + 1], want) < tol if K else np.all(c[:, 1:-1] == 0)
                    outs.append(c)
                assert np.allclose(outs[0], outs[1], rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="inconsistent"):
        _gru.gemm(np.ones((2, 3), dtype), False, np.ones((4, 2), dtype), False,
                  np.ones((2, 2), dtype), 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_column_sums_are_the_two_level_numpy_sums_on_any_thread_count(dtype, rng):
    """The bias gradients' column sums (fg_colsum): exactly NumPy's blocks of 256 rows in the
    array's dtype, then float64 over the blocks and the leftover rows, for every thread count,
    column slice and a row count with and without leftover rows."""
    from fastgru._cpu import _gru
    from fastgru.engines.cpu import _column_sums

    for M, N in [(0, 5), (1, 1), (255, 130), (256, 17), (1000, 257), (3000, 40)]:
        a = rng.standard_normal((M, N + 3)).astype(dtype)[:, 1 : N + 1]
        n = M - M % 256
        want = (a[:n].reshape(-1, 256, N).sum(axis=1).sum(axis=0, dtype=np.float64)
                + a[n:].sum(axis=0, dtype=np.float64)).astype(dtype)
        for t in (1, 2, 3, 8):
            assert np.array_equal(_column_sums(a, t), want)
        if M:
            exact = a.astype(np.float64).sum(axis=0)
            assert rel_err(want, exact) < (1e-14 if dtype == np.float64 else 1e-6)
    a = np.ones((4, 3), dtype)
    with pytest.raises(ValueError, match="out must have shape"):
        _gru.colsum(a, np.empty(2, dtype), 1)
    with pytest.raises(TypeError, match="share one dtype"):
        _gru.colsum(a, np.empty(3, np.float32 if dtype == np.float64 else np.float64), 1)
    with pytest.raises(ValueError, match="contiguous, non-overlapping rows"):
        _gru.colsum(np.ones((4, 6), dtype)[:, ::2], np.empty(3, dtype), 1)
    # rows that overlap (a broadcast row: stride 0) would be read or written past the buffer
    row = np.ones((1, 256), dtype)
    with pytest.raises(ValueError, match="non-overlapping rows"):
        _gru.colsum(np.broadcast_to(row, (20000, 256)), np.empty(256, dtype), 1)
    with pytest.raises(ValueError, match="non-overlapping rows"):
        c = np.lib.stride_tricks.as_strided(np.zeros(8, dtype), (8, 8), (0, dtype().itemsize))
        _gru.gemm(np.ones((8, 4), dtype), False, np.ones((4, 8), dtype), False, c, 1, False,
                  -1, None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_gemm_column_sums_of_b_are_colsum_bits(dtype, rng):
    """gemm(..., bsum=s) on the packed kernel: s holds B's column sums with exactly the bits of
    colsum (whole 256-row blocks, the rows after them in double) while C keeps the bits of the
    plain call, for every ISA, thread count (more threads than 256-row blocks split the
    columns), transposition of A, column slice of B and K with and without a tail."""
    from fastgru._cpu import _gru

    isas = [i for i in (1, 2) if i <= _gru.isa_best()]
    if not isas:
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    for M, N, K in [(1, 1, 1), (5, 70, 255), (7, 300, 256), (3, 600, 513), (64, 384, 1300),
                    (2, 17, 0), (0, 40, 600)]:
        for ta in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
            b = rng.standard_normal((K, N + 5)).astype(dtype)[:, 2 : N + 2]
            want = np.empty(N, dtype)
            _gru.colsum(b, want, 1)
            plain = np.empty((M, N), dtype)
            _gru.gemm(a, ta, b, False, plain, 1, True, isas[-1])
            for isa in isas:
                for n in (1, 2, 3, 5):
                    c, s = np.full((M, N), 7, dtype), np.full(N, 7, dtype)
                    _gru.gemm(a, ta, b, False, c, n, True, isa, s)
                    assert np.array_equal(s, want), (M, N, K, ta, isa, n)
                    assert np.array_equal(c, plain), (M, N, K, ta, isa, n)
    one = np.ones((4, 3), dtype)
    with pytest.raises(ValueError, match="bsum needs packed=True and B not transposed"):
        _gru.gemm(one, True, np.ones((5, 4), dtype), True, np.empty((3, 5), dtype), 1, True,
                  isas[-1], np.empty(5, dtype))
    with pytest.raises(ValueError, match="bsum needs packed"):
        _gru.gemm(one, True, np.ones((4, 5), dtype), False, np.empty((3, 5), dtype), 1, False,
                  -1, np.empty(5, dtype))
    with pytest.raises(ValueError, match=r"bsum must be a writeable \(5,\) array"):
        _gru.gemm(one, True, np.ones((4, 5), dtype), False, np.empty((3, 5), dtype), 1, True,
                  isas[-1], np.empty(4, dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_gemm_every_layout_row_exact(dtype, rng):
    """The K-blocked GEMM of the backward (``packed=True``) on every vector ISA this CPU runs:
    both transpositions, column slices, K across several blocks and partial panels / row
    tiles; the bits depend neither on the thread count, nor on the ISA, and a row's bits not
    on the other rows."""
    from fastgru._cpu import _gru

    isas = [i for i in (1, 2) if i <= _gru.isa_best()]
    with pytest.raises(ValueError, match="AVX2 or AVX-512"):
        _gru.gemm(np.ones((2, 2), dtype), False, np.ones((2, 2), dtype), False,
                  np.ones((2, 2), dtype), 1, True, 0)
    if not isas:
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    tol = 1e-12 if dtype == np.float64 else 2e-5
    # (30, 40, 70): one panel, so 2 and 3 threads cut the 30 rows into 2 and 3 row blocks;
    # the last three pack over 1 MB of B per K block: AVX-512 row tiles then prefetch the next
    # panel into L2 (4, 2 and 1 lines per k for one, two and four or more tiles per block)
    for M, N, K in [(1, 1, 1), (7, 65, 3), (13, 100, 1100), (200, 130, 515), (17, 17, 0),
                    (30, 40, 70), (6, 600, 520), (12, 600, 520), (200, 600, 700)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
                big = rng.standard_normal((N, K + 3) if tb else (K, N + 3)).astype(dtype)
                b = big[:, 1 : K + 1] if tb else big[:, 1 : N + 1]
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b)
                outs = []
                for isa in isas:
                    for n in (1, 2, 3):
                        c = np.full((M, N + 2), 7, dtype)
                        _gru.gemm(a, ta, b, tb, c[:, 1 : N + 1], n, True, isa)
                        assert np.all(c[:, 0] == 7) and np.all(c[:, -1] == 7)
                        assert (rel_err(c[:, 1 : N + 1], want) < tol if K
                                else np.all(c[:, 1:-1] == 0))
                        outs.append(c)
                assert all(np.array_equal(o, outs[0]) for o in outs)
                if M > 3 and K:
                    rows = [M - 1, 0, 2]
                    sub = np.ascontiguousarray(a[:, rows] if ta else a[rows])
                    for isa in isas:
                        c = np.empty((3, N), dtype)
                        _gru.gemm(sub, ta, b, tb, c, 2, True, isa)
                        assert np.array_equal(c, outs[0][rows, 1 : N + 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.usefixtures("default_cpu_env")
def test_packed_gemm_own_panels_give_the_bits_of_shared_ones(dtype, rng):
    """With several threads and B's panels shared out evenly (at most 1/8 above the mean), each
    thread of the K-blocked GEMM packs and multiplies its own panels (fg_kb_own), A's strips
    packed by all in two buffers used in turn: C and B's column sums keep the bits of the
    shared packing, on every ISA, for both transpositions of A, partial last panels and row
    tiles, K blocks with a tail, and more than one row block; not where a transposed A's strips
    would pass 1 MB per K block (M rows x 512 k); paths_taken names it exactly where it runs."""
    from fastgru._cpu import _gru

    isas = [i for i in (1, 2) if i <= _gru.isa_best()]
    if not isas:
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    W = 64 if dtype == np.float32 else 32  # the panel width of both ISAs
    try:
        for M, N, K in [(13, 250, 1100), (200, 600, 1300), (7, 1000, 520), (1, 90, 3),
                        (600, 250, 3)]:
            npn = -(-N // W)
            for ta in (False, True):
                a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
                b = rng.standard_normal((K, N + 3)).astype(dtype)[:, 1 : N + 1]
                for isa in isas:
                    _gru.set_kb_own(False)
                    want, want_s = np.empty((M, N), dtype), np.empty(N, dtype)
                    _gru.gemm(a, ta, b, False, want, 2, True, isa, want_s)
                    for n in (2, 3, 4):
                        expect = (-(-npn // n) * n * 8 <= npn * 9
                                  and (not ta or M * 512 * np.dtype(dtype).itemsize <= 1 << 20))
                        for bs in (False, True):
                            _gru.set_kb_own(True)
                            c, s = np.full((M, N), 7, dtype), np.full(N, 7, dtype)
                            _gru.paths_taken()
                            _gru.gemm(a, ta, b, False, c, n, True, isa, s if bs else None)
                            took = "own_panels" in _gru.paths_taken()
                            assert took == expect, (M, N, K, ta, isa, n)
                            assert np.array_equal(c, want), (M, N, K, ta, isa, n, bs)
                            assert not bs or np.array_equal(s, want_s), (M, N, K, ta, isa, n)
                    # B transposed: never (its panels are packed from B's columns)
                    _gru.paths_taken()
                    _gru.gemm(a, ta, np.ascontiguousarray(b.T), True, c, 2, True, isa)
                    assert "own_panels" not in _gru.paths_taken()
                    assert np.array_equal(c, want)
        # explain says so for a training call on several threads
        spec = GRUSpec(64, activations.get("tanh"), activations.get("sigmoid"))
        for on in (False, True):
            _gru.set_kb_own(on)
            said = cpu.describe_kernel(spec, (64, 50, 32), 2, training=True)
            assert ("packing its own panels" in said) == (on and _gru.openmp()), said
    finally:
        _gru.set_kb_own(None)


# ---------------------------------------------------------------------------------------------
# per-step kernel: every ISA path


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("isa", ISAS)
def test_gemm_panels_every_isa(isa, dtype, rng):
    from fastgru._cpu import _gru

    if isa not in supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    code = ISAS.index(isa)
    # row counts beyond one tile: several full tiles plus the leftover rows; K beyond 512
    # (AVX2 runs k in chunks there, continuing each accumulator: still the generic bits);
    # panels over 1 MB in all (AVX-512 tiles of 4-6 rows then prefetch the next panel into L2:
    # 4 lines per k with one tile per panel, 2 with two or three tiles, 1 with four or more)
    for M, K, N in [(1, 7, 5), (2, 33, 70), (3, 64, 130), (5, 16, 64), (9, 40, 200),
                    (14, 20, 64), (16, 9, 130), (29, 5, 70), (31, 3, 200), (8, 700, 70),
                    (5, 513, 64), (4, 1029, 33), (5, 520, 576), (8, 520, 576), (16, 520, 560),
                    (25, 300, 1100)]:
        A = rng.standard_normal((M, K)).astype(dtype)
        U = rng.standard_normal((K, N)).astype(dtype)
        npn = -(-N // W)
        P = np.empty(npn * K * W, dtype)
        _gru.pack(U, 0, N, P)
        C = np.empty((M, npn * W), dtype)
        _gru.gemm_panels(code, A, P, K, npn, C)
        want = A.astype(np.float64) @ U.astype(np.float64)
        assert rel_err(C[:, :N], want) < (1e-13 if dtype == np.float64 else 1e-5)
        assert np.all(C[:, N:] == 0)  # zero-padded columns
        # bit-identical to the generic (fma) path, and row-by-row to single-row calls
        G = np.empty_like(C)
        _gru.gemm_panels(0, A, P, K, npn, G)
        assert np.array_equal(C, G)
        for i in range(M):
            one = np.empty((1, npn * W), dtype)
            _gru.gemm_panels(code, A[i : i + 1].copy(), P, K, npn, one)
            assert np.array_equal(one[0], C[i])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("isa", ISAS)
def test_grouped_product_in_either_order_gives_the_same_bits(isa, dtype, rng):
    """The grouped per-step product visiting its panels last to first (``rev``: what time loops
    do at every other step, fg_zigzag), over one group or several, writes exactly the bits of
    the plain product: every tile path (one- and two-row pointer tiles and 1 x 4 / 2 x 2 / 3 x 2
    blocks over an odd count of panels, 4-6 row tiles, leftover rows) and the L2 prefetch of
    the next panel, which then runs backwards (panels over 1 MB in all)."""
    from fastgru._cpu import _gru

    if isa not in supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    code = ISAS.index(isa)
    big = (1 << 20) // (W * np.dtype(dtype).itemsize) // 3 + 1  # K: 4 panels exceed 1 MB
    for M, n, K in [(1, 7, 9), (1, 9, 20), (2, 5, 33), (3, 5, 16), (4, 3, 8), (6, 6, 12),
                    (7, 9, 10), (7, 6, 10), (7, 7, 9), (8, 4, 5), (13, 2, 7), (5, 4, big),
                    (2, 4, big)]:
        A = rng.standard_normal((M, K)).astype(dtype)
        P = rng.standard_normal(n * K * W).astype(dtype)
        want = np.empty((M, n * W), dtype)
        _gru.gemm_panels(0, A, P, K, n, want)
        X, WP, Y = np.empty((0, 3), dtype), np.empty(3 * W, dtype), np.empty((0, W // 2), dtype)
        for groups in {1, n, next(g for g in (2, 3, 1) if n % g == 0)}:
            for rev in (False, True):
                C = np.full((M, n * W), np.nan, dtype)
                _gru.gemm_panels_proj(code, A, P, n, C, X, WP, Y, rev=rev, groups=groups)
                assert np.array_equal(C, want), (M, n, K, groups, rev)
    with pytest.raises(ValueError, match="groups must divide"):
        _gru.gemm_panels_proj(code, A, P, n, C, X, WP, Y, groups=3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strips_give_the_bits_of_rows(dtype, rng):
    """AVX-512 products of 4+ rows over 12+ panels read A repacked as strips (fg_strips): the
    same bits as reading its rows (and as the generic kernel), for every tile height (4-6 rows,
    7 = 6 + 1, many tiles), K with and without a partial group of four, plain and grouped
    products in either panel order; fewer rows or panels read the rows."""
    from fastgru._cpu import _gru

    if "avx512" not in supported_isas():
        pytest.skip("avx512 not supported by this CPU")
    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    X, WP, Y = np.empty((0, 3), dtype), np.empty(3 * W, dtype), np.empty((0, W // 2), dtype)
    try:
        for M, K, n in [(4, 1, 12), (5, 2, 13), (6, 3, 12), (7, 5, 12), (8, 4, 16), (9, 17, 12),
                        (12, 19, 13), (13, 64, 12), (20, 7, 14), (37, 33, 12), (3, 16, 12),
                        (2, 16, 12), (16, 16, 11), (9, 8, 8)]:
            A = rng.standard_normal((M + 2, K)).astype(dtype)[1:-1]  # rows apart from K
            A = np.lib.stride_tricks.as_strided(A, (M, K), A.strides)
            P = rng.standard_normal(n * K * W).astype(dtype)
            want = np.empty((M, n * W), dtype)
            _gru.gemm_panels(0, np.ascontiguousarray(A), P, K, n, want)
            applies = M >= 4 and n >= 12
            for on in (True, False):
                _gru.set_strips(on)
                _gru.paths_taken()
                C = np.full((M, n * W), np.nan, dtype)
                _gru.gemm_panels(2, np.ascontiguousarray(A), P, K, n, C)
                assert np.array_equal(C, want), (M, K, n, on)
                for groups, rev in ((1, True), (2 if n % 2 == 0 else 1, False)):
                    C = np.full((M, n * W), np.nan, dtype)
                    _gru.gemm_panels_proj(2, np.ascontiguousarray(A), P, n, C, X, WP, Y,
                                          rev=rev, groups=groups)
                    assert np.array_equal(C, want), (M, K, n, on, groups, rev)
                assert ("strips" in _gru.paths_taken()) == (on and applies), (M, K, n, on)
        # beyond 8 MB of strips (a thread keeps its scratch) the rows are read as they are
        rows = (8 << 20) // (1024 * np.dtype(dtype).itemsize)  # 8 MB of strips at K = 1024
        for M, took in ((rows, True), (rows + 1, False)):
            A = rng.standard_normal((M, 1024)).astype(dtype)
            P = rng.standard_normal(12 * 1024 * W).astype(dtype)
            got = []
            for on in (True, False):
                _gru.set_strips(on)
                _gru.paths_taken()
                got.append(np.empty((M, 12 * W), dtype))
                _gru.gemm_panels(2, A, P, 1024, 12, got[-1])
                assert ("strips" in _gru.paths_taken()) == (on and took), (M, on)
            assert np.array_equal(*got)
    finally:
        _gru.set_strips(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("default_cpu_env")
def test_layers_give_the_same_bits_with_and_without_strips(dtype, rng, monkeypatch):
    """Forward (several chunks, masks, both directions, batch- and unit-split plans) and the
    backward's gradients: the bits do not depend on the strips switch, which runs where the
    products have 4+ rows and 12+ panels (here u=300: 15 panels per step float32, 30 float64)."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)
    avx512 = "avx512" in supported_isas()
    try:
        for B, T, u, kw in ((9, 7, 300, {"mask": "arbitrary"}), (13, 40, 300, {}),
                            (5, 6, 300, {"go_backwards": True, "reset_after": False}),
                            (2, 5, 300, {})):
            args, ckw = make_case(rng, B, T, 24, u, dtype=dtype, scale=0.1,
                                  return_sequences=True, **kw)
            dout = rng.standard_normal((B, T, u)).astype(dtype)
            got = {}
            for on in (True, False):
                _gru.set_strips(on)
                for n in (1, 2):
                    _gru.paths_taken()
                    o, h, tape = cpu.forward(*args, **ckw, n_threads=n, training=True)
                    got[on, n] = [o, h, *cpu.backward(tape, dout, n_threads=n)]
                    ran = "strips" in _gru.paths_taken()
                    if not (on and avx512):
                        assert not ran
                    elif n == 1 and B >= 4:  # (two threads may split rows or units further)
                        assert ran, (B, u)
            first = got[True, 1]
            for v in got.values():
                assert all((a is None and b is None) or np.array_equal(a, b)
                           for a, b in zip(first, v)), (B, T, u, kw)
            assert rel_err(first[0], ref_forward(args, ckw)[0]) < TOL[dtype]
    finally:
        _gru.set_strips(None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("isa", ISAS)
def test_step_product_reads_the_rest_of_a_only_after_its_wait(isa, dtype, rng):
    """A split team's step product (fg_step_wait): the columns k >= kw of A (the partners'
    units of h) hold NaN until the wait fills them in, exactly once; the result is still the
    plain product's bits (AVX-512, one or two rows over panels within 1 MB: k < kw first, then
    the rest continuing the sums; otherwise the wait comes first), with and without projection
    jobs, in either panel order, for kw at 0, inside and at K."""
    from fastgru._cpu import _gru

    if isa not in supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    R = _gru.PROJ_JOB_ROWS
    code = ISAS.index(isa)
    big = (1 << 20) // (W * np.dtype(dtype).itemsize) // 4 + 1  # K: 4 panels exceed 1 MB
    for M, n, K, D, nj in [(1, 3, 40, 7, 2), (1, 6, 128, 64, 5), (2, 4, 33, 9, 3),
                           (1, 5, 9, 20, 1), (3, 4, 20, 5, 1), (6, 2, 17, 3, 0),
                           (1, 4, big, 16, 1)]:
        A = rng.standard_normal((M, K)).astype(dtype)
        P = rng.standard_normal(n * K * W).astype(dtype)
        X = rng.standard_normal((R * nj, D)).astype(dtype)
        WP = rng.standard_normal((nj + 1) // 2 * D * W).astype(dtype)
        want, want_y = np.empty((M, n * W), dtype), np.empty((R * nj, W // 2), dtype)
        _gru.gemm_panels_proj(code, A, P, n, want, X, WP, want_y)
        for kw in (0, 1, K // 2, K - 1, K):
            for rev in (False, True):
                early = A.copy()
                early[:, kw if kw < K else 0 :] = np.nan  # kw = K: nothing to split
                C = np.full((M, n * W), np.nan, dtype)
                Y = np.full((R * nj, W // 2), np.nan, dtype)
                calls = _gru.gemm_panels_proj(code, early, P, n, C, X, WP, Y, rev=rev, kw=kw,
                                              A_later=A)
                assert calls == 1, (M, n, K, kw, rev)
                assert np.array_equal(C, want) and np.array_equal(Y, want_y), (M, n, K, kw, rev)
    # no panels (a thread of a team with none): the wait still comes, once
    early = np.full_like(A, np.nan)
    assert _gru.gemm_panels_proj(code, early, P[:0], 0, np.empty((A.shape[0], 0), dtype),
                                 X, WP, Y, kw=1, A_later=A) == 1
    assert np.array_equal(early, A)
    with pytest.raises(ValueError, match="A_later must have the shape"):
        _gru.gemm_panels_proj(code, A, P, n, C, X, WP, Y, kw=1, A_later=A[:, :-1].copy())


@pytest.mark.skipif("avx512" not in supported_isas(), reason="AVX-512 only")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_step_product_and_jobs_are_the_separate_bits(dtype, rng):
    """The fused one-row step (fg_gemm_panels_grp_proj: 1 x 2 / 1 x 1 pointer tiles of U each
    with a projection job of eight rows x half an input-kernel panel riding along, then the
    rest of the panels alone, then the jobs left over alone) gives exactly the bits of the
    separate products, with K above, equal to and below D, fewer and more jobs than fused
    tiles, more panels than one pointer batch (24), and with and without the tiles' L1
    prefetches; two or three rows run the product and then the jobs, the same bits."""
    from fastgru._cpu import _gru

    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    R = _gru.PROJ_JOB_ROWS
    cases = [(M, n, K, D, nj) for M in (1, 2, 3)
             for n, K, D, nj in [(1, 9, 5, 1), (2, 20, 20, 1), (3, 33, 7, 2), (3, 7, 33, 2),
                                 (4, 64, 64, 4), (5, 16, 3, 1), (6, 40, 12, 5), (7, 3, 9, 0),
                                 (9, 128, 64, 3), (2, 5, 8, 4), (30, 6, 5, 14), (50, 4, 3, 40)]]
    try:
        for pf in (False, True):
            _gru.set_ptr_prefetch(pf)
            for M, n, K, D, nj in cases:
                A = rng.standard_normal((M, K)).astype(dtype)
                P = rng.standard_normal(n * K * W).astype(dtype)
                X = rng.standard_normal((R * nj, D)).astype(dtype)
                WP = rng.standard_normal((nj + 1) // 2 * D * W).astype(dtype)
                C = np.full((M, n * W), np.nan, dtype)
                Y = np.full((R * nj, W // 2), np.nan, dtype)
                _gru.gemm_panels_proj(2, A, P, n, C, X, WP, Y)
                want = np.empty_like(C)
                _gru.gemm_panels(0, A, P, K, n, want)
                assert np.array_equal(C, want), (M, n, K, D, nj, pf)
                for j in range(nj):  # half j % 2 of panel j // 2
                    y = np.empty((R, W), dtype)
                    p = j // 2
                    _gru.gemm_panels(0, X[R * j : R * (j + 1)].copy(),
                                     WP[p * D * W : (p + 1) * D * W], D, 1, y)
                    half = y[:, (j % 2) * (W // 2) : (j % 2 + 1) * (W // 2)]
                    assert np.array_equal(Y[R * j : R * (j + 1)], half), (M, n, K, D, nj, j, pf)
                # other ISAs (no fused tiles) run the product and then the jobs: same bits
                for isa in range(_gru.isa_best()):
                    C2, Y2 = np.empty_like(C), np.empty_like(Y)
                    _gru.gemm_panels_proj(isa, A, P, n, C2, X, WP, Y2)
                    assert np.array_equal(C2, C) and np.array_equal(Y2, Y), (isa, M, n, nj)
    finally:
        _gru.set_ptr_prefetch(None)
    for bad in (-1, _gru.isa_best() + 1):  # a kernel this CPU lacks would fault (SIGILL)
        with pytest.raises(ValueError, match="isa must be"):
            _gru.gemm_panels_proj(bad, A, P, n, C, X, WP, Y)
        with pytest.raises(ValueError, match="isa must be"):
            _gru.gemm_panels(bad, A, P, K, n, C)


@pytest.mark.parametrize("proj", ["panels", "blas"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_every_isa_bit_identical(reset_after, dtype, proj, rng, monkeypatch):
    """Per input-projection path (packed panels, or BLAS), every ISA gives the same bits."""
    monkeypatch.setenv("FASTGRU_CPU_PROJ", proj)
    args, kw = make_case(rng, 5, 6, 7, 70, reset_after=reset_after, mask="arbitrary",
                         return_sequences=True, dropout="per_gate", dtype=dtype)
    outs = {}
    for isa in supported_isas():
        outs[isa] = check_forward(args, kw, dtype, kernel=isa)
    monkeypatch.setenv("FASTGRU_CPU_KERNEL", "generic")
    outs["env"] = cpu.forward(*args, **kw)[:2]
    for o, h in outs.values():
        assert np.array_equal(o, outs["generic"][0]) and np.array_equal(h, outs["generic"][1])


def test_kernel_argument_validation(rng, monkeypatch):
    args, kw = make_case(rng)
    with pytest.raises(ValueError, match="kernel must be one of"):
        cpu.forward(*args, **kw, kernel="sse9")
    monkeypatch.setenv("FASTGRU_CPU_PROJ", "mkl")
    with pytest.raises(ValueError, match="FASTGRU_CPU_PROJ must be"):
        cpu.forward(*args, **kw)


@pytest.mark.usefixtures("default_cpu_env")
def test_projection_paths_agree(rng, monkeypatch):
    """The packed-panel and BLAS input projections both match the reference (different
    summation, so not the same bits); auto picks panels except for the generic kernel."""
    args, kw = make_case(rng, 4, 7, 33, 70, return_sequences=True, dtype=np.float32)
    for proj in ("panels", "blas"):
        monkeypatch.setenv("FASTGRU_CPU_PROJ", proj)
        check_forward(args, kw, np.float32)
    monkeypatch.setenv("FASTGRU_CPU_PROJ", "auto")
    text = cpu.describe_kernel(args[3], (4, 7, 33), kernel="generic")
    assert "projection by BLAS" in text
    assert "a row's bits may depend on the other rows" in text  # BLAS: no such promise
    if "avx2" in supported_isas():
        text = cpu.describe_kernel(args[3], (4, 7, 33), kernel="avx2")
        assert "projection by the avx2 packed-panel" in text
        assert "may depend" not in text
        monkeypatch.setenv("FASTGRU_CPU_WGRAD", "blas")
        assert "may depend" in cpu.describe_kernel(args[3], (4, 7, 33), kernel="avx2")
        assert "may depend" not in cpu.describe_kernel(args[3], (4, 7, 33), kernel="avx2",
                                                       training=False)


# ---------------------------------------------------------------------------------------------
# forward vs reference


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.sampled_from([1, 2, 5]),
    T=st.sampled_from([1, 2, 7]),
    D=st.sampled_from([1, 3, 8]),
    u=st.sampled_from([1, 5, 33, 70]),
    reset_after=st.booleans(),
    act=st.sampled_from(["tanh", "relu", "linear", "softsign", "gelu", "hard_tanh", "elu"]),
    rec_act=st.sampled_from(["sigmoid", "hard_sigmoid", "sparse_sigmoid"]),
    mask=st.sampled_from(["none", "right", "arbitrary"]),
    go_backwards=st.booleans(),
    return_sequences=st.booleans(),
    h0=st.booleans(),
    dropout=st.sampled_from(["none", "shared", "per_gate", "recurrent"]),
    zero_output_for_mask=st.booleans(),
    use_bias=st.booleans(),
    dtype=st.sampled_from([np.float64, np.float32]),
    n_threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**31),
)
def test_forward_matches_reference(seed, dtype, n_threads, B, T, D, u, **cfg):
    rng = np.random.default_rng(seed)
    args, kw = make_case(rng, B, T, D, u, dtype=dtype, **cfg)
    check_forward(args, kw, dtype, n_threads=n_threads)


@pytest.mark.parametrize("name", activations.NAMES)
def test_every_activation_in_both_slots(name, rng):
    for dtype in (np.float64, np.float32):
        args, kw = make_case(rng, 3, 4, 3, 5, act=name, mask="arbitrary", dtype=dtype,
                             return_sequences=True, scale=0.3)
        check_forward(args, kw, dtype)
        # small weights and few steps: unbounded "gates" (exponential, relu...) stay finite
        args, kw = make_case(rng, 3, 3, 3, 5, rec_act=name, reset_after=False, dtype=dtype,
                             scale=0.1, h0=False)
        check_forward(args, kw, dtype)


def test_keras_measured_values():
    """KERAS_GRU_SPEC 3.4: TF values for units=2, constant weights, masks and h0."""
    u = 2
    w = Weights(np.full((3, 3 * u), 0.01), np.full((u, 3 * u), 0.02), np.full((2, 3 * u), 0.03))
    x = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
    spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"), return_sequences=True)
    h0 = np.array([[1.0, 2], [3, 4]])
    mask = np.array([[False, True, False, True], [False] * 4])
    out, h, _ = cpu.forward(x, w, h0, spec, mask=mask)
    np.testing.assert_allclose(out[0], [[0, 0], [0.6467736, 1.2064872], [0.6467736, 1.2064872],
                                        [0.52910656, 0.8638054]], rtol=1e-6)
    assert np.all(out[1] == 0)
    np.testing.assert_allclose(h, [[0.52910656, 0.8638054], [3, 4]], rtol=1e-6)


def test_empty_batch_returns_empty():
    for rs in (True, False):
        spec = GRUSpec(4, activations.get("tanh"), activations.get("sigmoid"),
                       return_sequences=rs)
        w = Weights(np.zeros((3, 12)), np.zeros((4, 12)), np.zeros((2, 12)))
        out, h, tape = cpu.forward(np.zeros((0, 5, 3)), w, np.zeros((0, 4)), spec, training=True)
        assert out.shape == ((0, 5, 4) if rs else (0, 4)) and h.shape == (0, 4)
        g = cpu.backward(tape, np.zeros(out.shape))
        assert g.x.shape == (0, 5, 3) and g.kernel.shape == (3, 12) and np.all(g.kernel == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_and_fortran_inputs(dtype, rng):
    args, kw = make_case(rng, 4, 6, 5, 9, mask="arbitrary", return_sequences=True,
                         dropout="shared", dtype=dtype)
    x, w, h0, spec = args
    want = cpu.forward(*args, **kw)
    big = np.zeros((8, 12, 10), dtype)
    big[::2, ::2, ::2] = x
    xs = big[::2, ::2, ::2]
    wf = Weights(np.asfortranarray(w.kernel), np.asfortranarray(w.recurrent_kernel),
                 np.asfortranarray(w.bias))
    mask = np.asfortranarray(kw["mask"])
    got = cpu.forward(xs, wf, np.asfortranarray(h0), spec, mask=mask, dropout=kw["dropout"])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    got = cpu.forward(np.asfortranarray(x), w, h0[::-1][::-1], spec, mask=mask.astype(np.int8),
                      dropout=kw["dropout"])
    assert np.array_equal(got[0], want[0])


# ---------------------------------------------------------------------------------------------
# determinism, threads, concurrency


@pytest.mark.parametrize("proj", ["panels", "blas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_rows_independent_of_threads_and_batch(dtype, reset_after, proj, rng, monkeypatch):
    """A row's bits depend neither on n_threads nor on the other rows in its batch, on the
    batch-split and on both unit-split paths (batch smaller than the thread count; recurrent
    kernel beyond L2 with a small batch: u=300), with either input projection."""
    monkeypatch.setenv("FASTGRU_CPU_PROJ", proj)
    for u in (9, 240, 300):
        args, kw = make_case(rng, 7, 9, 6, u, reset_after=reset_after, mask="arbitrary",
                             return_sequences=True, dropout="per_gate", dtype=dtype)
        x, w, h0, spec = args
        d = kw["dropout"]
        base = cpu.forward(*args, **kw, n_threads=1)
        for n in (2, 3, 4):
            got = cpu.forward(*args, **kw, n_threads=n)
            assert np.array_equal(got[0], base[0]) and np.array_equal(got[1], base[1])
        for rows in ([3], [0, 6], [5, 1, 2], [4, 4, 4, 4, 4]):
            sub = DropoutMasks(d.inputs[:, rows], d.recurrent[:, rows])
            for n in (1, 2):
                o, h, _ = cpu.forward(x[rows], w, h0[rows], spec, mask=kw["mask"][rows],
                                      dropout=sub, n_threads=n)
                assert np.array_equal(o, base[0][rows]) and np.array_equal(h, base[1][rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_projection_in_place_gives_the_bits_of_gathered_rows(dtype, go_backwards, rng,
                                                              monkeypatch):
    """A thread with 16 or more rows and a small input kernel projects x where it lies, one
    product per step; fewer rows, or input dropout, gather the rows first. The same bits
    either way (and the reference's numbers), over several chunks of steps."""
    monkeypatch.setenv("FASTGRU_CPU_PROJ", "panels")
    args, kw = make_case(rng, 40, 70, 6, 9, mask="arbitrary", return_sequences=True,
                         go_backwards=go_backwards, dtype=dtype)
    x, w, h0, spec = args
    from fastgru._cpu import _gru

    _gru.paths_taken()
    base = cpu.forward(*args, **kw, n_threads=1)
    assert "projection_in_place" in _gru.paths_taken()
    assert rel_err(base[0], ref_forward(args, kw)[0]) < TOL[dtype]
    for n in (2, 3):  # 20 / 14 rows per thread: in place, or some threads gather
        got = cpu.forward(*args, **kw, n_threads=n)
        assert np.array_equal(got[0], base[0]) and np.array_equal(got[1], base[1])
    _gru.paths_taken()
    for rows in ([3], list(range(5, 15))):
        o, h, _ = cpu.forward(x[rows], w, h0[rows], spec, mask=kw["mask"][rows], n_threads=1)
        assert "projection_in_place" not in _gru.paths_taken()
        assert np.array_equal(o, base[0][rows]) and np.array_equal(h, base[1][rows])
    # input dropout multiplies the gathered rows: never in place
    keep = DropoutMasks(((rng.random((40, 6)) > 0.3) / 0.7).astype(dtype), None)
    dropped = cpu.forward(x, w, h0, spec, mask=kw["mask"], dropout=keep, n_threads=1)
    assert "projection_in_place" not in _gru.paths_taken()
    plain = cpu.forward((x * keep.inputs[:, None, :]).astype(dtype), w, h0, spec,
                        mask=kw["mask"], n_threads=1)
    assert np.array_equal(dropped[0], plain[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", ["none", "arbitrary"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_grouped_unit_split_rows_match_one_thread(dtype, mask, reset_after, rng, monkeypatch):
    """Without recurrent dropout a unit-split team multiplies each thread's panels of all gates
    in one grouped pass (pointer tiles for one or two rows) and, with the default activations,
    runs the fused gate pass: the bits of one thread, for 1, 2 and 4 rows, 1-4 threads, and
    unit counts giving 1, 2 or 3+ panels per thread and gate."""
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    for u in (70, 130, 300, 530):
        args, kw = make_case(rng, 4, 6, 5, u, reset_after=reset_after, mask=mask,
                             return_sequences=True, dtype=dtype, scale=0.1)
        x, w, h0, spec = args
        base = cpu.forward(*args, **kw, n_threads=1)
        for rows in ([2], [0, 3], [0, 1, 2, 3]):
            m = None if kw["mask"] is None else kw["mask"][rows]
            for n in (2, 3, 4):
                o, h, _ = cpu.forward(x[rows], w, h0[rows], spec, mask=m, n_threads=n)
                assert np.array_equal(o, base[0][rows]) and np.array_equal(h, base[1][rows])
        assert rel_err(base[0], ref_forward(args, kw)[0]) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", ["none", "arbitrary"])
def test_fused_gate_pass_bits_equal_separate_passes(dtype, mask, rng, monkeypatch):
    """tanh/sigmoid with reset_after run one fused gate loop forward and one fused loop per
    row backward; they must give the bits of the separate passes (FASTGRU_CPU_FUSED=0):
    outputs, training record and gradients, on batch- and unit-split plans."""
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    for B, u, rs, back in ((5, 40, True, False), (1, 150, False, True), (3, 300, True, True)):
        args, kw = make_case(rng, B, 7, 6, u, mask=mask, return_sequences=rs, go_backwards=back,
                             dtype=dtype, scale=0.3)
        for n in (1, 2):
            got = {}
            for fused in ("1", "0"):
                monkeypatch.setenv("FASTGRU_CPU_FUSED", fused)
                o, h, tape = cpu.forward(*args, **kw, n_threads=n, training=True)
                g = cpu.backward(tape, np.cos(o), np.sin(h), n_threads=n)
                got[fused] = [o, h] + [tape.saved[k] for k in ("pre", "hprev", "rp")] + list(g)
            assert all(np.array_equal(a, b) for a, b in zip(got["1"], got["0"])), (B, u, n)


@pytest.mark.skipif("avx512" not in supported_isas(), reason="AVX-512 only")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("default_cpu_env")
def test_fused_projection_bits_equal_projection_up_front(dtype, rng, monkeypatch):
    """A one-row time loop (AVX-512, D <= u, panels within 1.5 MB) projects all but each chunk's
    first eight steps inside earlier steps' products, one block of eight steps ahead: the bits of
    projecting each chunk up front (FASTGRU_CPU_FUSED_PROJ=0), outputs, last state and training
    record, with T below, at and beyond one block and across chunks (16 steps here), odd panel
    counts, both gate forms, masks, go_backwards, one thread, unit-split teams and rows split
    one per thread, and a team whose threads own unequal panel counts (one alone would fuse,
    the other not: the team decides as one); the kernels' scratch is poisoned before every
    call, so no row can pass unprojected. Explain says when it applies."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_PROJ_ROWS", 16)
    W = _gru.PANEL_D if dtype == np.float64 else _gru.PANEL_F
    cases = [  # B, T, D, u, reset_after, mask, go_backwards, return_sequences
        (1, 1, 8, 70, True, "none", False, True),
        (1, 8, 8, 70, True, "none", False, True),
        (1, 9, 20, 130, False, "arbitrary", True, False),
        (1, 40, 33, 64, True, "right", False, True),
        (1, 23, 70, 70, True, "none", True, True),
        (1, 18, 5, 150, False, "none", False, True),
        (2, 21, 9, 33, True, "arbitrary", False, True),
    ]
    uneven = (1, 19, 100, 448, True, "none", False, True) if W == 64 else \
        (1, 19, 150, 288, True, "none", False, True)  # 7 / 9 panels: 3 + 4 / 4 + 5 per thread
    npu = -(-uneven[3] // W)
    assert _gru.fuse_projection(2, W == 32, 1, npu // 2, uneven[3], uneven[2])
    assert not _gru.fuse_projection(2, W == 32, 1, npu - npu // 2, uneven[3], uneven[2])
    for B, T, D, u, ra, mask, back, rs in cases + [uneven]:
        npu = -(-u // W)
        assert _gru.fuse_projection(2, dtype == np.float64, 1, npu, u, D) or u == uneven[3]
        args, kw = make_case(rng, B, T, D, u, reset_after=ra, mask=mask, go_backwards=back,
                             return_sequences=rs, dtype=dtype,
                             scale=min(0.3, 1.5 / np.sqrt(u)))  # no chaos at large u
        for n in (1, 2, 3):
            got = {}
            for fuse in ("1", "0"):
                monkeypatch.setenv("FASTGRU_CPU_FUSED_PROJ", fuse)
                _gru.workspace("poison")
                o, h, tape = cpu.forward(*args, **kw, n_threads=n, training=True)
                got[fuse] = [o, h] + [tape.saved[k] for k in ("pre", "hprev", "rp")]
            assert all(np.array_equal(a, b) for a, b in zip(got["1"], got["0"])), (B, T, u, n)
        assert rel_err(got["1"][0], ref_forward(args, kw)[0]) < TOL[dtype]
    tanh, sig = activations.get("tanh"), activations.get("sigmoid")
    monkeypatch.setenv("FASTGRU_CPU_FUSED_PROJ", "1")
    inside = "projected inside earlier steps' recurrent products"
    assert inside in cpu.describe_kernel(GRUSpec(128, tanh, sig), (1, 100, 64), 1, dtype=dtype)
    # a 3-row batch on 2 threads (u = 32: one panel, no unit split) runs loops of 1 and 2 rows
    text = cpu.describe_kernel(GRUSpec(32, tanh, sig), (3, 1000, 32), 2, dtype=dtype)
    assert "in the time loops of one row: all but" in text and inside in text
    for shape, n in (((1, 100, 256), 1), ((4, 100, 64), 1), ((1, 100, 512), 2)):  # D > u; rows
        assert inside not in cpu.describe_kernel(GRUSpec(128, tanh, sig), shape, n, dtype=dtype)
    assert _gru.fuse_projection(2, False, 1, 4, 256, 128)  # 1x1000x128x256: 1.2 MB of panels
    assert not _gru.fuse_projection(2, False, 1, 8, 512, 256)  # 4.7 MB
    assert not _gru.fuse_projection(1, False, 1, 2, 128, 64)  # AVX2: no fused tiles
    monkeypatch.setenv("FASTGRU_CPU_FUSED_PROJ", "0")
    assert inside not in cpu.describe_kernel(GRUSpec(128, tanh, sig), (1, 100, 64), 1)


@pytest.mark.skipif("avx512" not in supported_isas(), reason="AVX-512 only")
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.sampled_from([1, 1, 1, 2, 3]),
    T=st.one_of(st.integers(9, 48), st.integers(1, 8)),
    u=st.one_of(st.integers(1, 330), st.sampled_from([63, 64, 65, 127, 128, 129, 192, 320])),
    d_frac=st.floats(0.0, 1.0),
    n_threads=st.integers(1, 3),
    proj_rows=st.sampled_from([9, 12, 16, 17, 24, 512, 8]),
    reset_after=st.booleans(),
    mask=st.sampled_from(["none", "arbitrary"]),
    go_backwards=st.booleans(),
    training=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31),
)
def test_fused_projection_property(B, T, u, d_frac, n_threads, proj_rows, reset_after, mask,
                                   go_backwards, training, dtype, seed, monkeypatch):
    """Any configuration: the fused projection (where it applies) gives the bits of the
    up-front one, with the kernels' scratch poisoned before each call."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_PROJ_ROWS", proj_rows)
    D = max(1, round(d_frac * u))
    args, kw = make_case(np.random.default_rng(seed), B, T, D, u, reset_after=reset_after,
                         mask=mask, go_backwards=go_backwards, return_sequences=True,
                         dtype=dtype, scale=0.3)
    got = {}
    for fuse in ("1", "0"):
        monkeypatch.setenv("FASTGRU_CPU_FUSED_PROJ", fuse)
        _gru.workspace("poison")
        o, h, tape = cpu.forward(*args, **kw, n_threads=n_threads, training=training)
        got[fuse] = [o, h] + ([tape.saved[k] for k in ("pre", "hprev", "rp")] if training
                              else [])
    assert all(np.array_equal(a, b) for a, b in zip(got["1"], got["0"]))


def test_training_record_all_or_none():
    from fastgru._cpu import _gru

    f = np.zeros((1, 1, 1), np.float32)
    w = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="all three"):
        _gru.forward(f, w, None, np.zeros(192, np.float32), np.zeros(3, np.float32),
                     np.zeros(3, np.float32), np.zeros((1, 1), np.float32), None, None, False,
                     None, np.zeros((1, 1, 1), np.float32), np.zeros((1, 1), np.float32),
                     np.zeros((1, 1, 3), np.float32), None, None, 1, True, False, True, False,
                     1, 2, 1, 0, 1, False)


_THREAD_LIMIT_CHILD = """
import sys, numpy as np
from fastgru.engines import cpu
from fastgru.engines.base import GRUSpec, Weights
from fastgru import activations
cpu._SPLIT_MIN_WORK = cpu._MIN_THREAD_WORK = 0
cpu._OMP_THREAD_LIMIT = 2  # plan past the limit (which plans keep to): the kernels' fallback
d = np.load(sys.argv[1])
spec0 = (1, 6, 5, int(d["u"]), 4, 2)
assert cpu._plan(*spec0)[:2] == (2, True), cpu._plan(*spec0)  # a 2-thread unit-split plan
spec = GRUSpec(int(d["u"]), activations.get("tanh"), activations.get("sigmoid"),
               return_sequences=True)
o, h, _ = cpu.forward(d["x"], Weights(d["k"], d["r"], d["b"]), d["h0"], spec, n_threads=2)
np.save(sys.argv[2], o)
"""


def test_split_team_with_fewer_threads_than_planned(rng, tmp_path):
    """OMP_THREAD_LIMIT=1 grants one thread to a planned 2-thread unit-split team (plans keep to
    the limit; one made past it, as with OMP_DYNAMIC): that thread
    runs the whole team's work (no barrier waits for a missing partner) with the same bits;
    20 steps: with AVX-512 the lone thread also projects inside its products (jobs of 8 rows)."""
    import os
    import subprocess
    import sys

    args, kw = make_case(rng, 1, 20, 5, 300, return_sequences=True, dtype=np.float32, scale=0.1)
    x, w, h0, spec = args
    np.savez(tmp_path / "in.npz", x=x, k=w.kernel, r=w.recurrent_kernel, b=w.bias, h0=h0,
             u=spec.units)
    env = _child_env(dict(os.environ, OMP_THREAD_LIMIT="1"))
    subprocess.run([sys.executable, "-c", _THREAD_LIMIT_CHILD, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npy")], env=env, check=True, timeout=120, cwd=tmp_path)
    want = cpu.forward(*args, **kw, n_threads=1)[0]
    assert np.array_equal(np.load(tmp_path / "out.npy"), want)


_L1_PREFETCH_CHILD = """
import sys, numpy as np
from fastgru.engines import cpu
from fastgru.engines.base import GRUSpec, Weights
from fastgru import activations
cpu._SPLIT_MIN_WORK = cpu._MIN_THREAD_WORK = 0
d = np.load(sys.argv[1])
spec = GRUSpec(int(d["u"]), activations.get("tanh"), activations.get("sigmoid"),
               return_sequences=True)
outs = {}
for name in ("x1", "x2"):
    for dt in (np.float32, np.float64):
        w = Weights(*(d[k].astype(dt) for k in ("k", "r", "b")))
        for n in (1, 2):
            outs[f"{name}_{np.dtype(dt).name}_{n}"] = cpu.forward(
                d[name].astype(dt), w, None, spec, n_threads=n)[0]
outs["on"] = np.array(cpu._gru.ptr_prefetch())
np.savez(sys.argv[2], **outs)
"""


@pytest.mark.skipif("avx512" not in supported_isas(), reason="needs AVX-512")
def test_l1_prefetch_setting_changes_no_bits(rng, tmp_path):
    """FASTGRU_CPU_L1_PREFETCH=0 / 1 (read once per process, hence the children) switches the
    one-/two-row pointer tiles' software prefetches: batch 1 and 2, float32 and float64, 1 and
    2 threads, the same bits either way and the reference's values."""
    import os
    import subprocess
    import sys

    u, D = 200, 7  # panels of all three gates, a leftover panel per gate
    w = Weights(rng.normal(size=(D, 3 * u)) * 0.3, rng.normal(size=(u, 3 * u)) * 0.1,
                rng.normal(size=(2, 3 * u)) * 0.1)
    x1, x2 = rng.normal(size=(1, 9, D)), rng.normal(size=(2, 9, D))
    np.savez(tmp_path / "in.npz", x1=x1, x2=x2, k=w.kernel, r=w.recurrent_kernel, b=w.bias, u=u)
    got = {}
    for flag in ("0", "1"):
        env = _child_env(dict(os.environ, FASTGRU_CPU_L1_PREFETCH=flag))
        subprocess.run([sys.executable, "-c", _L1_PREFETCH_CHILD, str(tmp_path / "in.npz"),
                        str(tmp_path / f"out{flag}.npz")], env=env, check=True, timeout=120,
                       cwd=tmp_path)
        got[flag] = dict(np.load(tmp_path / f"out{flag}.npz"))
    assert not got["0"].pop("on") and got["1"].pop("on")
    from fastgru._cpu import _gru  # the in-process switch (bench/ab.py) gives those bits too
    try:
        for flag in (False, True):
            _gru.set_ptr_prefetch(flag)
            assert _gru.ptr_prefetch() is flag
            dt = np.float32
            w32 = Weights(*(a.astype(dt) for a in w))
            out = cpu.forward(x1.astype(dt), w32, None, GRUSpec(u, activations.get("tanh"),
                              activations.get("sigmoid"), return_sequences=True),
                              n_threads=2)[0]
            assert np.array_equal(out, got["0"]["x1_float32_2"])
    finally:
        _gru.set_ptr_prefetch(None)
    assert got["0"].keys() == got["1"].keys() and len(got["0"]) == 8
    spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"), return_sequences=True)
    for key, a in got["0"].items():
        assert np.array_equal(a, got["1"][key]), key
        x = x1 if key.startswith("x1") else x2
        want = reference.forward(x, w, np.zeros((x.shape[0], u)), spec)[0]
        tol = 1e-4 if "float32" in key else 1e-10
        np.testing.assert_allclose(a, want, atol=tol, err_msg=key)


def test_l1_prefetch_default_off_below_1mb(tmp_path):
    """Without FASTGRU_CPU_L1_PREFETCH the pointer tiles issue no software L1 prefetches while
    a thread's panels fit in 1 MB (faster on Sapphire Rapids and Zen 4), and take them beyond
    (streamed from L3); any value but "1" counts as unset."""
    code = ("from fastgru._cpu import _gru; "
            "print(_gru.ptr_prefetch(), _gru.ptr_prefetch(1 << 20), _gru.ptr_prefetch(3 << 20))")
    for value in (None, "", "yes"):
        out = _child_stdout(code, "FASTGRU_CPU_L1_PREFETCH", value, tmp_path).split()
        assert out == ["False", "False", "True"], (value, out)


def _child_stdout(code, name, value, tmp_path):
    """What ``python -c code`` prints with environment variable ``name`` set to ``value``
    (None: unset) and no other FASTGRU_CPU_* variable: the switches are read once per process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != name and not k.startswith("FASTGRU_CPU_")}
    if value is not None:
        env[name] = value
    return subprocess.run([sys.executable, "-c", code], env=_child_env(env), check=True,
                          timeout=120, capture_output=True, text=True, cwd=tmp_path).stdout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gate_prefetch_setting_changes_no_bits(dtype, rng, monkeypatch):
    """The forward gate pass's prefetch of the next row's inputs (on / off: the in-process
    switch bench/ab.py uses) changes no bit: fused and separate gate passes, masks, batch-
    and unit-split plans, inference and the training record, and the reference's values."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)
    try:
        for B, u, mask in ((6, 40, "none"), (5, 150, "arbitrary"), (2, 70, "right")):
            args, kw = make_case(rng, B, 6, 5, u, mask=mask, dtype=dtype, scale=0.3,
                                 return_sequences=True)
            got = {}
            for pf in (True, False):
                _gru.set_gate_prefetch(pf)
                assert _gru.gate_prefetch() is pf
                for fused in ("1", "0"):
                    monkeypatch.setenv("FASTGRU_CPU_FUSED", fused)
                    for n in (1, 2):
                        o, h, tape = cpu.forward(*args, **kw, n_threads=n, training=True)
                        got[pf, fused, n] = [o, h, tape.saved["pre"]]
            first = got[True, "1", 1]
            assert all(all(np.array_equal(a, b) for a, b in zip(first, v))
                       for v in got.values()), (B, u, mask)
            want = ref_forward(args, kw)[0]
            assert rel_err(first[0], want) < (1e-5 if dtype == np.float32 else 1e-12)
    finally:
        _gru.set_gate_prefetch(None)


SWITCHES = {"zigzag": "FASTGRU_CPU_ZIGZAG", "overlap": "FASTGRU_CPU_OVERLAP"}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("default_cpu_env")
def test_step_order_switches_change_no_bits(switch, dtype, rng, monkeypatch):
    """The time loops' alternating panel order (zigzag) and the split teams' exchange of h
    inside the next step's product (overlap), on / off (the in-process switches bench/ab.py
    uses), change no bit of the forward (fused and separate gate passes, the projection fused
    into one-row steps or not, reset_after False, recurrent dropout, masks, several chunks,
    batch- and unit-split plans, one- and many-row steps) or of the backward's gradients; and
    the values are the reference's."""
    from fastgru._cpu import _gru

    get, put = getattr(_gru, switch), getattr(_gru, "set_" + switch)
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)
    avx512 = cpu._isa(None) == 2
    path = switch

    def applies(B, T, u, n, cfg):
        if switch == "zigzag":
            return T > 1
        return (avx512 and team_forms(n, u, dtype) and B <= 2 and cfg.get("reset_after", True)
                and cfg.get("dropout", "none") == "none")
    try:
        for B, T, u, kw in ((1, 7, 150, {}), (1, 300, 70, {"mask": "arbitrary"}),
                            (2, 9, 200, {"mask": "right"}), (2, 6, 150, {"go_backwards": True}),
                            (7, 7, 40, {"reset_after": False, "mask": "arbitrary"}),
                            (5, 7, 150, {"dropout": "per_gate"}), (9, 7, 130, {})):
            args, ckw = make_case(rng, B, T, 5, u, dtype=dtype, scale=0.3,
                                  return_sequences=True, **kw)
            dout = rng.standard_normal((B, T, u)).astype(dtype)
            got = {}
            for on in (True, False):
                put(on)
                assert get() is on
                for fused in ("1", "0"):
                    monkeypatch.setenv("FASTGRU_CPU_FUSED", fused)
                    monkeypatch.setenv("FASTGRU_CPU_FUSED_PROJ", fused)
                    for n in (1, 2):
                        # the path runs where it applies (the same bits would not tell):
                        # in the forward, and (zigzag) in the backward too
                        _gru.paths_taken(reset=True)
                        o, h, tape = cpu.forward(*args, **ckw, n_threads=n, training=True)
                        ran = path in _gru.paths_taken(reset=True)
                        assert ran == (on and applies(B, T, u, n, kw)), (B, T, u, kw, on, n)
                        got[on, fused, n] = [o, h, *cpu.backward(tape, dout, n_threads=n)]
                        ran = path in _gru.paths_taken(reset=True)
                        assert ran == (on and switch == "zigzag" and T > 1), (B, T, kw, on)
            for (_, fused, n), v in got.items():
                assert all((a is None and b is None) or np.array_equal(a, b)
                           for a, b in zip(got[True, fused, n], v)), (B, u, kw, fused, n)
            want = ref_forward(args, ckw)[0]
            assert rel_err(got[True, "1", 2][0], want) < (1e-5 if dtype == np.float32 else 1e-12)
    finally:
        put(None)


@pytest.mark.usefixtures("default_cpu_env")
def test_overlapped_exchange_repeats_exactly(rng, monkeypatch):
    """Split one-/two-row teams that exchange h without a barrier per step give, call after
    call, the bits of one thread (a race between a step's reads of a partner's units and that
    partner's next writes would show as a difference somewhere in 500 steps x 30 calls)."""
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    for B, T, u, n, calls in ((1, 500, 150, 2, 30), (2, 500, 150, 2, 30), (1, 60, 200, 3, 3),
                              (2, 60, 260, 4, 3)):  # 3-4 threads: middle ones wait first
        args, ckw = make_case(rng, B, T, 16, u, dtype=np.float32, scale=0.4,
                              return_sequences=True)
        want = cpu.forward(*args, **ckw, n_threads=1)[0]
        assert "without a barrier" in cpu.describe_kernel(args[3], (B, T, 16), n) \
            or cpu._ISA_NAME[cpu._isa(None)] != "avx512" or not cpu._gru.overlap()
        for _ in range(calls):
            assert np.array_equal(cpu.forward(*args, **ckw, n_threads=n)[0], want), (B, n)


def test_teams_no_larger_than_the_openmp_thread_limit(tmp_path):
    """Under OMP_THREAD_LIMIT a split-units plan takes at most that many threads, so its team
    forms (it ran all the work on one thread when the plan asked for more than OpenMP grants),
    explain says so, and the bits are one thread's."""
    code = ("import numpy as np; from fastgru._cpu import _gru; from fastgru.engines import cpu;"
            "from fastgru import activations as a; from fastgru.engines.base import GRUSpec, "
            "Weights; cpu._SPLIT_MIN_WORK = 0; cpu._CONTENDED_SECONDS = 0;"  # (conftest's rule)
            "r = np.random.default_rng(0);"
            "s = GRUSpec(256, a.get('tanh'), a.get('sigmoid'), return_sequences=True);"
            "w = Weights(*(r.standard_normal(k).astype(np.float32) * .1 for k in "
            "((8, 768), (256, 768), (2, 768)))); x = r.standard_normal((1, 30, 8), np.float32);"
            "h = np.zeros((1, 256), np.float32); one = cpu.forward(x, w, h, s, n_threads=1)[0];"
            "_gru.paths_taken(); four = cpu.forward(x, w, h, s, n_threads=4)[0];"
            "print(_gru.omp_thread_limit(), np.array_equal(one, four),"
            "'overlap' in _gru.paths_taken() or cpu._isa(None) != 2,"
            "'2 threads split' in cpu.describe_kernel(s, (1, 30, 8), 4))")
    out = _child_stdout(code, "OMP_THREAD_LIMIT", "2", tmp_path).split()
    assert out == ["2", "True", "True", "True"], out


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_step_order_switch_defaults_and_override(switch, tmp_path):
    """FASTGRU_CPU_ZIGZAG / FASTGRU_CPU_OVERLAP=0 / 1 (read once per process, hence the
    children) decide; unset or any other value: on; explain says which."""
    code = ("from fastgru._cpu import _gru; from fastgru import activations as a;"
            "from fastgru.engines import cpu; from fastgru.engines.base import GRUSpec;"
            "cpu._SPLIT_MIN_WORK = 0; s = GRUSpec(200, a.get('tanh'), a.get('sigmoid'));"
            f"t = cpu.describe_kernel(s, (1, 5, 3), 2); print(_gru.{switch}(),"
            "'opposite order' in t, 'without a barrier' in t and 'one barrier' not in t,"
            " cpu._isa(None) == 2 and cpu._OMP_THREAD_LIMIT > 1)")
    for value, want in ((None, True), ("", True), ("no", True), ("0", False), ("1", True)):
        on, zigzag, overlap, teams = _child_stdout(code, SWITCHES[switch], value,
                                                    tmp_path).split()
        assert on == str(want), (value, on)
        said = zigzag if switch == "zigzag" else overlap  # overlap: AVX-512 teams only
        assert said == str(want and (switch == "zigzag" or teams == "True")), (value, said)


@pytest.mark.parametrize("switch", ["gate_prefetch", "strips"])
def test_vendor_defaults_and_override(switch, tmp_path):
    """FASTGRU_CPU_GATE_PREFETCH / FASTGRU_CPU_STRIPS=0 / 1 (read once per process, hence the
    children) decide; unset or any other value: the default measured per CPU vendor (gemm.c):
    the gate prefetch off on Intel CPUs and on elsewhere, strips on on Intel CPUs only.
    explain names strips where they run (AVX-512)."""
    import platform

    intel = False
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        try:
            with open("/proc/cpuinfo") as f:
                intel = "GenuineIntel" in f.read(4096)
        except OSError:
            pytest.skip("no /proc/cpuinfo to read the CPU vendor from")
    dflt = not intel if switch == "gate_prefetch" else intel
    code = (f"from fastgru._cpu import _gru; from fastgru import activations as a;"
            "from fastgru.engines import cpu; from fastgru.engines.base import GRUSpec;"
            "t = cpu.describe_kernel(GRUSpec(200, a.get('tanh'), a.get('sigmoid')), (64, 5, 3),"
            f" 1); print(_gru.{switch}(), 'groups of four k' in t, cpu._isa(None) == 2)")
    env = "FASTGRU_CPU_GATE_PREFETCH" if switch == "gate_prefetch" else "FASTGRU_CPU_STRIPS"
    for value, want in ((None, dflt), ("", dflt), ("yes", dflt), ("0", False), ("1", True)):
        on, said, avx512 = _child_stdout(code, env, value, tmp_path).split()
        assert on == str(want), (value, on)
        if switch == "strips":
            assert said == str(want and avx512 == "True"), (value, said)


def test_concurrent_calls_bit_identical(rng, in_threads):
    cases = [make_case(rng, 6, 20, 8, 40, mask="arbitrary", return_sequences=True,
                       dtype=dt) for dt in (np.float32, np.float64)]
    want = [cpu.forward(*a, **k)[0] for a, k in cases]
    results = []

    def work(i):
        for _ in range(5):
            a, k = cases[i % 2]
            results.append((i % 2, cpu.forward(*a, **k, n_threads=2)[0]))

    in_threads(work, 4)
    assert len(results) == 20
    assert all(np.array_equal(o, want[i]) for i, o in results)


def test_hostile_specs_and_arguments_are_refused(rng):
    args, kw = make_case(rng, 2, 3, 4, 5)
    x, w, h0, spec = args
    # an activation code the kernels do not know: refused here (the layers then take the
    # reference engine), never run with whatever the scratch held
    odd = activations.Activation("mine", np.tanh, lambda a: 1 - np.tanh(a) ** 2, 99)
    bad = GRUSpec(5, odd, spec.recurrent_activation)
    assert not cpu.supports(bad)[0]
    with pytest.raises(ValueError, match="code 99, which is not one of"):
        cpu.forward(x, w, h0, bad)
    # units as a small NumPy integer: a Python int in the spec (np.int8(100) * 3 wrapped)
    s8 = GRUSpec(np.int8(5), spec.activation, spec.recurrent_activation)
    assert type(s8.units) is int and s8.units == 5
    np.testing.assert_array_equal(cpu.forward(x, w, h0, s8)[0], cpu.forward(x, w, h0, spec)[0])
    with pytest.raises(TypeError, match="weights_key must be hashable"):
        cpu.forward(x, w, h0, spec, weights_key=["layer", 1])
    # more steps than the kernels' 32-bit indices (no memory: zero features)
    big = np.empty((4096, 2**19 + 1, 0))  # rows x steps beyond 2**31 (no memory: 0 features)
    with pytest.raises(ValueError, match="at most .* steps"):
        cpu.forward(big, Weights(np.empty((0, 15)), w[1], w[2]), None, spec)
    with pytest.raises(ValueError, match="at most .* steps"):  # the snapshot's fast path too
        cpu.Snapshot(Weights(np.empty((0, 15)), w[1], w[2]), spec).forward(big)
    # absurd thread counts are capped, not started
    assert cpu._max_threads(10**6) <= 4 * (__import__("os").cpu_count() or 1)


def test_extension_refuses_missing_arrays():
    from fastgru._cpu import _gru

    f = np.float32
    args = dict(x=np.ones((2, 3, 4), f), kernel=np.ones((4, 24), f), wpk=None,
                upk=np.zeros(3 * 8 * 64, f), b_in=np.zeros(24, f), b_rec=np.zeros(24, f),
                h0=np.zeros((2, 8), f), mask=None, mx=None, mx_per_gate=False, mh=None,
                out=np.empty((2, 8), f), h_last=np.empty((2, 8), f), pre=None, hprev=None,
                rp=None)
    for name in ("x", "upk", "b_in", "h0", "out", "h_last"):
        with pytest.raises(ValueError, match="is required"):
            _gru.forward(*{**args, name: None}.values(), 8, True, False, False, False, 1, 2,
                         1, 0, 3, False)
    with pytest.raises(ValueError, match="kernel or its packed form"):
        _gru.forward(*{**args, "kernel": None}.values(), 8, True, False, False, False, 1, 2,
                     1, 0, 3, False)


def _mask_case(rng, dtype, B=4, T=6, D=3, u=5, **spec_kw):
    spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"), **spec_kw)
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)  # noqa: E731
    w = Weights(r(D, 3 * u), r(u, 3 * u), r(2, 3 * u))
    return r(B, T, D), w, r(B, u), spec


@pytest.mark.parametrize("engine", [cpu, reference])
def test_numeric_mask_nonzero_means_keep_negative_values_included(engine):
    """Any nonzero value keeps a step (negative ones too), on both host engines."""
    rng = np.random.default_rng(0)
    x, w, h0, spec = _mask_case(rng, np.float64, return_sequences=True)
    num = rng.choice([-2.0, -0.5, 0.0, 0.5, 1.0], size=x.shape[:2])
    num[:, 0] = -1.0  # every row has a negative "keep" entry
    out_num, h_num, _ = engine.forward(x, w, h0, spec, mask=num)
    out_bool, h_bool, _ = engine.forward(x, w, h0, spec, mask=num != 0)
    np.testing.assert_array_equal(out_num, out_bool)
    np.testing.assert_array_equal(h_num, h_bool)


@pytest.mark.parametrize("engine", [cpu, reference])
@pytest.mark.parametrize("zofm", [False, True])
def test_outputs_keep_the_input_dtype_with_a_mask(engine, zofm):
    """float32 in, float32 out, also through the masked running output."""
    rng = np.random.default_rng(1)
    x, w, h0, spec = _mask_case(rng, np.float32, return_sequences=False, zero_output_for_mask=zofm)
    mask = rng.random(x.shape[:2]) < 0.6
    out, h, _ = engine.forward(x, w, h0, spec, mask=mask, training=True)
    assert out.dtype == np.float32 and h.dtype == np.float32


def test_thread_settings():
    old = _threads.get_num_threads()
    try:
        _threads.set_num_threads(3)
        assert _threads.get_num_threads() == 3
        _threads.set_num_threads(None)
        assert _threads.get_num_threads() >= 1
        with pytest.raises(ValueError, match="n_threads"):
            _threads.set_num_threads(0)
        with pytest.raises(TypeError, match="n_threads"):
            _threads.set_num_threads(1.5)
    finally:
        _threads.set_num_threads(old)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_default_threads_follow_the_affinity_within_the_ttl(monkeypatch):
    """The default thread count is this thread's CPU count, re-read at most once per
    _CPUS_TTL seconds: a narrowed affinity shows after the TTL, not before."""
    import os

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    _threads.set_num_threads(None)
    monkeypatch.setattr(_threads, "_omp_limit", lambda: 1 << 30)  # OMP_NUM_THREADS aside
    monkeypatch.setattr(_threads, "_CPUS_TTL", 3600.0)
    assert _threads.get_num_threads() >= 1  # cached now
    try:
        os.sched_setaffinity(0, {min(cpus)})
        assert _threads.get_num_threads() == len(cpus)  # within the TTL
        monkeypatch.setattr(_threads, "_CPUS_TTL", 0.0)
        assert _threads.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, cpus)
    assert _threads.get_num_threads() == len(cpus)


def test_default_threads_follow_the_openmp_limit(tmp_path):
    """Without set_num_threads, the default is capped by OMP_NUM_THREADS and by
    threadpoolctl's limits at call time (the caps joblib / Dask put on their workers);
    set_num_threads wins over both."""
    import os

    from threadpoolctl import threadpool_info, threadpool_limits

    from fastgru._cpu import _gru

    if not _gru.openmp() or not any(i["user_api"] == "openmp" for i in threadpool_info()):
        pytest.skip("built without OpenMP, or threadpoolctl cannot see its runtime")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus < 2 or _gru.omp_max_threads() < cpus:
        pytest.skip("needs two CPUs, and no OpenMP limit below them in this process")
    old = _threads._default
    try:
        _threads.set_num_threads(None)
        assert _threads.get_num_threads() == cpus
        with threadpool_limits(limits=1, user_api="openmp"):
            assert _threads.get_num_threads() == 1
            _threads.set_num_threads(2)
            assert _threads.get_num_threads() == 2
            _threads.set_num_threads(None)
        assert _threads.get_num_threads() == cpus
    finally:
        _threads._default = old
    code = "import fastgru; print(fastgru.get_num_threads())"
    for value, want in ((None, cpus), ("1", 1), (str(cpus + 5), cpus)):
        assert _child_stdout(code, "OMP_NUM_THREADS", value, tmp_path).strip() == str(want)


# ---------------------------------------------------------------------------------------------
# NaN handling


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_input_gives_nan_output_of_that_row(dtype, rng):
    args, kw = make_case(rng, 3, 4, 3, 5, return_sequences=True, dtype=dtype)
    x = args[0].copy()
    x[1, 2, 0] = np.nan
    out, h, _ = cpu.forward(x, *args[1:], **kw)
    assert np.all(np.isnan(out[1, 2:])) and np.all(np.isfinite(out[1, :2]))
    assert np.all(np.isfinite(out[[0, 2]]))


@pytest.mark.parametrize("u", [5, 40])
@pytest.mark.parametrize("payload", [0x7FC00000, 0x7FC001FF, 0xFFC00101])
def test_nan_in_update_gate_bias_gives_nan_outputs(payload, u, rng, monkeypatch):
    """A NaN reaching only the update gate (its recurrent bias; any payload) makes every output
    NaN, through the fused gate pass and the separate one: the candidate stays finite, so only
    the float32 sigmoid's own NaN handling carries it (test_c_float32_sigmoid_tanh_keep_every_nan
    says why a payload matters)."""
    args, kw = make_case(rng, 2, 3, 3, u, return_sequences=True, dtype=np.float32)
    bias = args[1].bias.copy()
    bias[1, :u] = np.array([payload], np.uint32).view(np.float32)[0]
    w = Weights(args[1].kernel, args[1].recurrent_kernel, bias)
    for fused in ("1", "0"):
        monkeypatch.setenv("FASTGRU_CPU_FUSED", fused)
        out, h, _ = cpu.forward(args[0], w, *args[2:], **kw)
        assert np.all(np.isnan(out)) and np.all(np.isnan(h)), fused


@pytest.mark.parametrize("reset_after", [True, False])
def test_nan_at_masked_steps_does_not_leak(reset_after, rng):
    args, kw = make_case(rng, 4, 6, 3, 5, reset_after=reset_after, mask="arbitrary",
                         return_sequences=True)
    x = args[0].copy()
    x[~kw["mask"]] = np.nan
    clean = args[0].copy()
    clean[~kw["mask"]] = 0
    out, h, _ = cpu.forward(x, *args[1:], **kw)
    out0, h0, _ = cpu.forward(clean, *args[1:], **kw)
    assert np.array_equal(out, out0) and np.array_equal(h, h0)


# ---------------------------------------------------------------------------------------------
# validation and introspection


def test_bad_inputs_raise_clear_errors(rng):
    (x, w, h0, spec), kw = make_case(rng, 3, 4, 5, 6)
    f = cpu.forward
    with pytest.raises(ValueError, match="x must have shape"):
        f(x[0], w, h0, spec)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        f(x.astype(np.int64), w, h0, spec)
    with pytest.raises(ValueError, match="0 timesteps"):
        f(x[:, :0], w, h0, spec)
    with pytest.raises(ValueError, match=r"kernel must have shape \(5, 18\)"):
        f(x, w._replace(kernel=w.kernel[:-1]), h0, spec)
    with pytest.raises(TypeError, match="kernel must have dtype float64"):
        f(x, w._replace(kernel=w.kernel.astype(np.float32)), h0, spec)
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        f(x, w._replace(recurrent_kernel=w.recurrent_kernel.T), h0, spec)
    with pytest.raises(ValueError, match="bias must have shape"):
        f(x, w._replace(bias=w.bias[0]), h0, spec)
    with pytest.raises(ValueError, match="h0 must have shape"):
        f(x, w, h0[:2], spec)
    with pytest.raises(ValueError, match="mask must have shape"):
        f(x, w, h0, spec, mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="dropout.recurrent must have shape"):
        f(x, w, h0, spec, dropout=DropoutMasks(None, np.ones((2, 3, 6))))
    with pytest.raises(ValueError, match="dropout.inputs must have shape"):
        f(x, w, h0, spec, dropout=DropoutMasks(np.ones((3, 4)), None))
    with pytest.raises(ValueError, match="n_threads"):
        f(x, w, h0, spec, n_threads=0)
    with pytest.raises(TypeError, match="spec must be a GRUSpec"):
        f(x, w, h0, {"units": 6})
    user = GRUSpec(6, activations.get(lambda a: a), activations.get("sigmoid"))
    with pytest.raises(ValueError, match="Python callable"):
        f(x, w, h0, user)


def test_supports_and_describe():
    tanh, sig = activations.get("tanh"), activations.get("sigmoid")
    ok, why = cpu.supports(GRUSpec(4, tanh, sig))
    assert ok and why
    ok, why = cpu.supports(GRUSpec(4, activations.get(lambda a: a), sig))
    assert not ok and "Python callable" in why
    from fastgru._cpu import _gru

    text = cpu.describe_kernel(GRUSpec(256, tanh, sig), (1, 100, 64), n_threads=2)
    assert "packed-panel" in text
    if not _gru.openmp():
        assert "without OpenMP" in text
        return
    assert "split the 256 units" in text
    text = cpu.describe_kernel(GRUSpec(8, tanh, sig, reset_after=False), (64, 10, 4), 2)
    assert "2 thread(s)" in text and "two GEMMs" in text
    assert cpu.NAME == "cpu"


def test_small_work_runs_on_one_thread(monkeypatch):
    """Threads are capped by the work (one per _MIN_THREAD_WORK multiply-adds), and
    describe_kernel says so; the cap never changes a number (the tests above run uncapped)."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 1 << 23)
    tanh, sig = activations.get("tanh"), activations.get("sigmoid")
    tiny = cpu.describe_kernel(GRUSpec(3, tanh, sig), (2, 10, 4), n_threads=2)
    assert "capped at 1 by the work" in tiny and "1 thread(s)" in tiny
    assert "weight-gradient GEMMs on 1" in tiny
    assert cpu._plan(2, 10, 4, 3, 4, 2)[0] == 1
    big = cpu.describe_kernel(GRUSpec(128, tanh, sig), (32, 100, 64), n_threads=2)
    assert "capped" not in big
    if _gru.openmp():
        assert cpu._plan(32, 100, 64, 128, 4, 2)[0] == 2 and "GEMMs on 2" in big
    # 3 threads asked, work for 2
    assert cpu._plan(64, 14, 64, 64, 4, 3)[0] == 2


def test_a_split_team_kept_waiting_for_a_descheduled_thread_stops_splitting(rng, monkeypatch):
    """A barrier wait that outlasts the spin (here: every wait, with the spin limit at 0)
    counts as late; a call with _LATE_WAITS of them puts what would split on one thread for
    _CONTENDED_SECONDS, explain says why, and the numbers stay the same. Row groups never wait
    at a barrier: their calls report none."""
    import time

    from fastgru._cpu import _gru

    if not _gru.openmp():
        pytest.skip("built without OpenMP: no thread teams")
    monkeypatch.setattr(cpu, "_CONTENDED_SECONDS", 30.0)
    args, kw = make_case(rng, 1, 20, 8, 128, return_sequences=True, dtype=np.float32)
    spec = args[3]
    assert cpu._plan(1, 20, 8, 128, 4, 2)[:2] == (2, True)
    split_out = cpu.forward(*args, **kw, n_threads=2)[0]
    monkeypatch.setattr(cpu, "_contended_until", 0.0)  # whatever that call met
    _gru.set_spin_limit(0)
    try:
        rows_args, rows_kw = make_case(rng, 8, 20, 8, 128, return_sequences=True,
                                       dtype=np.float32)
        assert cpu._plan(8, 20, 8, 128, 4, 2)[:2] == (2, False)
        cpu.forward(*rows_args, **rows_kw, n_threads=2)
        assert cpu._contended_until == 0.0  # row groups: no barrier, nothing late
        assert np.array_equal(cpu.forward(*args, **kw, n_threads=2)[0], split_out)
    finally:
        _gru.set_spin_limit(None)
    assert cpu._contended_until > time.perf_counter() + 20
    assert cpu._plan(1, 20, 8, 128, 4, 2)[:2] == (1, False)
    assert cpu._plan(3, 20, 8, 128, 4, 2)[:2] == (1, False)  # not 3 rows in 2 groups either
    assert cpu._plan(8, 20, 8, 128, 4, 2)[:2] == (2, False)  # row groups as before
    text = cpu.describe_kernel(spec, (1, 20, 8), n_threads=2)
    assert "1 thread: for 30 s after a split team kept waiting" in text
    assert np.array_equal(cpu.forward(*args, **kw, n_threads=2)[0], split_out)
    monkeypatch.setattr(cpu, "_contended_until", 0.0)
    assert cpu._plan(1, 20, 8, 128, 4, 2)[:2] == (2, True)


def test_late_waits_count_against_the_steps_of_the_call(monkeypatch):
    """Long steps outlast the barrier's spin on mere imbalance: a call counts as contended only
    with _LATE_WAITS late waits that are also _LATE_SHARE of its steps (idle 16x500x512x1024:
    up to 24 of 500; with a busy loop on a core: 193 and more)."""
    import time

    monkeypatch.setattr(cpu, "_CONTENDED_SECONDS", 30.0)
    monkeypatch.setattr(cpu, "_contended_until", 0.0)
    for late, steps in ((24, 500), (62, 500), (3, 3), (0, 1)):
        cpu._note_late_waits(late, steps)
        assert cpu._contended_until == 0.0, (late, steps)
    cpu._note_late_waits(63, 500)
    assert cpu._contended_until > time.perf_counter() + 20
    monkeypatch.setattr(cpu, "_contended_until", 0.0)
    cpu._note_late_waits(4, 20)
    assert cpu._contended_until > 0.0


def test_few_rows_split_the_units_whatever_the_work(monkeypatch):
    """At most three rows per thread split the units (each thread streams its share of U)
    even where the total work would cap the threads; more rows go by rows; a single panel of
    units or a tiny step does not split."""
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 1 << 22)
    plan = cpu._plan
    for B, T in ((1, 1), (1, 100), (3, 100), (6, 100)):
        nthr, split, _, why = plan(B, T, 64, 128, 4, 2)
        assert (nthr, split) == (2, True) and "at most three rows per thread" in why
    assert plan(7, 100, 64, 128, 4, 2)[:2] == (2, False)
    assert plan(1, 100, 64, 128, 4, 1)[:2] == (1, False)
    assert plan(1, 100, 64, 64, 4, 2)[:2] == (1, False)  # one float32 panel of 64 units
    assert plan(1, 100, 64, 65, 4, 2)[:2] == (1, False)  # per-step work under _SPLIT_MIN_WORK
    assert plan(1, 100, 64, 96, 4, 4)[:2] == (2, True)  # no more threads than panels
    text = cpu.describe_kernel(GRUSpec(128, activations.get("tanh"),
                                       activations.get("sigmoid")), (1, 100, 64), n_threads=2)
    if cpu._gru.openmp():
        assert "split the 128 units" in text and "capped" not in text


def test_training_tape_and_inference_tape_none(rng):
    args, kw = make_case(rng)
    assert cpu.forward(*args, **kw)[2] is None
    tape = cpu.forward(*args, **kw, training=True)[2]
    assert tape.engine == "cpu" and tape.batch == 3 and tape.steps == 5


def test_packed_weights_cache_by_caller_key(rng):
    """With weights_key the packed recurrent kernel is reused; in-place edits under the same key
    (no version bump) are caught by the byte comparison and repacked."""
    from fastgru._cpu import _gru

    args, kw = make_case(rng, 2, 4, 3, 70, return_sequences=True)
    x, w, h0, spec = args
    first = cpu.forward(*args, **kw, weights_key=("gru", 1))[0]
    assert np.array_equal(cpu.forward(*args, **kw, weights_key=("gru", 1))[0], first)
    w.recurrent_kernel[3, 5] += 1e-7  # in place, as a finite-difference check does
    edited = cpu.forward(*args, **kw, weights_key=("gru", 1))[0]
    assert np.array_equal(edited, cpu.forward(*args, **kw)[0])
    assert not np.array_equal(edited, first)
    assert rel_err(edited, ref_forward(args, kw)[0]) < TOL[np.float64]
    u = w.recurrent_kernel
    swapped = u.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    packed = cpu._pack_recurrent(u, spec.units)
    assert not _gru.same_packed(swapped, packed, 3) and _gru.same_packed(u.copy(), packed, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,n_threads", [(1, 1), (1, 2), (6, 2)])
@pytest.mark.parametrize("where", ["U first", "U last", "W first", "W last", "both"])
@pytest.mark.parametrize("kernel", [None, "generic"])  # generic: W unpacked, only U cached
def test_cached_packed_kernels_catch_in_place_edits(rng, monkeypatch, dtype, B, n_threads,
                                                    where, kernel):
    """With a key the cached packed kernels are compared with the weights on every call: an
    edit anywhere, in either matrix, is found, repacked and computed with the new weights."""
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)
    args, kw = make_case(rng, B, 4, 5, 70, return_sequences=True, dtype=dtype)
    kw = dict(kw, kernel=kernel)
    x, w, h0, spec = args
    key = ("edits", where, B, n_threads, kernel)
    first = cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0]
    assert np.array_equal(cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0],
                          first)
    for name in ("U", "W"):
        if name in where or where == "both":
            mat = w.recurrent_kernel if name == "U" else w.kernel
            mat.flat[0 if "first" in where else -1] += 0.25
    got = cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0]
    assert not np.array_equal(got, first)
    assert np.array_equal(got, cpu.forward(*args, **kw, n_threads=n_threads)[0])
    assert np.array_equal(cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0],
                          got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,n_threads", [(1, 2), (1, 3), (1, 4), (5, 3), (8, 2), (12, 3)])
@pytest.mark.usefixtures("default_cpu_env")
def test_kernel_verifies_every_threads_share_of_the_cached_panels(rng, monkeypatch, dtype, B,
                                                                   n_threads):
    """The kernel's threads each compare their share of a cache hit's panels with the weights
    (forward's Cython call returns False and has written nothing when one differs): an edit in
    any panel of any gate of either matrix, whichever thread's share it is in (u = 150: three
    float / five double panels per gate, split between 2-4 threads, whether they split the
    units or take row groups), is found, repacked, and computed with the new weights."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    u, panel = 150, 256 // np.dtype(dtype).itemsize
    args, kw = make_case(rng, B, 3, 20, u, return_sequences=True, dtype=dtype)
    x, w, h0, spec = args
    calls, real = [], _gru.forward

    def spy(*a):
        out = a[11]
        out.fill(np.nan)
        rc = real(*a)  # -1: a packed kernel differs; else the late barrier waits
        calls.append((rc >= 0, bool(np.isnan(out).all())))
        return rc

    monkeypatch.setattr(_gru, "forward", spy)
    key = ("shares", B, n_threads, np.dtype(dtype).str)
    nthr, split = cpu._plan(B, 3, 20, u, np.dtype(dtype).itemsize, n_threads)[:2]
    assert nthr >= 2 and split == (B < 8)  # units split, or row groups
    cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)
    for mat in (w.recurrent_kernel, w.kernel):
        for g in range(3):
            for p in range(-(-u // panel)):
                col = g * u + min(p * panel + 5, u - 1)
                mat[rng.integers(mat.shape[0]), col] += 0.5
                calls.clear()
                got = cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0]
                assert calls[0] == (False, True) and calls[1][0] is True, (g, p, calls)
                assert np.array_equal(got, cpu.forward(*args, **kw, n_threads=n_threads)[0])
                calls.clear()
                again = cpu.forward(*args, **kw, n_threads=n_threads, weights_key=key)[0]
                assert calls == [(True, False)] and np.array_equal(again, got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,n", [(1, 1), (3, 64), (5, 70), (2, 130)])
def test_same_packed_compares_every_bit_of_every_panel(dtype, K, n):
    """same_packed against the packing it checks: equal, then a one-bit change at each element
    in turn (first and last of a group, a panel's edge, the ragged last panel), a -0.0 for a
    0.0 and a NaN payload are differences; the panels' zero padding is not compared."""
    from fastgru._cpu import _gru

    rng = np.random.default_rng(K * 1000 + n)
    U = rng.normal(size=(K, 3 * n)).astype(dtype)
    U[0, 0] = 0.0
    packed = cpu._pack_recurrent(U, n)
    assert _gru.same_packed(U, packed, 3)
    bits = U.view(np.uint32 if dtype == np.float32 else np.uint64)
    cols = sorted({0, n - 1, n, 2 * n, 3 * n - 1, min(63, n - 1), min(64, 3 * n - 1)})
    for k in sorted({0, K - 1}):
        for c in cols:
            for bit in (0, 8 * U.itemsize - 1):
                bits[k, c] ^= 1 << bit
                assert not _gru.same_packed(U, packed, 3), (k, c, bit)
                bits[k, c] ^= 1 << bit
    assert _gru.same_packed(U, packed, 3)
    U[0, 0] = -0.0
    assert not _gru.same_packed(U, packed, 3)
    U[0, 0] = 0.0
    padded = packed.copy()
    per = packed.size // 3
    if n % (256 // U.itemsize):  # a ragged last panel: its padding columns are free
        padded[per - 1] = 7.0
        assert _gru.same_packed(U, padded, 3)
    assert not _gru.same_packed(U, packed[:-1], 3)  # wrong size
    assert not _gru.same_packed(U.astype(np.float64 if dtype == np.float32 else np.float32),
                                packed, 3)


def _fork_child_forward(case):
    args, kw = case
    return cpu.forward(*args, **kw, n_threads=2)[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_forked_child_after_threaded_parent(rng):
    """GNU OpenMP hangs a fork()ed child that starts a thread team after its parent did: the
    engine runs such children on one thread (same bits)."""
    import multiprocessing

    case = make_case(rng, 4, 3, 2, 70, return_sequences=True)
    want = cpu.forward(*case[0], **case[1], n_threads=2)[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_fork_child_forward, (case,)).get(timeout=60)
    assert np.array_equal(got, want)


def test_env_reads_follow_os_environ(monkeypatch):
    """The engine's settings are read through the C environment: they follow os.environ's
    writes and deletions at once, as os.environ.get would."""
    from fastgru._cpu import _gru

    monkeypatch.delenv("FASTGRU_TEST_SETTING", raising=False)
    assert _gru.env("FASTGRU_TEST_SETTING", "auto") == "auto"
    monkeypatch.setenv("FASTGRU_TEST_SETTING", "blas")
    assert _gru.env("FASTGRU_TEST_SETTING", "auto") == "blas" == cpu._env(
        "FASTGRU_TEST_SETTING", "auto")
    monkeypatch.delenv("FASTGRU_TEST_SETTING")
    assert cpu._env("FASTGRU_TEST_SETTING", None) is None
    monkeypatch.setenv("FASTGRU_CPU_PROJ", "nonsense")
    with pytest.raises(ValueError, match="FASTGRU_CPU_PROJ"):
        cpu._packed_projection(cpu._isa(None))


_IDLE_SPIN_SCRIPT = """
import os, resource, sys, time
import numpy as np
from fastgru.engines import cpu
print(os.environ.get("GOMP_SPINCOUNT", "-"))
x = np.ones((8, 20, 16), np.float32)
rng = np.random.default_rng(0)
from fastgru import activations
from fastgru.engines.base import GRUSpec, Weights
w = Weights(*(rng.standard_normal(s).astype(np.float32) * 0.1 for s in ((16, 384), (128, 384))))
spec = GRUSpec(128, activations.get("tanh"), activations.get("sigmoid"))
cpu.forward(x, w, None, spec, n_threads=2)
idle = []
for _ in range(5):
    cpu.forward(x, w, None, spec, n_threads=2)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.05)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    idle.append((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
print(min(idle))
"""


def _child_env(env=None):
    """``env`` (default: this environment) with PYTHONPATH led by the folder holding the
    fastgru this process imported: a child imports that copy, not a source tree that happens
    to be its working directory (CI tests an installed copy; a build in place has none)."""
    import os

    import fastgru

    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgru.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _python(script, env=None):
    """stdout of a fresh interpreter running script on the fastgru this process imported."""
    import subprocess
    import sys
    import tempfile

    env = _child_env(env)
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_idle_spin(env):
    out = _python(_IDLE_SPIN_SCRIPT, env).split()
    return out[0], float(out[1])


@pytest.mark.skipif(not cpu.available() or not cpu._gru.openmp(), reason="needs OpenMP")
def test_openmp_workers_sleep_soon_after_a_call():
    """GNU OpenMP's workers spin ~5 ms after every region by default, fighting any NumPy/BLAS
    work that follows for the cores: the engine loads its libgomp with a short spin (a
    user's GOMP_SPINCOUNT / OMP_WAIT_POLICY is respected) and leaves os.environ as it was.
    Checked in fresh processes: CPU time the process burns in 50 ms of sleep after a call."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    left, idle = _run_idle_spin(env)
    assert left == "-"  # restored
    assert idle < 0.004  # ~0.2 ms of spinning (the default spins for ~5-12 ms)
    left, _ = _run_idle_spin({**env, "GOMP_SPINCOUNT": "12345"})
    assert left == "12345"


def test_spin_setting_respects_a_value_set_in_the_c_environment():
    """An embedding host may setenv() after Python started (os.environ does not see it): the
    engine's import must neither override nor unset it."""
    script = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.setenv(b'GOMP_SPINCOUNT', b'777', 1)\n"
        "import fastgru.engines.cpu\n"
        "libc.getenv.restype = ctypes.c_char_p\n"
        "print(libc.getenv(b'GOMP_SPINCOUNT').decode())\n"
    )
    assert _python(script).split() == ["777"]


@pytest.mark.parametrize("n", [1, 15, 700, 70_000, 300_000])
def test_packed_kernels_are_64_byte_aligned(n):
    """Packed panels must start on a cache line (a misaligned kernel ran 4% slower here, 1.5x
    on another CPU), whether they come from the record pool (from 1 MB) or not."""
    for dtype in (np.float32, np.float64):
        for _ in range(4):
            assert cpu._aligned_empty(n, dtype).ctypes.data % 64 == 0
    u = 70
    U = np.ones((u, 3 * u), np.float32)
    assert cpu._pack_recurrent(U, u).ctypes.data % 64 == 0


def test_forward_refuses_dropout_of_another_type(rng):
    """dropout=(mask, None) gave "'tuple' object has no attribute 'empty'"."""
    args, kw = make_case(rng, dropout="shared")
    masks = kw.pop("dropout")
    with pytest.raises(TypeError, match="dropout must be a DropoutMasks .* or None, got tuple"):
        cpu.forward(*args, **kw, dropout=(masks.inputs, None))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (-2, 3, 4), (2, -3, 4), (2, 3, -4),
                                   (2, 3.0, 4), (2, None, 4), 7],
                         ids=["2d", "4d", "neg-B", "neg-T", "neg-D", "float", "None", "int"])
@pytest.mark.parametrize("snapshot", [False, True], ids=["describe_kernel", "Snapshot"])
def test_describe_refuses_a_shape_that_is_not_three_sizes(rng, shape, snapshot):
    """(2, 3) gave 'not enough values to unpack'; a negative size was described."""
    args, _ = make_case(rng, D=4)
    if snapshot:
        describe = cpu.Snapshot(args[1], args[3]).describe
    else:
        def describe(s):
            return cpu.describe_kernel(args[3], s)
    with pytest.raises(ValueError, match=r"x_shape must be \(batch, timesteps, features\), "
                                         "three integers >= 0"):
        describe(shape)
    assert describe((np.int64(2), 3, 4)).startswith("cpu engine")
