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


# dtype kinds that are not real numbers: complex, str, bytes, void (hot paths test
# ``x.dtype.kind in NOT_REAL`` before building check_real's message)
NOT_REAL = "cUSV"


def check_real(a, what: str):
    """``a`` itself where its dtype holds real numbers (float, integer, bool); else a TypeError
    naming ``what``: converting would drop complex values' imaginary parts with no more than
    a warning, or fail on strings without naming the argument."""
    dtype = getattr(a, "dtype", None)
    if dtype is not None and dtype.kind in NOT_REAL:
        raise TypeError(f"{what} must hold real numbers (float, integer or bool); received an "
                        f"array of dtype {dtype}")
    return a


def as_array(xp, a, what: str):
    """``xp.asarray(a)``; where NumPy cannot make one array of ``a`` (nested lists of
    unequal lengths), a ValueError naming ``what`` instead of NumPy's 'inhomogeneous shape'."""
    try:
        return xp.asarray(a)
    except ValueError as e:
        raise ValueError(f"{what} must be an array, or nested lists of one shape (not ragged); "
                         f"NumPy could not convert the value given: {e}") from e


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
