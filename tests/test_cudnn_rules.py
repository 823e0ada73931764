"""cuDNN engine on the CPU: eligibility rules, their messages, input errors, library loading."""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

from fastgru import activations
from fastgru.engines import _cudnn_api as api
from fastgru.engines import cudnn
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights

from test_cudnn_packing import FakeBackend, TANH_SIGMOID  # noqa: E402  (tests/ is on sys.path)


def spec(**kw):
    base = dict(units=2, **TANH_SIGMOID)
    base.update(kw)
    return GRUSpec(**base)


def test_eligible_default_config():
    ok, why = cudnn.eligible(spec())
    assert ok and "no mask" in why
    ok, why = cudnn.eligible(spec(), np.array([[True, True, False], [True, False, False]]),
                             DropoutMasks(np.ones((2, 3))))
    assert ok and "right-padded" in why


@pytest.mark.parametrize("kw,dropout,needle", [
    (dict(activation=activations.get("relu")), None, "activation is 'relu'"),
    (dict(recurrent_activation=activations.get("hard_sigmoid")), None,
     "recurrent_activation is 'hard_sigmoid'"),
    (dict(use_bias=False), None, "use_bias=False"),
    (dict(reset_after=False), None, "reset_after=False"),
    ({}, DropoutMasks(None, np.ones((3, 2, 2))), "recurrent_dropout"),
    ({}, DropoutMasks(np.ones((3, 2, 3))), "per-gate input dropout"),
])
def test_each_rule_is_named(kw, dropout, needle):
    ok, why = cudnn.eligible(spec(**kw), None, dropout)
    assert not ok
    assert needle in why


def test_user_callable_activation_is_ineligible():
    ok, why = cudnn.eligible(spec(activation=activations.get(np.tanh)))
    assert not ok and "activation is" in why


@pytest.mark.parametrize("mask,row", [
    ([[True, False, True]], 0),
    ([[True, True, True], [False, True, True]], 1),
])
def test_mask_not_right_padded(mask, row):
    ok, why = cudnn.eligible(spec(), np.array(mask))
    assert not ok
    assert f"row {row}" in why and "not right-padded" in why


def test_fully_masked_rows_and_numeric_masks_are_eligible():
    ok, _ = cudnn.eligible(spec(), np.array([[0, 0, 0], [1, 1, 0]]))
    assert ok


def test_mask_lengths():
    from fastgru.engines import _cudnn_seq as seq

    L, ok = seq.mask_lengths(np, np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]]))
    np.testing.assert_array_equal(L, [2, 0, 2])
    np.testing.assert_array_equal(ok, [True, True, False])
    assert L.dtype == np.int32


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(cudnn, "_BACKEND", FakeBackend())
    yield


def case(B=2, T=3, D=3, u=2):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(B, T, D)),
            Weights(rng.normal(size=(D, 3 * u)), rng.normal(size=(u, 3 * u)),
                    rng.normal(size=(2, 3 * u))),
            rng.normal(size=(B, u)))


def test_forward_raises_value_error_naming_the_rule(fake):
    x, w, h0 = case()
    with pytest.raises(ValueError, match="reset_after=False.*cuDNN needs"):
        cudnn.forward(x, w._replace(bias=w.bias[0]), h0, spec(reset_after=False))
    with pytest.raises(ValueError, match="row 0 has a False before a True"):
        cudnn.forward(x, w, h0, spec(), mask=np.array([[False, True, True], [True] * 3]))


def test_bad_inputs(fake):
    x, w, h0 = case()
    with pytest.raises(ValueError, match="x must be a 3-D"):
        cudnn.forward(x[0], w, h0, spec())
    with pytest.raises(TypeError, match="float32 or float64"):
        cudnn.forward(x.astype(np.float16), w, h0, spec())
    with pytest.raises(ValueError, match="at least one timestep"):
        cudnn.forward(x[:, :0], w, h0, spec())
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        cudnn.forward(x, w._replace(recurrent_kernel=w.kernel), h0, spec())
    with pytest.raises(ValueError, match="h0 must have shape"):
        cudnn.forward(x, w, h0[:1], spec())
    with pytest.raises(ValueError, match="mask must have shape"):
        cudnn.forward(x, w, h0, spec(), mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="dropout.inputs must have shape"):
        cudnn.forward(x, w, h0, spec(), dropout=DropoutMasks(np.ones((2, 4))))
    out, h, tape = cudnn.forward(x, w, h0, spec(), training=True)
    with pytest.raises(ValueError, match="d_outputs must have shape"):
        cudnn.backward(tape, np.ones((2, 3, 2)))
    with pytest.raises(ValueError, match="d_h_last must have shape"):
        cudnn.backward(tape, None, np.ones((3, 2)))


def test_numpy_input_with_the_real_backend_is_a_type_error(monkeypatch):
    monkeypatch.setattr(cudnn, "_BACKEND", None)
    x, w, h0 = case()
    with pytest.raises(TypeError, match="runs on CuPy arrays"):
        cudnn.forward(x, w, h0, spec())


def test_empty_batch(fake):
    x, w, h0 = case(B=0)
    out, h, tape = cudnn.forward(x, w, h0, spec(return_sequences=True), training=True)
    assert out.shape == (0, 3, 2) and h.shape == (0, 2)


