"""The fused bidirectional cuDNN call on the CPU, against a simulated CUDNN_BIDIRECTIONAL.

No GPU here. What the simulation computes is NVIDIA's documented behaviour:

* ``cudnn_adv.h`` (cuDNN 9.28 headers, checked): ``CUDNN_BIDIRECTIONAL = 1, /**< Both directions,
  outputs concatenated at each layer. */`` and ``pseudoLayer: Pseudo-layer index (physical
  layer and direction)``.
* The cuDNN API reference (paraphrased, not re-checked here): ``cudnnDirectionMode_t``
  BIDIRECTIONAL iterates "from the first input to the last and separately from the last input
  to the first", outputs concatenated at each step, so y is (B, T, 2u), forward half first,
  both halves time-aligned with x; ``cudnnRNNForward``'s hDesc has first dimension
  2 * numLayers for BIDIRECTIONAL and yDesc vectorSize 2 * hiddenSize; for
  ``cudnnGetRNNWeightParams`` pseudoLayer 0 is the forward and 1 the backward direction of the
  first physical layer (both read the layer input, size D). hy[0] is the forward direction's
  final state, hy[1] the backward one's (its state after step 0).
* Padded IO with per-row lengths: the reverse direction of a row starts at that row's own last
  valid step (CUDNN_NOTES.md section 3: JAX's reference "reverse sequence while keeping padding
  at the end", TF/Keras rely on the same) and outputs after the length are paddingFill (0).
  This is **[GPU: verify]**, as are the layout and everything numeric.

The simulation reverses rows with its own loop (not the engine's gathers) and runs the float64
reference engine per direction; weights are read with the independent gate table of
test_cudnn_packing. So fused == two-call == reference below checks the engine's packing of two
pseudo-layers, the re-alignment of the backward half and every gradient.
"""

import ctypes
import dataclasses
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bidirectional import _leaves
from test_cudnn_packing import (
    TANH_SIGMOID,
    FakeBackend,
    fake_read,
    fake_write,
    rand_weights,
    right_padded,
    shuffled_layout,
)
from test_cudnn_rules import SimulatedLibcudnn, simulated  # noqa: F401  (fixture used below)

from fastgru import activations
from fastgru.engines import _cudnn_api as api
from fastgru.engines import _cudnn_layout as layout
from fastgru.engines import cudnn, reference
from fastgru.engines.base import GRUSpec, Weights
from fastgru.layers import GRU
from fastgru.layers.bidirectional import Bidirectional

GRADS = ("h0", "kernel", "recurrent_kernel", "bias")


# --------------------------------------------------------------------------------------------
# The documented BIDIRECTIONAL semantics, written independently of the engine


def rev_rows(a, lengths):
    """Row b's first lengths[b] steps in reverse, zeros after them (a loop, on purpose)."""
    out = np.zeros_like(a)
    for b, n in enumerate(lengths):
        out[b, :n] = a[b, :n][::-1]
    return out


def _spec(u):
    return GRUSpec(u, return_sequences=True, zero_output_for_mask=True, **TANH_SIGMOID)


def bi_forward(x, w_f, w_b, h0, lengths, training):
    """(y (B, T, 2u), hy (2, B, u), record) as CUDNN_BIDIRECTIONAL documents them."""
    T = x.shape[1]
    mask = np.arange(T)[None, :] < lengths[:, None]
    u = h0.shape[-1]
    yf, hf, tf = reference.forward(x, w_f, h0[0], _spec(u), mask, training=training)
    yr, hb, tb = reference.forward(rev_rows(x, lengths), w_b, h0[1], _spec(u), mask,
                                   training=training)
    y = np.concatenate([yf, rev_rows(yr, lengths)], axis=-1)
    return y, np.stack([hf, hb]), dict(tapes=(tf, tb), lengths=lengths)


def bi_backward(rec, dy, dhy):
    """(dx, dhx (2, B, u), grads_f, grads_b); dy at padded steps is ignored, as cuDNN does."""
    L = rec["lengths"]
    T, u = dy.shape[1], dhy.shape[-1]
    live = (np.arange(T)[None, :] < L[:, None])[:, :, None]
    dy = np.where(live, dy, 0)
    gf = reference.backward(rec["tapes"][0], dy[..., :u], dhy[0])
    gb = reference.backward(rec["tapes"][1], rev_rows(dy[..., u:], L), dhy[1])
    return gf.x + rev_rows(gb.x, L), np.stack([gf.h0, gb.h0]), gf, gb


