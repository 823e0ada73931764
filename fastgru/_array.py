"""Array-module helpers: NumPy or CuPy, decided by the arrays themselves.

CuPy is optional. Nothing here imports it unless an array that came from CuPy is seen, so the
package imports (and every CPU path runs) without it.
"""

from __future__ import annotations

import numpy as np


def is_cupy(a) -> bool:
    """True for a CuPy ndarray (checked by type, without importing CuPy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (None arguments are skipped)."""
    for a in arrays:
        if a is not None and is_cupy(a):
            import cupy

            return cupy
    return np


# The checks below name the argument by ``what.format(*args)``, formatted only for a message:
# they run on every layer call, where building the name each time cost ~0.1 us per check.


def check_real(a, what: str, *args):
    """``a`` itself where its dtype holds real numbers (float, integer, bool); else a TypeError
    naming the argument: converting would drop complex values' imaginary parts with no more
    than a warning, or fail on strings (dtype kinds complex, str, bytes, void)."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and dtype.kind in "cUSV":
        raise TypeError(f"{what.format(*args)} must hold real numbers (float, integer or bool); "
                        f"received an array of dtype {dtype}")
    return a


def as_array(xp, a, what: str, *args):
    """``xp.asarray(a)``; where NumPy cannot make one array of ``a`` (nested lists of
    unequal lengths), a ValueError naming the argument instead of 'inhomogeneous shape'."""
    try:
        return xp.asarray(a)
    except ValueError as e:
        raise ValueError(f"{what.format(*args)} must be an array, or nested lists of one shape "
                         f"(not ragged); NumPy could not convert the value given: {e}") from e


def real_array(xp, a, what: str, *args):
    """``a`` as an array of real numbers: nested lists made one (as_array), then check_real."""
    if not hasattr(a, "dtype"):
        a = as_array(xp, a, what, *args)
    return check_real(a, what, *args)


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDARuntimeError without a driver/device
        return False


def to_host(a):
    """A NumPy array for NumPy/CuPy/array-like input (CuPy copies device -> host)."""
    if a is None:
        return None
    if is_cupy(a):
        return a.get()
    return np.asarray(a)


def to_device(a, device: str = "gpu"):
    """Move ``a`` to ``device`` ("cpu" -> NumPy, "gpu" -> CuPy on the current device)."""
    if a is None:
        return None
    if device == "cpu":
        return to_host(a)
    if device == "gpu":
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise ImportError("device='gpu' needs CuPy (pip install cupy-cuda12x)") from e
        return cupy.asarray(a)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
