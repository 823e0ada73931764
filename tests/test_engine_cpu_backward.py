"""The compiled CPU engine's backward pass: against reference.backward (float64 oracle), central
finite differences, NaN at masked steps, determinism and validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_cpu import (  # noqa: F401 (an autouse fixture)
    BWD_SPLIT_MIN_WORK,
    as64,
    make_case,
    ref_forward,
    rel_err,
    supported_isas,
    team_forms,
    threads_even_for_small_work,
)

from fastgru.engines import cpu, reference
from fastgru.engines.base import DropoutMasks, Weights

pytestmark = pytest.mark.skipif(not cpu.available(), reason="CPU extension not built")


GRAD_TOL = {np.float64: 1e-10, np.float32: 5e-5}
NAMES = ("x", "h0", "kernel", "recurrent_kernel", "bias")


def upstream(rng, out_shape, u, B, dtype, d_out=True, d_state=True):
    dy = rng.standard_normal(out_shape).astype(dtype) if d_out else None
    dh = rng.standard_normal((B, u)).astype(dtype) if d_state else None
    return dy, dh


def compare_backward(args, kw, dtype, rng, d_out=True, d_state=True, **engine_kw):
    out, h, tape = cpu.forward(*args, **kw, training=True, **engine_kw)
    _, _, rtape = ref_forward(args, kw, training=True)
    dy, dh = upstream(rng, out.shape, args[3].units, out.shape[0], dtype, d_out, d_state)
    got = cpu.backward(tape, dy, dh, **engine_kw)
    want = reference.backward(rtape, as64(dy), as64(dh))
    same = [None] * len(NAMES)
    if dtype == np.float32:  # the float32 reference's own error sets the scale
        x, w, h0, spec = args
        t32 = reference.forward(x, w, h0, spec, kw["mask"], kw["dropout"], training=True)[2]
        same = reference.backward(t32, dy, dh)
    for name, g, w, w32 in zip(NAMES, got, want, same):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == w.shape, name
        tol = GRAD_TOL[dtype] if w32 is None else max(GRAD_TOL[dtype], 4 * rel_err(w32, w))
        assert rel_err(g, w) < tol, (name, rel_err(g, w))
    return got


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.sampled_from([1, 2, 4]),
    T=st.sampled_from([1, 3, 6]),
    D=st.sampled_from([1, 4]),
    u=st.sampled_from([1, 6, 35]),
    reset_after=st.booleans(),
    act=st.sampled_from(["tanh", "relu", "softsign", "gelu", "selu", "mish"]),
    rec_act=st.sampled_from(["sigmoid", "hard_sigmoid", "sparse_sigmoid"]),  # bounded gates
    mask=st.sampled_from(["none", "right", "arbitrary"]),
    go_backwards=st.booleans(),
    return_sequences=st.booleans(),
    dropout=st.sampled_from(["none", "shared", "per_gate", "recurrent"]),
    zero_output_for_mask=st.booleans(),
    use_bias=st.booleans(),
    dtype=st.sampled_from([np.float64, np.float32]),
    n_threads=st.sampled_from([1, 2]),
    which=st.sampled_from(["both", "out", "state"]),
    seed=st.integers(0, 2**31),
)
def test_backward_matches_reference(seed, dtype, n_threads, which, B, T, D, u, **cfg):
    rng = np.random.default_rng(seed)
    args, kw = make_case(rng, B, T, D, u, dtype=dtype, scale=0.3, **cfg)
    compare_backward(args, kw, dtype, rng, d_out=which != "state", d_state=which != "out",
                     n_threads=n_threads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reset_after", [True, False])
def test_backward_realistic_shape(reset_after, dtype, rng):
    args, kw = make_case(rng, 16, 40, 24, 96, reset_after=reset_after, mask="right",
                         return_sequences=True, dropout="per_gate", dtype=dtype, scale=0.15)
    compare_backward(args, kw, dtype, rng, n_threads=2)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_backward_every_isa(isa, rng):
    if isa not in supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    for reset_after in (True, False):
        args, kw = make_case(rng, 3, 5, 4, 70, reset_after=reset_after, mask="arbitrary",
                             return_sequences=True, dropout="recurrent")
        compare_backward(args, kw, np.float64, rng, kernel=isa)


@pytest.mark.parametrize("reset_after", [True, False])
def test_backward_finite_differences(reset_after, rng, fd):
    """Tiny float64 case: every gradient against central differences of sum(dy*y) + sum(dh*h)."""
    args, kw = make_case(rng, 2, 3, 2, 3, reset_after=reset_after, mask="arbitrary",
                         return_sequences=True, dropout="per_gate", go_backwards=True)
    x, w, h0, spec = args
    x, h0 = x.copy(), h0.copy()
    w = Weights(w.kernel.copy(), w.recurrent_kernel.copy(), w.bias.copy())
    kw["mask"][0] = [True, False, True]  # keep some steps in every row
    out, h, tape = cpu.forward(x, w, h0, spec, **kw, training=True)
    dy, dh = upstream(rng, out.shape, 3, 2, np.float64)
    g = cpu.backward(tape, dy, dh)

    def loss():
        o, s, _ = cpu.forward(x, w, h0, spec, **kw)
        return float(np.sum(o * dy) + np.sum(s * dh))

    for name, arr, grad in zip(NAMES, (x, h0, *w), g):
        np.testing.assert_allclose(grad, fd(loss, arr), rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("reset_after", [True, False])
def test_nan_at_masked_steps_gives_finite_gradients(reset_after, rng):
    """NaN inputs at masked steps change nothing: the gradients equal those with zeros there."""
    args, kw = make_case(rng, 4, 6, 3, 5, reset_after=reset_after, mask="arbitrary",
                         return_sequences=True, dropout="per_gate")
    x, rest = args[0], args[1:]
    nan_x, zero_x = x.copy(), x.copy()
    nan_x[~kw["mask"]] = np.nan
    zero_x[~kw["mask"]] = 0
    dy, dh = upstream(rng, (4, 6, 5), 5, 4, np.float64)
    g_nan = cpu.backward(cpu.forward(nan_x, *rest, **kw, training=True)[2], dy, dh)
    g_zero = cpu.backward(cpu.forward(zero_x, *rest, **kw, training=True)[2], dy, dh)
    for name, a, b in zip(NAMES, g_nan, g_zero):
        assert np.all(np.isfinite(a)), name
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_rows_independent_of_threads(dtype, rng):
    args, kw = make_case(rng, 7, 8, 5, 40, mask="arbitrary", return_sequences=True,
                         dropout="recurrent", dtype=dtype)
    out, _, tape = cpu.forward(*args, **kw, training=True)
    dy, dh = upstream(rng, out.shape, 40, 7, dtype)
    base = cpu.backward(tape, dy, dh, n_threads=1)
    exact = cpu._packed_wgrad(cpu._isa(None)) is not None
    for n in (2, 3):
        g = cpu.backward(tape, dy, dh, n_threads=n)
        assert np.array_equal(g.x, base.x) and np.array_equal(g.h0, base.h0)
        for a, b in zip(g[2:], base[2:]):
            if exact:  # the packed GEMM's sums run in an order fixed by the shape alone
                assert np.array_equal(a, b)
            else:  # BLAS blocks differ with the thread count: rounding, scaled to the values
                tol = 1e-5 if dtype == np.float32 else 1e-12
                assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b))
    # the tape is not consumed: a second backward gives the same result
    again = cpu.backward(tape, dy, dh, n_threads=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, base))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("default_cpu_env")
def test_split_units_backward_gives_the_row_backward_bits(dtype, rng, monkeypatch):
    """Batches the forward splits by units split so in the backward too where rows cannot
    keep every thread busy or U^T exceeds L2 (reset_after, tanh / sigmoid, no recurrent
    dropout): every gradient has the bits of the one-thread backward by rows, and the
    reference's values, with masks (masked steps, all-masked rows), upstream gradients on the
    outputs and / or the last state, go_backwards, zero_output_for_mask, 2-4 threads over 2-7
    panels of U^T; the configurations it leaves to the rows give those bits as well."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    panel = 256 // np.dtype(dtype).itemsize
    cases = [(1, 6, 2 * panel, {}, 2), (2, 5, 3 * panel - 7, {"mask": "arbitrary"}, 3),
             (3, 7, 4 * panel, {"mask": "right", "go_backwards": True}, 4),
             (1, 4, 7 * panel, {"zero_output_for_mask": True, "mask": "arbitrary"}, 2),
             (2, 6, 2 * panel + 1, {"return_sequences": False}, 3), (2, 3, 320, {}, 2),
             (2, 4, 2 * panel, {}, 2),
             (1, 5, 2 * panel, {"dropout": "recurrent"}, 2),
             (1, 5, 2 * panel, {"act": "relu"}, 2), (2, 4, 2 * panel, {"reset_after": False}, 2)]
    for B, T, u, cfg, n in cases:
        cfg = {"return_sequences": True, **cfg}
        args, kw = make_case(rng, B, T, 3, u, dtype=dtype, scale=0.4, **cfg)
        for which in ("both", "out", "state"):
            out, _, tape = cpu.forward(*args, **kw, training=True, n_threads=1)
            dy, dh = upstream(rng, out.shape, u, B, dtype, which != "state", which != "out")
            base = cpu.backward(tape, dy, dh, n_threads=1)
            _gru.paths_taken(reset=True)
            got = cpu.backward(tape, dy, dh, n_threads=n)
            team = "backward_team" in _gru.paths_taken(reset=True)  # it ran, as explain says
            for name, a, b in zip(NAMES, got, base):
                assert (a is None and b is None) or np.array_equal(a, b), (B, u, cfg, n, name)
        split = "splitting the units" in cpu.describe_kernel(args[3], (B, T, 3), n, dtype=dtype)
        teams = team_forms(n, u, dtype)
        assert team == (split and teams and cfg.get("dropout", "none") == "none"), (B, u, cfg, n)
        rows_short = B < n or 3 * u * u * np.dtype(dtype).itemsize > cpu._U_L2_BYTES
        assert split == (cfg.get("act", "tanh") == "tanh" and cfg.get("reset_after", True)
                         and rows_short), (B, u, cfg, n)
        compare_backward(args, kw, dtype, rng, n_threads=n)  # and the reference's values