def two_pseudo_layers(D, u, shuffled):
    """A 2-pseudo-layer layout: the documented one, or pseudo-layer 1 placed BEFORE 0 with
    each block shuffled and gaps between (so nothing is assumed from offsets)."""
    if not shuffled:
        return layout.documented_layout(D, u, 2), 2 * layout.keras_size(D, u)
    p1, n1 = shuffled_layout(D, u)
    p0, n0 = shuffled_layout(D, u, gap=1)
    params = [p._replace(layer=1) for p in p1] + [p._replace(offset=p.offset + n1)
                                                   for p in p0]
    return params, n1 + n0


def read_dirs(space, params, D, u):
    return [Weights(*fake_read(space, [p for p in params if p.layer == d], D, u))
            for d in (0, 1)]


def write_dirs(n, params, gf, gb):
    return sum(fake_write(n, [p for p in params if p.layer == d], g.kernel, g.recurrent_kernel,
                          g.bias) for d, g in ((0, gf), (1, gb)))


class FakeBiBackend(FakeBackend):
    """FakeBackend plus bidirectional plans (the CudnnBackend interface, NumPy arrays)."""

    def plan(self, dtype, D, u, dirs=1):
        if dirs == 1:
            p = super().plan(dtype, D, u)
            p.dirs = 1
            return p
        params, n = two_pseudo_layers(D, u, self.shuffled)
        idx = layout.pack_index(params, n, D, u, 2)
        return types.SimpleNamespace(dtype=np.dtype(dtype), D=D, u=u, dirs=2, n_elems=n,
                                     params=params, pack_idx=idx,
                                     unpack_idx=layout.unpack_index(idx, D, u, 2))

    def forward(self, plan, space, x_c, h0, lengths, training):
        if plan.dirs == 1:
            return super().forward(plan, space, x_c, h0, lengths, training)
        assert lengths.dtype == np.int32 and (lengths >= 1).all() and h0.shape[0] == 2
        self.calls.append(("bidirectional", lengths.copy()))
        w_f, w_b = read_dirs(space, plan.params, plan.D, plan.u)
        y, hy, rec = bi_forward(x_c, w_f, w_b, h0, lengths, training)
        return y, hy, (rec if training else None)

    def backward(self, plan, space, ctx, dy, dhy):
        if plan.dirs == 1:
            return super().backward(plan, space, ctx, dy, dhy)
        dx, dhx, gf, gb = bi_backward(ctx, dy, dhy)
        return dx, dhx, write_dirs(plan.n_elems, plan.params, gf, gb)


# --------------------------------------------------------------------------------------------
# Layout index math for two pseudo-layers


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("D,u", [(1, 1), (3, 2), (2, 5)])
def test_two_pseudo_layer_pack_round_trip(shuffled, D, u):
    rng = np.random.default_rng(D * 7 + u)
    wf, wb = Weights(*rand_weights(rng, D, u)), Weights(*rand_weights(rng, D, u))
    params, n = two_pseudo_layers(D, u, shuffled)
    idx = layout.pack_index(params, n, D, u, 2)
    space = layout.pack_dirs(np, [wf, wb], idx, np.float64)
    # the independent writer puts pseudo-layer 0 = forward, 1 = backward weights
    np.testing.assert_array_equal(space, write_dirs(n, params, wf, wb))
    back = layout.unpack_dirs(np, space, layout.unpack_index(idx, D, u, 2), D, u)
    for got, want in zip(back, (wf, wb)):
        for a, e in zip(got, want):
            np.testing.assert_array_equal(a, e)


def test_documented_two_layer_layout_hand_computed():
    """D=u=1: matrices of layer 0 (W r,z,h; R r,z,h), of layer 1, then the biases likewise."""
    f = Weights(np.array([[1.0, 2, 3]]), np.array([[4.0, 5, 6]]),
                np.array([[7.0, 8, 9], [10, 11, 12]]))
    b = Weights(*(a + 100 for a in f))
    idx = layout.pack_index(layout.documented_layout(1, 1, 2), 24, 1, 1, 2)
    space = layout.pack_dirs(np, [f, b], idx, np.float64)
    np.testing.assert_array_equal(space, [2, 1, 3, 5, 4, 6, 102, 101, 103, 105, 104, 106,
                                          8, 7, 9, 11, 10, 12, 108, 107, 109, 111, 110, 112])


def test_two_layer_layout_errors():
    params = layout.documented_layout(2, 2, 2)
    n = 2 * layout.keras_size(2, 2)
    with pytest.raises(ValueError, match=r"lacks parameters.*\(1, 5, 'b'\)"):
        layout.pack_index(params[:-1], n, 2, 2, 2)
    with pytest.raises(ValueError, match="unexpected"):  # a third pseudo-layer
        layout.pack_index(params + [params[0]._replace(layer=2)], n, 2, 2, 2)
    with pytest.raises(ValueError, match="unexpected"):  # pseudo-layer 1 in a 1-dir plan
        layout.pack_index(params, n, 2, 2, 1)


