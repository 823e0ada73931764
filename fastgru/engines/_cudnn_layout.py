"""Keras <-> cuDNN weight-space layout for one GRU layer (one or two directions), as index math.

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

Bidirectional (``dirs=2``): cuDNN's weight space holds two "pseudo-layers" (``cudnn_adv.h``:
"Pseudo-layer index (physical layer and direction)"; the API reference of
``cudnnGetRNNWeightParams``: pseudo-layer 0 is the forward and 1 the backward direction of the
first physical layer), each with the same six matrices and six biases, all of input size D for
one physical layer. The Keras arrays of direction d are concatenated in pseudo-layer order, so
direction d's flat Keras weights start at ``d * keras_size(D, u)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PERM = (1, 0, 2)  # cuDNN gate (r, z, h) <- Keras gate index (z=0, r=1, h=2)


class Param(NamedTuple):
    """One entry of ``cudnnGetRNNWeightParams``: ``kind`` "W" (matrix) or "b" (bias),
    ``offset`` in elements from the start of the weight space, ``shape`` (rows, cols) for a
    matrix, (rows,) for a bias; ``layer`` the pseudo-layer (0 forward, 1 backward direction)."""

    lin: int
    kind: str
    offset: int
    shape: tuple
    layer: int = 0


def keras_size(D: int, u: int) -> int:
    """Elements of kernel (D, 3u) + recurrent_kernel (u, 3u) + bias (2, 3u)."""
    return 3 * u * D + 3 * u * u + 6 * u


def documented_layout(D: int, u: int, dirs: int = 1) -> list[Param]:
    """The layout observed by JAX/PyTorch (CUDNN_NOTES.md section 2): the matrices of every
    pseudo-layer (W0-2, R3-5 of layer 0, then of layer 1), then all biases (bW0-2, bR3-5 of
    layer 0, then of layer 1), each gate block in ID order. Only for tests and diagnostics:
    the engine always uses what the library reports."""
    params, off = [], 0
    for layer in range(dirs):
        for lin in range(6):
            cols = D if lin < 3 else u
            params.append(Param(lin, "W", off, (u, cols), layer))
            off += u * cols
    for layer in range(dirs):
        for lin in range(6):
            params.append(Param(lin, "b", off, (u,), layer))
            off += u
    return params


def pack_index(params, n_elems: int, D: int, u: int, dirs: int = 1) -> np.ndarray:
    """Gather index of the weight space: ``space[i] = keras_flat[idx[i]]``.

    ``keras_flat = concat(kernel.ravel(), recurrent_kernel.ravel(), bias.ravel())`` of each
    direction in pseudo-layer order, then ``[0]``; slots of the space that hold no parameter
    point at the trailing zero (index ``dirs * keras_size``). Raises ValueError if the
    reported layout is not ``dirs`` GRU pseudo-layers' six matrices and six biases each,
    overlaps itself or runs past ``n_elems``.
    """
    n_keras = keras_size(D, u)
    idx = np.full(n_elems, dirs * n_keras, dtype=np.int64)
    filled = np.zeros(n_elems, dtype=bool)
    seen = set()
    for p in params:
        if (p.lin not in range(6) or p.kind not in ("W", "b") or p.layer not in range(dirs)
                or (p.layer, p.lin, p.kind) in seen):
            raise ValueError(f"unexpected cuDNN weight parameter {p}")
        seen.add((p.layer, p.lin, p.kind))
        base_k = p.layer * n_keras
        base_r = base_k + 3 * u * D
        base_b = base_r + 3 * u * u
        g = PERM[p.lin % 3]
        i = np.arange(u)
        if p.kind == "W":
            cols = D if p.lin < 3 else u
            if tuple(p.shape) != (u, cols):
                raise ValueError(f"cuDNN matrix {p.lin} has shape {p.shape}, expected {(u, cols)}")
            j = np.arange(cols)
            # M[i, j] = keras_block[j, i]; keras element [j, g*u + i] of a (cols, 3u) array
            src = (base_k if p.lin < 3 else base_r) + j[None, :] * 3 * u + g * u + i[:, None]
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
    if len(seen) != 12 * dirs:
        missing = sorted({(d, lin, k) for d in range(dirs) for lin in range(6) for k in "Wb"}
                         - seen)
        raise ValueError(f"cuDNN weight layout lacks parameters (pseudo-layer, id, kind) "
                         f"{missing}")
    return idx


def unpack_index(idx: np.ndarray, D: int, u: int, dirs: int = 1) -> np.ndarray:
    """Inverse of :func:`pack_index`: ``keras_flat[j] = space[inv[j]]`` for
    j < dirs * keras_size."""
    n_keras = dirs * keras_size(D, u)
    inv = np.full(n_keras, -1, dtype=np.int64)
    used = idx < n_keras
    inv[idx[used]] = np.nonzero(used)[0]
    if (inv < 0).any():
        raise ValueError("cuDNN weight layout does not cover every Keras weight")
    return inv


def pack(xp, kernel, recurrent_kernel, bias, idx, dtype):
    """The cuDNN weight space (n_elems,) of ``dtype`` from Keras arrays (bias (2, 3u) or None).

    ``idx`` from :func:`pack_index` (on the arrays' device)."""
    return pack_dirs(xp, [(kernel, recurrent_kernel, bias)], idx, dtype)


def pack_dirs(xp, weights, idx, dtype):
    """:func:`pack` for one (kernel, recurrent_kernel, bias) triple per pseudo-layer."""
    parts = []
    for kernel, recurrent_kernel, bias in weights:
        u3 = kernel.shape[1]
        parts += [kernel.reshape(-1).astype(dtype, copy=False),
                  recurrent_kernel.reshape(-1).astype(dtype, copy=False),
                  xp.zeros(2 * u3, dtype) if bias is None
                  else bias.reshape(-1).astype(dtype, copy=False)]
    return xp.take(xp.concatenate(parts + [xp.zeros(1, dtype)]), idx)


def unpack(xp, space, inv, D: int, u: int):
    """Keras-layout (kernel (D, 3u), recurrent_kernel (u, 3u), bias (2, 3u)) from a weight
    space (or a weight-gradient space, which has the same layout)."""
    return unpack_dirs(xp, space, inv, D, u)[0]


def unpack_dirs(xp, space, inv, D: int, u: int):
    """:func:`unpack` per pseudo-layer: a list of (kernel, recurrent_kernel, bias) triples."""
    flat = xp.take(space, inv)
    n, nk, nr = keras_size(D, u), 3 * u * D, 3 * u * u
    out = []
    for d in range(flat.shape[0] // n):
        f = flat[d * n:(d + 1) * n]
        out.append((f[:nk].reshape(D, 3 * u), f[nk:nk + nr].reshape(u, 3 * u),
                    f[nk + nr:].reshape(2, 3 * u)))
    return out
