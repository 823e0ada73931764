"""fastgru's own file format: one ``.npz`` holding the model config (JSON) and its weights.

Layout (NumPy ``savez``, read back with ``allow_pickle=False``, so loading never unpickles or
runs anything from the file):

- ``__fastgru_meta__``: uint8 bytes of a UTF-8 JSON object ``{"format": "fastgru-model",
  "version": 1, "fastgru_version", "model": <serialised layer>, "build_input_shape",
  "weights": [{"name", "dtype", "shape"}, ...]}``;
- ``__fastgru_digest__``: uint8 bytes of the hex SHA-256 of the meta bytes followed by every
  weight's raw C-order bytes, in order (so a truncated, edited or swapped file is refused);
- ``w00000``, ``w00001``, ...: the weights in ``model.weights`` order, in their own dtype
  (a load is bit-for-bit).

The model class must be one of fastgru's (GRU, GRUCell, RNN, Bidirectional, Dense, Sequential).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from ..layers.base import to_numpy
from ._registry import deserialize_layer, serialize_layer

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "fastgru-model"
VERSION = 1
_META = "__fastgru_meta__"
_DIGEST = "__fastgru_digest__"


def _digest(meta_bytes: bytes, arrays) -> str:
    h = hashlib.sha256()
    h.update(len(meta_bytes).to_bytes(8, "little"))
    h.update(meta_bytes)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def build_input_shape(model):
    """The input shape to ``build`` a fresh copy of ``model`` with (None = any)."""
    shape = getattr(model, "_build_input_shape", None)
    if shape is not None:
        return [None if d is None else int(d) for d in shape]
    weights = model.weights
    if not weights:
        return None
    kernel = weights[0].shape  # GRU / RNN / Dense: the first weight is (input_dim, ...)
    if type(model).__name__ == "Dense":
        return [None, int(kernel[0])]
    batch = None
    states = getattr(model, "states", None)  # stateful RNNs need their static batch size
    if getattr(model, "stateful", False) and states:
        first = states[0] if isinstance(states, (list, tuple)) else states
        first = first[0] if isinstance(first, (list, tuple)) else first
        batch = int(first.shape[0])
    if getattr(model, "time_major", False):
        return [None, batch, int(kernel[0])]
    return [batch, None, int(kernel[0])]


def save(model, path) -> None:
    """Write ``model`` (config + weights) to ``path`` (an ``.npz`` file; the name is used as
    given) or to a writable binary file object."""
    config = serialize_layer(model)
    if not model.built and model.weights:  # a container of layers built before it was made
        first = getattr(model, "layers", [None])[0]
        shape = build_input_shape(first) if first is not None else None
        hint = f"model.build({tuple(shape)})" if shape else "model.build(input_shape)"
        raise ValueError(
            f"Cannot save '{model.name}': it is not built, though some of its layers are "
            f"(they hold weights); build it first ({hint}) or call it on an input."
        )
    arrays = [np.asarray(to_numpy(w.value)) for w in model.weights] if model.built else []
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fastgru_version": _fastgru_version(),
        "model": config,
        "build_input_shape": build_input_shape(model) if model.built else None,
        "weights": [{"name": w.name, "dtype": a.dtype.str, "shape": list(a.shape)}
                    for w, a in zip(model.weights, arrays, strict=True)],
    }
    try:
        meta_bytes = json.dumps(meta, sort_keys=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Cannot save '{model.name}': its config is not plain JSON ({e}). Custom Python "
            "activations, initializers, regularizers or constraints cannot be stored; use "
            "Keras names."
        ) from e
    payload = {_META: np.frombuffer(meta_bytes, np.uint8),
               _DIGEST: np.frombuffer(_digest(meta_bytes, arrays).encode("ascii"), np.uint8)}
    for i, a in enumerate(arrays):
        payload[f"w{i:05d}"] = a
    if hasattr(path, "write"):
        np.savez(path, **payload)
        return
    with open(os.fspath(path), "wb") as f:  # an open file: savez must not append ".npz"
        np.savez(f, **payload)


def _fastgru_version() -> str:
    from .. import __version__

    return __version__


def _corrupt(path, why) -> ValueError:
    return ValueError(f"{path!s}: not a readable fastgru model file ({why}).")


def load(path):
    """Read a model written by :func:`save`: the same class, config and weights (bit-for-bit).

    Raises ValueError for a file that is not a fastgru model, is truncated, or whose content
    does not match its SHA-256 digest.
    """
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise _corrupt(path, "a single NumPy array (.npy), not an .npz archive")
        with f:
            names = set(f.files)
            if _META not in names or _DIGEST not in names:
                raise _corrupt(path, "no fastgru header: not written by fastgru.io.save")
            meta_bytes = f[_META].tobytes()
            digest = f[_DIGEST].tobytes().decode("ascii", "replace")
            meta = json.loads(meta_bytes.decode("utf-8"))
            if not isinstance(meta, dict) or not isinstance(meta.get("weights", []), list):
                raise _corrupt(path, "its header is not a fastgru header object")
            n = len(meta.get("weights", []))
            keys = [f"w{i:05d}" for i in range(n)]
            missing = [k for k in keys if k not in names]
            if missing:
                raise _corrupt(path, f"weights {missing} are missing")
            arrays = [f[k] for k in keys]
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    except FileNotFoundError:  # not a damaged file: no file
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"truncated or damaged: {type(e).__name__}: {e}") from e
    if meta.get("format") != FORMAT:
        raise _corrupt(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise _corrupt(path, f"format version {meta.get('version')!r}; this fastgru reads "
                             f"version {VERSION}")
    if _digest(meta_bytes, arrays) != digest:
        raise _corrupt(path, "SHA-256 digest mismatch: the file was modified or corrupted")
    for spec, a in zip(meta["weights"], arrays, strict=True):
        if a.dtype.str != spec["dtype"] or list(a.shape) != spec["shape"]:
            raise _corrupt(path, f"weight {spec['name']} does not match its header")

    model = deserialize_layer(meta["model"])
    if arrays:
        shape = meta.get("build_input_shape")
        model.build(tuple(shape))
        if len(model.weights) != len(arrays):
            raise _corrupt(path, f"{len(arrays)} weights stored, the model has "
                                 f"{len(model.weights)}")
        for var, a in zip(model.weights, arrays, strict=True):
            if tuple(var.shape) != a.shape or var.dtype != a.dtype:
                raise _corrupt(path, f"weight {var.name} is {var.dtype}{tuple(var.shape)} in "
                                     f"the model, {a.dtype}{a.shape} in the file")
            var.assign(a)  # same dtype: an exact copy
    return model

