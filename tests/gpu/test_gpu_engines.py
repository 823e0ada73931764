"""GPU tests: the cuDNN and xp engines on CuPy against the float64 CPU reference.

Skipped cleanly without CuPy or without a CUDA device. float32 runs with TF32 off (the
engine's default: cuDNN FMA_MATH), so 1e-4 relative agreement is expected.
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from fastgru import activations  # noqa: E402
from fastgru._array import cupy_available  # noqa: E402
from fastgru.engines import _cudnn_layout as layout  # noqa: E402
from fastgru.engines import cudnn, reference  # noqa: E402
from fastgru.engines import xp as xpe  # noqa: E402
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights  # noqa: E402

if not cupy_available():
    pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)

TANH, SIGMOID = activations.get("tanh"), activations.get("sigmoid")


def make(rng, B, T, D, u, dtype, mask_kind=None, dropout=False, reset_after=True):
    x = rng.normal(size=(B, T, D))
    K = rng.normal(size=(D, 3 * u)) / np.sqrt(D)
    R = rng.normal(size=(u, 3 * u)) / np.sqrt(u)
    b = rng.normal(size=(2, 3 * u) if reset_after else (3 * u,)) * 0.1
    h0 = rng.normal(size=(B, u)) * 0.5
    mask = None
    if mask_kind == "padded":
        lens = rng.integers(0, T + 1, size=B)
        lens[0] = T
        mask = np.arange(T)[None, :] < lens[:, None]
        x[~mask] = np.nan
    elif mask_kind == "random":
        mask = rng.random((B, T)) < 0.7
    mx = (rng.random((B, D)) < 0.8) / 0.8 if dropout else None
    host = dict(x=x, w=Weights(K, R, b), h0=h0, mask=mask, dropout=DropoutMasks(mx) if dropout
                else None)
    dev = dict(x=cupy.asarray(x, dtype), w=Weights(*(cupy.asarray(a, dtype) for a in (K, R, b))),
               h0=cupy.asarray(h0, dtype), mask=None if mask is None else cupy.asarray(mask),
               dropout=DropoutMasks(cupy.asarray(mx, dtype)) if dropout else None)
    return host, dev


def rel_close(got, want, rtol, what):
    got = cupy.asnumpy(got)
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got.astype(np.float64) - want).max() / scale
    assert err <= rtol, f"{what}: max abs err / max |ref| = {err:.3g} > {rtol}"


def check(engine, spec, host, dev, rtol, seed=0):
    rng = np.random.default_rng(seed)
    x_ref = host["x"] if host["mask"] is None else np.where(host["mask"][..., None], host["x"], 0)
    r_out, r_h, r_tape = reference.forward(x_ref, host["w"], host["h0"], spec, host["mask"],
                                           host["dropout"], training=True)
    out, h, tape = engine.forward(dev["x"], dev["w"], dev["h0"], spec, dev["mask"],
                                  dev["dropout"], training=True)
    assert isinstance(out, cupy.ndarray) and out.dtype == dev["x"].dtype
    rel_close(out, r_out, rtol, "outputs")
    rel_close(h, r_h, rtol, "h_last")
    d_out = rng.normal(size=r_out.shape)
    d_h = rng.normal(size=r_h.shape)
    g_ref = reference.backward(r_tape, d_out, d_h)
    dt = dev["x"].dtype
    g = engine.backward(tape, cupy.asarray(d_out, dt), cupy.asarray(d_h, dt))
    for name in ("x", "h0", "kernel", "recurrent_kernel", "bias"):
        a = getattr(g, name)
        assert bool(cupy.isfinite(a).all()), name
        rel_close(a, getattr(g_ref, name), rtol, name)


TOL = {np.float64: 1e-10, np.float32: 1e-4}
ENGINES = {"cudnn": cudnn, "xp": xpe}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("engine", ["cudnn", "xp"])
@pytest.mark.parametrize("mask_kind", [None, "padded"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences,zero_output", [(True, False), (True, True),
                                                          (False, False), (False, True)])
def test_engines_match_reference(dtype, engine, mask_kind, go_backwards, return_sequences,
                                 zero_output):
    rng = np.random.default_rng(1)
    host, dev = make(rng, 5, 7, 6, 8, dtype, mask_kind, dropout=True)
    spec = GRUSpec(8, TANH, SIGMOID, go_backwards=go_backwards,
                   return_sequences=return_sequences, zero_output_for_mask=zero_output)
    check(ENGINES[engine], spec, host, dev, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act,rec", [("tanh", "sigmoid"), ("relu", "hard_sigmoid"),
                                     ("gelu", "sigmoid"), ("softsign", "softplus")])
@pytest.mark.parametrize("reset_after", [True, False])
def test_xp_engine_generic_and_fused_paths(dtype, act, rec, reset_after):
    rng = np.random.default_rng(2)
    host, dev = make(rng, 4, 6, 5, 7, dtype, "random", reset_after=reset_after)
    mh = (rng.random((3, 4, 7)) < 0.8) / 0.8
    host["dropout"] = DropoutMasks(None, mh)
    dev["dropout"] = DropoutMasks(None, cupy.asarray(mh, dtype))
    spec = GRUSpec(7, activations.get(act), activations.get(rec), reset_after=reset_after,
                   return_sequences=True)
    check(xpe, spec, host, dev, TOL[dtype])


@pytest.mark.parametrize("shape", [(1, 100, 64, 128), (32, 50, 64, 256), (3, 2, 1, 1)])
def test_cudnn_larger_shapes_float32(shape):
    B, T, D, u = shape
    rng = np.random.default_rng(3)
    host, dev = make(rng, B, T, D, u, np.float32, "padded" if B > 1 else None)
    spec = GRUSpec(u, TANH, SIGMOID, return_sequences=True)
    check(cudnn, spec, host, dev, 1e-4)


@pytest.mark.parametrize("B,u,training,want", [
    (1, 64, True, "persist-small-h"), (8, 128, True, "persist-small-h"),
    (8, 160, False, "persist-small-h"), (1, 160, True, "persist-static"),
    (8, 160, True, "standard"), (4, 256, True, "persist-static"),
    (1, 1024, False, "persist-static"), (8, 256, False, "standard")])
def test_cudnn_persistent_kernels_on_this_gpu(B, u, training, want):
    """float32 runs cuDNN's persistent kernels where the engine's rules pick them (which layout
    it took is printed), and they agree with the reference like STANDARD does."""
    rng = np.random.default_rng(5)
    D, T = 16, 30
    host, dev = make(rng, B, T, D, u, np.float32)
    spec = GRUSpec(u, TANH, SIGMOID, return_sequences=True)
    if training:
        check(cudnn, spec, host, dev, 1e-4)
    else:
        want_out = reference.forward(host["x"], host["w"], host["h0"], spec)[0]
        rel_close(cudnn.forward(dev["x"], dev["w"], dev["h0"], spec)[0], want_out, 1e-4,
                  "outputs")
    names = cudnn.backend().plan(np.float32, D, u).ran(B, T, training)
    print(f"B={B} u={u} training={training}: {names}")
    assert names in ({want}, {want + "-seq-major"}), names


def test_cudnn_weight_space_layout_report():
    """Confirms on the GPU what CUDNN_NOTES.md marks [GPU: verify]: the weight-space size and
    whether cudnnGetRNNWeightParams reports the layout JAX and PyTorch observed. The engine
    does not rely on it (it uses the reported offsets); a mismatch is reported, not failed."""
    D, u = 5, 6
    plan = cudnn.backend().plan(np.float32, D, u)
    assert plan.n_elems >= layout.keras_size(D, u)
    documented = layout.pack_index(layout.documented_layout(D, u), layout.keras_size(D, u), D, u)
    same = plan.n_elems == documented.size and np.array_equal(cupy.asnumpy(plan.pack_idx),
                                                              documented)
    print(f"cuDNN weight space {plan.n_elems} elements (Keras {layout.keras_size(D, u)}); "
          f"documented layout: {same}")


def test_sgd_training_loop_converges():
    """Plain SGD on the engine contract: a student GRU fits a teacher GRU's outputs."""
    rng = np.random.default_rng(4)
    B, T, D, u = 16, 12, 4, 8
    teacher, _ = make(rng, B, T, D, u, np.float32)
    spec = GRUSpec(u, TANH, SIGMOID, return_sequences=True)
    x = cupy.asarray(rng.normal(size=(B, T, D)), np.float32)
    h0 = cupy.zeros((B, u), np.float32)
    tw = Weights(*(cupy.asarray(a, np.float32) for a in teacher["w"]))
    target, _, _ = cudnn.forward(x, tw, h0, spec)
    w = [cupy.asarray(a * 0.3, np.float32) for a in
         (rng.normal(size=(D, 3 * u)), rng.normal(size=(u, 3 * u)), np.zeros((2, 3 * u)))]
    losses = []
    for _ in range(300):
        out, _, tape = cudnn.forward(x, Weights(*w), h0, spec, training=True)
        diff = out - target
        losses.append(float((diff ** 2).mean()))
        g = cudnn.backward(tape, 2 * diff / diff.size)
        for p, dp in zip(w, (g.kernel, g.recurrent_kernel, g.bias)):
            p -= 0.5 * dp
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("engine", ["cudnn", "xp"])
def test_no_device_memory_growth(engine):
    rng = np.random.default_rng(5)
    _, dev = make(rng, 8, 20, 16, 32, np.float32, "padded")
    spec = GRUSpec(32, TANH, SIGMOID, return_sequences=True)
    pool = cupy.get_default_memory_pool()
    eng = ENGINES[engine]

    def step():
        out, h, tape = eng.forward(dev["x"], dev["w"], dev["h0"], spec, dev["mask"],
                                   training=True)
        g = eng.backward(tape, cupy.ones_like(out), cupy.ones_like(h))
        del out, h, tape, g

    for _ in range(5):
        step()
    cupy.cuda.get_current_stream().synchronize()
    before = pool.used_bytes()
    for _ in range(100):
        step()
    cupy.cuda.get_current_stream().synchronize()
    assert pool.used_bytes() <= before, (before, pool.used_bytes())


