"""cuDNN engine on the CPU: eligibility rules, their messages, input errors, library loading."""

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
from test_cudnn_packing import TANH_SIGMOID, FakeBackend  # noqa: E402  (tests/ is on sys.path)

from fastgru import activations
from fastgru.engines import _cudnn_api as api
from fastgru.engines import cudnn
from fastgru.engines.base import DropoutMasks, GRUSpec, Weights


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
    # by what the function is, not by its name: cuDNN would compute tanh, not this
    impostor = activations.Activation("tanh", lambda a: a, None)
    ok, why = cudnn.eligible(spec(activation=impostor))
    assert not ok and "activation is" in why
    ok, why = cudnn.eligible(spec(recurrent_activation=activations.Activation("sigmoid", abs,
                                                                               None)))
    assert not ok and "recurrent_activation is" in why


def test_library_search_skips_relative_paths(monkeypatch):
    monkeypatch.setattr(sys, "path", ["", "relative/dir", "/abs/site-packages"])
    found = api.candidates()
    assert not any(c.startswith(("nvidia", "relative")) for c in found)
    assert "/abs/site-packages/nvidia/cudnn/lib/libcudnn.so.9" in found


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
    for name, (res, _args) in api.PROTOTYPES.items():
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
    from fastgru.engines.cudnn import _nd_desc, _Owned

    d = _Owned("cudnnCreateTensorDescriptor", "cudnnDestroyTensorDescriptor")
    api.call("cudnnSetTensorNdDescriptor", d.ptr, api.DATA_DOUBLE, 3, api.int_array((1, 5, 7)),
             api.int_array((35, 7, 1)))
    assert _nd_desc(d.ptr) == ((1, 5, 7), (35, 7, 1))
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


# --------------------------------------------------------------------------------------------
# CudnnBackend end to end against a simulated libcudnn: every call goes through the real
# ctypes prototypes' from_param conversions, and the simulated library reads and writes the
# raw memory behind the pointers it is given, like cuDNN does.


