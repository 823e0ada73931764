"""ctypes binding to cuDNN 9's RNN API: enums, prototypes, library location, status checks.

Pure ctypes; importing this module loads nothing. :func:`lib` finds and loads
``libcudnn.so.9`` on first use (see CUDNN_NOTES.md section 4 for the search order) and declares
``argtypes``/``restype`` for every function it binds (without them ctypes would pass Python ints
as 32-bit C ints and truncate device pointers). Prototypes were read from the cuDNN 9.28
headers (``cudnn_adv.h``, ``cudnn_ops.h``, ``cudnn_graph.h``); none of them is deprecated there.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from ctypes import (
    POINTER,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_size_t,
    c_uint32,
    c_ulonglong,
    c_void_p,
)

# --- enums (cudnn_graph.h / cudnn_ops.h / cudnn_adv.h) ---------------------------------------
STATUS_SUCCESS = 0
STATUS_NOT_INITIALIZED = 1001
DATA_FLOAT, DATA_DOUBLE = 0, 1
DEFAULT_MATH, TENSOR_OP_MATH, FMA_MATH = 0, 1, 3
RNN_ALGO_STANDARD, RNN_ALGO_PERSIST_STATIC, RNN_ALGO_PERSIST_STATIC_SMALL_H = 0, 1, 3
FWD_MODE_INFERENCE, FWD_MODE_TRAINING = 0, 1
RNN_MODE_GRU = 3
RNN_DOUBLE_BIAS = 2
UNIDIRECTIONAL = 0
BIDIRECTIONAL = 1
LINEAR_INPUT = 0
RNN_DATA_SEQ_MAJOR_PACKED, RNN_DATA_BATCH_MAJOR_UNPACKED = 1, 2
RNN_PADDED_IO_DISABLED, RNN_PADDED_IO_ENABLED = 0, 1
WGRAD_MODE_ADD = 0

MIN_VERSION = 90000

_P = c_void_p  # opaque handles/descriptors and device pointers
_PP = POINTER(c_void_p)
_PS = POINTER(c_size_t)
_PI = POINTER(c_int)

# name -> (restype, argtypes); the status-returning functions have restype c_int.
PROTOTYPES = {
    "cudnnGetVersion": (c_size_t, []),
    "cudnnGetCudartVersion": (c_size_t, []),
    "cudnnGetErrorString": (c_char_p, [c_int]),
    "cudnnGetLastErrorString": (None, [ctypes.c_char_p, c_size_t]),
    "cudnnCreate": (c_int, [_PP]),
    "cudnnDestroy": (c_int, [_P]),
    "cudnnSetStream": (c_int, [_P, _P]),
    "cudnnCreateTensorDescriptor": (c_int, [_PP]),
    "cudnnDestroyTensorDescriptor": (c_int, [_P]),
    "cudnnSetTensorNdDescriptor": (c_int, [_P, c_int, c_int, _PI, _PI]),
    "cudnnGetTensorNdDescriptor": (c_int, [_P, c_int, _PI, _PI, _PI, _PI]),
    "cudnnCreateDropoutDescriptor": (c_int, [_PP]),
    "cudnnDestroyDropoutDescriptor": (c_int, [_P]),
    "cudnnSetDropoutDescriptor": (c_int, [_P, _P, c_float, _P, c_size_t, c_ulonglong]),
    "cudnnCreateRNNDescriptor": (c_int, [_PP]),
    "cudnnDestroyRNNDescriptor": (c_int, [_P]),
    "cudnnSetRNNDescriptor_v8": (c_int, [
        _P, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int,  # desc, algo..mathType
        c_int32, c_int32, c_int32, c_int32, _P, c_uint32]),  # sizes, layers, dropout, aux
    "cudnnCreateRNNDataDescriptor": (c_int, [_PP]),
    "cudnnDestroyRNNDataDescriptor": (c_int, [_P]),
    "cudnnSetRNNDataDescriptor": (c_int, [_P, c_int, c_int, c_int, c_int, c_int, _PI, _P]),
    "cudnnGetRNNWeightSpaceSize": (c_int, [_P, _P, _PS]),
    "cudnnGetRNNTempSpaceSizes": (c_int, [_P, _P, c_int, _P, _PS, _PS]),
    "cudnnGetRNNWeightParams": (c_int, [_P, _P, c_int32, c_size_t, _P, c_int32, _P, _PP, _P,
                                        _PP]),
    "cudnnRNNForward": (c_int, [
        _P, _P, c_int, _P,  # handle, rnn, fwdMode, devSeqLengths
        _P, _P, _P, _P,  # xDesc, x, yDesc, y
        _P, _P, _P,  # hDesc, hx, hy
        _P, _P, _P,  # cDesc, cx, cy
        c_size_t, _P, c_size_t, _P, c_size_t, _P]),  # weights, work, reserve
    "cudnnRNNBackwardData_v8": (c_int, [
        _P, _P, _P,  # handle, rnn, devSeqLengths
        _P, _P, _P,  # yDesc, y, dy
        _P, _P,  # xDesc, dx
        _P, _P, _P, _P,  # hDesc, hx, dhy, dhx
        _P, _P, _P, _P,  # cDesc, cx, dcy, dcx
        c_size_t, _P, c_size_t, _P, c_size_t, _P]),
    "cudnnRNNBackwardWeights_v8": (c_int, [
        _P, _P, c_int, _P,  # handle, rnn, addGrad, devSeqLengths
        _P, _P, _P, _P, _P, _P,  # xDesc, x, hDesc, hx, yDesc, y
        c_size_t, _P, c_size_t, _P, c_size_t, _P]),  # dweights, work, reserve
}
# Argument counts from the C prototypes, kept as an independent check of the table above.
ARITY = {"cudnnRNNForward": 20, "cudnnRNNBackwardData_v8": 22, "cudnnRNNBackwardWeights_v8": 16,
         "cudnnSetRNNDescriptor_v8": 15, "cudnnGetRNNWeightParams": 10,
         "cudnnSetRNNDataDescriptor": 8, "cudnnGetRNNTempSpaceSizes": 6}


class CudnnError(RuntimeError):
    """A cuDNN call returned a status other than SUCCESS."""

    def __init__(self, function: str, status: int, message: str, detail: str = ""):
        self.function, self.status, self.message, self.detail = function, status, message, detail
        text = f"{function} failed with status {status} ({message})"
        if detail:
            text += f": {detail}"
        if status == STATUS_NOT_INITIALIZED:
            text += " - is a CUDA GPU visible to this process?"
        super().__init__(text)


_lock = threading.Lock()
_lib = None
_path = None


def _wheel_dirs():
    """Library folders of installed nvidia-cudnn wheels, CuPy's CUDA major first."""
    import importlib.metadata as md

    majors = ["13", "12"]
    try:  # prefer the wheel built for the CUDA major CuPy runs on
        import cupy

        if str(cupy.cuda.runtime.runtimeGetVersion() // 1000) == "12":
            majors.reverse()
    except Exception:
        pass
    dirs = []
    for major in majors:
        try:
            files = md.files(f"nvidia-cudnn-cu{major}") or []
        except md.PackageNotFoundError:
            continue
        for f in files:
            if f.name == "libcudnn.so.9":
                dirs.append(os.path.dirname(str(f.locate())))
    for entry in sys.path:
        if not os.path.isabs(entry):  # "" is the working directory: never load from there
            continue
        for sub in ("nvidia/cudnn/lib", "nvidia/cu13/lib", "nvidia/cu12/lib"):
            dirs.append(os.path.join(entry, sub))
    return dirs


def candidates():
    """Where :func:`lib` looks for ``libcudnn.so.9``, in order (strings for the error text)."""
    out = []
    env = os.environ.get("FASTGRU_CUDNN_PATH")
    if env:
        out.append(env if env.endswith(".so.9") or os.path.isfile(env)
                   else os.path.join(env, "libcudnn.so.9"))
    out.extend(os.path.join(d, "libcudnn.so.9") for d in _wheel_dirs())
    root = os.environ.get("CUDNN_PATH")
    if root:
        out += [os.path.join(root, "lib", "libcudnn.so.9"),
                os.path.join(root, "lib64", "libcudnn.so.9")]
    out.append("libcudnn.so.9")  # the system loader's search path
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def _load():
    tried = []
    env = os.environ.get("FASTGRU_CUDNN_PATH")
    if not env:
        # A copy already in the process (e.g. PyTorch's) must be reused, never a second one.
        try:
            return ctypes.CDLL("libcudnn.so.9", mode=os.RTLD_NOLOAD | os.RTLD_LAZY), "(loaded)"
        except OSError:
            tried.append("already loaded in this process")
    for path in candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(f"{path} (absent)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{path} ({e})")
    raise ImportError(
        "cuDNN 9 (libcudnn.so.9) was not found; install it with "
        "`pip install nvidia-cudnn-cu12` or `nvidia-cudnn-cu13` (matching CuPy's CUDA), or set "
        "FASTGRU_CUDNN_PATH. Tried: " + "; ".join(tried))


def declare(L):
    """Set restype/argtypes of every function in :data:`PROTOTYPES` on the CDLL ``L``."""
    for name, (res, args) in PROTOTYPES.items():
        fn = getattr(L, name)  # AttributeError names a symbol this library lacks
        fn.restype = res
        fn.argtypes = args
    return L


def lib():
    """The loaded, declared cuDNN library (loaded once, thread-safe)."""
    global _lib, _path
    if _lib is None:
        with _lock:
            if _lib is None:
                L, path = _load()
                declare(L)
                version = L.cudnnGetVersion()
                if version < MIN_VERSION:
                    raise ImportError(f"fastgru needs cuDNN >= 9.0 (the v8 RNN API without the "
                                      f"removed v6/v7 functions); {path} is version {version}")
                _path = path
                _lib = L
    return _lib


def last_error_string(L=None) -> str:
    L = L or lib()
    buf = ctypes.create_string_buffer(1024)
    L.cudnnGetLastErrorString(buf, len(buf))
    return buf.value.decode(errors="replace").strip()


def call(name: str, *args) -> None:
    """Call ``name`` and raise :class:`CudnnError` (with both error strings) unless SUCCESS."""
    L = lib()
    status = getattr(L, name)(*args)
    if status != STATUS_SUCCESS:
        msg = L.cudnnGetErrorString(status)
        msg = msg.decode() if msg else "unknown status"
        raise CudnnError(name, status, msg, last_error_string(L))


def scalar(value: float, dtype_code: int):
    """A host scalar of the data type (paddingFill is read as the tensor's data type)."""
    return c_double(value) if dtype_code == DATA_DOUBLE else c_float(value)


def int_array(values):
    """A host ``int[]`` for ctypes (kept alive by the caller)."""
    arr = (c_int * len(values))(*[int(v) for v in values])
    return arr