def test_cudnn_forward_is_repeatable_and_stream_aware():
    rng = np.random.default_rng(6)
    _, dev = make(rng, 4, 9, 5, 6, np.float32, "padded")
    spec = GRUSpec(6, TANH, SIGMOID, return_sequences=True)
    a, _, _ = cudnn.forward(dev["x"], dev["w"], dev["h0"], spec, dev["mask"])
    with cupy.cuda.Stream(non_blocking=True) as s:
        b, _, _ = cudnn.forward(dev["x"], dev["w"], dev["h0"], spec, dev["mask"])
        s.synchronize()
    cupy.testing.assert_array_equal(a, b)


def test_cudnn_packed_weights_follow_variable_versions():
    from fastgru.variable import Variable

    rng = np.random.default_rng(7)
    host, dev = make(rng, 3, 4, 2, 3, np.float64)
    vs = [Variable(a, n) for a, n in zip(dev["w"], ("kernel", "recurrent_kernel", "bias"))]
    spec = GRUSpec(3, TANH, SIGMOID)
    w2 = Weights(host["w"].kernel * 2.0, host["w"].recurrent_kernel, host["w"].bias)
    out1, _, _ = cudnn.forward(dev["x"], Weights(*vs), dev["h0"], spec)
    vs[0].value *= 2.0
    vs[0].bump()
    out2, _, _ = cudnn.forward(dev["x"], Weights(*vs), dev["h0"], spec)
    r2, _, _ = reference.forward(host["x"], w2, host["h0"], spec)
    rel_close(out2, r2, 1e-10, "after bump")
    assert not bool(cupy.allclose(out1, out2))