# --------------------------------------------------------------------------------------------
# The engine functions: fused == two unidirectional cuDNN calls == reference


@pytest.fixture
def fake(monkeypatch):
    be = FakeBiBackend(shuffled=True)
    monkeypatch.setattr(cudnn, "_BACKEND", be)
    cudnn.clear_caches()
    yield be
    cudnn.clear_caches()


def specs(u, rs, zofm):
    return (GRUSpec(u, return_sequences=rs, zero_output_for_mask=zofm, **TANH_SIGMOID),
            GRUSpec(u, go_backwards=True, return_sequences=rs, zero_output_for_mask=zofm,
                    **TANH_SIGMOID))


def assert_close(a, e, tol, what):
    assert np.isfinite(a).all(), what
    np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=what)


bi_cases = st.fixed_dictionaries({
    "B": st.integers(1, 4), "T": st.integers(1, 6), "D": st.integers(1, 3),
    "u": st.integers(1, 3), "rs": st.booleans(), "zofm": st.booleans(),
    "mask": st.sampled_from([None, "padded", "full"]), "shuffled": st.booleans(),
    "upstream": st.sampled_from(["all", "outputs", "states", "forward only", "none"]),
    "seed": st.integers(0, 2**31 - 1),
})


@settings(max_examples=120, deadline=None)
@given(bi_cases)
def test_fused_matches_two_calls_and_reference(c):
    rng = np.random.default_rng(c["seed"])
    B, T, D, u = c["B"], c["T"], c["D"], c["u"]
    old = cudnn._BACKEND
    cudnn._BACKEND = be = FakeBiBackend(shuffled=c["shuffled"])
    cudnn.clear_caches()
    try:
        x = rng.normal(size=(B, T, D))
        wf, wb = (Weights(*(a * 0.5 for a in rand_weights(rng, D, u))) for _ in range(2))
        h0f, h0b = rng.normal(size=(B, u)), rng.normal(size=(B, u))
        mask = None
        if c["mask"] == "padded":
            mask = right_padded(rng, B, T)
            x[~mask] = np.nan  # masked steps must not leak
        elif c["mask"] == "full":
            mask = np.ones((B, T), bool)
        sf, sb = specs(u, c["rs"], c["zofm"])
        of, hf, ob, hb, tape = cudnn.forward_bidirectional(x, wf, wb, h0f, h0b, sf, sb, mask,
                                                           training=True)
        assert be.calls[-1][0] == "bidirectional"
        # two unidirectional cuDNN calls (same simulated library) and the reference
        two = [cudnn.forward(x, w, h, s, mask, training=True)
               for w, h, s in ((wf, h0f, sf), (wb, h0b, sb))]
        x_ref = np.where(mask[:, :, None], x, 0) if mask is not None else x
        ref = [reference.forward(x_ref, w, h, s, mask, training=True)
               for w, h, s in ((wf, h0f, sf), (wb, h0b, sb))]
        for got, t2, r in zip(((of, hf), (ob, hb)), two, ref):
            for a, e2, er in zip(got, t2[:2], r[:2]):
                assert_close(a, e2, 1e-12, "fused vs two calls")
                assert_close(a, er, 1e-12, "fused vs reference")
        up = c["upstream"]
        d = [rng.normal(size=a.shape) for a in (of, hf, ob, hb)]
        keep = {"all": (1, 1, 1, 1), "outputs": (1, 0, 1, 0), "states": (0, 1, 0, 1),
                "forward only": (1, 1, 0, 0), "none": (0, 0, 0, 0)}[up]
        d = [a if k else None for a, k in zip(d, keep)]
        dx, gf, gb = cudnn.backward_bidirectional(tape, *d)
        g2 = [cudnn.backward(t2[2], do, dh) for t2, do, dh in ((two[0], d[0], d[1]),
                                                                (two[1], d[2], d[3]))]
        gr = [reference.backward(r[2], do, dh) for r, do, dh in ((ref[0], d[0], d[1]),
                                                                  (ref[1], d[2], d[3]))]
        assert_close(dx, g2[0].x + g2[1].x, 1e-10, "dx vs two calls")
        assert_close(dx, gr[0].x + gr[1].x, 1e-10, "dx vs reference")
        for g, e2, er in ((gf, g2[0], gr[0]), (gb, g2[1], gr[1])):
            assert g.x is None
            for name in GRADS:
                assert_close(getattr(g, name), getattr(e2, name), 1e-10, name)
                assert_close(getattr(g, name), getattr(er, name), 1e-10, name)
    finally:
        cudnn._BACKEND = old
        cudnn.clear_caches()


