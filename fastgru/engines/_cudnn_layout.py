"""Keras <-> cuDNN weight-space layout for one unidirectional GRU layer, as index math.

cuDNN's weight space is one flat buffer; ``cudnnGetRNNWeightParams`` says where each of the six
"linear layers" lives (CUDNN_NOTES.md section 2, KERAS_GRU_SPEC.md section 4.4):

* linLayerID 0, 1, 2: input matrices W of the reset, update and new gates, each a row-major
  (u, D) matrix = the transpose of a Keras kernel column block;
* linLayerID 3, 4, 5: recurrent matrices R of the same gates, (u, u);
* biases with the same IDs: 0-2 input bias, 3-5 recurrent bias (DOUBLE_BIAS), (u,) each.

Keras orders gates (z, r, h); cuDNN (r, z, h): cuDNN gate g takes Keras gate ``PERM[g]``.
Nothing here assumes offsets: :func:`pack_index` turns the table of (id, matrix|bias, offset,
shape) entries that the library reports into one gather index, so packing is a single ``take``
from the concatenated Keras arrays and unpacking gradients is a single ``take`` with the inverse
index. Pure NumPy; the index arrays are copied to the device once per layout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PERM = (1, 0, 2)  # cuDNN gate (r, z, h) <- Keras gate index (z=0, r=1, h=2)


class Param(NamedTuple):
    """One entry of ``cudnnGetRNNWeightParams``: ``kind`` "W" (matrix) or "b" (bias),
    ``offset`` in elements from the start of the weight space, ``shape`` (rows, cols) for a
    matrix, (rows,) for a bias."""

    lin: int
    kind: str
    offset: int
    shape: tuple


def keras_size(D: int, u: int) -> int:
    """Elements of kernel (D, 3u) + recurrent_kernel (u, 3u) + bias (2, 3u)."""
    return 3 * u * D + 3 * u * u + 6 * u


def documented_layout(D: int, u: int) -> list[Param]:
    """The layout observed by JAX/PyTorch for one unidirectional layer (matrices W0-2, R3-5,
    then biases bW0-2, bR3-5, each gate block in ID order). Only for tests and diagnostics:
    the engine always uses what the library reports."""
    params, off = [], 0
    for lin in range(6):
        cols = D if lin < 3 else u
        params.append(Param(lin, "W", off, (u, cols)))
        off += u * cols
    for lin in range(6):
        params.append(Param(lin, "b", off, (u,)))
        off += u
    return params


def pack_index(params, n_elems: int, D: int, u: int) -> np.ndarray:
    """Gather index of the weight space: ``space[i] = keras_flat[idx[i]]``.

    ``keras_flat = concat(kernel.ravel(), recurrent_kernel.ravel(), bias.ravel(), [0])``; slots
    of the space that hold no parameter point at the trailing zero (index ``keras_size``).
    Raises ValueError if the reported layout is not one GRU layer's six matrices and six
    biases, overlaps itself or runs past ``n_elems``.
    """
    n_keras = keras_size(D, u)
    idx = np.full(n_elems, n_keras, dtype=np.int64)
    filled = np.zeros(n_elems, dtype=bool)
    seen = set()
    base_r = 3 * u * D
    base_b = base_r + 3 * u * u
    for p in params:
        if p.lin not in range(6) or p.kind not in ("W", "b") or (p.lin, p.kind) in seen:
            raise ValueError(f"unexpected cuDNN weight parameter {p}")
        seen.add((p.lin, p.kind))
        g = PERM[p.lin % 3]
        i = np.arange(u)
        if p.kind == "W":
            cols = D if p.lin < 3 else u
            if tuple(p.shape) != (u, cols):
                raise ValueError(f"cuDNN matrix {p.lin} has shape {p.shape}, expected {(u, cols)}")
            j = np.arange(cols)
            # M[i, j] = keras_block[j, i]; keras element [j, g*u + i] of a (cols, 3u) array
            src = (0 if p.lin < 3 else base_r) + j[None, :] * 3 * u + g * u + i[:, None]
            src = src.ravel()
        else:
            if tuple(p.shape) != (u,):
                raise ValueError(f"cuDNN bias {p.lin} has shape {p.shape}, expected {(u,)}")
            src = base_b + (0 if p.lin < 3 else 3 * u) + g * u + i
        lo, hi = p.offset, p.offset + src.size
        if lo < 0 or hi > n_elems:
            raise ValueError(f"cuDNN parameter {p} runs outside the weight space of "
                             f"{n_elems} elements")
        if filled[lo:hi].any():
            raise ValueError(f"cuDNN parameter {p} overlaps another parameter")
        filled[lo:hi] = True
        idx[lo:hi] = src
    if len(seen) != 12:
        missing = sorted({(lin, k) for lin in range(6) for k in "Wb"} - seen)
        raise ValueError(f"cuDNN weight layout lacks parameters {missing}")
    return idx


def unpack_index(idx: np.ndarray, D: int, u: int) -> np.ndarray:
    """Inverse of :func:`pack_index`: ``keras_flat[j] = space[inv[j]]`` for j < keras_size."""
    n_keras = keras_size(D, u)
    inv = np.full(n_keras, -1, dtype=np.int64)
    used = idx < n_keras
    inv[idx[used]] = np.nonzero(used)[0]
    if (inv < 0).any():
        raise ValueError("cuDNN weight layout does not cover every Keras weight")
    return inv


def pack(xp, kernel, recurrent_kernel, bias, idx, dtype):
    """The cuDNN weight space (n_elems,) of ``dtype`` from Keras arrays (bias (2, 3u) or None).

    ``idx`` from :func:`pack_index` (on the arrays' device)."""
    u3 = kernel.shape[1]
    b = xp.zeros(2 * u3, dtype) if bias is None else bias.reshape(-1).astype(dtype, copy=False)
    flat = xp.concatenate([kernel.reshape(-1).astype(dtype, copy=False),
                           recurrent_kernel.reshape(-1).astype(dtype, copy=False), b,
                           xp.zeros(1, dtype)])
    return xp.take(flat, idx)


def unpack(xp, space, inv, D: int, u: int):
    """Keras-layout (kernel (D, 3u), recurrent_kernel (u, 3u), bias (2, 3u)) from a weight
    space (or a weight-gradient space, which has the same layout)."""
    flat = xp.take(space, inv)
    nk, nr = 3 * u * D, 3 * u * u
    return (flat[:nk].reshape(D, 3 * u), flat[nk:nk + nr].reshape(u, 3 * u),
            flat[nk + nr:].reshape(2, 3 * u))
