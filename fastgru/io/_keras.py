"""Read Keras 3 models: ``.keras`` archives and ``.weights.h5`` files (needs h5py).

A ``.keras`` file is a zip with ``config.json`` (the serialised model) and
``model.weights.h5``. In the weights file every layer's own variables are datasets
``<path>/vars/0, 1, ...`` (in creation order), with the layer's name as the ``name`` attribute
of its ``vars`` group, and sub-objects nest by attribute name. What fastgru reads (as written by
Keras 3.15):

- Sequential / Functional: ``layers/<snake_case(class)>[_k]/...`` (InputLayer skipped by
  Sequential); GRU: ``cell/vars/{0: kernel, 1: recurrent_kernel, 2: bias}``;
- RNN: ``cell/vars`` for one cell, ``cell/cells/gru_cell[_k]/vars`` for stacked cells;
- Bidirectional: ``forward_layer/...`` and ``backward_layer/...`` (each as its GRU);
- Dense: ``vars/{0: kernel, 1: bias}``.

Legacy HDF5 files (``model.save("m.h5")`` / ``save_weights("w.h5")`` of Keras 2 / tf.keras,
and Keras 3's legacy ``.h5`` export) are read too: the config is the ``model_config`` attribute,
weights sit under ``model_weights`` (or the root for weight-only files), one group per layer
named in the ``layer_names`` attribute, whose ``weight_names`` attribute lists its datasets in
``layer.weights`` order.

Only config classes fastgru implements are built (GRU, GRUCell/RNN, Bidirectional, Dense,
Sequential, InputLayer, and Functional models that are a single chain of those); nothing named
by the file is imported or executed.
"""

from __future__ import annotations

import io as _io
import json
import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from ._registry import deserialize_layer

__all__ = ["load_keras", "load_keras_weights", "model_from_keras_config"]


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError(
            "Reading Keras weight files needs h5py: pip install h5py (or fastgru[io])."
        ) from e
    return h5py


def _snake(name: str) -> str:  # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


# --------------------------------------------------------------------------- config
def _unwrap(cfg: dict) -> dict:
    if not isinstance(cfg, Mapping):
        raise TypeError(
            "Argument `config` must be a Keras model config: a dict with 'class_name' and "
            f"'config' (or its JSON text, as a .keras file's config.json); received "
            f"{type(cfg).__name__}"
        )
    if "class_name" not in cfg:
        raise ValueError("Expected a Keras model config with 'class_name' and 'config'.")
    return cfg


def _shape(cfg_entry: dict):
    """The build input shape recorded in a serialised Keras layer, if any."""
    bc = cfg_entry.get("build_config") or {}
    shape = bc.get("input_shape")
    return tuple(shape) if shape is not None else None


