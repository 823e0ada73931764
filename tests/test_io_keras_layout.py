"""Keras weight files written by hand with h5py in Keras 3's layout (as observed in files
written by Keras 3.15, see fastgru/io/_keras.py), so the reader is tested without Keras
installed; tests/test_io_keras.py checks real Keras files."""

import copy
import sys

import numpy as np
import pytest

from fastgru.io import load_keras_weights, model_from_keras_config
from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential

try:
    import h5py
except ImportError:  # the ImportError test still runs
    h5py = None
needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py is not installed")

rng = np.random.default_rng(2)


def test_missing_h5py_is_a_clear_import_error(monkeypatch, tmp_path):
    model = Dense(2)
    model.build((None, 3))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_keras_weights(model, tmp_path / "x.weights.h5")


def _vars(f, path, arrays, name):
    g = f.create_group(path + "/vars")
    g.attrs["name"] = name
    for i, a in enumerate(arrays):
        g.create_dataset(str(i), data=a)


@needs_h5py
def test_hand_written_sequential_layout(tmp_path):
    model = Sequential([GRU(3, return_sequences=True, name="enc"),
                        Bidirectional(GRU(2, return_sequences=True, reset_after=False)),
                        RNN([GRUCell(2), GRUCell(2)], return_sequences=True),
                        GRU(2, name="gru_b"), Dense(1)])
    model.build((None, 4, 2))
    ws = [rng.normal(size=w.shape).astype(np.float32) for w in model.weights]
    path = tmp_path / "m.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "sequential"
        _vars(f, "layers/gru", [], "enc")
        _vars(f, "layers/gru/cell", ws[0:3], "gru_cell")
        _vars(f, "layers/bidirectional", [], "bidirectional")
        _vars(f, "layers/bidirectional/forward_layer/cell", ws[3:6], "gru_cell")
        _vars(f, "layers/bidirectional/backward_layer/cell", ws[6:9], "gru_cell")
        _vars(f, "layers/rnn", [], "rnn")
        _vars(f, "layers/rnn/cell", [], "stacked_rnn_cells")
        _vars(f, "layers/rnn/cell/cells/gru_cell", ws[9:12], "gru_cell")
        _vars(f, "layers/rnn/cell/cells/gru_cell_1", ws[12:15], "gru_cell_1")
        _vars(f, "layers/gru_1", [], "gru_b")  # second GRU: class-name key gru_1
        _vars(f, "layers/gru_1/cell", ws[15:18], "gru_cell")
        _vars(f, "layers/dense", ws[18:20], "dense")
    load_keras_weights(model, path)
    for a, b in zip(model.get_weights(), ws, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_h5py
def test_single_layer_from_a_one_layer_file(tmp_path):
    gru = GRU(2)
    gru.build((None, None, 3))
    ws = [rng.normal(size=w.shape).astype(np.float32) for w in gru.weights]
    path = tmp_path / "g.weights.h5"
    with h5py.File(path, "w") as f:
        _vars(f, "layers/input_layer", [], "input_layer")
        _vars(f, "layers/gru", [], "gru")
        _vars(f, "layers/gru/cell", ws, "gru_cell")
    load_keras_weights(gru, path)
    for a, b in zip(gru.get_weights(), ws, strict=True):
        np.testing.assert_array_equal(a, b)
    wrong = GRU(3)
    wrong.build((None, None, 3))
    with pytest.raises(ValueError, match="shape"):
        load_keras_weights(wrong, path)


def test_config_only_keras_dicts():
    cfg = {"module": "keras", "class_name": "Sequential", "config": {
        "name": "s", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"},
                  "registered_name": None},
        "layers": [
            {"module": "keras.layers", "class_name": "InputLayer",
             "config": {"batch_shape": [None, 6, 3], "dtype": "float32", "name": "in"}},
            {"module": "keras.layers", "class_name": "Bidirectional", "config": {
                "name": "bidirectional", "merge_mode": "mul",
                "layer": {"module": "keras.layers", "class_name": "GRU",
                          "config": {"name": "forward_gru", "units": 2,
                                     "return_sequences": True}},
                "backward_layer": {"module": "keras.layers", "class_name": "GRU",
                                   "config": {"name": "backward_gru", "units": 2,
                                              "return_sequences": True, "go_backwards": True}}}},
            {"module": "keras.layers", "class_name": "Dense",
             "config": {"name": "dense", "units": 1, "activation": "sigmoid"}},
        ]}}
    model = model_from_keras_config(cfg)
    assert model.built and model.layers[0].merge_mode == "mul"
    assert model(np.zeros((2, 6, 3), np.float32)).shape == (2, 6, 1)
    with pytest.raises(ValueError, match="Unsupported layer class 'Lambda'"):
        model_from_keras_config({"class_name": "Lambda", "config": {}})
    bad = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Conv1D", "config": {}}]}}
    with pytest.raises(ValueError, match="Conv1D"):
        model_from_keras_config(bad)


def test_keras2_functional_config():
    """A Functional chain as Keras 2 (tf.keras) writes it: inbound_nodes as nested lists
    [[[name, node, tensor, kwargs]]] and the input's batch_input_shape (abridged from a
    tf_keras 2.21 file; tests/test_io_keras.py loads real ones where tf_keras is installed)."""
    def layer(cls, name, inbound, **config):
        return {"class_name": cls, "name": name, "inbound_nodes": inbound,
                "config": {"name": name, **config}}

    cfg = {"class_name": "Functional", "config": {"name": "model", "layers": [
        layer("InputLayer", "input_1", [], batch_input_shape=[None, 5, 3], dtype="float32"),
        layer("GRU", "gru", [[["input_1", 0, 0, {}]]], units=4, return_sequences=True),
        layer("Dense", "dense", [[["gru", 0, 0, {}]]], units=2),
    ], "input_layers": [["input_1", 0, 0]], "output_layers": [["dense", 0, 0]]}}
    model = model_from_keras_config(cfg)
    assert [type(m).__name__ for m in model.layers] == ["GRU", "Dense"]
    assert model.built and model(np.zeros((2, 5, 3), np.float32)).shape == (2, 5, 2)
    branchy = copy.deepcopy(cfg)
    branchy["config"]["layers"][2]["inbound_nodes"] = [[["input_1", 0, 0, {}]]]
    with pytest.raises(ValueError, match="single chain"):
        model_from_keras_config(branchy)


@needs_h5py
def test_keras_vars_are_read_in_numeric_order():
    """vars/0 ... vars/11 in numeric order, not as strings sort (0, 1, 10, 11, 2, ...)."""
    import io

    from fastgru.io._keras import _vars

    with h5py.File(io.BytesIO(), "w") as f:
        for i in range(12):
            f.create_dataset(f"layer/vars/{i}", data=np.full(1, i))
        assert [int(a[0]) for a in _vars(f["layer"])] == list(range(12))
