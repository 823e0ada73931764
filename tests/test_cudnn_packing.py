"""cuDNN engine on the CPU: weight-space packing (index math) and the sequence glue.

No GPU here, so the library is simulated: ``FakeBackend`` stands in for ``CudnnBackend`` with
what cuDNN documents (CUDNN_NOTES.md sections 2-3): a weight space described by
``cudnnGetRNNWeightParams`` entries, GRU maths of cuDNN (= Keras reset_after=True), each row
run over its own length with zero-filled outputs after it. It reads and writes the weight space
with its own hand-written gate table (not the engine's index math), so the engine's packing,
unpacking, output fix-ups and go_backwards gathers are all checked against the reference engine.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgru import activations
from fastgru.engines import _cudnn_layout as layout
from fastgru.engines import cudnn, reference
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights

# cuDNN linLayerID -> (which Keras array, Keras gate column block): KERAS_GRU_SPEC.md 4.4.
# IDs 0/3 reset (Keras block 1), 1/4 update (Keras block 0), 2/5 new (Keras block 2).
KERAS_BLOCK = {0: 1, 1: 0, 2: 2, 3: 1, 4: 0, 5: 2}


def shuffled_layout(D, u, gap=3):
    """Biases first, matrices in reverse ID order, unused slots between: nothing assumed."""
    params, off = [], gap
    for lin in (5, 2, 4, 1, 3, 0):
        params.append(layout.Param(lin, "b", off, (u,)))
        off += u + gap
    for lin in (4, 1, 5, 0, 3, 2):
        cols = D if lin < 3 else u
        params.append(layout.Param(lin, "W", off, (u, cols)))
        off += u * cols + gap
    return params, off


def fake_read(space, params, D, u):
    """Keras kernel, recurrent_kernel, bias (2, 3u) from a weight space, by the table above."""
    K, R, b = np.zeros((D, 3 * u)), np.zeros((u, 3 * u)), np.zeros((2, 3 * u))
    for p in params:
        blk = slice(KERAS_BLOCK[p.lin] * u, (KERAS_BLOCK[p.lin] + 1) * u)
        vals = space[p.offset:p.offset + int(np.prod(p.shape))].reshape(p.shape)
        if p.kind == "W":
            (K if p.lin < 3 else R)[:, blk] = vals.T
        else:
            b[0 if p.lin < 3 else 1, blk] = vals
    return K, R, b


def fake_write(n_elems, params, K, R, b):
    space = np.zeros(n_elems)
    u = R.shape[0]
    for p in params:
        blk = slice(KERAS_BLOCK[p.lin] * u, (KERAS_BLOCK[p.lin] + 1) * u)
        n = int(np.prod(p.shape))
        if p.kind == "W":
            space[p.offset:p.offset + n] = (K if p.lin < 3 else R)[:, blk].T.ravel()
        else:
            space[p.offset:p.offset + n] = b[0 if p.lin < 3 else 1, blk]
    return space


TANH_SIGMOID = dict(activation=activations.get("tanh"),
                    recurrent_activation=activations.get("sigmoid"))


class FakeBackend:
    """cuDNN's documented behaviour on NumPy arrays (float64), for the engine's glue."""

    def __init__(self, shuffled=False):
        self.shuffled = shuffled
        self.calls = []

    @staticmethod
    def accepts(x):
        return isinstance(x, np.ndarray)

    def plan(self, dtype, D, u):
        if self.shuffled:
            params, n = shuffled_layout(D, u)
        else:
            params = layout.documented_layout(D, u)
            n = layout.keras_size(D, u)
        idx = layout.pack_index(params, n, D, u)
        return SimpleNamespace(dtype=np.dtype(dtype), D=D, u=u, n_elems=n, params=params,
                               pack_idx=idx, unpack_idx=layout.unpack_index(idx, D, u))

    def forward(self, plan, space, x_c, h0, lengths, training):
        assert lengths.dtype == np.int32 and (lengths >= 1).all()
        self.calls.append(("forward", lengths.copy()))
        B, T, _ = x_c.shape
        w = Weights(*fake_read(space, plan.params, plan.D, plan.u))
        spec = GRUSpec(plan.u, return_sequences=True, zero_output_for_mask=True,
                       **TANH_SIGMOID)
        mask = np.arange(T)[None, :] < lengths[:, None]
        y, hy, tape = reference.forward(x_c, w, h0, spec, mask, training=training)
        return y, hy, (dict(tape=tape, lengths=lengths) if training else None)

    def backward(self, plan, space, ctx, dy, dhy):
        T = dy.shape[1]
        padded = np.arange(T)[None, :] >= ctx["lengths"][:, None]
        dy = np.where(padded[:, :, None], np.nan, dy)  # cuDNN ignores dy at padded steps
        g = reference.backward(ctx["tape"], np.nan_to_num(dy, nan=0.0), dhy)
        dw = fake_write(plan.n_elems, plan.params, g.kernel, g.recurrent_kernel, g.bias)
        return g.x, g.h0, dw


@pytest.fixture
def fake(monkeypatch):
    be = FakeBackend()
    monkeypatch.setattr(cudnn, "_BACKEND", be)
    cudnn.clear_caches()
    yield be
    cudnn.clear_caches()


def rand_weights(rng, D, u):
    return (rng.normal(size=(D, 3 * u)), rng.normal(size=(u, 3 * u)), rng.normal(size=(2, 3 * u)))


# --------------------------------------------------------------------------------------------
# Packing


def test_documented_layout_matches_spec_table():
    """KERAS_GRU_SPEC.md 4.4: TF's flat blob [Wr, Wz, Wh, Ur, Uz, Uh] transposed, then
    [br_i, bz_i, bh_i, br_r, bz_r, bh_r]."""
    D, u = 3, 2
    K, R, b = rand_weights(np.random.default_rng(0), D, u)
    params = layout.documented_layout(D, u)
    idx = layout.pack_index(params, layout.keras_size(D, u), D, u)
    space = layout.pack(np, K, R, b, idx, np.float64)
    z, r, h = (slice(g * u, (g + 1) * u) for g in range(3))
    blob = np.concatenate([K[:, r].T.ravel(), K[:, z].T.ravel(), K[:, h].T.ravel(),
                           R[:, r].T.ravel(), R[:, z].T.ravel(), R[:, h].T.ravel(),
                           b[0, r], b[0, z], b[0, h], b[1, r], b[1, z], b[1, h]])
    np.testing.assert_array_equal(space, blob)
    # the PyTorch view of the same weights: weight_ih_l0 = [W_r; W_z; W_n] (3u, D)
    w_ih = K.reshape(D, 3, u)[:, list(layout.PERM), :].reshape(D, 3 * u).T
    np.testing.assert_array_equal(space[: 3 * u * D], w_ih.ravel())


def test_hand_computed_small_case():
    """D=1, u=1: kernel [z, r, h] = [1, 2, 3] etc.; cuDNN order r, z, h."""
    K = np.array([[1.0, 2.0, 3.0]])
    R = np.array([[4.0, 5.0, 6.0]])
    b = np.array([[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]])
    idx = layout.pack_index(layout.documented_layout(1, 1), 12, 1, 1)
    space = layout.pack(np, K, R, b, idx, np.float64)
    np.testing.assert_array_equal(space, [2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12])


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("D,u", [(1, 1), (3, 2), (5, 4), (2, 7)])
def test_pack_agrees_with_independent_writer_and_round_trips(shuffled, D, u):
    rng = np.random.default_rng(D * 10 + u)
    K, R, b = rand_weights(rng, D, u)
    if shuffled:
        params, n = shuffled_layout(D, u)
    else:
        params, n = layout.documented_layout(D, u), layout.keras_size(D, u)
    idx = layout.pack_index(params, n, D, u)
    space = layout.pack(np, K, R, b, idx, np.float64)
    np.testing.assert_array_equal(space, fake_write(n, params, K, R, b))
    K2, R2, b2 = layout.unpack(np, space, layout.unpack_index(idx, D, u), D, u)
    np.testing.assert_array_equal(K2, K)
    np.testing.assert_array_equal(R2, R)
    np.testing.assert_array_equal(b2, b)
    # unpacking a gradient space is the adjoint of packing: <pack(w), s> = <w, unpack(s)>
    s = rng.normal(size=n)
    dK, dR, db = layout.unpack(np, s, layout.unpack_index(idx, D, u), D, u)
    lhs = space @ s
    rhs = (K * dK).sum() + (R * dR).sum() + (b * db).sum()
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_pack_without_bias_and_float32():
    K, R, _ = rand_weights(np.random.default_rng(1), 2, 3)
    idx = layout.pack_index(layout.documented_layout(2, 3), layout.keras_size(2, 3), 2, 3)
    space = layout.pack(np, K, R, None, idx, np.float32)
    assert space.dtype == np.float32
    np.testing.assert_array_equal(space[-18:], 0)


@pytest.mark.parametrize("mutate,match", [
    (lambda ps: ps[:-1], "lacks parameters"),
    (lambda ps: ps + [ps[0]], "unexpected cuDNN weight parameter"),
    (lambda ps: [ps[0]._replace(shape=(3, 3))] + ps[1:], "has shape"),
    (lambda ps: [ps[0]._replace(offset=ps[1].offset)] + ps[1:], "overlaps"),
    (lambda ps: ps[:-1] + [ps[-1]._replace(offset=10_000)], "outside the weight space"),
    (lambda ps: [ps[0]._replace(lin=7)] + ps[1:], "unexpected"),
])
def test_inconsistent_layouts_are_rejected(mutate, match):
    params = layout.documented_layout(3, 2)
    with pytest.raises(ValueError, match=match):
        layout.pack_index(mutate(params), layout.keras_size(3, 2), 3, 2)


# --------------------------------------------------------------------------------------------
# The engine's glue against the reference, with the simulated library


def right_padded(rng, B, T, allow_empty=True):
    lens = rng.integers(0 if allow_empty else 1, T + 1, size=B)
    return np.arange(T)[None, :] < lens[:, None]


glue_cases = st.fixed_dictionaries({
    "B": st.integers(1, 4), "T": st.integers(1, 6), "D": st.integers(1, 3),
    "u": st.integers(1, 3), "go_backwards": st.booleans(), "return_sequences": st.booleans(),
    "zero_output_for_mask": st.booleans(), "mask": st.sampled_from([None, "padded", "full"]),
    "dropout": st.booleans(), "shuffled": st.booleans(), "bias": st.booleans(),
    "upstream": st.sampled_from(["both", "outputs", "state", "none"]),
    "seed": st.integers(0, 2**31 - 1),
})


@settings(max_examples=150, deadline=None)
@given(glue_cases)
def test_engine_matches_reference(c):
    rng = np.random.default_rng(c["seed"])
    B, T, D, u = c["B"], c["T"], c["D"], c["u"]
    cudnn._BACKEND = FakeBackend(shuffled=c["shuffled"])
    cudnn.clear_caches()
    try:
        x = rng.normal(size=(B, T, D))
        K, R, b = rand_weights(rng, D, u)
        w = Weights(K * 0.5, R * 0.5, b * 0.5 if c["bias"] else None)
        h0 = rng.normal(size=(B, u))
        mask = None
        if c["mask"] == "padded":
            mask = right_padded(rng, B, T)
            x[~mask] = np.nan  # masked steps must not leak
        elif c["mask"] == "full":
            mask = np.ones((B, T), bool)
        drop = DropoutMasks((rng.random((B, D)) < 0.7) / 0.7) if c["dropout"] else None
        spec = GRUSpec(u, go_backwards=c["go_backwards"], use_bias=True,
                       return_sequences=c["return_sequences"],
                       zero_output_for_mask=c["zero_output_for_mask"], **TANH_SIGMOID)
        out, h, tape = cudnn.forward(x, w, h0, spec, mask, drop, training=True)
        x_ref = np.where(mask[:, :, None], x, 0) if mask is not None else x
        r_out, r_h, r_tape = reference.forward(x_ref, w, h0, spec, mask, drop, training=True)
        np.testing.assert_allclose(out, r_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h, r_h, rtol=1e-12, atol=1e-12)
        d_out = rng.normal(size=out.shape) if c["upstream"] in ("both", "outputs") else None
        d_h = rng.normal(size=h.shape) if c["upstream"] in ("both", "state") else None
        g = cudnn.backward(tape, d_out, d_h)
        gr = reference.backward(r_tape, d_out, d_h)
        for name in ("x", "h0", "kernel", "recurrent_kernel", "bias"):
            a, e = getattr(g, name), getattr(gr, name)
            if e is None:
                assert a is None
                continue
            assert np.isfinite(a).all(), name
            np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12, err_msg=name)
    finally:
        cudnn._BACKEND = None
        cudnn.clear_caches()


def test_zero_length_rows_are_run_with_length_one_and_overridden(fake):
    rng = np.random.default_rng(4)
    B, T, D, u = 3, 4, 2, 2
    x = rng.normal(size=(B, T, D))
    w = Weights(*rand_weights(rng, D, u))
    h0 = rng.normal(size=(B, u))
    mask = np.array([[True, True, False, False], [False] * 4, [True] * 4])
    spec = GRUSpec(u, return_sequences=True, **TANH_SIGMOID)
    out, h, tape = cudnn.forward(x, w, h0, spec, mask, training=True)
    np.testing.assert_array_equal(fake.calls[-1][1], [2, 1, 4])
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_array_equal(h[1], h0[1])
    np.testing.assert_array_equal(out[0, 2], out[0, 1])  # repeats the last emitted output
    d_h = rng.normal(size=(B, u))
    g = cudnn.backward(tape, None, d_h)
    np.testing.assert_array_equal(g.h0[1], d_h[1])
    np.testing.assert_array_equal(g.x[1], 0)


def test_packed_weights_cached_per_version(fake):
    from fastgru.variable import Variable

    rng = np.random.default_rng(9)
    D, u = 2, 3
    K, R, b = (Variable(a, n) for a, n in zip(rand_weights(rng, D, u), "krb"))
    plan = fake.plan(np.float64, D, u)
    s1 = cudnn.packed_weights(plan, Weights(K, R, b), np)
    assert cudnn.packed_weights(plan, Weights(K, R, b), np) is s1
    K.value[0, 0] += 1.0
    K.bump()
    s2 = cudnn.packed_weights(plan, Weights(K, R, b), np)
    assert s2 is not s1 and not np.array_equal(s1, s2)
    # per stream: a space packed by a kernel on one stream is not read from another
    import types

    def on_stream(ptr):
        stream = types.SimpleNamespace(ptr=ptr)
        cuda = types.SimpleNamespace(get_current_stream=lambda: stream)
        return types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np)
                                        if not k.startswith("__")}, cuda=cuda)

    a7 = cudnn.packed_weights(plan, Weights(K, R, b), on_stream(7))
    assert cudnn.packed_weights(plan, Weights(K, R, b), on_stream(7)) is a7
    assert cudnn.packed_weights(plan, Weights(K, R, b), on_stream(8)) is not a7
    # plain arrays without a key are packed on every call (in-place updates are invisible)
    w = Weights(K.value, R.value, b.value)
    assert cudnn.packed_weights(plan, w, np) is not cudnn.packed_weights(plan, w, np)
    # the cache stays bounded
    for _ in range(10):
        K.bump()
        cudnn.packed_weights(plan, Weights(K, R, b), np)
    assert len(cudnn._pack_cache) <= cudnn._PACK_CACHE_SIZE
