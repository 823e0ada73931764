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
