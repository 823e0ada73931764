"""The cuDNN engine: cuDNN 9's RNN API through ctypes, CuPy arrays, memory pool and stream.

Same contract as every engine (:mod:`fastgru.engines.base`) for the configs cuDNN computes
(:func:`eligible`): tanh/sigmoid, ``use_bias``, ``reset_after=True``, no recurrent dropout,
mask absent or right-padded. Input dropout (one (B, D) mask) multiplies x before cuDNN and dx
after it. Results follow Keras's generic loop, not Keras's cuDNN path (KERAS_GRU_SPEC.md
section 0 item 3): see :mod:`._cudnn_seq` for the output and go_backwards gathers, and
:mod:`._cudnn_layout` for the Keras <-> cuDNN weight layout.

The library is loaded on the first GPU call, never at import (:mod:`._cudnn_api`).

Split of the work: the glue here (validation, lengths, packing, gathers) is array-module
generic and runs on NumPy in the CPU tests against an emulated backend; :class:`CudnnBackend`
holds every cuDNN call (descriptors, weight-space queries, forward, backward data/weights).

Bidirectional (:func:`forward_bidirectional` / :func:`backward_bidirectional`): one
CUDNN_BIDIRECTIONAL call runs a Keras ``Bidirectional`` pair of GRU layers (the forward layer
as pseudo-layer 0, the go_backwards layer as pseudo-layer 1, both in one weight space) and
returns exactly what the two unidirectional calls return.
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
from ctypes import byref, c_int, c_size_t, c_void_p

import numpy as np

from .._array import get_array_module, is_cupy
from ..activations import CODES
from . import _cudnn_api as api
from . import _cudnn_layout as layout
from . import _cudnn_seq as seq
from .base import DropoutMasks, Gradients, GRUSpec, Tape, Weights
from .xp import check_upstream

NAME = "cudnn"
NAME_BIDIRECTIONAL = "cudnn-bidirectional"


#: Allow TF32 tensor-core math for float32 (cuDNN's DEFAULT_MATH on Ampere and later). Off by
#: default: float32 results then agree with the float64 reference to ~1e-5 instead of ~1e-3.
ALLOW_TF32 = os.environ.get("FASTGRU_ALLOW_TF32", "0") == "1"

_REQUIRED = ("cuDNN needs activation='tanh', recurrent_activation='sigmoid', use_bias=True, "
             "reset_after=True, no recurrent_dropout and a mask that is absent or right-padded")


# ---------------------------------------------------------------------------------------------
# Eligibility


def static_reason(spec: GRUSpec, dropout: DropoutMasks | None = None):
    """The first rule (other than the mask's) that rules cuDNN out, as text; None if none."""
    # by the compiled code, not the name: Activation("tanh", some_fn) is the user's function
    if getattr(spec.activation, "code", None) != CODES["tanh"]:
        return (f"activation is {spec.activation.name or spec.activation!r}, but cuDNN's GRU "
                f"computes tanh")
    if getattr(spec.recurrent_activation, "code", None) != CODES["sigmoid"]:
        return (f"recurrent_activation is "
                f"{spec.recurrent_activation.name or spec.recurrent_activation!r}, but cuDNN's "
                f"GRU computes sigmoid")
    if not spec.use_bias:
        return "use_bias=False, but cuDNN's GRU always adds input and recurrent biases"
    if not spec.reset_after:
        return "reset_after=False, but cuDNN's GRU applies the reset gate after the matmul"
    if dropout is not None and dropout.recurrent is not None:
        return "recurrent_dropout is active, but cuDNN has no recurrent dropout"
    if dropout is not None and dropout.inputs is not None and dropout.inputs.ndim != 2:
        return ("per-gate input dropout masks (implementation=1) are given, but cuDNN takes one "
                "(batch, features) mask shared by the gates")
    return None


def _mask_reason(ok) -> str | None:
    bad = np.nonzero(~ok)[0]
    if bad.size:
        return (f"mask is not right-padded (row {int(bad[0])} has a False before a True), but "
                f"cuDNN takes one length per row")
    return None


def eligible(spec: GRUSpec, mask=None, dropout: DropoutMasks | None = None):
    """``(True, why)`` if cuDNN can run this call, else ``(False, the failed rule)``.

    The mask check is one reduction on the mask's device plus one tiny device -> host copy.
    """
    reason = static_reason(spec, dropout)
    if reason is None and mask is not None:
        if len(getattr(mask, "shape", ())) != 2:
            return False, f"mask must be a 2-D (batch, timesteps) array, got {mask!r:.60}"
        _, ok = seq.mask_lengths(get_array_module(mask), mask)
        reason = _mask_reason(ok)
    if reason is not None:
        return False, reason
    return True, ("cuDNN eligible: tanh/sigmoid, use_bias, reset_after, no recurrent dropout, "
                  + ("right-padded mask" if mask is not None else "no mask"))


# ---------------------------------------------------------------------------------------------
# The cuDNN backend (CuPy + ctypes). Everything that talks to the library is in this class.


class _Owned:
    """A cuDNN descriptor destroyed with its Python owner."""

    __slots__ = ("ptr", "destroy")

    def __init__(self, create: str, destroy: str):
        self.ptr = c_void_p()
        self.destroy = None
        api.call(create, byref(self.ptr))
        self.destroy = destroy

    def __del__(self):
        if self.destroy is not None and self.ptr:
            try:
                getattr(api.lib(), self.destroy)(self.ptr)
            except Exception:  # interpreter shutdown: nothing sensible to do
                pass


#: cuDNN algorithm choice: "auto" runs a persistent kernel (the whole sequence in one launch)
#: where one applies and is faster, and falls back to STANDARD (a GEMV and an elementwise
#: launch per step, host-bound at ~10 us a step) where cuDNN declines it; "standard" always
#: runs STANDARD; "persist-small-h" / "persist-static" try that kernel on every float32,
#: full-length call whatever its size (to measure the rules below; STANDARD where declined).
ALGO = os.environ.get("FASTGRU_CUDNN_ALGO", "auto")
ALGOS = ("auto", "standard", "persist-small-h", "persist-static")  # ALGO's values

#: PERSIST_STATIC_SMALL_H's reach, as PyTorch uses it: float32, units <= 192 for inference and
#: <= 128 for training (its backward's limit: a training forward and its backward must use the
#: same algorithm), every row full length. Faster than STANDARD at every batch measured on an
#: H200 (1 to 1024 rows).
SMALL_H_UNITS = {False: 192, True: 128}
#: PERSIST_STATIC (float32, every row full length) beyond that: measured on an H200 at T=100,
#: 3-7x faster than STANDARD at 1-4 rows for 256-1024 units, mixed at 16 rows, 2-7x slower
#: from 64 rows on.
PERSIST_STATIC_MAX_BATCH = 4
PERSIST_STATIC_MAX_UNITS = 1024

# name -> (algorithm, data layout, padded-IO flag). "standard" takes every configuration. The
# seq-major variants are for cuDNN builds whose persistent kernels refuse batch-major data: x,
# y, dy and dx are transposed around the call (free at B == 1).
_VARIANTS = {
    "persist-small-h": (api.RNN_ALGO_PERSIST_STATIC_SMALL_H, api.RNN_DATA_BATCH_MAJOR_UNPACKED,
                        api.RNN_PADDED_IO_ENABLED),
    "persist-small-h-seq-major": (api.RNN_ALGO_PERSIST_STATIC_SMALL_H,
                                  api.RNN_DATA_SEQ_MAJOR_PACKED, api.RNN_PADDED_IO_DISABLED),
    "persist-static": (api.RNN_ALGO_PERSIST_STATIC, api.RNN_DATA_BATCH_MAJOR_UNPACKED,
                       api.RNN_PADDED_IO_ENABLED),
    "persist-static-seq-major": (api.RNN_ALGO_PERSIST_STATIC, api.RNN_DATA_SEQ_MAJOR_PACKED,
                                 api.RNN_PADDED_IO_DISABLED),
    "standard": (api.RNN_ALGO_STANDARD, api.RNN_DATA_BATCH_MAJOR_UNPACKED,
                 api.RNN_PADDED_IO_ENABLED),
}


def candidates(dtype, u: int, B: int, full_length: bool, training: bool, dirs: int = 1):
    """The variants worth trying for a call, fastest first (the last always "standard")."""
    if ALGO not in ALGOS:
        raise ValueError(f"FASTGRU_CUDNN_ALGO (fastgru.engines.cudnn.ALGO) must be one of "
                         f"{', '.join(map(repr, ALGOS))}; got {ALGO!r}")
    if ALGO != "standard" and dirs == 1 and np.dtype(dtype) == np.float32 and full_length:
        if ALGO != "auto":
            return (ALGO, ALGO + "-seq-major", "standard")
        if u <= SMALL_H_UNITS[bool(training)]:
            return ("persist-small-h", "persist-small-h-seq-major", "standard")
        if B <= PERSIST_STATIC_MAX_BATCH and u <= PERSIST_STATIC_MAX_UNITS:
            return ("persist-static", "persist-static-seq-major", "standard")
    return ("standard",)


def describe_kernel(spec: GRUSpec, x_shape, n_threads=None, dtype=np.float32) -> str:
    """Which cuDNN algorithm a call of this shape and dtype runs, where this cuDNN accepts it
    (``n_threads``: unused, the CPU engine's)."""
    B, u = x_shape[0], spec.units
    names = {"persist-small-h": "PERSIST_STATIC_SMALL_H", "persist-static": "PERSIST_STATIC"}
    infer, train = (candidates(dtype, u, B, True, t)[0] for t in (False, True))
    if ALGO not in ("auto", "standard") and infer != "standard":
        return (f"cuDNN algorithm {names[infer]} (forced by FASTGRU_CUDNN_ALGO={ALGO}; "
                f"STANDARD for float64, a row shortened by the mask, or where cuDNN declines it)")
    if infer == "standard":
        why = (f"FASTGRU_CUDNN_ALGO={ALGO}" if ALGO != "auto" else
               f"{np.dtype(dtype).name}: the persistent kernels are float32"
               if np.dtype(dtype) != np.float32 else
               f"units {u} > {PERSIST_STATIC_MAX_UNITS}" if u > PERSIST_STATIC_MAX_UNITS else
               f"batch {B} > {PERSIST_STATIC_MAX_BATCH} at units {u} > {SMALL_H_UNITS[False]}")
        return f"cuDNN algorithm STANDARD (a GEMV and an elementwise kernel per step; {why})"
    text = f"cuDNN algorithm {names[infer]} (the whole sequence in one persistent kernel)"
    if train != infer:
        why = f"units {u} > {SMALL_H_UNITS[True]}"
        if train == "standard":
            why += f" and batch {B} > {PERSIST_STATIC_MAX_BATCH}"
        text += f" for inference, {names.get(train, 'STANDARD')} for training ({why})"
    return text + "; STANDARD for a row shortened by the mask or where cuDNN declines it"


def _declined(name: str, e: api.CudnnError) -> bool:
    """Whether ``e`` is cuDNN declining variant ``name`` (BAD_PARAM or NOT_SUPPORTED and their
    sub-codes), which the next variant may take; never for "standard", the last resort."""
    return name != "standard" and e.status // 1000 in (2, 3)


class _Run:
    """What one (B, T, lengths, training) call runs: the variant's RNN descriptor, its data
    descriptors, temp sizes and device lengths."""

    __slots__ = ("name", "rnn", "seq_major", "key", "xd", "yd", "work_b", "res_b", "dev_len")

    def __init__(self, name, rnn, key, xd, yd, work_b, res_b, dev_len):
        self.name, self.rnn, self.key = name, rnn, key
        self.seq_major = _VARIANTS[name][1] == api.RNN_DATA_SEQ_MAJOR_PACKED
        self.xd, self.yd, self.work_b, self.res_b, self.dev_len = xd, yd, work_b, res_b, dev_len


class _Plan:
    """Descriptors, weight layout and per-shape caches of one (device, dtype, D, u, dirs)
    config; ``dirs`` 2 is CUDNN_BIDIRECTIONAL (h is (2, B, u), y (B, T, 2u))."""

    def __init__(self, handle, dtype, D: int, u: int, dirs: int = 1):
        import cupy

        self.dtype = np.dtype(dtype)
        self.D, self.u, self.dirs = D, u, dirs
        self.dt_code = api.DATA_DOUBLE if self.dtype == np.float64 else api.DATA_FLOAT
        self.math = api.DEFAULT_MATH
        if self.dtype == np.float32 and not ALLOW_TF32:
            self.math = api.FMA_MATH  # no TF32: exact fp32 FMAs
        self.dropout = _Owned("cudnnCreateDropoutDescriptor", "cudnnDestroyDropoutDescriptor")
        api.call("cudnnSetDropoutDescriptor", self.dropout.ptr, handle, ctypes.c_float(0.0),
                 None, c_size_t(0), ctypes.c_ulonglong(0))
        rnn = self._rnn_desc("standard")
        size = c_size_t()
        api.call("cudnnGetRNNWeightSpaceSize", handle, rnn.ptr, byref(size))
        self.weight_bytes = size.value
        if self.weight_bytes % self.dtype.itemsize:
            raise api.CudnnError("cudnnGetRNNWeightSpaceSize", -1, "unexpected size",
                                 f"{self.weight_bytes} bytes is not a whole number of "
                                 f"{self.dtype} elements")
        self.n_elems = self.weight_bytes // self.dtype.itemsize
        self.params, self.strides = self._weight_params(handle, cupy, rnn)
        idx = layout.pack_index(self.params, self.n_elems, D, u, dirs)
        self.pack_idx = cupy.asarray(idx)
        self.unpack_idx = cupy.asarray(layout.unpack_index(idx, D, u, dirs))
        self.variants = {"standard": rnn}  # name -> RNN descriptor, None if unusable
        self.refused = set()  # (variant, run key) that cuDNN declined at call time
        self.h_descs = {}
        self.data = collections.OrderedDict()  # run key -> _Run
        self._lock = threading.Lock()  # the caches are shared by threads

    def _rnn_desc(self, name):
        algo, _, padded_io = _VARIANTS[name]
        rnn = _Owned("cudnnCreateRNNDescriptor", "cudnnDestroyRNNDescriptor")
        api.call("cudnnSetRNNDescriptor_v8", rnn.ptr, algo, api.RNN_MODE_GRU,
                 api.RNN_DOUBLE_BIAS, api.BIDIRECTIONAL if self.dirs == 2 else
                 api.UNIDIRECTIONAL, api.LINEAR_INPUT, self.dt_code, self.dt_code, self.math,
                 self.D, self.u, self.u, 1, self.dropout.ptr, padded_io)
        return rnn

    def _variant(self, handle, name):
        """The RNN descriptor of variant ``name``; None where cuDNN refuses the descriptor or
        lays out its weight space differently from STANDARD's (the packed space is shared)."""
        import cupy

        if name not in self.variants:
            rnn = None
            try:
                rnn = self._rnn_desc(name)
                size = c_size_t()
                api.call("cudnnGetRNNWeightSpaceSize", handle, rnn.ptr, byref(size))
                if size.value != self.weight_bytes or \
                        self._weight_params(handle, cupy, rnn) != (self.params, self.strides):
                    rnn = None
            except api.CudnnError:  # declined, or a layout it cannot report: STANDARD runs
                rnn = None
            self.variants[name] = rnn
        return self.variants[name]

    def _weight_params(self, handle, cupy, rnn):
        """Ask cudnnGetRNNWeightParams where each matrix and bias lives: (params with offsets
        in elements, their strides) (the strides for the variants' layout check)."""
        space = cupy.zeros(self.n_elems, self.dtype)
        base = _addr(space)
        mdesc = _Owned("cudnnCreateTensorDescriptor", "cudnnDestroyTensorDescriptor")
        bdesc = _Owned("cudnnCreateTensorDescriptor", "cudnnDestroyTensorDescriptor")
        params, strides = [], []
        for pseudo in range(self.dirs):  # 0 forward, 1 backward direction (BIDIRECTIONAL)
            for lin in range(6):
                maddr, baddr = c_void_p(), c_void_p()
                api.call("cudnnGetRNNWeightParams", handle, rnn.ptr, pseudo,
                         c_size_t(self.weight_bytes), c_void_p(base), lin, mdesc.ptr,
                         byref(maddr), bdesc.ptr, byref(baddr))
                for kind, desc, addr in (("W", mdesc, maddr), ("b", bdesc, baddr)):
                    if not addr.value:
                        raise api.CudnnError("cudnnGetRNNWeightParams", -1, "missing parameter",
                                             f"pseudoLayer {pseudo} linLayerID {lin} has no "
                                             f"{kind}")
                    dims, st = _nd_desc(desc.ptr)
                    shape = (dims[1], dims[2]) if kind == "W" else (dims[1],)
                    off = (addr.value - base) // self.dtype.itemsize
                    params.append(layout.Param(lin, kind, off, shape, pseudo))
                    # a dimension of size 1 has no layout: its stride, whatever a variant
                    # reports, must not set that variant aside
                    strides.append(tuple(s if d > 1 else 0 for d, s in zip(dims, st)))
        return params, strides

    def h_desc(self, B: int):
        with self._lock:
            return self._h_desc(B)

    def _h_desc(self, B: int):
        d = self.h_descs.get(B)
        if d is None:
            d = _Owned("cudnnCreateTensorDescriptor", "cudnnDestroyTensorDescriptor")
            # (numLayers * dirs, B, u): cudnnRNNForward's hDesc reference
            dims = api.int_array((self.dirs, B, self.u))
            strides = api.int_array((B * self.u, self.u, 1))
            api.call("cudnnSetTensorNdDescriptor", d.ptr, self.dt_code, 3, dims, strides)
            self.h_descs[B] = d
        return d

    def data_descs(self, handle, B: int, T: int, lengths: np.ndarray, training: bool) -> _Run:
        """The :class:`_Run` of a call (cached, LRU 16): the first variant cuDNN accepts."""
        with self._lock:
            return self._data_descs(handle, B, T, lengths, training)

    def refuse(self, run: _Run):
        """cuDNN declined ``run`` at call time: the next lookup of its key tries the next
        variant (for good: a refusal is a property of the configuration)."""
        with self._lock:
            self._refuse(run.name, run.key)
            if self.data.get(run.key) is run:
                del self.data[run.key]

    def _refuse(self, name, key):
        if len(self.refused) >= 4096:  # bounded: forgets all, each key re-learns once
            self.refused.clear()
        self.refused.add((name, key))

    def _data_descs(self, handle, B, T, lengths, training):
        import cupy

        names = candidates(self.dtype, self.u, B, bool((lengths == T).all()), training,
                           self.dirs)
        # the stream: the device lengths are freed into (and reused from) the pool of the
        # stream they were made on, so a run serves only calls queued behind it
        key = (B, T, lengths.tobytes(), bool(training), names,
               cupy.cuda.get_current_stream().ptr)
        hit = self.data.get(key)
        if hit is not None:
            self.data.move_to_end(key)
            return hit
        for name in names:
            if name != "standard" and (name, key) in self.refused:
                continue
            rnn = self._variant(handle, name)
            if rnn is None:
                continue
            try:
                entry = self._make_run(handle, name, rnn, key, B, T, lengths, training)
            except api.CudnnError as e:
                if not _declined(name, e):
                    raise
                self._refuse(name, key)
                continue
            break
        self.data[key] = entry
        if len(self.data) > 16:
            self.data.popitem(last=False)
        return entry

    def ran(self, B: int, T: int, training: bool) -> set:
        """The variants of the cached runs of (B, T) calls (benchmarks and GPU tests report
        which algorithm ran)."""
        with self._lock:
            return {r.name for k, r in self.data.items() if k[:2] == (B, T)
                    and k[3] == bool(training)}

    def _make_run(self, handle, name, rnn, key, B, T, lengths, training):
        import cupy

        data_layout = _VARIANTS[name][1]
        seqlen = api.int_array(lengths)
        fill = api.scalar(0.0, self.dt_code)
        xd = _Owned("cudnnCreateRNNDataDescriptor", "cudnnDestroyRNNDataDescriptor")
        yd = _Owned("cudnnCreateRNNDataDescriptor", "cudnnDestroyRNNDataDescriptor")
        api.call("cudnnSetRNNDataDescriptor", xd.ptr, self.dt_code, data_layout, T, B, self.D,
                 seqlen, byref(fill))
        api.call("cudnnSetRNNDataDescriptor", yd.ptr, self.dt_code,  # y: vectorSize u * dirs
                 data_layout, T, B, self.u * self.dirs, seqlen, byref(fill))
        work, reserve = c_size_t(), c_size_t()
        mode = api.FWD_MODE_TRAINING if training else api.FWD_MODE_INFERENCE
        api.call("cudnnGetRNNTempSpaceSizes", handle, rnn.ptr, mode, xd.ptr, byref(work),
                 byref(reserve))
        return _Run(name, rnn, key, xd, yd, work.value, reserve.value,
                    cupy.asarray(lengths, dtype=cupy.int32))


def _nd_desc(desc):
    """(dims, strides) of a 3-D tensor descriptor."""
    dt, nb = c_int(), c_int()
    dims, strides = (c_int * 3)(), (c_int * 3)()
    api.call("cudnnGetTensorNdDescriptor", desc, 3, byref(dt), byref(nb), dims, strides)
    return tuple(dims[: nb.value]), tuple(strides[: nb.value])


def _addr(a) -> int:
    """Device address of a CuPy array."""
    return a.data.ptr


def _ptr(a):
    return c_void_p(_addr(a)) if a is not None else None


class CudnnBackend:
    """cuDNN calls on CuPy arrays: one handle per (thread, device), plans per config."""

    def __init__(self):
        self._local = threading.local()
        self._plans = {}
        self._lock = threading.Lock()

    @staticmethod
    def accepts(x) -> bool:
        return is_cupy(x)

    def handle(self):
        """This thread's handle on the current device, bound to CuPy's current stream."""
        import cupy

        dev = cupy.cuda.runtime.getDevice()
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        h = handles.get(dev)
        if h is None:
            h = c_void_p()
            api.call("cudnnCreate", byref(h))
            handles[dev] = h  # never destroyed at exit: cudnnDestroy synchronizes the device
        api.call("cudnnSetStream", h, c_void_p(cupy.cuda.get_current_stream().ptr))
        return h

    def plan(self, dtype, D: int, u: int, dirs: int = 1):
        import cupy

        key = (cupy.cuda.runtime.getDevice(), np.dtype(dtype).str, D, u, dirs, ALLOW_TF32)
        with self._lock:
            p = self._plans.get(key)
            if p is None:
                p = self._plans[key] = _Plan(self.handle(), dtype, D, u, dirs)
        return p

    def forward(self, plan, space, x_c, h0, lengths, training):
        """cudnnRNNForward on (B, T, D) x_c with per-row ``lengths`` (host int32, >= 1).

        ``h0``: (B, u), or (2, B, u) for a bidirectional plan. Returns (y (B, T, u * dirs)
        zero-filled after each length, hy shaped like h0, ctx for backward)."""
        import cupy

        B, T, _ = x_c.shape
        h = self.handle()
        run = plan.data_descs(h, B, T, lengths, training)
        hd = plan.h_desc(B)
        x_in = _to_run_layout(cupy, x_c, run)
        y = cupy.empty(x_in.shape[:2] + (plan.u * plan.dirs,), plan.dtype)
        hy = cupy.empty(h0.shape, plan.dtype)
        work = cupy.empty(max(run.work_b, 1), cupy.uint8)
        reserve = cupy.empty(max(run.res_b, 1), cupy.uint8) if training else None
        mode = api.FWD_MODE_TRAINING if training else api.FWD_MODE_INFERENCE
        try:
            api.call("cudnnRNNForward", h, run.rnn.ptr, mode, _ptr(run.dev_len), run.xd.ptr,
                     _ptr(x_in), run.yd.ptr, _ptr(y), hd.ptr, _ptr(h0), _ptr(hy), hd.ptr, None,
                     None, c_size_t(plan.weight_bytes), _ptr(space), c_size_t(run.work_b),
                     _ptr(work), c_size_t(run.res_b if training else 0), _ptr(reserve))
        except api.CudnnError as e:
            if not _declined(run.name, e):
                raise
            plan.refuse(run)
            return self.forward(plan, space, x_c, h0, lengths, training)
        ctx = None
        if training:
            ctx = dict(x=x_in, x_c=x_c, h0=h0, y=y, reserve=reserve, run=run, lengths=lengths)
        return _from_run_layout(cupy, y, run), hy, ctx

    def backward(self, plan, space, ctx, dy, dhy):
        """cudnnRNNBackwardData_v8 then cudnnRNNBackwardWeights_v8 (ADD into zeros), with the
        forward's variant (its reserve space is that algorithm's).

        Returns (dx (B, T, D), dh0 shaped like the forward's h0, d weight space (n_elems,))."""
        import cupy

        run, x_in, h0, y = ctx["run"], ctx["x"], ctx["h0"], ctx["y"]
        h = self.handle()
        hd = plan.h_desc(ctx["x_c"].shape[0])
        reserve = ctx["reserve"]
        dy_in = _to_run_layout(cupy, dy, run)
        dx = cupy.empty_like(x_in)
        dhx = cupy.empty(h0.shape, plan.dtype)
        dw = cupy.zeros(plan.n_elems, plan.dtype)
        work = cupy.empty(max(run.work_b, 1), cupy.uint8)
        try:
            api.call("cudnnRNNBackwardData_v8", h, run.rnn.ptr, _ptr(run.dev_len), run.yd.ptr,
                     _ptr(y), _ptr(dy_in), run.xd.ptr, _ptr(dx), hd.ptr, _ptr(h0), _ptr(dhy),
                     _ptr(dhx), hd.ptr, None, None, None, c_size_t(plan.weight_bytes),
                     _ptr(space), c_size_t(run.work_b), _ptr(work), c_size_t(run.res_b),
                     _ptr(reserve))
            api.call("cudnnRNNBackwardWeights_v8", h, run.rnn.ptr, api.WGRAD_MODE_ADD,
                     _ptr(run.dev_len), run.xd.ptr, _ptr(x_in), hd.ptr, _ptr(h0), run.yd.ptr,
                     _ptr(y), c_size_t(plan.weight_bytes), _ptr(dw), c_size_t(run.work_b),
                     _ptr(work), c_size_t(run.res_b), _ptr(reserve))
        except api.CudnnError as e:
            if not _declined(run.name, e):
                raise
            # The backward refused what the forward accepted: redo the forward with the next
            # variant (same outputs) for a reserve space the backward can read.
            plan.refuse(run)
            _, _, ctx = self.forward(plan, space, ctx["x_c"], h0, ctx["lengths"], True)
            return self.backward(plan, space, ctx, dy, dhy)
        return _from_run_layout(cupy, dx, run), dhx, dw


def _to_run_layout(cupy, a, run):
    """(B, T, F) -> the run's data layout: itself, or (T, B, F) for a seq-major run."""
    if not run.seq_major:
        return a
    if a.shape[0] == 1:
        return a.reshape(a.shape[1], 1, a.shape[2])  # same memory
    return cupy.ascontiguousarray(a.transpose(1, 0, 2))


def _from_run_layout(cupy, a, run):
    """The run's (T, B, F) seq-major data back as (B, T, F) (a view at B == 1)."""
    if not run.seq_major:
        return a
    if a.shape[1] == 1:
        return a.reshape(1, a.shape[0], a.shape[2])
    return cupy.ascontiguousarray(a.transpose(1, 0, 2))


_BACKEND = None
_backend_lock = threading.Lock()


def backend():
    """The process-wide backend (created on first use; tests may replace ``_BACKEND``)."""
    global _BACKEND
    if _BACKEND is None:
        with _backend_lock:
            if _BACKEND is None:
                _BACKEND = CudnnBackend()
    return _BACKEND


# ---------------------------------------------------------------------------------------------
# Packed weights, cached per weight version


_PACK_CACHE_SIZE = 4
_pack_cache: collections.OrderedDict = collections.OrderedDict()
_pack_lock = threading.Lock()


def _weights_key(weights: Weights, weights_key):
    """A cache key for the packed form, or None (pack on every call).

    Array identity alone is not a safe key: optimizers update weights in place. Callers that
    hold :class:`~fastgru.variable.Variable` objects pass ``(uid, version)`` tuples, or the
    Variables themselves inside ``weights``."""
    if weights_key is not None:
        return weights_key
    parts = []
    for w in weights:
        if w is None:
            parts.append(None)
        elif hasattr(w, "uid") and hasattr(w, "version"):
            parts.append((w.uid, w.version))
        else:
            return None
    return tuple(parts)


def _values(weights: Weights) -> Weights:
    return Weights(*(getattr(w, "value", w) if w is not None else None for w in weights))


def packed_weights(plan, weights, xp, weights_key=None):
    """The cuDNN weight space for ``weights`` (Keras layout), from the cache when keyed.

    ``weights``: one :class:`Weights`, or a tuple of them (one per pseudo-layer: forward,
    backward) for a bidirectional plan."""
    per_dir = [weights] if isinstance(weights, Weights) else list(weights)
    key = weights_key
    if key is None:
        keys = [_weights_key(w, None) for w in per_dir]
        key = None if None in keys else (keys[0] if len(keys) == 1 else tuple(keys))
    if key is not None:
        # and the stream: the space is written by a kernel on the caller's stream (a call on
        # another one could read it before it is written) and freed into that stream's pool
        stream = xp.cuda.get_current_stream().ptr if hasattr(xp, "cuda") else 0
        key = (id(plan), stream, key)
        with _pack_lock:
            hit = _pack_cache.get(key)
            if hit is not None:
                _pack_cache.move_to_end(key)
                return hit
    space = layout.pack_dirs(xp, [tuple(_values(w)) for w in per_dir], plan.pack_idx,
                             plan.dtype)
    if key is not None:
        with _pack_lock:
            _pack_cache[key] = space
            while len(_pack_cache) > _PACK_CACHE_SIZE:
                _pack_cache.popitem(last=False)
    return space


def clear_caches():
    """Drop packed weights (descriptors and plans stay)."""
    with _pack_lock:
        _pack_cache.clear()


# ---------------------------------------------------------------------------------------------
# The engine contract


def _validate(x, w: Weights, h0, spec: GRUSpec, mask, dropout):
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"x must be a 3-D (batch, timesteps, features) array, got shape "
                         f"{getattr(x, 'shape', None)}")
    B, T, D = x.shape
    u = spec.units
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"the cuDNN engine computes float32 or float64, got x of dtype {x.dtype}")
    if T == 0:
        raise ValueError("x must have at least one timestep (got T=0)")
    for name, a, want in (("kernel", w.kernel, (D, 3 * u)),
                          ("recurrent_kernel", w.recurrent_kernel, (u, 3 * u)),
                          ("h0", h0, (B, u))):
        if tuple(a.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
    if w.bias is not None and tuple(w.bias.shape) != (2, 3 * u):
        raise ValueError(f"bias must have shape {(2, 3 * u)}, got {tuple(w.bias.shape)}")
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must have shape {(B, T)}, got {tuple(mask.shape)}")
    if dropout is not None and dropout.inputs is not None and \
            tuple(dropout.inputs.shape) != (B, D):
        raise ValueError(f"dropout.inputs must have shape {(B, D)}, got "
                         f"{tuple(dropout.inputs.shape)}")


def _backend_for(x):
    """The backend, or TypeError unless it takes ``x`` (a CuPy array)."""
    be = backend()
    if not be.accepts(x):
        raise TypeError(f"the cuDNN engine runs on CuPy arrays, got {type(x).__module__}."
                        f"{type(x).__name__} (use the xp or cpu engine for NumPy input)")
    return be


def _lengths(xp, mask, T):
    """(host lengths or None, device lengths or None); None when nothing is masked.

    Raises ValueError unless the mask is right-padded."""
    if mask is None:
        return None, None
    L_host, ok = seq.mask_lengths(xp, mask)
    reason = _mask_reason(ok)
    if reason is not None:
        raise ValueError(f"cuDNN cannot run this GRU: {reason}. {_REQUIRED}.")
    if (L_host == T).all():
        return None, None  # a mask that masks nothing
    return L_host, xp.asarray(L_host)


def _run_lengths(L_host, B, T):
    """cuDNN's seqLengthArray: fully masked rows run one step (cuDNN fails on length 0)."""
    run = np.full(B, T, np.int32) if L_host is None else np.maximum(L_host, 1)
    return run.astype(np.int32)


def forward(x, weights: Weights, h0, spec: GRUSpec, mask=None, dropout: DropoutMasks = None,
            training: bool = False, *, weights_key=None):
    """See :mod:`fastgru.engines.base`; ``weights_key``: a hashable version of the weights
    (e.g. ``((uid, version), ...)`` of their Variables) to reuse the packed weight space.

    Raises ValueError naming the failed rule for configs cuDNN cannot compute."""
    be = _backend_for(x)
    reason = static_reason(spec, dropout)
    if reason is not None:
        raise ValueError(f"cuDNN cannot run this GRU: {reason}. {_REQUIRED}.")
    w = _values(weights)
    _validate(x, w, h0, spec, mask, dropout)
    xp = get_array_module(x)
    B, T, D = x.shape
    u = spec.units
    dt = x.dtype
    L_host, L = _lengths(xp, mask, T)
    h0 = xp.ascontiguousarray(xp.asarray(h0, dt))
    mx = dropout.inputs if dropout is not None else None
    if B == 0:
        out = xp.zeros((0, T, u) if spec.return_sequences else (0, u), dt)
        tape = Tape(NAME, spec, dict(empty=True, x_shape=x.shape), 0, T, dt) if training else None
        return out, xp.zeros((0, u), dt), tape

    plan = be.plan(dt, D, u)
    space = packed_weights(plan, weights, xp, weights_key)
    if mx is not None:
        mx = xp.asarray(mx).astype(dt, copy=False)
    xin = x if mx is None else x * mx[:, None, :]
    x_c = seq.input_gather(xp, xin, L, spec.go_backwards).astype(dt, copy=False)
    y_c, hy, ctx = be.forward(plan, space, x_c, h0, _run_lengths(L_host, B, T), training)
    out, h_last = seq.outputs(xp, y_c, hy, h0, L, spec)
    tape = None
    if training:
        if L is None:  # out is (a view of) y_c, which backward needs untouched
            out = out.copy()
        saved = dict(plan=plan, space=space, ctx=ctx, L=L, mx=mx, x_shape=x.shape,
                     has_bias=w.bias is not None)
        tape = Tape(NAME, spec, saved, batch=B, steps=T, dtype=dt)
    return out, h_last, tape


def backward(tape: Tape, d_outputs=None, d_h_last=None) -> Gradients:
    """Gradients in Keras layout from a training :func:`forward`'s tape."""
    if tape.engine != NAME:
        raise ValueError(f"tape was recorded by engine {tape.engine!r}, not {NAME!r}")
    spec, s = tape.spec, tape.saved
    B, T, D = s["x_shape"]
    u = spec.units
    dt = tape.dtype
    check_upstream(spec, B, T, d_outputs, d_h_last)
    if s.get("empty"):
        import cupy

        z = cupy.zeros
        return Gradients(z((0, T, D), dt), z((0, u), dt), z((D, 3 * u), dt),
                         z((u, 3 * u), dt), z((2, 3 * u), dt))
    plan, ctx, L, mx = s["plan"], s["ctx"], s["L"], s["mx"]
    xp = get_array_module(s["space"])
    dy, dhy, dh0_direct = seq.outputs_backward(xp, d_outputs, d_h_last, L, spec, (B, T, u), dt)
    dx_c, dhx, dw = backend().backward(plan, s["space"], ctx, dy, xp.ascontiguousarray(dhy))
    dx = seq.input_gather_backward(xp, dx_c, L, spec.go_backwards)
    if mx is not None:
        dx = dx * mx[:, None, :]
    dh0 = dhx
    if L is not None:
        dh0 = xp.where((L == 0)[:, None], dh0_direct, dhx).astype(dt, copy=False)
    dK, dR, db = layout.unpack(xp, dw, plan.unpack_idx, D, u)
    return Gradients(dx, dh0, dK, dR, db if s["has_bias"] else None)


# ---------------------------------------------------------------------------------------------
# Bidirectional: a Keras Bidirectional pair of GRU layers in one CUDNN_BIDIRECTIONAL call


def bidirectional_reason(spec_f: GRUSpec, spec_b: GRUSpec, dropout_f: DropoutMasks = None,
                         dropout_b: DropoutMasks = None):
    """The first rule (other than the mask's) that rules the fused call out; None if none.

    ``spec_f`` is the layer reading the sequence forwards, ``spec_b`` the go_backwards one."""
    for name, spec, drop in (("forward", spec_f, dropout_f), ("backward", spec_b, dropout_b)):
        reason = static_reason(spec, drop)
        if reason is not None:
            return f"the {name} layer: {reason}"
        if drop is not None and drop.inputs is not None:
            return (f"the {name} layer has active input dropout (each direction draws its own "
                    f"mask, but one bidirectional call reads one input)")
    if spec_f.go_backwards or not spec_b.go_backwards:
        return "the layers must read the sequence in opposite directions (forward, go_backwards)"
    if spec_f.units != spec_b.units:
        return f"the layers have different units ({spec_f.units} and {spec_b.units})"
    if spec_f.return_sequences != spec_b.return_sequences:
        return "the layers differ in return_sequences"
    return None


def eligible_bidirectional(spec_f: GRUSpec, spec_b: GRUSpec, mask=None,
                           dropout_f: DropoutMasks = None, dropout_b: DropoutMasks = None):
    """``(True, why)`` if :func:`forward_bidirectional` can run this pair, else
    ``(False, the failed rule)``."""
    reason = bidirectional_reason(spec_f, spec_b, dropout_f, dropout_b)
    if reason is None and mask is not None:
        ok, why = eligible(spec_f, mask)
        reason = None if ok else why
    if reason is not None:
        return False, reason
    return True, ("one CUDNN_BIDIRECTIONAL call: both layers tanh/sigmoid, use_bias, "
                  "reset_after, same units, no dropout, "
                  + ("right-padded mask" if mask is not None else "no mask"))


def forward_bidirectional(x, weights_f: Weights, weights_b: Weights, h0_f, h0_b,
                          spec_f: GRUSpec, spec_b: GRUSpec, mask=None, training: bool = False,
                          *, weights_key=None):
    """Both directions of a Keras Bidirectional GRU pair in one cuDNN call.

    ``x`` (B, T, D); ``weights_f``/``h0_f`` (B, u)/``spec_f`` of the layer that reads the
    sequence forwards (cuDNN pseudo-layer 0), ``..._b`` of the go_backwards layer (pseudo-layer
    1); ``mask`` (B, T) right-padded or None. ``weights_key``: a hashable version of both
    weight sets (e.g. ``(key_f, key_b)``) to reuse the packed weight space.

    Returns ``(out_f, h_f, out_b, h_b, tape)``: each direction's outputs and final state
    exactly as :func:`forward` of that layer alone returns them (so ``out_b`` is in the
    go_backwards layer's processing order); ``tape`` is None unless ``training``."""
    be = _backend_for(x)
    reason = bidirectional_reason(spec_f, spec_b)
    if reason is not None:
        raise ValueError(f"cuDNN cannot run this bidirectional GRU in one call: {reason}. "
                         f"{_REQUIRED}.")
    wf, wb = _values(weights_f), _values(weights_b)
    _validate(x, wf, h0_f, spec_f, mask, None)
    _validate(x, wb, h0_b, spec_b, None, None)
    xp = get_array_module(x)
    B, T, D = x.shape
    u = spec_f.units
    dt = x.dtype
    L_host, L = _lengths(xp, mask, T)
    h0 = xp.ascontiguousarray(xp.stack([xp.asarray(h0_f, dt), xp.asarray(h0_b, dt)]))
    if B == 0:
        out = xp.zeros((0, T, u) if spec_f.return_sequences else (0, u), dt)
        tape = None
        if training:
            tape = Tape(NAME_BIDIRECTIONAL, spec_f, dict(empty=True, x_shape=x.shape,
                                                         spec_b=spec_b), 0, T, dt)
        return out, h0[0], out.copy(), h0[1], tape
    plan = be.plan(dt, D, u, dirs=2)
    space = packed_weights(plan, (weights_f, weights_b), xp, weights_key)
    x_c = seq.input_gather(xp, x, L, False).astype(dt, copy=False)
    y, hy, ctx = be.forward(plan, space, x_c, h0, _run_lengths(L_host, B, T), training)
    # y (B, T, 2u): forward half then backward half, both time-aligned with x; hy (2, B, u).
    out_f, h_f = seq.outputs(xp, y[..., :u], hy[0], h0[0], L, spec_f)
    yb_c = seq.reverse_within_length(xp, y[..., u:], L)
    out_b, h_b = seq.outputs(xp, yb_c, hy[1], h0[1], L, spec_b)
    if L is None:  # out_f is a view of y (which backward needs untouched): a contiguous copy
        out_f = out_f.copy()
    tape = None
    if training:
        saved = dict(plan=plan, space=space, ctx=ctx, L=L, x_shape=x.shape, spec_b=spec_b,
                     has_bias=(wf.bias is not None, wb.bias is not None))
        tape = Tape(NAME_BIDIRECTIONAL, spec_f, saved, batch=B, steps=T, dtype=dt)
    return out_f, h_f, out_b, h_b, tape


def backward_bidirectional(tape: Tape, d_out_f=None, d_h_f=None, d_out_b=None, d_h_b=None):
    """Gradients of :func:`forward_bidirectional`: ``(dx, grads_f, grads_b)``.

    ``d_out_*``/``d_h_*`` mirror each direction's outputs and final state (None = zeros).
    ``dx`` (B, T, D) sums both directions; ``grads_f``/``grads_b`` are :class:`Gradients` in
    each layer's Keras layout with ``x`` None (the input is shared)."""
    if tape.engine != NAME_BIDIRECTIONAL:
        raise ValueError(f"tape was recorded by engine {tape.engine!r}, not "
                         f"{NAME_BIDIRECTIONAL!r}")
    spec_f, s = tape.spec, tape.saved
    spec_b = s["spec_b"]
    B, T, D = s["x_shape"]
    u = spec_f.units
    dt = tape.dtype
    check_upstream(spec_f, B, T, d_out_f, d_h_f)
    check_upstream(spec_b, B, T, d_out_b, d_h_b)
    if s.get("empty"):
        import cupy

        z = cupy.zeros

        def empty():
            return Gradients(None, z((0, u), dt), z((D, 3 * u), dt), z((u, 3 * u), dt),
                             z((2, 3 * u), dt))
        return z((0, T, D), dt), empty(), empty()
    plan, ctx, L = s["plan"], s["ctx"], s["L"]
    xp = get_array_module(s["space"])
    shape = (B, T, u)
    dyf, dhyf, direct_f = seq.outputs_backward(xp, d_out_f, d_h_f, L, spec_f, shape, dt)
    dyb_c, dhyb, direct_b = seq.outputs_backward(xp, d_out_b, d_h_b, L, spec_b, shape, dt)
    dy = xp.ascontiguousarray(xp.concatenate(
        [dyf, seq.reverse_within_length(xp, dyb_c, L)], axis=-1).astype(dt, copy=False))
    dhy = xp.ascontiguousarray(xp.stack([dhyf, dhyb]).astype(dt, copy=False))
    dx_c, dhx, dw = backend().backward(plan, s["space"], ctx, dy, dhy)
    dx = seq.input_gather_backward(xp, dx_c, L, False)
    grads = []
    for d, direct, (dK, dR, db) in zip((0, 1), (direct_f, direct_b),
                                       layout.unpack_dirs(xp, dw, plan.unpack_idx, D, u)):
        dh0 = dhx[d]
        if L is not None:
            dh0 = xp.where((L == 0)[:, None], direct, dh0).astype(dt, copy=False)
        grads.append(Gradients(None, dh0, dK, dR, db if s["has_bias"][d] else None))
    return dx, grads[0], grads[1]
