"""Keras 3 interop: .keras / .weights.h5 files written by real Keras, configs, outputs.

The files and the reference outputs come from Keras itself (``KERAS_SCRIPT`` below, run in a
subprocess with the TensorFlow backend when installed, else torch or jax, so that Keras's
backend choice stays out of the test process); the whole module skips when Keras or h5py is
absent.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastgru.io import load_keras, load_keras_weights, model_from_keras_config, serialize_layer
from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential

pytest.importorskip("h5py")
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)

BACKEND = next((b for b, mod in (("tensorflow", "tensorflow"), ("torch", "torch"),
                                 ("jax", "jax")) if importlib.util.find_spec(mod)), None)
if BACKEND is None:
    pytest.skip("no Keras backend installed", allow_module_level=True)

# Builds Keras models, saves them as .keras / .weights.h5 files, writes Keras's outputs to
# expected.npz and the layer configs to configs.json in the folder given as argv[1].
KERAS_SCRIPT = r'''
import json
import os
import sys

import numpy as np

out = sys.argv[1]
import keras  # noqa: E402
from keras import layers as L  # noqa: E402

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 5, 4)).astype("float32")
lens = np.array([5, 3, 1])
mask = np.arange(5)[None, :] < lens[:, None]
expected, configs = {"x": x, "mask": mask}, {}


def randomize(model):
    # non-trivial biases (Keras initialises them to zero)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])


# 1. a Sequential with every supported layer kind, saved both ways
seq = keras.Sequential([
    keras.Input((5, 4)),
    L.GRU(4, return_sequences=True),
    L.Bidirectional(L.GRU(2, reset_after=False, return_sequences=True)),
    L.RNN([L.GRUCell(3), L.GRUCell(2, activation="relu")], return_sequences=True),
    L.GRU(3, go_backwards=True, recurrent_activation="hard_sigmoid", use_bias=False),
    L.Dense(2, activation="softmax"),
])
randomize(seq)
seq.save(os.path.join(out, "seq.keras"))
seq.save_weights(os.path.join(out, "seq.weights.h5"))
seq.save(os.path.join(out, "seq_legacy.h5"))  # Keras 3's legacy HDF5 export
expected["seq"] = keras.ops.convert_to_numpy(seq(x))
expected["seq_masked"] = keras.ops.convert_to_numpy(seq(x, mask=mask))

# 2. a Functional chain
inp = keras.Input((5, 4))
h = L.Bidirectional(L.GRU(3), merge_mode="sum")(inp)
fun = keras.Model(inp, L.Dense(2, activation="tanh")(h))
randomize(fun)
fun.save(os.path.join(out, "fun.keras"))
expected["fun"] = keras.ops.convert_to_numpy(fun(x))

# 3. Bidirectional layers called directly: merge modes, masks, states, initial states
for mode in ("concat", "sum", "mul", "ave", None):
    for rs in (True, False):
        name = f"bi_{mode}_{int(rs)}"
        layer = L.Bidirectional(L.GRU(3, return_sequences=rs, return_state=True),
                                merge_mode=mode)
        h0 = [rng.normal(size=(3, 3)).astype("float32") for _ in range(2)]
        res = layer(x, initial_state=h0, mask=mask)
        randomize(layer)
        res = layer(x, initial_state=h0, mask=mask)
        configs[name] = layer.get_config()
        expected[name + "/weights"] = np.array(len(layer.get_weights()))
        for i, w in enumerate(layer.get_weights()):
            expected[f"{name}/w{i}"] = w
        expected[name + "/h0f"], expected[name + "/h0b"] = h0
        for i, r in enumerate(res):
            expected[f"{name}/out{i}"] = keras.ops.convert_to_numpy(r)
        expected[name + "/n_out"] = np.array(len(res))

# 4. fastgru -> Keras: a config written by fastgru, deserialised by Keras
with open(os.path.join(out, "fastgru_config.json")) as f:
    fg = keras.saving.deserialize_keras_object(json.load(f))
with np.load(os.path.join(out, "fastgru.npz")) as f:
    fg.set_weights([f[f"w{i}"] for i in range(len(fg.weights))])
    expected["from_fastgru"] = keras.ops.convert_to_numpy(fg(f["x"], mask=f["mask"]))

# 5. layer names that point at other layers: Keras matches a weights file by position
names = keras.Sequential([keras.Input((5, 3)), L.GRU(3, return_sequences=True, name="second"),
                          L.GRU(3, name="first")])
randomize(names)
names.save_weights(os.path.join(out, "names.weights.h5"))
expected["names"] = keras.ops.convert_to_numpy(names(x[:, :, :3]))

np.savez(os.path.join(out, "expected.npz"), **expected)
with open(os.path.join(out, "configs.json"), "w") as f:
    json.dump(configs, f)
print("ok", keras.__version__, keras.backend.backend())
'''

# Keras 2 (tf_keras): legacy HDF5 model and weights files.
KERAS2_SCRIPT = r'''
import os
import sys

import numpy as np
import tf_keras as k

out = sys.argv[1]
rng = np.random.default_rng(1)
m = k.Sequential([
    k.layers.GRU(4, return_sequences=True, input_shape=(5, 3)),
    k.layers.Bidirectional(k.layers.GRU(2, reset_after=False, return_sequences=True),
                           merge_mode="ave"),
    k.layers.GRU(3, go_backwards=True),
    k.layers.Dense(2, activation="tanh"),
])
m.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in m.get_weights()])
x = rng.normal(size=(2, 5, 3)).astype("float32")
m.save(os.path.join(out, "k2.h5"))
m.save_weights(os.path.join(out, "k2.weights.h5"))
inp = k.Input((5, 3))  # a Functional chain (Keras 2's inbound_nodes / batch_input_shape)
fun = k.Model(inp, k.layers.Dense(2)(k.layers.Bidirectional(k.layers.GRU(2))(
    k.layers.GRU(4, return_sequences=True)(inp))))
fun.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                 for w in fun.get_weights()])
fun.save(os.path.join(out, "k2_fun.h5"))
np.savez(os.path.join(out, "k2.npz"), x=x, y=m(x).numpy(), fun=fun(x).numpy())
'''

HAVE_KERAS2 = importlib.util.find_spec("tf_keras") is not None
TOL = dict(rtol=2e-5, atol=2e-6)  # float32 rounding (different summation orders)


def _fastgru_model():
    return Sequential([Sequential([GRU(4, return_sequences=True),  # nested: keras.Sequential
                                   Bidirectional(GRU(2, reset_after=False,
                                                     return_sequences=True),
                                                 merge_mode="mul")]),
                       RNN([GRUCell(3), GRUCell(2)], return_sequences=True),
                       GRU(2, go_backwards=True), Dense(2, activation="softmax")])


@pytest.fixture(scope="module")
def kdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras")
    # a fastgru model for Keras to read back (test_fastgru_config_loads_in_keras)
    model = _fastgru_model()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.arange(5)[None, :] < np.array([5, 2, 4])[:, None]
    model.build(x.shape)
    weights = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.weights]
    model.set_weights(weights)
    (out / "fastgru_config.json").write_text(json.dumps(serialize_layer(model)))
    np.savez(out / "fastgru.npz", x=x, mask=mask, y=model(x, mask=mask),
             **{f"w{i}": w for i, w in enumerate(weights)})
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    script = KERAS_SCRIPT + (KERAS2_SCRIPT if HAVE_KERAS2 else "")  # one process: one import
    res = subprocess.run([sys.executable, "-c", script, str(out)], env=env,
                         capture_output=True,
                         text=True, timeout=300)
    if res.returncode != 0:
        pytest.fail(f"Keras fixture generation failed:\n{res.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def k2dir(kdir):
    if not HAVE_KERAS2:
        pytest.skip("tf_keras (Keras 2) is not installed")
    return kdir


@pytest.fixture(scope="module")
def expected(kdir):
    with np.load(kdir / "expected.npz") as f:
        return {k: f[k] for k in f.files}


def test_load_keras_sequential_matches_keras(kdir, expected):
    model = load_keras(kdir / "seq.keras")
    assert isinstance(model, Sequential)
    assert [type(layer).__name__ for layer in model.layers] == [
        "GRU", "Bidirectional", "RNN", "GRU", "Dense"]
    np.testing.assert_allclose(model(expected["x"]), expected["seq"], **TOL)


def test_load_keras_sequential_with_mask_propagation(kdir, expected):
    model = load_keras(kdir / "seq.keras")
    np.testing.assert_allclose(model(expected["x"], mask=expected["mask"]),
                               expected["seq_masked"], **TOL)


def test_weights_h5_into_model_from_config(kdir, expected):
    with __import__("zipfile").ZipFile(kdir / "seq.keras") as z:
        config = json.loads(z.read("config.json"))
    model = model_from_keras_config(config)
    assert model.built
    before = model(expected["x"])
    load_keras_weights(model, kdir / "seq.weights.h5")
    after = model(expected["x"])
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected["seq"], **TOL)
    # the .keras archive itself is also accepted by load_keras_weights
    load_keras_weights(model, kdir / "seq.keras")
    np.testing.assert_allclose(model(expected["x"]), expected["seq"], **TOL)


def test_load_keras_functional_chain(kdir, expected):
    model = load_keras(kdir / "fun.keras")
    assert [type(layer).__name__ for layer in model.layers] == ["Bidirectional", "Dense"]
    assert model.layers[0].merge_mode == "sum"
    np.testing.assert_allclose(model(expected["x"]), expected["fun"], **TOL)


def test_weights_go_by_position_not_by_recorded_names(kdir, expected):
    # the file's first GRU is named "second" and its second "first" (as auto-numbered names
    # from another session can be): the weights still go by position, as in Keras
    model = Sequential([GRU(3, return_sequences=True, name="first"), GRU(3, name="second")])
    model.build((None, 5, 3))
    load_keras_weights(model, kdir / "names.weights.h5")
    np.testing.assert_allclose(model(expected["x"][:, :, :3]), expected["names"], **TOL)


def test_weight_count_mismatch_is_a_clear_error(kdir):
    model = Sequential([GRU(4, return_sequences=True), GRU(3)])
    model.build((None, 5, 4))
    with pytest.raises(ValueError, match="no group|weight"):
        load_keras_weights(model, kdir / "seq.weights.h5")


def test_weights_h5_needs_load_keras_weights(kdir):
    with pytest.raises(ValueError, match="load_keras_weights"):
        load_keras(kdir / "seq.weights.h5")


def test_fastgru_config_loads_in_keras(kdir, expected):
    """The other direction: Keras deserialises fastgru's config and, given fastgru's
    weights, computes fastgru's outputs (masks included)."""
    with np.load(kdir / "fastgru.npz") as f:
        np.testing.assert_allclose(expected["from_fastgru"], f["y"], **TOL)


