"""fastgru's own .npz format: bit-for-bit round trips, and refusal of damaged files."""

import io
import json

import numpy as np
import pytest

from fastgru.io import FORMAT, load, save
from fastgru.io._native import _digest
from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential

rng = np.random.default_rng(11)


MODELS = {
    "gru": lambda: GRU(4, return_sequences=True, go_backwards=True, reset_after=False,
                       kernel_regularizer="l2", recurrent_constraint="non_neg"),
    "gru64": lambda: GRU(3, dtype="float64", activation="relu", use_bias=False, dropout=0.2,
                         seed=5),
    "gru_time_major": lambda: GRU(3, time_major=True, return_state=True),
    "rnn": lambda: RNN([GRUCell(4), GRUCell(2, recurrent_activation="hard_sigmoid")],
                       return_sequences=True),
    "bi": lambda: Bidirectional(GRU(3, return_sequences=True), merge_mode="ave"),
    "bi_custom": lambda: Bidirectional(GRU(3), backward_layer=GRU(2, go_backwards=True)),
    "dense": lambda: Dense(3, activation="softmax", kernel_regularizer="l1"),
    "seq": lambda: Sequential([Bidirectional(GRU(3, return_sequences=True)),
                               RNN([GRUCell(3), GRUCell(3)], return_sequences=True),
                               Sequential([GRU(2), Dense(1, activation="sigmoid")])]),
}


def _input(name):
    if name == "dense":
        return rng.normal(size=(2, 4))
    if name == "gru_time_major":
        return rng.normal(size=(5, 2, 4))
    return rng.normal(size=(2, 5, 4))


