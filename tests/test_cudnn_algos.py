"""The cuDNN engine's algorithm choice, against the simulated libcudnn of test_cudnn_rules.

cuDNN's STANDARD algorithm launches a GEMV and an elementwise kernel per step; the persistent
ones run the whole sequence in one kernel (3-10x faster on an H200 at 100 steps where they
apply, see the README). The engine tries PERSIST_STATIC_SMALL_H (float32, units <= 192
inference / 128 training) or else PERSIST_STATIC (float32, <= 4 rows, <= 1024 units) when no
row is shortened, first on batch-major data, then seq-major (x, y, dy and dx transposed
around the call), and falls back to STANDARD at whichever stage cuDNN declines: descriptor,
temp sizes, forward or backward. These tests drive every fallback through the real ctypes
calls and check the numbers against the reference.
"""

import numpy as np
import pytest
from test_cudnn_rules import SimulatedLibcudnn, simulated, spec  # noqa: F401  (fixture)

from fastgru.engines import _cudnn_api as api
from fastgru.engines import cudnn, reference
from fastgru.engines.base import Weights

SMALL_H, STATIC = api.RNN_ALGO_PERSIST_STATIC_SMALL_H, api.RNN_ALGO_PERSIST_STATIC
STANDARD = api.RNN_ALGO_STANDARD
BATCH, SEQ = api.RNN_DATA_BATCH_MAJOR_UNPACKED, api.RNN_DATA_SEQ_MAJOR_PACKED


def case(B=3, T=4, D=3, u=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D))
    w = Weights(rng.normal(size=(D, 3 * u)) / np.sqrt(D), rng.normal(size=(u, 3 * u)) /
                np.sqrt(u), rng.normal(size=(2, 3 * u)) * 0.5)
    return x, w, rng.normal(size=(B, u)), rng


def run(x, w, h0, rng, dtype=np.float32, mask=None, training=True, **kw):
    """forward (+ backward) through the engine and the reference; asserts they agree."""
    sp = spec(units=h0.shape[1], return_sequences=True, **kw)
    c = [a.astype(dtype) for a in (x, *w, h0)]
    out, h, tape = cudnn.forward(c[0], Weights(*c[1:4]), c[4], sp, mask, training=training)
    r_out, r_h, r_tape = reference.forward(x, w, h0, sp, mask, training=True)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, r_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, r_h, rtol=tol, atol=tol)
    if training:
        d_out, d_h = rng.normal(size=out.shape), rng.normal(size=h.shape)
        g = cudnn.backward(tape, d_out.astype(dtype), d_h.astype(dtype))
        gr = reference.backward(r_tape, d_out, d_h)
        for name in ("x", "h0", "kernel", "recurrent_kernel", "bias"):
            np.testing.assert_allclose(getattr(g, name), getattr(gr, name), rtol=tol * 10,
                                       atol=tol * 10, err_msg=name)


def ran(lib, stage=None):
    return [(a, lay) for s, a, lay in lib.ran if stage in (None, s)]


def test_small_h_batch_major_for_float32_small_units(simulated):
    x, w, h0, rng = case()
    run(x, w, h0, rng)
    assert ran(simulated) == [(SMALL_H, BATCH)] * 2  # forward, then backward on the same


@pytest.mark.parametrize("dtype,B,u,training,mask_row,want", [
    (np.float64, 2, 2, False, None, STANDARD),      # the persistent kernels take no double
    (np.float32, 2, 192, False, None, SMALL_H),     # inference up to 192 units
    (np.float32, 2, 128, True, None, SMALL_H),      # training up to 128 (its backward's limit)
    (np.float32, 2, 2, True, [1, 1, 1, 0], STANDARD),  # a shortened row: lengths differ
    (np.float32, 2, 2, True, [1, 1, 1, 1], SMALL_H),   # a mask that masks nothing
    # beyond SMALL_H: PERSIST_STATIC at up to 4 rows and 1024 units
    (np.float32, 4, 193, False, None, STATIC),
    (np.float32, 1, 129, True, None, STATIC),
    (np.float32, 1, 1024, False, None, STATIC),
    (np.float32, 5, 193, False, None, STANDARD),
    (np.float32, 1, 1025, False, None, STANDARD),
    (np.float32, 2, 200, True, [1, 1, 1, 0], STANDARD),
])
def test_which_calls_take_a_persistent_kernel(simulated, dtype, B, u, training, mask_row, want):
    x, w, h0, rng = case(B=B, T=4, D=2, u=u)
    mask = None
    if mask_row is not None:
        mask = np.array([[1, 1, 1, 1]] * (B - 1) + [mask_row], bool)
    run(x, w, h0, rng, dtype, mask, training)
    assert {a for a, _ in ran(simulated)} == {want}