def test_all_rows_masked():
    rng = np.random.default_rng(8)
    host, dev = make(rng, 3, 5, 4, 4, np.float64)
    mask = np.zeros((3, 5), bool)
    host["mask"], dev["mask"] = mask, cupy.asarray(mask)
    spec = GRUSpec(4, TANH, SIGMOID, return_sequences=True)
    check(cudnn, spec, host, dev, 1e-10)


# --------------------------------------------------------------------------------------------
# Bidirectional: one CUDNN_BIDIRECTIONAL call against two unidirectional calls and the reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask_kind", [None, "padded"])
@pytest.mark.parametrize("return_sequences,zero_output", [(True, True), (True, False),
                                                          (False, False)])
def test_cudnn_bidirectional_matches_two_calls_and_reference(dtype, mask_kind, return_sequences,
                                                             zero_output):
    rng = np.random.default_rng(9)
    B, T, D, u = 5, 7, 6, 8
    host, dev = make(rng, B, T, D, u, dtype, mask_kind)
    hb, db = make(np.random.default_rng(10), B, T, D, u, dtype)  # the backward layer's weights
    sf = GRUSpec(u, TANH, SIGMOID, return_sequences=return_sequences,
                 zero_output_for_mask=zero_output)
    sb = GRUSpec(u, TANH, SIGMOID, go_backwards=True, return_sequences=return_sequences,
                 zero_output_for_mask=zero_output)
    fused = cudnn.forward_bidirectional(dev["x"], dev["w"], db["w"], dev["h0"], db["h0"], sf,
                                        sb, dev["mask"], training=True)
    two = [cudnn.forward(dev["x"], w, h, s, dev["mask"], training=True)
           for w, h, s in ((dev["w"], dev["h0"], sf), (db["w"], db["h0"], sb))]
    x_ref = host["x"] if host["mask"] is None else np.where(host["mask"][..., None], host["x"],
                                                             0)
    ref = [reference.forward(x_ref, w, h, s, host["mask"], training=True)
           for w, h, s in ((host["w"], host["h0"], sf), (hb["w"], hb["h0"], sb))]
    tol = TOL[dtype]
    for i, what in enumerate(("out_f", "h_f", "out_b", "h_b")):
        d, k = divmod(i, 2)
        rel_close(fused[i], ref[d][k], tol, what)
        rel_close(fused[i], cupy.asnumpy(two[d][k]).astype(np.float64), tol, what + " vs two")
    ups = [rng.normal(size=np.shape(a)) for a in fused[:4]]
    dx, gf, gb = cudnn.backward_bidirectional(fused[4], *(cupy.asarray(a, dtype) for a in ups))
    g2 = [cudnn.backward(two[d][2], cupy.asarray(ups[2 * d], dtype),
                         cupy.asarray(ups[2 * d + 1], dtype)) for d in (0, 1)]
    gr = [reference.backward(ref[d][2], ups[2 * d], ups[2 * d + 1]) for d in (0, 1)]
    rel_close(dx, gr[0].x + gr[1].x, tol, "dx")
    rel_close(dx, cupy.asnumpy(g2[0].x + g2[1].x).astype(np.float64), tol, "dx vs two")
    for g, e, e2 in ((gf, gr[0], g2[0]), (gb, gr[1], g2[1])):
        for name in ("h0", "kernel", "recurrent_kernel", "bias"):
            assert bool(cupy.isfinite(getattr(g, name)).all()), name
            rel_close(getattr(g, name), getattr(e, name), tol, name)
            rel_close(getattr(g, name), cupy.asnumpy(getattr(e2, name)).astype(np.float64),
                      tol, name + " vs two")


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_layer_fused_equals_two_calls(merge_mode, masked):
    from fastgru.layers import GRU
    from fastgru.layers.bidirectional import Bidirectional

    rng = np.random.default_rng(11)
    B, T, D, u = 4, 6, 5, 7
    layer = Bidirectional(GRU(u, return_sequences=True, return_state=True, dtype="float64"),
                          merge_mode=merge_mode)
    layer.build((None, None, D))
    layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])
    layer.to("gpu")
    x = cupy.asarray(rng.normal(size=(B, T, D)))
    mask = None
    if masked:
        mask = cupy.asarray(np.arange(T)[None, :] < np.array([6, 3, 0, 1])[:, None])
    assert "fused bidirectional" in layer.explain(x, mask)

    def run():
        y, tape = layer.forward(x, mask=mask)
        leaves = list(y[:2]) + list(y[2:]) if merge_mode is None else list(y)
        dy = [cupy.asarray(np.random.default_rng(12).normal(size=a.shape)) for a in leaves]
        d = tuple(dy) if merge_mode is None else (dy[0], *dy[1:])
        return leaves, tape, layer.backward(tape, d)

    got, tape, g = run()
    assert tape["fused"] is not None
    layer._fused_run = lambda *a, **k: None  # force the two-call path
    want, tape2, g2 = run()
    assert tape2["fused"] is None
    for a, e in zip(got + [g.inputs] + g.initial_state + g.weights,
                    want + [g2.inputs] + g2.initial_state + g2.weights, strict=True):
        rel_close(a, cupy.asnumpy(e), 1e-10, "layer")


def test_cudnn_bidirectional_weight_space_layout_report():
    """[GPU: verify] in CUDNN_NOTES.md: the 2-pseudo-layer weight space size and whether the
    reported layout is the documented one (reported, not failed: the engine uses offsets)."""
    D, u = 5, 6
    plan = cudnn.backend().plan(np.float32, D, u, dirs=2)
    assert plan.n_elems >= 2 * layout.keras_size(D, u)
    n = 2 * layout.keras_size(D, u)
    documented = layout.pack_index(layout.documented_layout(D, u, 2), n, D, u, 2)
    same = plan.n_elems == n and np.array_equal(cupy.asnumpy(plan.pack_idx), documented)
    print(f"bidirectional weight space {plan.n_elems} elements (Keras 2x "
          f"{layout.keras_size(D, u)}); documented layout: {same}")
