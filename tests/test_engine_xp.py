"""The xp engine (run here on NumPy) against the float64 reference engine, forward and backward.

The CuPy-only fused kernels are exercised too: their source strings are run through a NumPy
emulation of ``cupy.ElementwiseKernel`` (same call convention: inputs then outputs).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgru import activations
from fastgru.engines import reference
from fastgru.engines import xp as xpe
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights


class NumpyElementwise:
    """Runs an ElementwiseKernel operation written in the C subset that is also Python."""

    def __init__(self, in_params, out_params, operation, name):
        self.ins = [p.split()[-1] for p in in_params.split(",")]
        self.outs = [p.split()[-1] for p in out_params.split(",")]
        stmts = [s.strip() for s in operation.split(";") if s.strip()]
        stmts = [s[2:] if s.startswith("T ") else s for s in stmts]
        self.code = compile("\n".join(stmts), name, "exec")

    def __call__(self, *args):
        assert len(args) == len(self.ins) + len(self.outs)
        env = {"exp": np.exp, "tanh": np.tanh}
        env.update(zip(self.ins, args[: len(self.ins)]))
        exec(self.code, env)
        for name, out in zip(self.outs, args[len(self.ins):]):
            out[...] = env[name]


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setattr(xpe, "_factory", lambda xp: NumpyElementwise)
    xpe._kernel_cache.clear()
    yield
    xpe._kernel_cache.clear()


def make_case(rng, B, T, D, u, reset_after=True, use_bias=True, mask_kind="none",
              drop_in=None, drop_rec=False, dtype=np.float64, scale=0.5):
    x = rng.normal(size=(B, T, D)).astype(dtype)
    K = (rng.normal(size=(D, 3 * u)) * scale).astype(dtype)
    U = (rng.normal(size=(u, 3 * u)) * scale).astype(dtype)
    bias = None
    if use_bias:
        shape = (2, 3 * u) if reset_after else (3 * u,)
        bias = (rng.normal(size=shape) * scale).astype(dtype)
    h0 = rng.normal(size=(B, u)).astype(dtype)
    mask = None
    if mask_kind == "random":
        mask = rng.random((B, T)) < 0.6
    elif mask_kind == "right":
        lens = rng.integers(0, T + 1, size=B)
        mask = np.arange(T)[None, :] < lens[:, None]
    elif mask_kind == "some_empty":
        mask = rng.random((B, T)) < 0.6
        mask[0] = False
    mx = mh = None
    if drop_in == "shared":
        mx = (rng.random((B, D)) < 0.7) / 0.7
    elif drop_in == "per_gate":
        mx = (rng.random((3, B, D)) < 0.7) / 0.7
    if drop_rec:
        mh = (rng.random((3, B, u)) < 0.7) / 0.7
    dropout = None
    if mx is not None or mh is not None:
        dropout = DropoutMasks(None if mx is None else mx.astype(dtype),
                               None if mh is None else mh.astype(dtype))
    return x, Weights(K, U, bias), h0, mask, dropout


def run_both(case, spec, rng, dtype=np.float64):
    x, w, h0, mask, dropout = case
    ref_out, ref_h, ref_tape = reference.forward(
        x.astype(np.float64), Weights(*(None if a is None else a.astype(np.float64) for a in w)),
        h0.astype(np.float64), spec, mask,
        None if dropout is None else DropoutMasks(
            *(None if a is None else a.astype(np.float64)
              for a in (dropout.inputs, dropout.recurrent))), training=True)
    out, h, tape = xpe.forward(x, w, h0, spec, mask, dropout, training=True)
    assert out.dtype == dtype and h.dtype == dtype
    dout = rng.normal(size=ref_out.shape)
    dh = rng.normal(size=ref_h.shape)
    g_ref = reference.backward(ref_tape, dout, dh)
    g = xpe.backward(tape, dout.astype(dtype), dh.astype(dtype))
    return (ref_out, ref_h, g_ref), (out, h, g)


def assert_match(ref, got, rtol, atol):
    (ref_out, ref_h, g_ref), (out, h, g) = ref, got
    np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol, err_msg="outputs")
    np.testing.assert_allclose(h, ref_h, rtol=rtol, atol=atol, err_msg="h_last")
    for name in ("x", "h0", "kernel", "recurrent_kernel", "bias"):
        a, b = getattr(g, name), getattr(g_ref, name)
        if b is None:
            assert a is None, name
        else:
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


configs = st.fixed_dictionaries({
    "B": st.integers(1, 3), "T": st.integers(1, 5), "D": st.integers(1, 4),
    "u": st.integers(1, 4),
    "reset_after": st.booleans(), "use_bias": st.booleans(), "go_backwards": st.booleans(),
    "return_sequences": st.booleans(), "zero_output_for_mask": st.booleans(),
    "mask_kind": st.sampled_from(["none", "random", "right", "some_empty"]),
    "drop_in": st.sampled_from([None, "shared", "per_gate"]), "drop_rec": st.booleans(),
    "act": st.sampled_from(["tanh", "relu", "softsign", "elu", "linear", "gelu"]),
    "rec": st.sampled_from(["sigmoid", "hard_sigmoid", "softplus"]),
    "seed": st.integers(0, 2**31 - 1),
})


def spec_of(c):
    return GRUSpec(c["u"], activations.get(c["act"]), activations.get(c["rec"]),
                   reset_after=c["reset_after"], use_bias=c["use_bias"],
                   go_backwards=c["go_backwards"], return_sequences=c["return_sequences"],
                   zero_output_for_mask=c["zero_output_for_mask"])


def case_of(c, rng, dtype=np.float64):
    return make_case(rng, c["B"], c["T"], c["D"], c["u"], c["reset_after"], c["use_bias"],
                     c["mask_kind"], c["drop_in"], c["drop_rec"], dtype=dtype)


@settings(max_examples=120, deadline=None)
@given(configs)
def test_matches_reference_float64(c):
    rng = np.random.default_rng(c["seed"])
    ref, got = run_both(case_of(c, rng), spec_of(c), rng)
    assert_match(ref, got, rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(configs)
def test_fused_kernel_sources_match_reference(c):
    """The CuPy kernel strings (tanh/sigmoid), emulated on NumPy, against the reference."""
    c = dict(c, act="tanh", rec="sigmoid")
    xpe._kernel_cache.clear()
    orig = xpe._factory
    xpe._factory = lambda xp: NumpyElementwise
    try:
        assert xpe._kernels(np, spec_of(c)) is not None
        rng = np.random.default_rng(c["seed"])
        ref, got = run_both(case_of(c, rng), spec_of(c), rng)
    finally:
        xpe._factory = orig
        xpe._kernel_cache.clear()
    assert_match(ref, got, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", activations.NAMES)
@pytest.mark.parametrize("reset_after", [True, False])
def test_every_builtin_activation(name, reset_after):
    rng = np.random.default_rng(7)
    case = make_case(rng, 3, 4, 3, 2, reset_after=reset_after, mask_kind="random", scale=0.4)
    for slot in ("activation", "recurrent_activation"):
        acts = {"activation": activations.get("tanh"),
                "recurrent_activation": activations.get("sigmoid")}
        acts[slot] = activations.get(name)
        spec = GRUSpec(2, reset_after=reset_after, return_sequences=True, **acts)
        ref, got = run_both(case, spec, rng)
        assert_match(ref, got, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reset_after", [True, False])
def test_float32_close_to_float64_reference(reset_after, fused):
    rng = np.random.default_rng(3)
    case = make_case(rng, 4, 7, 5, 6, reset_after=reset_after, mask_kind="random",
                     drop_in="shared", dtype=np.float32)
    spec = GRUSpec(6, activations.get("tanh"), activations.get("sigmoid"),
                   reset_after=reset_after, return_sequences=True)
    ref, got = run_both(case, spec, rng, dtype=np.float32)
    assert_match(ref, got, rtol=1e-4, atol=2e-5)


def test_measured_tf_values():
    """KERAS_GRU_SPEC.md section 3.4: masked rows, leading zeros, all-masked row."""
    u = 2
    w = Weights(np.full((3, 3 * u), 0.01), np.full((u, 3 * u), 0.02),
                np.full((2, 3 * u), 0.03))
    x = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
    h0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    mask = np.array([[False, True, False, True], [False] * 4])
    spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"),
                   return_sequences=True)
    out, h, _ = xpe.forward(x, w, h0, spec, mask)
    np.testing.assert_allclose(out[0], [[0, 0], [0.6467736, 1.2064872], [0.6467736, 1.2064872],
                                        [0.52910656, 0.8638054]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(h, [[0.52910656, 0.8638054], [3, 4]], rtol=1e-6)


@pytest.mark.parametrize("reset_after", [True, False])
def test_nan_in_masked_inputs_does_not_leak(reset_after, fused):
    rng = np.random.default_rng(5)
    x, w, h0, mask, _ = make_case(rng, 3, 6, 4, 3, reset_after=reset_after, mask_kind="random")
    mask[:, 0] = True
    x[~mask] = np.nan
    spec = GRUSpec(3, activations.get("tanh"), activations.get("sigmoid"),
                   reset_after=reset_after, return_sequences=True)
    out, h, tape = xpe.forward(x, w, h0, spec, mask, training=True)
    g = xpe.backward(tape, np.ones_like(out), np.ones_like(h))
    for a in (out, h, g.x, g.h0, g.kernel, g.recurrent_kernel, g.bias):
        assert np.isfinite(a).all()
    ref_out, _, ref_tape = reference.forward(x, w, h0, spec, mask, training=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10)
    gr = reference.backward(ref_tape, np.ones_like(out), np.ones_like(h))
    np.testing.assert_allclose(g.kernel, gr.kernel, rtol=1e-10)


def test_inference_returns_no_tape_and_same_values():
    rng = np.random.default_rng(11)
    x, w, h0, mask, _ = make_case(rng, 2, 5, 3, 4, mask_kind="random")
    spec = GRUSpec(4, activations.get("tanh"), activations.get("sigmoid"))
    out, h, tape = xpe.forward(x, w, h0, spec, mask, training=False)
    assert tape is None
    out2, h2, _ = xpe.forward(x, w, h0, spec, mask, training=True)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h, h2)


def test_backward_with_no_upstream_gradients_is_zero():
    rng = np.random.default_rng(2)
    x, w, h0, _, _ = make_case(rng, 2, 3, 3, 2)
    spec = GRUSpec(2, activations.get("tanh"), activations.get("sigmoid"))
    _, _, tape = xpe.forward(x, w, h0, spec, training=True)
    g = xpe.backward(tape)
    for a in g:
        np.testing.assert_array_equal(a, 0)


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(0)
    x, w, h0, _, _ = make_case(rng, 2, 3, 3, 2)
    spec = GRUSpec(2, activations.get("tanh"), activations.get("sigmoid"))
    with pytest.raises(ValueError, match="x must be a 3-D"):
        xpe.forward(x[0], w, h0, spec)
    with pytest.raises(ValueError, match="kernel must have shape"):
        xpe.forward(x, Weights(w.kernel[:, :3], w.recurrent_kernel, w.bias), h0, spec)
    with pytest.raises(ValueError, match="h0 must have shape"):
        xpe.forward(x, w, h0[:1], spec)
    with pytest.raises(ValueError, match="mask must have shape"):
        xpe.forward(x, w, h0, spec, mask=np.ones((2, 4), bool))
    _, _, tape = xpe.forward(x, w, h0, spec, training=True)
    with pytest.raises(ValueError, match="d_outputs must have shape"):
        xpe.backward(tape, np.ones((2, 3, 2)))
    _, _, rtape = reference.forward(x, w, h0, spec, training=True)
    with pytest.raises(ValueError, match="recorded by engine"):
        xpe.backward(rtape)


def test_float64_dropout_masks_do_not_promote_float32():
    rng = np.random.default_rng(12)
    x, w, h0, _, _ = make_case(rng, 2, 3, 3, 2, dtype=np.float32)
    drop = DropoutMasks(np.ones((2, 3)), np.ones((3, 2, 2)))  # float64
    spec = GRUSpec(2, activations.get("tanh"), activations.get("sigmoid"), return_sequences=True)
    out, h, tape = xpe.forward(x, w, h0, spec, dropout=drop, training=True)
    g = xpe.backward(tape, np.ones_like(out))
    assert out.dtype == h.dtype == g.x.dtype == g.kernel.dtype == np.float32


def test_padded_steps_never_poison_the_recurrent_gradient():
    """reset_after=False with an unbounded recurrent activation: r overflows to inf at a
    padded step, and its term of the candidate's dU must be zeroed, not multiplied by 0."""
    K = np.zeros((1, 3))
    K[0, 1] = -2000.0  # x @ Wr very negative at the real step ...
    U = np.zeros((1, 3))
    U[0, 1] = 1000.0  # ... h @ Ur large at the padded one: exp overflows there
    w = Weights(K, U, None)
    x, h0, mask = np.ones((1, 2, 1)), np.ones((1, 1)), np.array([[True, False]])
    spec = GRUSpec(1, activations.get("tanh"), activations.get("exponential"),
                   reset_after=False, use_bias=False, return_sequences=True)
    grads = []
    for eng in (reference, xpe):
        with np.errstate(all="ignore"):
            out, h, tape = eng.forward(x, w, h0, spec, mask, training=True)
            grads.append(eng.backward(tape, np.ones_like(out), np.ones_like(h)))
    assert np.isfinite(grads[1].recurrent_kernel).all()
    for a, b in zip(grads[0], grads[1], strict=True):
        if a is not None:  # (no bias)
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eng", [reference, xpe])
def test_last_output_and_state_are_separate_arrays(eng):
    rng = np.random.default_rng(3)
    spec = GRUSpec(3, activations.get("tanh"), activations.get("sigmoid"))
    w = Weights(rng.normal(size=(2, 9)), rng.normal(size=(3, 9)), rng.normal(size=(2, 9)))
    out, h, _ = eng.forward(rng.normal(size=(2, 4, 2)), w, np.zeros((2, 3)), spec)
    np.testing.assert_array_equal(out, h)
    out[...] = 0  # editing one never changes the other (as the cpu engine's two arrays)
    assert np.abs(h).sum() > 0


def test_float64_upstream_gradients_keep_a_float32_tape_float32():
    rng = np.random.default_rng(4)
    spec = GRUSpec(3, activations.get("tanh"), activations.get("sigmoid"),
                   return_sequences=True)
    f = np.float32
    w = Weights(rng.normal(size=(2, 9)).astype(f), rng.normal(size=(3, 9)).astype(f),
                rng.normal(size=(2, 9)).astype(f))
    x = rng.normal(size=(2, 4, 2)).astype(f)
    out, h, tape = xpe.forward(x, w, np.zeros((2, 3), f), spec, training=True)
    g = xpe.backward(tape, np.ones(out.shape), None)  # float64 d_outputs
    assert all(a.dtype == f for a in g if a is not None)