def test_small_training_forward_keeps_to_one_thread(rng, monkeypatch):
    """A training forward with fewer rows than threads and too little work for its backward to
    split the units runs on one thread (inference still splits): the same bits either way, and
    explain says so."""
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_BWD_SPLIT_MIN_WORK", BWD_SPLIT_MIN_WORK)  # not the fixture's 0
    args, kw = make_case(rng, 1, 20, 4, 130, dtype=np.float32, return_sequences=True)
    spec, shape = args[3], (1, 20, 4)
    assert 20 * 3 * 130 * 130 < cpu._BWD_SPLIT_MIN_WORK
    calls = []
    real = cpu._kernel_forward
    monkeypatch.setattr(cpu, "_kernel_forward",
                        lambda *a, **k: calls.append((a[11], a[14])) or real(*a, **k))
    o1 = cpu.forward(*args, **kw, n_threads=2)[0]
    o2, _, tape = cpu.forward(*args, **kw, n_threads=2, training=True)
    assert calls == [(2, True), (1, False)]  # (threads, split units): inference, training
    assert np.array_equal(o1, o2)
    assert "and its forward too" in cpu.describe_kernel(spec, shape, 2)
    assert "and its forward too" not in cpu.describe_kernel(spec, (1, 200, 4), 2)
    monkeypatch.setattr(cpu, "_BWD_SPLIT_MIN_WORK", 0)  # the backward splits: so does the forward
    calls.clear()
    cpu.forward(*args, **kw, n_threads=2, training=True)
    assert calls == [(2, True)]