def test_fully_masked_rows_and_backward_half_alignment(fake):
    """Hand-checked properties: a fully masked row keeps h0 and outputs zeros; the backward
    half of a row of length 2 starts at step 1 (its own last valid step), not at T-1."""
    rng = np.random.default_rng(3)
    B, T, D, u = 3, 4, 2, 2
    x = rng.normal(size=(B, T, D))
    wf, wb = Weights(*rand_weights(rng, D, u)), Weights(*rand_weights(rng, D, u))
    h0f, h0b = rng.normal(size=(B, u)), rng.normal(size=(B, u))
    mask = np.array([[True, True, False, False], [False] * 4, [True] * 4])
    sf, sb = specs(u, True, True)
    of, hf, ob, hb, tape = cudnn.forward_bidirectional(x, wf, wb, h0f, h0b, sf, sb, mask,
                                                       training=True)
    np.testing.assert_array_equal(fake.calls[-1][1], [2, 1, 4])
    np.testing.assert_array_equal(of[1], 0)
    np.testing.assert_array_equal(ob[1], 0)
    np.testing.assert_array_equal(hf[1], h0f[1])
    np.testing.assert_array_equal(hb[1], h0b[1])
    # row 0 backward: processing order = steps 1, 0 after T - L = 2 leading zeros
    one = reference.forward(x[:1, [1, 0]], wb, h0b[:1], GRUSpec(u, return_sequences=True,
                                                                 **TANH_SIGMOID))[0]
    np.testing.assert_allclose(ob[0, 2:], one[0], rtol=1e-12)
    np.testing.assert_array_equal(ob[0, :2], 0)
    d_h = rng.normal(size=(B, u))
    dx, gf, gb = cudnn.backward_bidirectional(tape, None, d_h, None, 2 * d_h)
    np.testing.assert_array_equal(gf.h0[1], d_h[1])
    np.testing.assert_array_equal(gb.h0[1], 2 * d_h[1])
    np.testing.assert_array_equal(dx[1], 0)
    np.testing.assert_array_equal(dx[0, 2:], 0)


def test_rules_and_errors(fake):
    sf, sb = specs(2, True, True)
    ok, why = cudnn.eligible_bidirectional(sf, sb, np.array([[True, False], [True, True]]))
    assert ok and "CUDNN_BIDIRECTIONAL" in why
    ok, why = cudnn.eligible_bidirectional(sf, sf)
    assert not ok and "opposite directions" in why
    ok, why = cudnn.eligible_bidirectional(sf, dataclasses.replace(sb, units=3))
    assert not ok and "different units" in why
    relu = GRUSpec(2, activation=activations.get("relu"), go_backwards=True,
                   recurrent_activation=activations.get("sigmoid"))
    ok, why = cudnn.eligible_bidirectional(sf, relu)
    assert not ok and "the backward layer: activation is 'relu'" in why
    from fastgru.engines.base import DropoutMasks

    ok, why = cudnn.eligible_bidirectional(sf, sb, None, DropoutMasks(np.ones((2, 3))))
    assert not ok and "input dropout" in why
    ok, why = cudnn.eligible_bidirectional(sf, dataclasses.replace(sb, return_sequences=False))
    assert not ok and "return_sequences" in why
    ok, why = cudnn.eligible_bidirectional(sf, sb, np.array([[False, True]]))
    assert not ok and "not right-padded" in why
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3))
    w = Weights(*rand_weights(rng, 3, 2))
    h = np.zeros((2, 2))
    with pytest.raises(ValueError, match="opposite directions"):
        cudnn.forward_bidirectional(x, w, w, h, h, sb, sf)
    with pytest.raises(ValueError, match="kernel must have shape"):
        cudnn.forward_bidirectional(x, w, w._replace(kernel=w.kernel[:2]), h, h, sf, sb)
    *_, tape = cudnn.forward_bidirectional(x, w, w, h, h, sf, sb, training=True)
    with pytest.raises(ValueError, match="d_outputs must have shape"):
        cudnn.backward_bidirectional(tape, None, None, np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="not 'cudnn-bidirectional'"):
        cudnn.backward_bidirectional(cudnn.forward(x, w, h, sf, training=True)[2])
    out = cudnn.forward_bidirectional(x[:0], w, w, h[:0], h[:0], sf, sb, training=True)
    assert out[0].shape == (0, 3, 2) and out[3].shape == (0, 2)


