"""Thread-count control for the compiled CPU engine.

``set_num_threads(n)`` sets the default used when an engine call passes ``n_threads=None``;
without it, the default is the number of CPUs this process may run on, capped at call time by
the OpenMP limit (``OMP_NUM_THREADS``, or threadpoolctl's ``threadpool_limits``), so that the
caps joblib, Dask and the like put on their workers apply. ``blas_threads(n)`` pins
the BLAS libraries (through threadpoolctl) to ``n`` threads around a block, so that BLAS called
from inside the engine's OpenMP threads runs single-threaded and never oversubscribes.
"""

from __future__ import annotations

import os
import threading
import time

_default: int | None = None


# The CPUs this thread may run on, re-read at most once a second per thread: the syscall was
# ~1.1 us of every layer call (a changed affinity only moves the thread count, never a bit).
_CPUS_TTL = 1.0
_cpus_seen = threading.local()


def _cpus() -> int:
    now = time.monotonic()
    seen = getattr(_cpus_seen, "v", None)
    if seen is not None and now - seen[1] < _CPUS_TTL:
        return seen[0]
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    _cpus_seen.v = (n, now)
    return n


_omp_limit = None  # the extension's omp_max_threads, imported on first use


def get_num_threads() -> int:
    """The thread count used when ``n_threads`` is None: ``set_num_threads``'s, else the CPUs
    this process may run on, at most the calling thread's OpenMP limit."""
    global _omp_limit
    if _default is not None:
        return _default
    if _omp_limit is None:
        try:
            from ._cpu._gru import omp_max_threads as _omp_limit
        except ImportError:  # extension not built: nothing to cap
            _omp_limit = lambda: 1 << 30  # noqa: E731
    n, m = _cpus(), _omp_limit()
    return n if n <= m else max(1, m)


def set_num_threads(n: int | None) -> None:
    """Set the default thread count (None: the CPUs this process may run on, capped at each
    call by the OpenMP limit; see get_num_threads)."""
    global _default
    _default = None if n is None else check_n_threads(n)


def check_n_threads(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n_threads must be a positive int or None, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n_threads must be >= 1, got {n}")
    return n


def resolve(n_threads) -> int:
    """``n_threads`` validated, or the default when None."""
    return get_num_threads() if n_threads is None else check_n_threads(n_threads)


_lock = threading.Lock()
_depth = 0
_saved: list | None = None
_controllers: list | None = None


def _raw_openblas(c):
    """(get, set) ctypes functions of an OpenBLAS controller. threadpoolctl lets only the first
    Python thread that limits a pthreads OpenBLAS change it; the engine may run in any thread,
    so it calls the library directly (also ~50x cheaper per call)."""
    prefix, suffix = c._find_affixes()
    get = getattr(c.dynlib, f"{prefix}openblas_get_num_threads{suffix}")
    set_ = getattr(c.dynlib, f"{prefix}openblas_set_num_threads{suffix}")
    return get, set_


def _blas_controllers() -> list:
    """[(get_num_threads, set_num_threads)] for every loaded BLAS."""
    global _controllers
    if _controllers is None:
        found = []
        try:
            from threadpoolctl import ThreadpoolController

            for c in ThreadpoolController().lib_controllers:
                if c.user_api != "blas":
                    continue
                try:
                    if c.internal_api == "openblas" and c.threading_layer != "openmp":
                        found.append(_raw_openblas(c))
                        continue
                except Exception:  # layout of threadpoolctl internals changed: use its API
                    pass
                found.append((c.get_num_threads, c.set_num_threads))
        except Exception:  # threadpoolctl missing or unable to inspect: leave BLAS alone
            found = []
        _controllers = found
    return _controllers


class blas_threads:
    """``with blas_threads(n):`` pins every loaded BLAS to ``n`` threads inside the block.
    Re-entrant and thread-safe: the original counts come back when the last concurrent user
    leaves. (A class, not a generator: this runs around every engine call.)"""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        global _depth, _saved
        ctl = _controllers if _controllers is not None else _blas_controllers()
        with _lock:
            if _depth == 0:
                _saved = [get() for get, _ in ctl]
                for (_, set_), k in zip(ctl, _saved):
                    if k != self.n:
                        set_(self.n)
            else:
                for get, set_ in ctl:
                    if get() != self.n:
                        set_(self.n)
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth, _saved
        with _lock:
            _depth -= 1
            if _depth == 0:
                for (get, set_), k in zip(_controllers, _saved):
                    if get() != k:
                        set_(k)
                _saved = None
        return False
