"""Seeded randomness for initializers and dropout.

Two sources, both NumPy ``Generator`` s (PCG64), so results never depend on the device:

- An object given an integer ``seed`` (an initializer, a GRU cell's dropout) uses its own
  stream derived from that seed alone: the same seed always gives the same weights / masks.
- ``seed=None`` draws from one *global* stream, itself seeded (default seed 1337, Keras's
  traditional constant), so a whole program is reproducible: ``fastgru.set_seed(n)`` restarts
  that stream, after which the same sequence of layer creations and calls gives the same
  weights and dropout masks. Every unseeded draw takes a fresh 63-bit seed from the global
  stream, so unseeded objects never share values.

Dropout masks are drawn on the host and moved to the input's device; they are (B, D) / (3, B, u)
sized, so the copy is negligible next to the recurrence.
"""

from __future__ import annotations

import threading

import numpy as np

DEFAULT_GLOBAL_SEED = 1337

_lock = threading.Lock()
_global = np.random.default_rng(DEFAULT_GLOBAL_SEED)


def set_seed(seed: int) -> None:
    """Restart the global stream used by everything created with ``seed=None``."""
    global _global
    seed = validate_seed(seed)
    if seed is None:
        raise ValueError("set_seed needs an integer seed, got None")
    with _lock:
        _global = np.random.default_rng(seed)


def validate_seed(seed):
    """None or a non-negative int (Keras accepts any int; numpy needs non-negative)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"Argument `seed` must be an integer or None. Received: seed={seed!r}"
        )
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"Argument `seed` must be non-negative. Received: seed={seed}")
    return seed


def next_seed() -> int:
    """A fresh seed from the global stream."""
    with _lock:
        return int(_global.integers(0, 2**63 - 1))


def generator(seed=None) -> np.random.Generator:
    """A Generator for ``seed`` (int), or a fresh one seeded from the global stream (None)."""
    seed = validate_seed(seed)
    return np.random.default_rng(next_seed() if seed is None else seed)