# --------------------------------------------------------------------------------------------
# The real CudnnBackend's ctypes calls against a simulated libcudnn with BIDIRECTIONAL


class BiSimulatedLibcudnn(SimulatedLibcudnn):
    """SimulatedLibcudnn (test_cudnn_rules) extended to CUDNN_BIDIRECTIONAL as cited above."""

    def _cudnnSetRNNDescriptor_v8(self, r, algo, mode, bias, dirm, inm, dt, prec, math, D, H,
                                  proj, layers, drop, aux):
        if dirm == api.UNIDIRECTIONAL:
            out = super()._cudnnSetRNNDescriptor_v8(r, algo, mode, bias, dirm, inm, dt, prec,
                                                    math, D, H, proj, layers, drop, aux)
            self.rnn[self._val(r)]["dirs"] = 1
            return out
        assert dirm == 1 == cudnn.api.BIDIRECTIONAL  # cudnnDirectionMode_t in cudnn_adv.h
        assert (mode, bias, inm, layers, aux) == (api.RNN_MODE_GRU, api.RNN_DOUBLE_BIAS,
                                                  api.LINEAR_INPUT, 1,
                                                  api.RNN_PADDED_IO_ENABLED)
        assert dt == prec and proj == H
        self.rnn[self._val(r)] = dict(dt=dt, D=D, H=H, math=math, dirs=2)
        return 0

    def _layout(self, c):
        if c.get("dirs", 1) == 1:
            return super()._layout(c)
        return two_pseudo_layers(c["D"], c["H"], self.shuffled)

    def _cudnnGetRNNWeightParams(self, h, r, pseudo, wsize, wspace, lin, mdesc, maddr, bdesc,
                                 baddr):
        c = self._cfg(r)
        params, n = self._layout(c)
        assert 0 <= pseudo < c.get("dirs", 1)
        assert wsize.value == (n + self.extra) * self._itemsize(c)
        for p in params:
            if p.lin == lin and p.layer == pseudo:
                addr, desc = (maddr, mdesc) if p.kind == "W" else (baddr, bdesc)
                addr._obj.value = self._val(wspace) + p.offset * self._itemsize(c)
                dims = (1,) + tuple(p.shape) + ((1,) if p.kind == "b" else ())
                self.tensors[self._val(desc)] = (c["dt"], dims, ())
        return 0

    def _bi(self, r, xd, yd, hd):
        c = self._cfg(r)
        if c["dirs"] == 1:
            return None
        xdd, ydd = self.data[self._val(xd)], self.data[self._val(yd)]
        B, T, D, H = xdd["B"], xdd["T"], c["D"], c["H"]
        assert xdd["V"] == D and ydd["V"] == 2 * H  # yDesc vectorSize = 2 * hiddenSize
        np.testing.assert_array_equal(xdd["lengths"], ydd["lengths"])
        assert self.tensors[self._val(hd)][1] == (2, B, H)  # hDesc dim 0 = 2 * numLayers
        return c, B, T, D, H, xdd["lengths"]

    def _cudnnRNNForward(self, h, r, mode, devlen, xd, x, yd, y, hd, hx, hy, cd, cx, cy,
                         wsize, w, worksize, work, ressize, res):
        bi = self._bi(r, xd, yd, hd)
        if bi is None:
            return super()._cudnnRNNForward(h, r, mode, devlen, xd, x, yd, y, hd, hx, hy, cd,
                                            cx, cy, wsize, w, worksize, work, ressize, res)
        c, B, T, D, H, lengths = bi
        params, n = self._layout(c)
        space = self._array(w, (n + self.extra,), c["dt"]).astype(np.float64)
        w_f, w_b = read_dirs(space, params, D, H)
        training = mode == api.FWD_MODE_TRAINING
        assert (ressize.value > 0) == training and cx is None and cy is None
        out, hl, rec = bi_forward(self._array(x, (B, T, D), c["dt"]).astype(np.float64), w_f,
                                  w_b, self._array(hx, (2, B, H), c["dt"]).astype(np.float64),
                                  lengths, training)
        self._array(y, (B, T, 2 * H), c["dt"])[...] = out
        self._array(hy, (2, B, H), c["dt"])[...] = hl
        if training:
            self.tapes[self._val(res)] = dict(rec=rec, grads=None)
        return 0

    def _cudnnRNNBackwardData_v8(self, h, r, devlen, yd, y, dy, xd, dx, hd, hx, dhy, dhx, cd,
                                 cx, dcy, dcx, wsize, w, worksize, work, ressize, res):
        bi = self._bi(r, xd, yd, hd)
        if bi is None:
            return super()._cudnnRNNBackwardData_v8(h, r, devlen, yd, y, dy, xd, dx, hd, hx,
                                                    dhy, dhx, cd, cx, dcy, dcx, wsize, w,
                                                    worksize, work, ressize, res)
        c, B, T, D, H, _ = bi
        rec = self.tapes[self._val(res)]
        assert rec["grads"] is None, "BackwardData must run exactly once per forward"
        d_y = self._array(dy, (B, T, 2 * H), c["dt"]).astype(np.float64)
        d_h = self._array(dhy, (2, B, H), c["dt"]).astype(np.float64)
        g_x, g_h, gf, gb = bi_backward(rec["rec"], d_y, d_h)
        self._array(dx, (B, T, D), c["dt"])[...] = g_x
        self._array(dhx, (2, B, H), c["dt"])[...] = g_h
        rec["grads"] = (gf, gb)
        return 0

    def _cudnnRNNBackwardWeights_v8(self, h, r, add, devlen, xd, x, hd, hx, yd, y, wsize, dw,
                                    worksize, work, ressize, res):
        bi = self._bi(r, xd, yd, hd)
        if bi is None:
            return super()._cudnnRNNBackwardWeights_v8(h, r, add, devlen, xd, x, hd, hx, yd, y,
                                                       wsize, dw, worksize, work, ressize, res)
        c = bi[0]
        assert add == api.WGRAD_MODE_ADD
        rec = self.tapes.pop(self._val(res))
        assert rec["grads"] is not None, "BackwardWeights must follow BackwardData"
        params, n = self._layout(c)
        buf = self._array(dw, (n + self.extra,), c["dt"])
        assert not buf.any(), "dweightSpace must be zeroed for WGRAD_MODE_ADD"
        buf[:n] += write_dirs(n, params, *rec["grads"])
        return 0