def test_keras3_legacy_h5(kdir, expected):
    model = load_keras(kdir / "seq_legacy.h5")
    np.testing.assert_allclose(model(expected["x"]), expected["seq"], **TOL)


def test_keras2_h5_model_and_weights(k2dir):
    with np.load(k2dir / "k2.npz") as f:
        x, y = f["x"], f["y"]
    model = load_keras(k2dir / "k2.h5")
    assert [type(layer).__name__ for layer in model.layers] == [
        "GRU", "Bidirectional", "GRU", "Dense"]
    np.testing.assert_allclose(model(x), y, **TOL)
    # weights-only legacy file into a model built by hand (layer names differ: by order)
    fresh = Sequential([GRU(4, return_sequences=True),
                        Bidirectional(GRU(2, reset_after=False, return_sequences=True),
                                      merge_mode="ave"),
                        GRU(3, go_backwards=True), Dense(2, activation="tanh")])
    fresh.build((None, 5, 3))
    load_keras_weights(fresh, k2dir / "k2.weights.h5")
    np.testing.assert_allclose(fresh(x), y, **TOL)
    with np.load(k2dir / "k2.npz") as f:
        np.testing.assert_allclose(load_keras(k2dir / "k2_fun.h5")(x), f["fun"], **TOL)


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("rs", [True, False])
def test_bidirectional_matches_keras(kdir, expected, mode, rs):
    """Keras config -> fastgru Bidirectional: masks, initial states, return_state, merges."""
    name = f"bi_{mode}_{int(rs)}"
    cfg = json.loads((kdir / "configs.json").read_text())[name]
    layer = Bidirectional.from_config(cfg)
    assert layer.forward_layer.name.startswith("forward_")
    assert layer.backward_layer.go_backwards and not layer.forward_layer.go_backwards
    layer.build((None, 5, 4))
    n = int(expected[name + "/weights"])
    layer.set_weights([expected[f"{name}/w{i}"] for i in range(n)])
    res = layer(expected["x"], initial_state=[expected[name + "/h0f"], expected[name + "/h0b"]],
                mask=expected["mask"])
    assert len(res) == int(expected[name + "/n_out"])
    for i, r in enumerate(res):
        np.testing.assert_allclose(r, expected[f"{name}/out{i}"], **TOL)


@pytest.mark.parametrize("config,err,match", [
    (None, TypeError, r"Argument `config` must be a Keras model config.*received NoneType"),
    ([1, 2], TypeError, r"Argument `config` must be a Keras model config.*received list"),
    ('"GRU"', TypeError, r"Argument `config` must be a Keras model config.*received str"),
    ("GRU", ValueError, r"Argument `config` was given as str but is not the JSON text"),
    (b"\xff", ValueError, r"Argument `config` was given as bytes but is not the JSON text"),
], ids=["None", "list", "json-str", "not-json", "not-utf8"])
def test_model_from_keras_config_names_a_config_that_is_not_one(config, err, match):
    """None gave "argument of type 'NoneType' is not iterable", 'GRU' a bare JSONDecodeError."""
    with pytest.raises(err, match=match):
        model_from_keras_config(config)