@pytest.mark.parametrize("u", [2, 300])
def test_persistent_kernels_fall_back_to_seq_major(simulated, u):
    """Batch-major declined at the temp sizes: the same algorithm on seq-major data."""
    simulated.refuse["temp"] = lambda c, d: 3000 if c["algo"] != STANDARD and \
        d["layout"] == BATCH else 0
    x, w, h0, rng = case(B=1, T=3, D=2, u=u)
    run(x, w, h0, rng)
    want = SMALL_H if u == 2 else STATIC
    assert ran(simulated) == [(want, SEQ)] * 2


def test_algo_standard_setting(simulated, monkeypatch):
    monkeypatch.setattr(cudnn, "ALGO", "standard")
    x, w, h0, rng = case()
    run(x, w, h0, rng)
    assert ran(simulated) == [(STANDARD, BATCH)] * 2
    assert all(c.get("algo") == STANDARD for c in simulated.rnn.values())


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_seq_major_when_batch_major_is_declined(simulated, B, go_backwards):
    """x, y, dy and dx transposed around the seq-major call (a reshape at B == 1)."""
    simulated.refuse["temp"] = lambda c, d: 3000 if (c["algo"], d["layout"]) == (
        SMALL_H, BATCH) else 0
    x, w, h0, rng = case(B=B, seed=B)
    run(x, w, h0, rng, go_backwards=go_backwards)
    assert ran(simulated) == [(SMALL_H, SEQ)] * 2


def test_declined_at_forward_is_remembered(simulated):
    simulated.refuse["forward"] = lambda c, d: 3000 if c["algo"] == SMALL_H else 0
    x, w, h0, rng = case()
    for _ in range(2):
        run(x, w, h0, rng, training=False)
    # the first call tried both persistent variants, the second went straight to STANDARD
    assert ran(simulated) == [(STANDARD, BATCH)] * 2
    assert simulated.calls.count("cudnnRNNForward") == 4


def test_declined_at_backward_reruns_the_forward_with_standard(simulated):
    """A reserve space is the forward algorithm's: a backward that cuDNN declines redoes the
    forward with the next variant and runs that one's backward; the next step starts with
    STANDARD."""
    simulated.refuse["backward"] = lambda c, d: 3000 if c["algo"] == SMALL_H else 0
    x, w, h0, rng = case()
    run(x, w, h0, rng)
    # each declined backward redoes the forward with the next variant
    assert simulated.ran == [("forward", SMALL_H, BATCH), ("forward", SMALL_H, SEQ),
                             ("forward", STANDARD, BATCH), ("backward", STANDARD, BATCH)]
    simulated.ran.clear()
    run(x, w, h0, rng)
    assert simulated.ran == [("forward", STANDARD, BATCH), ("backward", STANDARD, BATCH)]


def test_other_errors_are_not_swallowed(simulated):
    simulated.refuse["forward"] = lambda c, d: 4000  # CUDNN_STATUS_INTERNAL_ERROR
    x, w, h0, rng = case()
    with pytest.raises(api.CudnnError, match="cudnnRNNForward failed with status 4000"):
        run(x, w, h0, rng)


@pytest.mark.parametrize("how", ["offsets", "missing bias", "strides"])
def test_persistent_variant_unusable_when_its_weights_cannot_be_matched(simulated, how):
    """The packed weight space is shared by the variants: one whose descriptor lays it out
    differently (offsets; a matrix stored transposed) or reports a parameter as missing is set
    aside: STANDARD runs, no error, and its descriptor is made once."""
    if how == "offsets":
        simulated.small_h_layout_differs = True
    elif how == "missing bias":
        simulated.missing_param = (SMALL_H, 5)
    else:
        simulated.small_h_strides_differ = True
    x, w, h0, rng = case()
    for _ in range(2):
        run(x, w, h0, rng)
    assert {a for a, _ in ran(simulated)} == {STANDARD}
    assert simulated.calls.count("cudnnSetRNNDescriptor_v8") == 3  # standard + two small-h