@pytest.fixture
def bi_simulated(simulated, monkeypatch):  # noqa: F811 - the imported fixture
    """test_cudnn_rules' ``simulated`` set-up (real CudnnBackend, NumPy for CuPy) with the
    BIDIRECTIONAL-capable library."""
    lib = BiSimulatedLibcudnn(shuffled=True)
    monkeypatch.setattr(api, "_lib", lib)
    return lib


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_bidirectional_against_simulated_library(bi_simulated, dtype):
    rng = np.random.default_rng(21)
    B, T, D, u = 4, 5, 3, 2
    x = rng.normal(size=(B, T, D))
    wf, wb = (Weights(*(a * 0.5 for a in rand_weights(rng, D, u))) for _ in range(2))
    h0f, h0b = rng.normal(size=(B, u)), rng.normal(size=(B, u))
    mask = np.arange(T)[None, :] < np.array([5, 0, 2, 3])[:, None]
    sf, sb = specs(u, True, True)
    cast = lambda a: a.astype(dtype)  # noqa: E731
    of, hf, ob, hb, tape = cudnn.forward_bidirectional(
        cast(x), Weights(*map(cast, wf)), Weights(*map(cast, wb)), cast(h0f), cast(h0b), sf, sb,
        mask, training=True)
    assert of.dtype == dtype
    d = [rng.normal(size=a.shape) for a in (of, hf, ob, hb)]
    dx, gf, gb = cudnn.backward_bidirectional(tape, *map(cast, d))
    x_ref = np.where(mask[:, :, None], x, 0)
    ref = [reference.forward(x_ref, w, h, s, mask, training=True)
           for w, h, s in ((wf, h0f, sf), (wb, h0b, sb))]
    gr = [reference.backward(ref[0][2], d[0], d[1]), reference.backward(ref[1][2], d[2], d[3])]
    tol = 1e-10 if dtype == np.float64 else 1e-5
    for a, e in ((of, ref[0][0]), (hf, ref[0][1]), (ob, ref[1][0]), (hb, ref[1][1]),
                 (dx, gr[0].x + gr[1].x)):
        np.testing.assert_allclose(a, e, rtol=tol * 10, atol=tol * 10)
    for g, e in ((gf, gr[0]), (gb, gr[1])):
        for name in GRADS:
            np.testing.assert_allclose(getattr(g, name), getattr(e, name), rtol=tol * 10,
                                       atol=tol * 10, err_msg=name)
    calls = bi_simulated.calls
    assert calls.count("cudnnRNNForward") == 1 and calls.count("cudnnRNNBackwardData_v8") == 1
    assert calls.count("cudnnGetRNNWeightParams") == 12  # 6 IDs x 2 pseudo-layers
    assert next(iter(bi_simulated.rnn.values()))["dirs"] == 2


# --------------------------------------------------------------------------------------------
# The layer: Bidirectional takes the fused path when eligible, with the two-call results


