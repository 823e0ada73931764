"""Layers on CuPy arrays: CuPy in, CuPy out, same numbers as NumPy whichever GPU engine runs.
Skipped without CuPy and a CUDA device."""

import numpy as np
import pytest

from fastgru import GRU, RNN, GRUCell
from fastgru._array import cupy_available

pytestmark = pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA device")


@pytest.fixture
def cp():
    import cupy

    return cupy


def pair(layer_kw, D=3, seed=0):
    """A float64 layer for NumPy and its copy moved to the GPU."""
    cpu = GRU(4, dtype="float64", bias_initializer="random_normal", **layer_kw)
    cpu.build((None, 5, D))
    gpu = GRU.from_config(cpu.get_config())
    gpu.build((None, 5, D))
    gpu.set_weights(cpu.get_weights())
    return cpu, gpu.to("gpu")


CASES = [
    ({}, None, "cudnn"),
    ({"return_sequences": True, "return_state": True}, "right", "cudnn"),
    ({"return_sequences": True, "go_backwards": True}, "right", "cudnn"),
    ({"return_sequences": True}, "left", "xp"),
    ({"reset_after": False, "return_state": True}, None, "xp"),
    ({"recurrent_activation": "hard_sigmoid"}, None, "xp"),
    ({"unroll": True}, None, "xp"),
]


@pytest.mark.parametrize("kw,mask_kind,engine", CASES)
def test_cupy_in_cupy_out_same_numbers(cp, kw, mask_kind, engine):
    r = np.random.default_rng(1)
    x = r.normal(size=(3, 5, 3))
    mask = None
    if mask_kind == "right":
        mask = np.arange(5)[None, :] < np.array([[5], [3], [1]])
    elif mask_kind == "left":
        mask = np.arange(5)[None, :] >= np.array([[0], [2], [4]])
    cpu, gpu = pair(kw)
    want = cpu(x, mask=mask)
    got = gpu(cp.asarray(x), mask=None if mask is None else cp.asarray(mask))
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want):
        assert isinstance(g, cp.ndarray)
        np.testing.assert_allclose(g.get(), w, rtol=1e-9, atol=1e-10)
    assert f"engine '{engine}'" in gpu.explain(cp.asarray(x), mask=mask)


def test_use_cudnn_true_ineligible_raises_naming_rule(cp):
    layer = GRU(2, reset_after=False, use_cudnn=True)
    with pytest.raises(ValueError, match="use_cudnn=True was specified.*reset_after"):
        layer(cp.zeros((1, 2, 3), cp.float32))
    with pytest.raises(ValueError, match="recurrent_dropout > 0"):
        GRU(2, recurrent_dropout=0.1, use_cudnn=True)(cp.zeros((1, 2, 3), cp.float32))
    out = GRU(2, use_cudnn=False)(cp.zeros((1, 2, 3), cp.float32))
    assert isinstance(out, cp.ndarray) and out.dtype == cp.float32


@pytest.mark.parametrize("kw", [{"return_sequences": True, "return_state": True},
                                {"reset_after": False, "go_backwards": True}])
def test_gpu_gradients_equal_cpu(cp, kw):
    r = np.random.default_rng(2)
    x = r.normal(size=(3, 5, 3))
    mask = np.arange(5)[None, :] < np.array([[5], [4], [2]])
    cpu, gpu = pair(kw)
    out_c, tape_c = cpu.forward(x, mask=mask)
    out_g, tape_g = gpu.forward(cp.asarray(x), mask=cp.asarray(mask))
    y = out_c[0] if isinstance(out_c, tuple) else out_c
    dy = r.normal(size=y.shape)
    gc = cpu.backward(tape_c, dy)
    gg = gpu.backward(tape_g, cp.asarray(dy))
    for a, b in zip(gg, gc):
        np.testing.assert_allclose(a.get(), b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gg.inputs.get(), gc.inputs, rtol=1e-8, atol=1e-10)


def test_gpu_stateful_stacked_and_dropout(cp):
    r = np.random.default_rng(3)
    x = cp.asarray(r.normal(size=(2, 6, 3)).astype(np.float32))
    layer = RNN([GRUCell(3), GRUCell(2, dropout=0.3, seed=1)], stateful=True,
                return_sequences=True)
    out = layer(x[:, :3])
    assert isinstance(out, cp.ndarray)
    assert isinstance(layer.states[0][0].value, cp.ndarray)
    layer(x[:, 3:])
    layer.reset_state()
    assert float(cp.abs(layer.states[1][0].value).sum()) == 0
    y, tape = layer.forward(x, training=True)
    assert isinstance(tape.dropout[1].inputs, cp.ndarray)
    assert tape.dropout[1].inputs.shape == (2, 3)
    g = layer.backward(tape, cp.ones_like(y))
    assert all(isinstance(w, cp.ndarray) for w in g)
    assert isinstance(layer.to("cpu").states[0][0].value, np.ndarray)


def test_first_call_on_gpu_places_weights_and_mismatch_is_explained(cp):
    layer = GRU(2)
    out = layer(cp.ones((1, 3, 2), cp.float32))
    assert isinstance(out, cp.ndarray) and isinstance(layer.cell.kernel.value, cp.ndarray)
    with pytest.raises(ValueError, match=r"layer.to\('cpu'\)"):
        layer(np.ones((1, 3, 2), np.float32))
    assert isinstance(layer.to("cpu")(np.ones((1, 3, 2), np.float32)), np.ndarray)