def test_persistent_variant_kept_when_only_strides_of_size_one_dims_differ(simulated):
    """A variant may report any stride for a dimension of size 1 (the leading 1 of a matrix,
    the trailing 1 of a bias): that is no layout difference, and the variant still runs."""
    simulated.small_h_unit_strides_differ = True
    x, w, h0, rng = case()
    run(x, w, h0, rng)
    assert {a for a, _ in ran(simulated)} == {SMALL_H}


def test_runs_are_per_stream(simulated, monkeypatch):
    """A run's device lengths live in the pool of the stream they were made on: each stream
    gets its own run."""
    import types

    import cupy  # the fixture's stand-in

    x, w, h0, rng = case()
    for ptr in (0, 7, 0):
        monkeypatch.setattr(cupy.cuda, "get_current_stream",
                            lambda ptr=ptr: types.SimpleNamespace(ptr=ptr))
        run(x, w, h0, rng, training=False)
    plan = next(iter(cudnn.backend()._plans.values()))
    assert sorted(k[-1] for k in plan.data) == [0, 7]


def test_algo_setting_validated(monkeypatch):
    monkeypatch.setattr(cudnn, "ALGO", "Auto")
    with pytest.raises(ValueError, match="FASTGRU_CUDNN_ALGO.*'auto', 'standard', "
                                         "'persist-small-h', 'persist-static'; got 'Auto'"):
        cudnn.candidates(np.float32, 8, 1, True, False)


@pytest.mark.parametrize("algo,want", [("persist-static", STATIC), ("persist-small-h", SMALL_H)])
def test_forced_algorithm_outside_the_rules(simulated, monkeypatch, algo, want):
    """FASTGRU_CUDNN_ALGO=persist-*: that kernel on every float32 full-length call (8 rows at
    300 units is outside both rules), with the same fallbacks; float64 stays STANDARD."""
    monkeypatch.setattr(cudnn, "ALGO", algo)
    x, w, h0, rng = case(B=8, T=3, D=2, u=300)
    run(x, w, h0, rng)
    assert ran(simulated) == [(want, BATCH)] * 2
    simulated.ran.clear()
    run(x, w, h0, rng, dtype=np.float64)
    assert {a for a, _ in ran(simulated)} == {STANDARD}
    text = cudnn.describe_kernel(spec(units=300), (8, 3, 2))
    assert f"forced by FASTGRU_CUDNN_ALGO={algo}" in text


def test_describe_kernel_names_the_algorithm(monkeypatch):
    text = cudnn.describe_kernel(spec(units=64), (8, 100, 32))
    assert text.startswith("cuDNN algorithm PERSIST_STATIC_SMALL_H") and "STANDARD for" in text
    text = cudnn.describe_kernel(spec(units=160), (2, 100, 32))
    assert "PERSIST_STATIC_SMALL_H (" in text and "PERSIST_STATIC for training" in text
    text = cudnn.describe_kernel(spec(units=160), (8, 100, 32))
    assert "STANDARD for training" in text
    assert cudnn.describe_kernel(spec(units=512), (4, 100, 32)).startswith(
        "cuDNN algorithm PERSIST_STATIC (")
    text = cudnn.describe_kernel(spec(units=512), (5, 100, 32))
    assert "PERSIST" not in text and "batch 5 > 4" in text
    assert "units 2048 > 1024" in cudnn.describe_kernel(spec(units=2048), (1, 100, 32))
    text = cudnn.describe_kernel(spec(units=160), (8, 100, 32))
    assert "STANDARD for training (units 160 > 128 and batch 8 > 4)" in text
    text = cudnn.describe_kernel(spec(units=64), (1, 100, 32), dtype=np.float64)
    assert text.startswith("cuDNN algorithm STANDARD") and "float64" in text
    monkeypatch.setattr(cudnn, "ALGO", "standard")
    assert "FASTGRU_CUDNN_ALGO=standard" in cudnn.describe_kernel(spec(units=64), (1, 9, 3))