def _chain_from_functional(cfg: dict) -> tuple[list, tuple | None]:
    """(layer configs in order, input shape) of a Functional model that is a single chain."""
    layers = cfg["config"]["layers"]
    inputs = [e for e in layers if e["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise ValueError("Only single-input Functional models can be converted to fastgru.")
    icfg = inputs[0]["config"]  # Keras 2 records batch_input_shape
    order, shape = [], tuple(icfg.get("batch_shape") or icfg.get("batch_input_shape") or ()) or None
    prev = inputs[0]["config"]["name"]
    remaining = [e for e in layers if e["class_name"] != "InputLayer"]
    while remaining:
        nxt = [e for e in remaining if _inbound_names(e) == [prev]]
        if len(nxt) != 1:
            raise ValueError(
                "Only Functional models that are a single chain of layers (each layer called "
                "once, on the previous layer's output) can be converted to fastgru."
            )
        order.append(nxt[0])
        remaining.remove(nxt[0])
        prev = nxt[0].get("name", nxt[0]["config"]["name"])
    return order, shape


def _inbound_names(entry) -> list:
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1:
        return [None] * max(len(nodes), 2)
    names = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    if isinstance(nodes[0], dict):  # Keras 3: the call's arguments, with tensor references
        walk(nodes[0].get("args", []))
    else:  # Keras 2: [[layer name, node index, tensor index, kwargs], ...]
        names = [n[0] for n in nodes[0]]
    return names


def model_from_keras_config(config, *, build: bool = True):
    """The fastgru model described by a Keras 3 config (``model.get_config()`` wrapped as
    ``{"class_name": ..., "config": ...}``, i.e. a ``.keras`` file's ``config.json``, or its
    JSON text). Built from the recorded input shape when ``build`` and one is known."""
    from ..layers.sequential import Sequential

    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise ValueError(f"Argument `config` was given as {type(config).__name__} but is "
                             f"not the JSON text of a Keras model config: {e}") from e
    cfg = _unwrap(config)
    kind = cfg["class_name"]
    if kind in ("Functional", "Model"):
        entries, shape = _chain_from_functional(cfg)
        model = Sequential([deserialize_layer(e) for e in entries],
                           name=cfg["config"].get("name"))
    else:
        model = deserialize_layer(cfg)
        shape = _shape(cfg)
        if kind == "Sequential":
            shape = model._build_input_shape or shape
    if build and shape is not None and not model.built:
        model.build(tuple(shape))
    return model


# --------------------------------------------------------------------------- weights
def _vars(group) -> list[np.ndarray]:
    if group is None or "vars" not in group:
        return []
    v = group["vars"]
    return [np.asarray(v[str(i)]) for i in range(len(v))]


def _child(group, name, where):
    if name not in group:
        raise ValueError(f"Keras weights file: no group {where}/{name} (found {list(group)}).")
    return group[name]


def _rnn_arrays(layer, group, where) -> list[np.ndarray]:
    cell = _child(group, "cell", where)
    if "cells" in cell:
        cells, used, out = cell["cells"], {}, []
        for sub_cfg in layer.get_config()["cell"]["config"]["cells"]:
            base = _snake(sub_cfg["class_name"])
            k = used.get(base, -1) + 1
            used[base] = k
            key = base if k == 0 else f"{base}_{k}"
            out += _vars(_child(cells, key, f"{where}/cell/cells"))
        return out
    return _vars(cell)


def _layer_arrays(layer, group, where) -> list[np.ndarray]:
    """Weights of ``layer`` read from its h5 group, in ``layer.weights`` order."""
    from ..layers.bidirectional import Bidirectional
    from ..layers.sequential import Sequential

    if isinstance(layer, Sequential):
        return _container_arrays(layer.layers, _child(group, "layers", where), where + "/layers")
    if isinstance(layer, Bidirectional):
        return (_layer_arrays(layer.forward_layer, _child(group, "forward_layer", where),
                              where + "/forward_layer")
                + _layer_arrays(layer.backward_layer, _child(group, "backward_layer", where),
                                where + "/backward_layer"))
    kind = type(layer).__name__
    if kind == "GRU":
        return _vars(_child(group, "cell", where))
    if kind == "RNN":
        return _rnn_arrays(layer, group, where)
    return _vars(group)  # Dense and other leaf layers


def _container_arrays(layers, group, where) -> list[np.ndarray]:
    """Children of a Keras ``layers`` group, by Keras's keys: the class name and the position
    among the layers of that class (``gru``, ``gru_1``, ...), as Keras itself reads them. Not
    by the layer names the file also records: auto-numbered names differ between sessions
    (a model built after another GRU has ``gru_1, gru_2``), and a name that matches another
    layer of the file would load that layer's weights."""
    used, out = {}, []
    for layer in layers:
        base = _snake(type(layer).__name__)
        k = used.get(base, -1) + 1
        used[base] = k
        key = base if k == 0 else f"{base}_{k}"
        out += _layer_arrays(layer, _child(group, key, where), f"{where}/{key}")
    return out


def _assign(model, arrays, source):
    weights = model.weights
    if len(arrays) != len(weights):
        raise ValueError(
            f"{source}: found {len(arrays)} weight arrays for '{model.name}', which has "
            f"{len(weights)} weights."
        )
    for w, a in zip(weights, arrays, strict=True):
        if tuple(w.shape) != a.shape:
            raise ValueError(
                f"{source}: weight {w.name} has shape {tuple(w.shape)}, the file has {a.shape}."
            )
    model.set_weights(arrays)


def _text(a) -> str:
    return a.decode("utf-8") if isinstance(a, bytes) else str(a)


def _is_legacy(root) -> bool:
    return "layer_names" in root.attrs or (
        "model_weights" in root and "layer_names" in root["model_weights"].attrs)


def _legacy_arrays(model, root, source) -> list[np.ndarray]:
    """Weights from a legacy HDF5 file: layers matched by name, else in order."""
    from ..layers.sequential import Sequential

    group = root["model_weights"] if "model_weights" in root else root
    names = [_text(n) for n in group.attrs["layer_names"]]
    per_layer = {}
    for name in names:
        g = group[name]
        per_layer[name] = [np.asarray(g[_text(w)]) for w in g.attrs.get("weight_names", [])]
    weighted = [n for n in names if per_layer[n]]
    layers = model.layers if isinstance(model, Sequential) else [model]
    layers = [layer for layer in layers if layer.weights]
    if all(layer.name in per_layer for layer in layers):
        chosen = [layer.name for layer in layers]
    elif len(layers) == len(weighted):
        chosen = weighted
    else:
        raise ValueError(
            f"{source}: the file has weights for layers {weighted}; the model's layers with "
            f"weights are {[layer.name for layer in layers]}."
        )
    return [a for name in chosen for a in per_layer[name]]


def load_keras_weights(model, path) -> None:
    """Set ``model``'s weights (a built fastgru model with the Keras model's structure) from a
    Keras 3 ``.weights.h5`` file, a ``.keras`` archive, or an open ``h5py`` file/group."""
    h5py = _h5py()
    if isinstance(path, (h5py.File, h5py.Group)):
        return _load_from_group(model, path, "weights")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            data = z.read("model.weights.h5")
        with h5py.File(_io.BytesIO(data), "r") as f:
            return _load_from_group(model, f, os.fspath(path))
    with h5py.File(path, "r") as f:
        return _load_from_group(model, f, os.fspath(path))


def _load_from_group(model, root, source) -> None:
    from ..layers.sequential import Sequential

    if not model.built:
        raise ValueError(f"Build '{model.name}' before loading weights into it.")
    if _is_legacy(root):
        arrays = _legacy_arrays(model, root, source)
    elif isinstance(model, Sequential):
        arrays = _container_arrays(model.layers, _child(root, "layers", source), "layers")
    elif "layers" in root:  # a bare layer loaded from a one-layer model file
        group = root["layers"]
        weighted = [k for k in group if _has_arrays(group[k])]
        if len(weighted) != 1:
            raise ValueError(
                f"{source}: the file holds {len(weighted)} layers with weights; load it into "
                "the matching Sequential (fastgru.io.load_keras builds it for you)."
            )
        arrays = _layer_arrays(model, group[weighted[0]], "layers/" + weighted[0])
    else:
        arrays = _layer_arrays(model, root, "")
    _assign(model, arrays, source)


def _has_arrays(group) -> bool:
    found = []
    group.visititems(lambda name, obj: found.append(name) if hasattr(obj, "shape") else None)
    return bool(found)


def load_keras(path):
    """A fastgru model equal to the Keras model saved in ``path``: a Keras 3 ``.keras``
    archive (``config.json`` + ``model.weights.h5``) or a legacy HDF5 model file (Keras 2 /
    tf.keras ``model.save("m.h5")``)."""
    if not zipfile.is_zipfile(path):
        h5py = _h5py()
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(f"{path}: neither a .keras archive nor an HDF5 file ({e}).") from e
        with f:
            if "model_config" not in f.attrs:
                raise ValueError(
                    f"{path}: holds weights only (no model config). Build the model and call "
                    "fastgru.io.load_keras_weights(model, path)."
                )
            model = model_from_keras_config(_text(f.attrs["model_config"]))
            if not model.built:
                raise ValueError(f"{path}: the config records no input shape; build "
                                 "model_from_keras_config(...) and call load_keras_weights.")
            _load_from_group(model, f, os.fspath(path))
        return model
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if "config.json" not in names or "model.weights.h5" not in names:
            raise ValueError(f"{path}: a .keras archive needs config.json and "
                             f"model.weights.h5; found {sorted(names)}")
        config = json.loads(z.read("config.json"))
        data = z.read("model.weights.h5")
    model = model_from_keras_config(config)
    if not model.built:
        raise ValueError(
            f"{path}: the config records no input shape, so the model cannot be built; build "
            "model_from_keras_config(...) yourself and call load_keras_weights."
        )
    h5py = _h5py()
    with h5py.File(_io.BytesIO(data), "r") as f:
        _load_from_group(model, f, os.fspath(path))
    return model