class SimulatedLibcudnn:
    """The subset of libcudnn.so.9 the engine calls, computed with the reference engine."""

    def __init__(self, shuffled=False, extra_elems=5):
        from test_cudnn_packing import shuffled_layout

        self.shuffled_layout, self.shuffled, self.extra = shuffled_layout, shuffled, extra_elems
        self.next_id = 1000
        self.tensors, self.data, self.rnn, self.calls, self.tapes = {}, {}, {}, [], {}
        # stage -> predicate(rnn config, data config) -> status to return instead of running:
        # stages "temp" (cudnnGetRNNTempSpaceSizes), "forward", "backward"; as cuDNN declines
        # an algorithm/layout it cannot run. ran: (stage, algo, layout) of every run call.
        self.refuse, self.ran = {}, []
        self.small_h_layout_differs = self.small_h_strides_differ = False
        self.small_h_unit_strides_differ = False
        self.missing_param = None  # (algo, lin): cudnnGetRNNWeightParams reports no bias there

    # -- plumbing: prototypes, arity, conversions
    def __getattr__(self, name):
        if name not in api.PROTOTYPES:
            raise AttributeError(name)
        argtypes = api.PROTOTYPES[name][1]
        impl = getattr(self, "_" + name, None)

        def fn(*args):
            assert len(args) == len(argtypes), (name, len(args))
            for t, a in zip(argtypes, args):
                t.from_param(a)  # raises ctypes.ArgumentError-like TypeError if incompatible
            self.calls.append(name)
            return impl(*args) if impl else 0
        return fn

    def _new(self, out):
        self.next_id += 1
        out._obj.value = self.next_id
        return 0

    @staticmethod
    def _val(p):
        return p.value if isinstance(p, ctypes.c_void_p) else p

    def _array(self, ptr, shape, dt):
        n = int(np.prod(shape))
        ctype = ctypes.c_double if dt == api.DATA_DOUBLE else ctypes.c_float
        return np.ctypeslib.as_array((ctype * n).from_address(self._val(ptr))).reshape(shape)

    def cudnnGetVersion(self):
        return 92800

    def cudnnGetErrorString(self, status):
        return b"CUDNN_STATUS_SIMULATED"

    def cudnnGetLastErrorString(self, buf, n):
        pass

    _cudnnCreate = _new
    _cudnnCreateTensorDescriptor = _new
    _cudnnCreateDropoutDescriptor = _new
    _cudnnCreateRNNDescriptor = _new
    _cudnnCreateRNNDataDescriptor = _new

    def _cudnnSetTensorNdDescriptor(self, d, dt, nb, dims, strides):
        self.tensors[self._val(d)] = (dt, tuple(dims[:nb]), tuple(strides[:nb]))
        return 0

    def _cudnnGetTensorNdDescriptor(self, d, nreq, dt, nb, dims, strides):
        t, ds, st = self.tensors[self._val(d)]
        dt._obj.value, nb._obj.value = t, len(ds)
        for i, v in enumerate(ds):
            dims[i] = v
        for i, v in enumerate(st):
            strides[i] = v
        return 0

    def _cudnnSetRNNDescriptor_v8(self, r, algo, mode, bias, dirm, inm, dt, prec, math, D, H,
                                  proj, layers, drop, aux):
        assert (mode, bias, dirm, inm, layers) == (
            api.RNN_MODE_GRU, api.RNN_DOUBLE_BIAS, api.UNIDIRECTIONAL, api.LINEAR_INPUT, 1)
        assert algo in (api.RNN_ALGO_STANDARD, api.RNN_ALGO_PERSIST_STATIC,
                        api.RNN_ALGO_PERSIST_STATIC_SMALL_H)
        assert aux in (api.RNN_PADDED_IO_ENABLED, api.RNN_PADDED_IO_DISABLED)
        assert dt == prec and proj == H
        self.rnn[self._val(r)] = dict(dt=dt, D=D, H=H, math=math, algo=algo, aux=aux)
        return 0

    def _refused(self, stage, r, xd):
        pred = self.refuse.get(stage)
        return pred(self._cfg(r), self.data[self._val(xd)]) if pred else 0

    def _check_layout(self, r, xd):
        """cuDNN: unpacked layouts need CUDNN_RNN_PADDED_IO_ENABLED (else BAD_PARAM)."""
        lay = self.data[self._val(xd)]["layout"]
        if lay == api.RNN_DATA_BATCH_MAJOR_UNPACKED and \
                self._cfg(r).get("aux", api.RNN_PADDED_IO_ENABLED) != api.RNN_PADDED_IO_ENABLED:
            return 2000
        return 0

    def _cfg(self, r):
        return self.rnn[self._val(r)]

    def _layout(self, c):
        from fastgru.engines import _cudnn_layout as layout

        if self.shuffled:
            return self.shuffled_layout(c["D"], c["H"])
        return layout.documented_layout(c["D"], c["H"]), layout.keras_size(c["D"], c["H"])

    def _itemsize(self, c):
        return 8 if c["dt"] == api.DATA_DOUBLE else 4

    def _cudnnGetRNNWeightSpaceSize(self, h, r, size):
        c = self._cfg(r)
        size._obj.value = (self._layout(c)[1] + self.extra) * self._itemsize(c)
        return 0

    def _cudnnGetRNNWeightParams(self, h, r, pseudo, wsize, wspace, lin, mdesc, maddr, bdesc,
                                 baddr):
        c = self._cfg(r)
        assert pseudo == 0 and wsize.value == (self._layout(c)[1] + self.extra) * \
            self._itemsize(c)
        persistent = c["algo"] != api.RNN_ALGO_STANDARD
        moved = self.small_h_layout_differs and persistent
        for p in self._layout(c)[0]:
            if p.lin == lin and not (p.kind == "b" and self.missing_param == (c["algo"], lin)):
                addr, desc = (maddr, mdesc) if p.kind == "W" else (baddr, bdesc)
                addr._obj.value = self._val(wspace) + (p.offset + moved) * self._itemsize(c)
                dims = (1,) + tuple(p.shape) + ((1,) if p.kind == "b" else ())
                strides = (dims[1] * dims[2], dims[2], 1)
                if self.small_h_strides_differ and persistent and p.kind == "W":
                    strides = (dims[1] * dims[2], 1, dims[1])  # the matrix stored transposed
                if self.small_h_unit_strides_differ and persistent:  # size-1 dims: no layout
                    strides = tuple(7 * s + 3 if d == 1 else s for d, s in zip(dims, strides))
                self.tensors[self._val(desc)] = (c["dt"], dims, strides)
        return 0

    def _cudnnSetRNNDataDescriptor(self, d, dt, lay, T, B, V, lens, fill):
        assert lay in (api.RNN_DATA_BATCH_MAJOR_UNPACKED, api.RNN_DATA_SEQ_MAJOR_PACKED)
        lengths = [lens[i] for i in range(B)]
        assert all(1 <= v <= T for v in lengths)
        if lay == api.RNN_DATA_SEQ_MAJOR_PACKED:  # packed: lengths sorted, non-increasing
            assert lengths == sorted(lengths, reverse=True)
        fill_val = ctypes.cast(fill, ctypes.POINTER(
            ctypes.c_double if dt == api.DATA_DOUBLE else ctypes.c_float)).contents.value
        assert fill_val == 0.0
        self.data[self._val(d)] = dict(dt=dt, T=T, B=B, V=V, lengths=np.array(lengths),
                                       layout=lay)
        return 0

    def _io(self, ptr, dd, V, dt):
        """A (B, T, V) view of x/y/dx/dy in the data descriptor's layout."""
        B, T = dd["B"], dd["T"]
        if dd["layout"] == api.RNN_DATA_SEQ_MAJOR_PACKED:
            return self._array(ptr, (T, B, V), dt).transpose(1, 0, 2)
        return self._array(ptr, (B, T, V), dt)

    def _cudnnGetRNNTempSpaceSizes(self, h, r, mode, xd, work, reserve):
        status = self._refused("temp", r, xd)
        if status:
            return status
        work._obj.value = 256
        reserve._obj.value = 512 if mode == api.FWD_MODE_TRAINING else 0
        return 0

    def _weights(self, r, wspace):
        from test_cudnn_packing import fake_read

        c = self._cfg(r)
        params, n = self._layout(c)
        space = self._array(wspace, (n + self.extra,), c["dt"]).astype(np.float64)
        return Weights(*fake_read(space, params, c["D"], c["H"])), params, n

    def _cudnnRNNForward(self, h, r, mode, devlen, xd, x, yd, y, hd, hx, hy, cd, cx, cy,
                         wsize, w, worksize, work, ressize, res):
        from fastgru.engines import reference

        c, xdd = self._cfg(r), self.data[self._val(xd)]
        B, T, D, H = xdd["B"], xdd["T"], c["D"], c["H"]
        status = self._check_layout(r, xd) or self._refused("forward", r, xd)
        if status:
            return status
        self.ran.append(("forward", c["algo"], xdd["layout"]))
        assert self.tensors[self._val(hd)][1] == (1, B, H) and cx is None and cy is None
        assert worksize.value == 256 and work is not None
        dev = np.ctypeslib.as_array((ctypes.c_int32 * B).from_address(self._val(devlen)))
        np.testing.assert_array_equal(dev, xdd["lengths"])
        wts, _, _ = self._weights(r, w)
        xs = self._io(x, xdd, D, c["dt"]).astype(np.float64)
        h0 = self._array(hx, (B, H), c["dt"]).astype(np.float64)
        mask = np.arange(T)[None, :] < xdd["lengths"][:, None]
        spec = GRUSpec(H, return_sequences=True, zero_output_for_mask=True, **TANH_SIGMOID)
        training = mode == api.FWD_MODE_TRAINING
        assert (ressize.value > 0) == training
        out, hl, tape = reference.forward(xs, wts, h0, spec, mask, training=training)
        self._io(y, self.data[self._val(yd)], H, c["dt"])[...] = out
        self._array(hy, (B, H), c["dt"])[...] = hl
        if training:
            self.tapes[self._val(res)] = dict(tape=tape, grads=None, algo=c["algo"],
                                              layout=xdd["layout"])
        return 0

    def _cudnnRNNBackwardData_v8(self, h, r, devlen, yd, y, dy, xd, dx, hd, hx, dhy, dhx, cd,
                                 cx, dcy, dcx, wsize, w, worksize, work, ressize, res):
        from fastgru.engines import reference

        c, xdd = self._cfg(r), self.data[self._val(xd)]
        B, D, H = xdd["B"], c["D"], c["H"]
        status = self._refused("backward", r, xd)
        if status:
            return status
        self.ran.append(("backward", c["algo"], xdd["layout"]))
        rec = self.tapes[self._val(res)]
        assert rec["grads"] is None, "BackwardData must run exactly once per forward"
        assert (rec["algo"], rec["layout"]) == (c["algo"], xdd["layout"]), \
            "the backward must run the forward's algorithm on the forward's layout"
        d_y = self._io(dy, self.data[self._val(yd)], H, c["dt"]).astype(np.float64)
        d_h = self._array(dhy, (B, H), c["dt"]).astype(np.float64)
        g = reference.backward(rec["tape"], d_y, d_h)
        self._io(dx, xdd, D, c["dt"])[...] = g.x
        self._array(dhx, (B, H), c["dt"])[...] = g.h0
        rec["grads"] = g
        return 0

    def _cudnnRNNBackwardWeights_v8(self, h, r, add, devlen, xd, x, hd, hx, yd, y, wsize, dw,
                                    worksize, work, ressize, res):
        from test_cudnn_packing import fake_write

        assert add == api.WGRAD_MODE_ADD
        c = self._cfg(r)
        rec = self.tapes.pop(self._val(res))
        assert rec["grads"] is not None, "BackwardWeights must follow BackwardData"
        _, params, n = self._weights(r, dw)
        buf = self._array(dw, (n + self.extra,), c["dt"])
        assert not buf.any(), "dweightSpace must be zeroed for WGRAD_MODE_ADD"
        g = rec["grads"]
        buf[:n] += fake_write(n, params, g.kernel, g.recurrent_kernel, g.bias)
        return 0