def test_backward_scratch_reuse(rng, monkeypatch):
    """dA/dR live in per-thread scratch reused across calls (bigger, smaller, dtype change):
    results are unchanged by the reuse and never alias the scratch; beyond the size cap fresh
    arrays are used."""
    cases = [make_case(rng, B, 6, 5, u, mask="arbitrary", return_sequences=True,
                       reset_after=ra, dtype=dt)
             for B, u, ra, dt in ((3, 20, True, np.float32), (5, 40, False, np.float64),
                                  (2, 9, True, np.float64))]
    tapes = [cpu.forward(*a, **k, training=True) for a, k in cases]
    first = [cpu.backward(t, np.ones_like(o)) for o, _, t in tapes]
    monkeypatch.setattr(cpu, "_SCRATCH_MAX_BYTES", 64)
    for (o, _, t), want in zip(tapes[::-1], first[::-1]):
        assert all(np.array_equal(a, b) for a, b in zip(cpu.backward(t, np.ones_like(o)), want))
    for g in first:
        for name in ("dA", "dR"):
            buf = getattr(cpu._scratch_local, name, None)
            assert buf is not None and not any(np.shares_memory(a, buf) for a in g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_and_blas_weight_gradients_agree(dtype, rng, monkeypatch):
    """The weight/input-gradient GEMMs on the AVX2/AVX-512 packed kernel and on BLAS
    (FASTGRU_CPU_WGRAD=blas) give the same gradients up to rounding."""
    args, kw = make_case(rng, 9, 11, 7, 70, mask="arbitrary", return_sequences=True,
                         dropout="per_gate", dtype=dtype)
    o, _, tape = cpu.forward(*args, **kw, training=True)
    packed = cpu.backward(tape, np.ones_like(o), n_threads=2)
    monkeypatch.setenv("FASTGRU_CPU_WGRAD", "blas")
    blas = cpu.backward(tape, np.ones_like(o), n_threads=2)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(packed, blas):
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= tol * max(1, np.max(np.abs(b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_bias_gradients_from_the_packed_gemms_equal_column_sums(dtype, reset_after, rng,
                                                               monkeypatch):
    """With the packed weight-gradient GEMMs the bias gradients are taken while dA / dR are
    packed: bit for bit the separate column sums of the BLAS path (B*T = 600 rows: two whole
    256-row blocks and a tail), with and without a mask and shared input dropout."""
    for mask, dropout in (("none", "none"), ("arbitrary", "shared")):
        args, kw = make_case(rng, 12, 50, 7, 70, mask=mask, dropout=dropout,
                             reset_after=reset_after, return_sequences=True, dtype=dtype,
                             scale=0.3)
        o, _, tape = cpu.forward(*args, **kw, training=True)
        monkeypatch.delenv("FASTGRU_CPU_WGRAD", raising=False)
        if cpu._packed_wgrad(cpu._isa(None)) is None:
            pytest.skip("no packed weight-gradient kernel on this CPU")
        packed = cpu.backward(tape, np.ones_like(o), n_threads=2)
        monkeypatch.setenv("FASTGRU_CPU_WGRAD", "blas")
        blas = cpu.backward(tape, np.ones_like(o), n_threads=2)
        assert packed.bias.shape == ((2, 210) if reset_after else (210,))
        assert np.array_equal(packed.bias, blas.bias)
        if dtype == np.float64:  # and they are the right sums
            rtape = ref_forward(args, kw, training=True)[2]
            assert rel_err(packed.bias, reference.backward(rtape, np.ones(o.shape)).bias) < 1e-10


def test_float32_weight_gradients_accurate_over_long_sums(rng):
    """Weight and bias gradients sum B*T = 8192 terms: two-level sums (K blocks in the packed
    GEMM, float64 for the bias) keep float32 within a few 1e-7 of the float64 reference, as
    BLAS does; a single running sum was ~10x worse."""
    args, kw = make_case(rng, 16, 512, 8, 16, return_sequences=True, dtype=np.float32, scale=0.3)
    o, _, tape = cpu.forward(*args, **kw, training=True)
    got = cpu.backward(tape, np.ones_like(o))
    x, w, h0, spec = args
    o64, _, tape64 = reference.forward(x.astype(np.float64), Weights(*(a.astype(np.float64)
                                       for a in w)), h0.astype(np.float64), spec, training=True)
    want = reference.backward(tape64, np.ones_like(o64))
    for name in ("kernel", "recurrent_kernel", "bias"):
        g, r = getattr(got, name), getattr(want, name)
        assert np.max(np.abs(g - r)) / np.max(np.abs(r)) < 6e-7, name


def test_record_buffers_reused_only_after_their_last_view(rng, monkeypatch):
    """A training record's memory goes back to the pool only when no array views it any more
    (the tape's own arrays held elsewhere, slices, tapes sharing the record): the next training
    forward then reuses it and the gradients are those of fresh memory."""
    import dataclasses
    import gc

    monkeypatch.setattr(cpu, "_POOL_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "_pool", [])
    args, kw = make_case(rng, 4, 7, 5, 33, mask="arbitrary", return_sequences=True,
                         dtype=np.float32)
    keys = ("pre", "hprev", "rp")

    def fwd():
        return cpu.forward(*args, **kw, training=True)

    def pooled():  # the pool also takes outputs, gradients and packed kernels (all pooled here)
        return {p.raw.ctypes.data + (-p.raw.ctypes.data % 64) for p in cpu._pool}

    o, _, tape = fwd()
    want = cpu.backward(tape, np.ones_like(o))
    addrs = {tape.saved[k].ctypes.data for k in keys}
    held, sliced, twin = tape.saved["pre"], tape.saved["hprev"][1:], dataclasses.replace(tape)
    del tape
    gc.collect()
    assert not addrs & pooled()  # each still viewed: the array itself, a slice, a twin tape
    fresh = fwd()[2]
    assert not any(np.shares_memory(fresh.saved[k], a) for k in keys for a in (held, sliced))
    assert all(np.array_equal(a, b)
               for a, b in zip(cpu.backward(twin, np.ones_like(o)), want))
    del held, sliced, twin, fresh
    gc.collect()
    before = pooled()
    assert addrs <= before
    o2, _, again = fwd()
    now = {again.saved[k].ctypes.data for k in keys}
    assert now <= before and not now & pooled()
    assert all(np.array_equal(a, b) for a, b in zip(cpu.backward(again, np.ones_like(o2)), want))


def test_record_pool_takes_a_buffer_behind_others(monkeypatch):
    """The fitting buffer is found wherever it lies in the pool (a regression: removing it
    compared it with every buffer ahead of it, which failed, so only the first was reused)."""
    import gc

    monkeypatch.setattr(cpu, "_POOL_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "_pool", [])
    small, same, big = (cpu._record_array((n,), np.float32) for n in (1000, 1000, 5000))
    want = {a.ctypes.data for a in (same, big)}
    del small, same, big
    gc.collect()
    assert len(cpu._pool) == 3
    again = [cpu._record_array((5000,), np.float32), cpu._record_array((1000,), np.float32),
             cpu._record_array((1000,), np.float32)]
    assert want <= {a.ctypes.data for a in again} and cpu._pool == []


def test_record_pool_sizes_and_alignment(monkeypatch):
    """A pooled buffer is used only when the request fits after the alignment offset."""
    monkeypatch.setattr(cpu, "_POOL_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "_pool", [])
    a = cpu._record_array((1, 16384, 16), np.float32)
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    del a
    for n in (16385, 16384 + 15, 16400):
        b = cpu._record_array((1, n, 16), np.float32)
        b[...] = 1  # the whole array is writable memory of its own
        assert b.shape == (1, n, 16)
        del b


def test_backward_without_upstream_is_zero(rng):
    args, kw = make_case(rng, 2, 3, 2, 4, return_sequences=True)
    tape = cpu.forward(*args, **kw, training=True)[2]
    g = cpu.backward(tape)
    assert all(np.all(a == 0) for a in g)


def test_backward_bad_inputs(rng):
    args, kw = make_case(rng, 2, 3, 2, 4, return_sequences=True)
    out, _, tape = cpu.forward(*args, **kw, training=True)
    with pytest.raises(ValueError, match=r"d_outputs must have shape \(2, 3, 4\)"):
        cpu.backward(tape, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="d_h_last must have shape"):
        cpu.backward(tape, None, np.zeros((3, 4)))
    with pytest.raises(TypeError, match="d_outputs must have dtype float64"):
        cpu.backward(tape, out.astype(np.float32))
    rtape = ref_forward(args, kw, training=True)[2]
    with pytest.raises(ValueError, match="cpu engine's forward"):
        cpu.backward(rtape, out)


def test_dropout_masks_reach_the_right_gradients(rng):
    """Zero input/recurrent keep-masks cut exactly the gradient paths they should."""
    args, kw = make_case(rng, 2, 4, 3, 5, return_sequences=True)
    x, w, h0, spec = args
    drop = DropoutMasks(np.zeros((2, 3)), np.zeros((3, 2, 5)))
    out, _, tape = cpu.forward(x, w, h0, spec, dropout=drop, training=True)
    g = cpu.backward(tape, np.ones_like(out))
    assert np.all(g.x == 0) and np.all(g.kernel == 0) and np.all(g.recurrent_kernel == 0)
    assert np.any(g.h0 != 0) and np.any(g.bias != 0)


# ---------------------------------------------------------------------------------------------
# kept scratch (src_c/ws.c) and pooled results


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_workspace_is_never_read_before_written(isa, dtype, rng, monkeypatch):
    """The kernels keep their scratch (team buffers, packed GEMM blocks, strips, bias sums) for
    later calls: whatever a call left there (here NaN in every byte) must not reach a result.
    Forward and backward, each path that sizes or fills its scratch differently."""
    from fastgru._cpu import _gru

    if isa not in supported_isas():
        pytest.skip(f"{isa} not supported by this CPU")
    cases = [  # (B, T, D, u, make_case options, threads)
        (5, 9, 7, 70, dict(mask="arbitrary", return_sequences=True), 2),
        (3, 6, 4, 33, dict(reset_after=False, go_backwards=True, dropout="per_gate"), 1),
        (2, 7, 5, 130, dict(dropout="recurrent", mask="right"), 2),  # split units
        (1, 8, 3, 130, dict(return_sequences=True, h0=False), 2),
        (300, 2, 9, 40, dict(dropout="shared", return_sequences=True), 2),  # K-blocked tails
    ]
    for proj in ("panels", "blas"):
        monkeypatch.setenv("FASTGRU_CPU_PROJ", proj)
        for B, T, D, u, opts, n in cases:
            args, kw = make_case(rng, B, T, D, u, dtype=dtype, **opts)
            out_shape = (B, T, u) if args[3].return_sequences else (B, u)
            dy, dh = upstream(rng, out_shape, u, B, dtype)
            results = []
            for poison in (False, True):
                if poison:
                    assert _gru.workspace() > 0
                    _gru.workspace("poison")
                else:
                    _gru.workspace("trim")
                    assert _gru.workspace() == 0
                o, h, tape = cpu.forward(*args, **kw, training=True, n_threads=n, kernel=isa)
                g = cpu.backward(tape, dy, dh, n_threads=n, kernel=isa)
                results.append([o, h, *g])
            for a, b in zip(*results):
                assert a is None and b is None or np.array_equal(a, b, equal_nan=True)
                assert a is None or np.isfinite(a).all()


def test_kept_workspace_trim():
    from fastgru._cpu import _gru

    args, kw = make_case(np.random.default_rng(1), 4, 5, 6, 70, dtype=np.float32)
    cpu.forward(*args, **kw)
    kept = _gru.workspace()
    assert kept > 0 and _gru.workspace("trim") == kept and _gru.workspace() == 0
    with pytest.raises(ValueError, match="action"):
        _gru.workspace("free")


@pytest.mark.usefixtures("default_cpu_env")
def test_packed_cache_drops_older_versions_of_the_same_memory(rng):
    """Weights updated in place under new version keys (a training loop) keep one packed entry
    per matrix, not one per step; a different array keeps its own."""
    args, kw = make_case(rng, 2, 3, 4, 70, dtype=np.float32)
    x, w, h0, spec = args
    other = Weights(w.kernel.copy(), w.recurrent_kernel.copy(), w.bias)
    cpu._PACK_CACHE.clear()
    want = None
    for version in range(5):
        w.recurrent_kernel[0, 0] += 1  # in place, as an optimizer step
        got = cpu.forward(x, w, h0, spec, weights_key=("layer", version))[0]
        assert np.array_equal(got, cpu.forward(x, w, h0, spec)[0])  # unkeyed: packed afresh
        assert len(cpu._PACK_CACHE) == 2  # U and W of the latest version
        want = got
    cpu.forward(x, other, h0, spec, weights_key=("other", 0))
    assert len(cpu._PACK_CACHE) == 4
    # the latest version is still a hit with the right bits
    assert np.array_equal(cpu.forward(x, w, h0, spec, weights_key=("layer", 4))[0], want)


def test_release_memory_frees_what_the_engine_keeps(rng, monkeypatch):
    """release_memory empties the packed cache, the record pool, the scratch and the kept
    workspaces, and later calls give the same bits."""
    from fastgru._cpu import _gru

    monkeypatch.setattr(cpu, "_POOL_MIN_BYTES", 0)
    args, kw = make_case(rng, 6, 9, 5, 70, mask="right", return_sequences=True,
                         dtype=np.float32)

    def step():
        o, h, tape = cpu.forward(*args, **kw, training=True, weights_key=("release", 0))
        return [o, h, *cpu.backward(tape, np.ones_like(o))]

    want = step()
    step()
    assert cpu._PACK_CACHE and cpu._pool and _gru.workspace() > 0
    assert cpu.release_memory() > 0
    assert not cpu._PACK_CACHE and not cpu._pool and _gru.workspace() == 0
    assert not vars(cpu._scratch_local)
    for a, b in zip(want, step()):
        assert a is None and b is None or np.array_equal(a, b)
