"""Shared test helpers: seeded RNG and central finite differences."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


def central_diff(f, arr, eps=1e-6):
    """d f() / d arr by central differences, perturbing ``arr`` in place (float64)."""
    grad = np.zeros_like(arr, dtype=np.float64)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


@pytest.fixture
def fd():
    return central_diff