@pytest.fixture
def simulated(monkeypatch):
    """The real CudnnBackend with NumPy arrays for CuPy's and SimulatedLibcudnn for cuDNN."""
    import types

    lib = SimulatedLibcudnn(shuffled=True)
    fake_cupy = types.ModuleType("cupy")
    for name in ("empty", "zeros", "asarray", "empty_like", "ascontiguousarray", "uint8",
                 "int32"):
        setattr(fake_cupy, name, getattr(np, name))
    fake_cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0),
        get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(api, "_lib", lib)
    monkeypatch.setattr(cudnn, "_addr", lambda a: a.ctypes.data)
    monkeypatch.setattr(cudnn.CudnnBackend, "accepts", staticmethod(lambda x: True))
    monkeypatch.setattr(cudnn, "_BACKEND", cudnn.CudnnBackend())
    cudnn.clear_caches()
    yield lib
    cudnn.clear_caches()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_backend_call_sequence_against_simulated_library(simulated, dtype, go_backwards):
    from fastgru.engines import reference

    rng = np.random.default_rng(13)
    B, T, D, u = 4, 5, 3, 2
    x = rng.normal(size=(B, T, D))
    w = Weights(rng.normal(size=(D, 3 * u)) * 0.5, rng.normal(size=(u, 3 * u)) * 0.5,
                rng.normal(size=(2, 3 * u)) * 0.5)
    h0 = rng.normal(size=(B, u))
    mask = np.arange(T)[None, :] < np.array([5, 0, 2, 3])[:, None]
    sp = spec(units=u, return_sequences=True, go_backwards=go_backwards)
    cast = [a.astype(dtype) for a in (x, *w, h0)]
    out, h, tape = cudnn.forward(cast[0], Weights(*cast[1:4]), cast[4], sp, mask, training=True)
    assert out.dtype == dtype
    d_out, d_h = rng.normal(size=out.shape), rng.normal(size=h.shape)
    g = cudnn.backward(tape, d_out.astype(dtype), d_h.astype(dtype))
    r_out, r_h, r_tape = reference.forward(x, w, h0, sp, mask, training=True)
    gr = reference.backward(r_tape, d_out, d_h)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, r_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, r_h, rtol=tol, atol=tol)
    for name in ("x", "h0", "kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(getattr(g, name), getattr(gr, name), rtol=tol * 10,
                                   atol=tol * 10, err_msg=name)
    calls = simulated.calls
    assert calls.index("cudnnRNNBackwardData_v8") < calls.index("cudnnRNNBackwardWeights_v8")
    assert calls.count("cudnnGetRNNWeightParams") == 6
    assert calls.count("cudnnSetStream") >= 3  # before every forward/backward
    math = next(iter(simulated.rnn.values()))["math"]
    assert math == (api.FMA_MATH if dtype == np.float32 else api.DEFAULT_MATH)


def test_backend_caches_descriptors_per_lengths(simulated):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(2, 3, 2))
    w = Weights(rng.normal(size=(2, 6)), rng.normal(size=(2, 6)), rng.normal(size=(2, 6)))
    h0 = np.zeros((2, 2))
    for _ in range(3):
        cudnn.forward(x, w, h0, spec())
    assert simulated.calls.count("cudnnSetRNNDataDescriptor") == 2  # x and y, once
    assert simulated.calls.count("cudnnSetRNNDescriptor_v8") == 1
    cudnn.forward(x, w, h0, spec(), mask=np.array([[True, True, False], [True] * 3]))
    assert simulated.calls.count("cudnnSetRNNDataDescriptor") == 4
