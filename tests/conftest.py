"""Shared test helpers: seeded RNG and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def central_diff(f, arr, eps=1e-6, entries=None, rng=None):
    """d f() / d arr by central differences, perturbing ``arr`` in place (float64): every
    entry, or ``entries`` randomly chosen ones (``rng``), the others left NaN."""
    idx = list(np.ndindex(arr.shape))
    grad = np.zeros_like(arr, dtype=np.float64)
    if entries is not None and entries < len(idx):
        rng = rng if rng is not None else np.random.default_rng(0)
        idx = [idx[i] for i in rng.choice(len(idx), entries, replace=False)]
        grad[...] = np.nan
    for i in idx:
        old = arr[i]
        arr[i] = old + eps
        up = f()
        arr[i] = old - eps
        down = f()
        arr[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.fixture
def fd():
    return central_diff


def run_in_threads(work, n):
    """work(i) for i < n, each in a Python thread of its own, all started before any is
    joined; re-raises the first exception a thread raised."""
    import threading

    errors = []

    def guarded(i):
        try:
            work(i)
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture
def in_threads():
    return run_in_threads


# The CPU engine's read-once switches (src_c/gemm.c), reset by _gru.set_<name>(None).
READ_ONCE_SWITCHES = ("ptr_prefetch", "gate_prefetch", "zigzag", "overlap", "strips", "kb_own")


@pytest.fixture
def default_cpu_env(monkeypatch):
    """For a test of one mechanism of the CPU engine (a kernel path and what it promises): the
    FASTGRU_CPU_* variables that force a kernel, a path or a switch are unset and the read-once
    switches back at their defaults, so that the suite run under a forced fallback
    (FASTGRU_CPU_KERNEL=avx2, FASTGRU_CPU_PROJ=blas, ...) still tests what such a test names."""
    import os

    for name in [k for k in os.environ if k.startswith("FASTGRU_CPU_")]:
        monkeypatch.delenv(name)
    try:
        from fastgru._cpu import _gru
    except ImportError:  # pragma: no cover - no compiled engine: nothing to reset
        yield
        return
    for name in READ_ONCE_SWITCHES:
        getattr(_gru, "set_" + name)(None)
    yield
    for name in READ_ONCE_SWITCHES:  # read again from the environment as it was
        getattr(_gru, "set_" + name)(None)


@pytest.fixture(autouse=True)
def plans_independent_of_descheduled_threads(monkeypatch):
    """The CPU engine stops splitting units for a while after a split team waited for a
    descheduled thread (engines.cpu._CONTENDED_SECONDS): on a busy test machine, and with more
    threads than cores, that would change the plans that tests assert. Off here; the tests of
    the rule itself turn it back on."""
    try:
        from fastgru.engines import cpu
    except ImportError:  # pragma: no cover - the package itself is broken
        return
    monkeypatch.setattr(cpu, "_CONTENDED_SECONDS", 0.0)
    monkeypatch.setattr(cpu, "_contended_until", 0.0)