def _bidi(merge_mode, rs, state, go_backwards=False, time_major=False, seed=0, **kw):
    """go_backwards: the roles swapped (the given layer reads backwards, an explicit backward
    layer forwards; the copy Keras makes always goes backwards)."""
    def gru(backwards):
        return GRU(3, return_sequences=rs, return_state=state, dtype="float64",
                   go_backwards=backwards, time_major=time_major, **kw)

    layer = Bidirectional(gru(go_backwards), merge_mode=merge_mode,
                          backward_layer=gru(False) if go_backwards else None)
    layer.build((2, None, 4) if kw.get("stateful") else (None, None, 4))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])
    return layer


def _run(layer, x, h0, mask, d_seed=5):
    out = layer(x, initial_state=h0, mask=mask)
    y, tape = layer.forward(x, initial_state=h0, mask=mask)
    rng = np.random.default_rng(d_seed)
    dy = [rng.normal(size=leaf.shape) for leaf in _leaves(y)]
    it = iter(dy)
    structured = dy[0] if not isinstance(y, tuple) else type(y)(
        tuple(next(it) for _ in item) if isinstance(item, tuple) else next(it) for item in y)
    g = layer.backward(tape, structured)
    return out, y, g, tape


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("rs,state,masked", [(True, True, True), (False, True, True),
                                             (True, False, False), (False, False, False)])
def test_layer_fused_equals_two_calls(monkeypatch, merge_mode, rs, state, masked):
    B, T = 3, 5
    rng = np.random.default_rng(11)
    x = rng.normal(size=(B, T, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0] * 5], bool) if masked else None
    h0 = [rng.normal(size=(B, 3)), rng.normal(size=(B, 3))]
    layer = _bidi(merge_mode, rs, state)
    assert "two calls" in layer.explain(x, mask) and "not a CuPy array" in layer.explain(x)
    expected = _run(layer, x, h0, mask)
    assert expected[3]["fused"] is None
    be = FakeBiBackend(shuffled=True)
    monkeypatch.setattr(cudnn, "_BACKEND", be)  # accepts NumPy: stands in for CuPy input
    cudnn.clear_caches()
    assert "fused bidirectional" in layer.explain(x, mask)
    got = _run(layer, x, h0, mask)
    assert got[3]["fused"] is not None and got[3]["forward"] is None
    assert [c[0] for c in be.calls] == ["bidirectional"] * 2
    for a, e in zip(_leaves(got[:2]), _leaves(expected[:2])):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    ga, ge = got[2], expected[2]
    assert ga.names == ge.names and ga.paths == ge.paths
    np.testing.assert_allclose(ga.inputs, ge.inputs, rtol=1e-10, atol=1e-12)
    for a, e in zip(ga.initial_state + ga.weights, ge.initial_state + ge.weights):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    cudnn.clear_caches()


@pytest.mark.parametrize("variant", ["go_backwards", "time_major", "stateful"])
def test_layer_fused_variants(monkeypatch, variant):
    B, T = 2, 4
    rng = np.random.default_rng(12)
    kw = {"go_backwards": variant == "go_backwards", "time_major": variant == "time_major"}
    if variant == "stateful":
        kw["stateful"] = True
    x = rng.normal(size=(T, B, 4) if kw["time_major"] else (B, T, 4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    if kw["time_major"]:
        mask = mask.T
    ref_layer, layer = (_bidi("concat", True, True, seed=3, **kw) for _ in range(2))
    expected = _run(ref_layer, x, None, mask)
    monkeypatch.setattr(cudnn, "_BACKEND", FakeBiBackend())
    cudnn.clear_caches()
    got = _run(layer, x, None, mask)
    assert got[3]["fused"] is not None
    for a, e in zip(_leaves(got[:2]), _leaves(expected[:2])):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2].inputs, expected[2].inputs, rtol=1e-10, atol=1e-12)
    for a, e in zip(got[2].weights, expected[2].weights):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    if variant == "stateful":
        for a, e in zip(layer.states, ref_layer.states):
            np.testing.assert_allclose(a.value, e.value, rtol=1e-10)
    cudnn.clear_caches()


@pytest.mark.parametrize("kw,needle", [
    (dict(use_cudnn=False), "use_cudnn=False"),
    (dict(activation="relu"), "activation is 'relu'"),
    (dict(reset_after=False), "reset_after=False"),
    (dict(recurrent_dropout=0.2), "recurrent_dropout"),
    (dict(unroll=True), "unroll=True"),
])
def test_layer_falls_back_and_explains_why(monkeypatch, kw, needle):
    layer = _bidi("concat", True, False, **kw)
    be = FakeBiBackend()
    monkeypatch.setattr(cudnn, "_BACKEND", be)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    text = layer.explain(x)
    assert "two calls" in text and needle in text
    _, tape = layer.forward(x)
    assert tape["fused"] is None and not any(c[0] == "bidirectional" for c in be.calls)