# --------------------------------------------------------------------------------------------
# Library binding


def test_prototype_table_matches_c_arity():
    for name, n in api.ARITY.items():
        assert len(api.PROTOTYPES[name][1]) == n, name
    for name, (res, args) in api.PROTOTYPES.items():
        if name.startswith(("cudnnCreate", "cudnnDestroy", "cudnnSet", "cudnnRNN")):
            assert res is ctypes.c_int, name


def test_import_loads_neither_cupy_nor_cudnn():
    code = ("import sys, fastgru.engines.cudnn, fastgru.engines.xp, fastgru._array;"
            "from fastgru.engines import _cudnn_api as a;"
            "assert 'cupy' not in sys.modules; assert a._lib is None; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_missing_library_lists_every_place_tried(monkeypatch, tmp_path):
    bogus = str(tmp_path / "nowhere")
    monkeypatch.setenv("FASTGRU_CUDNN_PATH", bogus)
    monkeypatch.setattr(api, "candidates", lambda: [os.path.join(bogus, "libcudnn.so.9"),
                                                    str(tmp_path / "b" / "libcudnn.so.9")])
    with pytest.raises(ImportError, match="nvidia-cudnn-cu12.*Tried:.*nowhere.*absent.*b"):
        api._load()


def test_candidates_honour_env_first(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTGRU_CUDNN_PATH", str(tmp_path))
    assert api.candidates()[0] == os.path.join(str(tmp_path), "libcudnn.so.9")
    assert api.candidates()[-1] == "libcudnn.so.9"


def test_error_text_carries_both_strings():
    e = api.CudnnError("cudnnRNNForward", 2000, "CUDNN_STATUS_BAD_PARAM", "isSorted == false")
    assert "cudnnRNNForward" in str(e) and "2000" in str(e) and "isSorted" in str(e)
    assert "GPU visible" in str(api.CudnnError("cudnnCreate", 1001, "NOT_INITIALIZED"))


def _real_library():
    try:
        L, path = api._load()
    except ImportError:
        return None
    return L


def test_real_library_symbols_and_no_gpu_error():
    """Runs where libcudnn.so.9 can be found (a cuDNN wheel, or FASTGRU_CUDNN_PATH)."""
    L = _real_library()
    if L is None:
        pytest.skip("libcudnn.so.9 not installed")
    api.declare(L)  # every prototype resolves to a symbol
    assert L.cudnnGetVersion() >= api.MIN_VERSION
    from fastgru._array import cupy_available

    if cupy_available():
        pytest.skip("a GPU is present: the no-GPU error path does not apply")
    h = ctypes.c_void_p()
    status = L.cudnnCreate(ctypes.byref(h))
    assert status == api.STATUS_NOT_INITIALIZED


def test_real_library_host_side_descriptor_calls(monkeypatch):
    """Descriptor set-up needs no GPU: checks the ctypes marshalling of the engine's calls
    (int arrays, paddingFill pointer, enums) against the real library where it is installed."""
    if _real_library() is None:
        pytest.skip("libcudnn.so.9 not installed")
    from fastgru.engines.cudnn import _nd_dims, _Owned

    d = _Owned("cudnnCreateTensorDescriptor", "cudnnDestroyTensorDescriptor")
    api.call("cudnnSetTensorNdDescriptor", d.ptr, api.DATA_DOUBLE, 3, api.int_array((1, 5, 7)),
             api.int_array((35, 7, 1)))
    assert _nd_dims(d.ptr) == (1, 5, 7)
    drop = _Owned("cudnnCreateDropoutDescriptor", "cudnnDestroyDropoutDescriptor")
    rnn = _Owned("cudnnCreateRNNDescriptor", "cudnnDestroyRNNDescriptor")
    args = [rnn.ptr, api.RNN_ALGO_STANDARD, api.RNN_MODE_GRU, api.RNN_DOUBLE_BIAS,
            api.UNIDIRECTIONAL, api.LINEAR_INPUT, api.DATA_FLOAT, api.DATA_FLOAT, api.FMA_MATH,
            64, 128, 128, 1, drop.ptr, api.RNN_PADDED_IO_ENABLED]
    api.call("cudnnSetRNNDescriptor_v8", *args)
    args[11] = 64  # projSize != hiddenSize is LSTM-only
    with pytest.raises(api.CudnnError, match="NOT_SUPPORTED"):
        api.call("cudnnSetRNNDescriptor_v8", *args)
    dd = _Owned("cudnnCreateRNNDataDescriptor", "cudnnDestroyRNNDataDescriptor")
    fill = api.scalar(0.0, api.DATA_FLOAT)
    api.call("cudnnSetRNNDataDescriptor", dd.ptr, api.DATA_FLOAT,
             api.RNN_DATA_BATCH_MAJOR_UNPACKED, 5, 3, 64,
             api.int_array(np.array([5, 1, 3], np.int32)), ctypes.byref(fill))
    with pytest.raises(api.CudnnError, match="currentSeqLength"):
        api.call("cudnnSetRNNDataDescriptor", dd.ptr, api.DATA_FLOAT,
                 api.RNN_DATA_BATCH_MAJOR_UNPACKED, 5, 3, 64, api.int_array([6, 1, 3]),
                 ctypes.byref(fill))