def _flat(y):
    if isinstance(y, (list, tuple)):
        return [leaf for item in y for leaf in _flat(item)]
    return [y]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_bit_for_bit(name, tmp_path):
    model = MODELS[name]()
    x = _input(name)
    model(x)  # build
    model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
    path = tmp_path / "model.fastgru"  # any file name: nothing is appended
    save(model, path)
    assert path.exists()
    back = load(path)
    assert type(back) is type(model)
    assert back.get_config() == model.get_config()
    for a, b in zip(back.get_weights(), model.get_weights(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert [w.name.rsplit("/", 1)[1] for w in back.weights] == \
        [w.name.rsplit("/", 1)[1] for w in model.weights]
    for a, b in zip(_flat(back(x)), _flat(model(x)), strict=True):
        assert a.tobytes() == b.tobytes()


def test_stateful_gru_keeps_its_batch_size(tmp_path):
    model = GRU(3, stateful=True)
    x = rng.normal(size=(4, 5, 2))
    model(x)
    save(model, tmp_path / "s.npz")
    back = load(tmp_path / "s.npz")
    assert back.stateful and back.built
    assert back.states is not None and back.states[0].shape == (4, 3)
    assert back(x).shape == (4, 3)
    with pytest.raises(ValueError):
        back(rng.normal(size=(3, 5, 2)))


def test_stateful_time_major_gru(tmp_path):
    model = GRU(2, stateful=True, time_major=True)
    x = rng.normal(size=(5, 3, 2))
    model(x)
    save(model, tmp_path / "s.npz")
    back = load(tmp_path / "s.npz")
    assert back.states[0].shape == (3, 2)
    np.testing.assert_array_equal(back.get_weights()[0], model.get_weights()[0])


def test_unbuilt_model_saves_its_config(tmp_path):
    save(Sequential([GRU(2), Dense(1)]), tmp_path / "u.npz")
    back = load(tmp_path / "u.npz")
    assert not back.built and [type(lay).__name__ for lay in back.layers] == ["GRU", "Dense"]


def test_file_objects(tmp_path):
    model = Dense(2)
    model.build((None, 3))
    buf = io.BytesIO()
    save(model, buf)
    buf.seek(0)
    back = load(buf)
    np.testing.assert_array_equal(back.get_weights()[0], model.get_weights()[0])


def _saved(tmp_path):
    model = GRU(3)
    model.build((None, None, 2))
    path = tmp_path / "m.npz"
    save(model, path)
    with np.load(path, allow_pickle=False) as f:
        return path, {k: f[k] for k in f.files}


def test_tampered_weights_are_refused(tmp_path):
    path, arrays = _saved(tmp_path)
    arrays["w00001"] = arrays["w00001"].copy()
    arrays["w00001"].flat[0] += 1e-3
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="digest mismatch"):
        load(path)


def test_tampered_config_is_refused(tmp_path):
    path, arrays = _saved(tmp_path)
    meta = json.loads(arrays["__fastgru_meta__"].tobytes())
    meta["model"]["config"]["activation"] = "relu"
    arrays["__fastgru_meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="digest mismatch"):
        load(path)


def test_unknown_class_is_refused_even_with_a_valid_digest(tmp_path):
    path, arrays = _saved(tmp_path)
    meta = json.loads(arrays["__fastgru_meta__"].tobytes())
    meta["model"]["class_name"] = "Lambda"
    mb = json.dumps(meta).encode()
    weights = [arrays[f"w{i:05d}"] for i in range(3)]
    arrays["__fastgru_meta__"] = np.frombuffer(mb, np.uint8)
    arrays["__fastgru_digest__"] = np.frombuffer(_digest(mb, weights).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="Unsupported layer class 'Lambda'"):
        load(path)


def test_truncated_file_is_refused(tmp_path):
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable fastgru model file"):
            load(path)


def test_foreign_npz_and_wrong_version(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no fastgru header"):
        load(tmp_path / "other.npz")
    path, arrays = _saved(tmp_path)
    meta = json.loads(arrays["__fastgru_meta__"].tobytes())
    assert meta["format"] == FORMAT
    meta["version"] = 99
    arrays["__fastgru_meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="version 99"):
        load(path)


def test_other_files_are_refused_with_value_errors(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"a single NumPy array \(.npy\)"):
        load(tmp_path / "plain.npy")
    for meta in ([1, 2], {"weights": 3}):  # JSON, but not a header object
        np.savez(tmp_path / "m.npz", __fastgru_digest__=np.zeros(3, np.uint8),
                 __fastgru_meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        with pytest.raises(ValueError, match="not a fastgru header object"):
            load(tmp_path / "m.npz")
    with pytest.raises(FileNotFoundError):  # no file is not a damaged file
        load(tmp_path / "missing.npz")


def test_a_container_of_built_layers_must_be_built_to_save(tmp_path):
    gru = GRU(3)
    gru.build((None, None, 4))  # e.g. a layer from fastgru.io.from_torch
    model = Sequential([gru, Dense(2)])
    with pytest.raises(ValueError, match=r"not built.*model.build\(\(None, None, 4\)\)"):
        save(model, tmp_path / "s.npz")
    model.build((None, None, 4))
    save(model, tmp_path / "s.npz")
    x = rng.normal(size=(2, 5, 4))
    np.testing.assert_array_equal(load(tmp_path / "s.npz")(x), model(x))


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __fastgru_meta__=np.array([{"x": 1}], dtype=object),
             __fastgru_digest__=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="not a readable fastgru model file"):
        load(path)


def test_python_callables_cannot_be_saved(tmp_path):
    model = Dense(2, activation=lambda a: a * 2)
    with pytest.raises(ValueError, match="not plain JSON"):
        save(model, tmp_path / "x.npz")


def test_user_classes_keep_their_batch_size_config():
    """Keras 2 build hints are dropped from our layers' configs on loading, never from a
    user class's own (its batch_size is its business)."""
    from fastgru import _serialization

    class Batched:
        def __init__(self, batch_size=32):
            self.batch_size = batch_size

        def get_config(self):
            return {"batch_size": self.batch_size}

        @classmethod
        def from_config(cls, cfg):
            return cls(**cfg)

    obj = _serialization.deserialize(_serialization.serialize(Batched(7)),
                                     custom_objects={"Batched": Batched})
    assert obj.batch_size == 7