def test_layer_dropout_only_blocks_training(monkeypatch):
    layer = _bidi("concat", True, False, dropout=0.3, seed=1)
    be = FakeBiBackend()
    monkeypatch.setattr(cudnn, "_BACKEND", be)
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    _, tape = layer.forward(x, training=True)
    assert tape["fused"] is None
    _, tape = layer.forward(x, training=False)
    assert tape["fused"] is not None
    assert "fused bidirectional" in layer.explain(x)


def test_layer_fused_bad_upstream_is_a_clear_error(monkeypatch):
    layer = _bidi("concat", True, True)
    monkeypatch.setattr(cudnn, "_BACKEND", FakeBiBackend())
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    y, tape = layer.forward(x)
    with pytest.raises(ValueError, match="d_state.*shape"):
        layer.backward(tape, (np.ones((2, 3, 6)), np.ones((5, 3)), None))
    g = layer.backward(tape, (None, None, np.ones((2, 3))))
    assert np.isfinite(g.inputs).all() and g.inputs.shape == x.shape


def test_ctypes_argument_types_for_the_bidirectional_descriptor():
    """BIDIRECTIONAL travels as a C int through the declared prototype."""
    args = api.PROTOTYPES["cudnnSetRNNDescriptor_v8"][1]
    assert args[4] is ctypes.c_int
    args[4].from_param(cudnn.api.BIDIRECTIONAL)


def test_layer_rnn_of_one_gru_cell_fuses_and_a_stack_does_not(monkeypatch):
    from fastgru.layers import RNN, GRUCell

    rng = np.random.default_rng(13)
    x = rng.normal(size=(2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    single = Bidirectional(RNN(GRUCell(2, dtype="float64"), return_sequences=True,
                               dtype="float64"))
    single.build((None, None, 3))
    single.set_weights([rng.normal(size=w.shape) for w in single.get_weights()])
    want = single(x, mask=mask)
    monkeypatch.setattr(cudnn, "_BACKEND", FakeBiBackend())
    cudnn.clear_caches()
    assert "fused bidirectional" in single.explain(x, mask)
    np.testing.assert_allclose(single(x, mask=mask), want, rtol=1e-10, atol=1e-12)
    stacked = Bidirectional(RNN([GRUCell(2, dtype="float64"), GRUCell(2, dtype="float64")],
                                return_sequences=True, dtype="float64"))
    text = stacked.explain(x, mask)
    assert "two calls" in text and "not a single GRU cell" in text
    _, tape = stacked.forward(x, mask=mask)
    assert tape["fused"] is None
    cudnn.clear_caches()


def test_real_library_accepts_a_bidirectional_gru_descriptor():
    """Host-side only (no GPU needed): the descriptor the bidirectional plan sets is accepted
    by the real library, where one is installed (a cuDNN wheel, or FASTGRU_CUDNN_PATH)."""
    from test_cudnn_rules import _real_library

    if _real_library() is None:
        pytest.skip("libcudnn.so.9 not installed")
    from fastgru.engines.cudnn import _Owned

    drop = _Owned("cudnnCreateDropoutDescriptor", "cudnnDestroyDropoutDescriptor")
    rnn = _Owned("cudnnCreateRNNDescriptor", "cudnnDestroyRNNDescriptor")
    for dt, math in ((api.DATA_FLOAT, api.FMA_MATH), (api.DATA_DOUBLE, api.DEFAULT_MATH)):
        api.call("cudnnSetRNNDescriptor_v8", rnn.ptr, api.RNN_ALGO_STANDARD, api.RNN_MODE_GRU,
                 api.RNN_DOUBLE_BIAS, cudnn.api.BIDIRECTIONAL, api.LINEAR_INPUT, dt, dt, math, 16,
                 32, 32, 1, drop.ptr, api.RNN_PADDED_IO_ENABLED)
    with pytest.raises(api.CudnnError, match="BAD_PARAM|NOT_SUPPORTED"):
        api.call("cudnnSetRNNDescriptor_v8", rnn.ptr, api.RNN_ALGO_STANDARD, api.RNN_MODE_GRU,
                 api.RNN_DOUBLE_BIAS, 7, api.LINEAR_INPUT, api.DATA_FLOAT, api.DATA_FLOAT,
                 api.FMA_MATH, 16, 32, 32, 1, drop.ptr, api.RNN_PADDED_IO_ENABLED)
