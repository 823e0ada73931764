"""GRU/GRUCell/RNN construction: defaults, validation messages, weights, get/set_weights and
get_config/from_config (KERAS_GRU_SPEC.md sections 2 and 4)."""

import json

import numpy as np
import pytest

import fastgru
from fastgru import GRU, RNN, GRUCell

GRU_KEYS = [
    "name", "trainable", "dtype", "return_sequences", "return_state", "go_backwards",
    "stateful", "unroll", "zero_output_for_mask", "units", "activation",
    "recurrent_activation", "use_bias", "kernel_initializer", "recurrent_initializer",
    "bias_initializer", "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
    "activity_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint",
    "dropout", "recurrent_dropout", "reset_after", "seed"]
CELL_KEYS = [
    "name", "trainable", "dtype", "units", "activation", "recurrent_activation", "use_bias",
    "kernel_initializer", "recurrent_initializer", "bias_initializer", "kernel_regularizer",
    "recurrent_regularizer", "bias_regularizer", "kernel_constraint", "recurrent_constraint",
    "bias_constraint", "dropout", "recurrent_dropout", "reset_after", "seed"]


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("units", [0, -3])
def test_units_nonpositive(units):
    msg = ("Received an invalid value for argument `units`, expected a positive integer, "
           f"got {units}.")
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        GRUCell(units)
    with pytest.raises(ValueError, match="expected a positive integer"):
        GRU(units)


def test_units_float_raises_at_construction_and_type_errors():
    with pytest.raises(ValueError, match="`units`.*got 2.5"):
        GRU(2.5)
    with pytest.raises(TypeError, match="`units`"):
        GRU(None)
    with pytest.raises(TypeError, match="`units`"):
        GRUCell("4")
    assert GRU(np.int64(3)).units == 3


@pytest.mark.parametrize("arg", ["dropout", "recurrent_dropout"])
def test_dropout_range(arg):
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=f"`{arg}` must be a float in \\[0, 1\\]"):
            GRU(2, **{arg: bad})
    with pytest.raises(TypeError, match=f"`{arg}`"):
        GRU(2, **{arg: "0.1"})
    assert getattr(GRU(2, **{arg: 1}), arg) == 1.0


def test_use_cudnn_validation():
    msg = ("Invalid valid received for argument `use_cudnn`. Expected one of "
           "{'auto', True, False}. Received: use_cudnn=yes")
    with pytest.raises(ValueError) as e:
        GRU(2, use_cudnn="yes")
    assert str(e.value) == msg
    for ok in ("auto", True, False, 1, 0, 1.0):
        assert GRU(2, use_cudnn=ok).use_cudnn == ok
    assert "use_cudnn" not in GRU(2, use_cudnn=False).get_config()


def test_unknown_kwargs_and_activation():
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments passed to GRU: "
                                         r"\{'foo': 1\}"):
        GRU(2, foo=1)
    with pytest.raises(ValueError, match="Unrecognized keyword arguments passed to GRUCell"):
        GRUCell(2, foo=1)
    with pytest.raises(ValueError, match="Could not interpret activation function identifier: "
                                         "nope"):
        GRU(2, activation="nope")
    assert GRU(2, activation=None).activation.name == "linear"


def test_shape_kwargs_as_in_keras_3():
    # Keras 2's batch_input_shape / batch_size are refused (a stateful layer given one would
    # stay unbuilt); input_shape / input_dim warn and build nothing
    for kw in ({"batch_input_shape": (2, 5, 3)}, {"batch_size": 2}):
        with pytest.raises(ValueError, match="Unrecognized keyword arguments passed to GRU"):
            GRU(2, stateful=True, **kw)
    for kw in ({"input_shape": (5, 3)}, {"input_dim": 3}):
        with pytest.warns(UserWarning, match="Do not pass an `input_shape`/`input_dim`"):
            assert not GRU(2, **kw).built
    # ... but a Keras 2 config that records batch_input_shape still reads back
    from fastgru import _serialization

    cfg = {"class_name": "GRU", "config": {**GRU(2, name="g").get_config(),
                                           "batch_input_shape": [None, 5, 3]}}
    assert _serialization.deserialize(cfg).name == "g"


def test_dtype_validation():
    assert GRU(2).dtype == np.float32
    assert GRU(2, dtype="float64").cell.dtype == np.float64
    with pytest.raises(ValueError, match="`dtype`"):
        GRU(2, dtype="float16")
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"},
              "registered_name": None}
    assert GRU(2, dtype=policy).dtype == np.float64


def test_rnn_cell_validation():
    class NoCall:
        state_size = 2

    class NoSize:
        def call(self, x, s):
            return x, s

    class NoneSize(NoSize):
        state_size = None

    class BadSize(NoSize):
        state_size = "x"

    with pytest.raises(ValueError, match="Argument `cell` should have a `call` method"):
        RNN(NoCall())
    with pytest.raises(ValueError, match="should have a `state_size` attribute"):
        RNN(NoSize())
    with pytest.raises(ValueError, match="state_size must be specified as property"):
        RNN(NoneSize())
    with pytest.raises(ValueError, match="state_size must be an integer, or a list/tuple"):
        RNN(BadSize())
    with pytest.raises(ValueError, match="All cells must have a `call` method"):
        RNN([GRUCell(2), NoCall()])
    with pytest.raises(ValueError, match="All cells must have a `state_size` attribute"):
        RNN([GRUCell(2), NoSize()])


# ---------------------------------------------------------------- weights
@pytest.mark.parametrize("reset_after,bias_shape", [(True, (2, 9)), (False, (9,))])
def test_weight_shapes_names_order(reset_after, bias_shape):
    layer = GRU(3, reset_after=reset_after)
    layer.build((None, 5, 4))
    assert [w.shape for w in layer.weights] == [(4, 9), (3, 9), bias_shape]
    name = layer.name
    assert [w.name for w in layer.weights] == [
        f"{name}/gru_cell/kernel", f"{name}/gru_cell/recurrent_kernel", f"{name}/gru_cell/bias"]
    assert len(layer.trainable_weights) == 3 and layer.non_trainable_weights == []
    nb = GRU(3, use_bias=False)
    nb.build((None, 5, 4))
    assert [w.shape for w in nb.weights] == [(4, 9), (3, 9)]


def test_default_initializers_distributions():
    fastgru.set_seed(1)
    layer = GRU(6)
    layer.build((2, 3, 10))
    k, rk, b = layer.get_weights()
    assert np.abs(k).max() <= np.sqrt(6 / (10 + 18))
    np.testing.assert_allclose(rk @ rk.T, np.eye(6), atol=1e-5)  # rows orthonormal over 3u
    assert not np.allclose(rk[:, :6] @ rk[:, :6].T, np.eye(6), atol=1e-3)
    np.testing.assert_array_equal(b, 0)


def test_seeded_initializers_reproduce_weights():
    def make():
        return GRU(3, kernel_initializer=fastgru.initializers.GlorotUniform(seed=5),
                   recurrent_initializer=fastgru.initializers.Orthogonal(seed=6))
    a, b = make(), make()
    a.build((1, 2, 4))
    b.build((1, 2, 4))
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    fastgru.set_seed(11)
    c = GRU(3)
    c.build((1, 2, 4))
    fastgru.set_seed(11)
    d = GRU(3)
    d.build((1, 2, 4))
    np.testing.assert_array_equal(c.get_weights()[0], d.get_weights()[0])


def test_set_weights_messages():
    layer = GRU(3, name="gru_5")
    with pytest.raises(ValueError) as e:
        layer.set_weights([np.zeros((2, 9))] * 3)
    assert "but the layer was expecting 0 weights." in str(e.value)
    layer.build((None, 4, 2))
    with pytest.raises(ValueError) as e:
        layer.set_weights([np.zeros((2, 9))] * 2)
    assert str(e.value) == ("You called `set_weights(weights)` on layer 'gru_5' with a weight "
                            "list of length 2, but the layer was expecting 3 weights.")
    with pytest.raises(ValueError) as e:
        layer.set_weights([np.zeros((9,)), np.zeros((3, 9)), np.zeros((2, 9))])
    assert str(e.value) == ("Layer gru_5 weight shape (2, 9) is not compatible with provided "
                            "weight shape (9,).")
    new = [np.full((2, 9), 0.1), np.full((3, 9), 0.2), np.full((2, 9), 0.3)]
    v0 = layer.cell.kernel.version
    layer.set_weights(new)
    assert layer.cell.kernel.version > v0
    for got, want in zip(layer.get_weights(), new):
        np.testing.assert_allclose(got, want, rtol=1e-7)
        assert got.dtype == np.float32


def test_properties_forward_to_cell():
    layer = GRU(4, activation="relu", recurrent_dropout=0.2, reset_after=False, seed=3)
    assert layer.units == 4 and layer.activation.name == "relu"
    assert layer.recurrent_activation.name == "sigmoid" and layer.reset_after is False
    assert layer.recurrent_dropout == 0.2 and layer.implementation == 1
    assert layer.cell.name == "gru_cell" and layer.seed == 3
    assert layer.kernel_initializer == fastgru.initializers.GlorotUniform()
    with pytest.raises(AttributeError):
        layer.units = 3
    assert GRU(2, implementation=1).implementation == 1
    assert GRU(2, implementation=0).implementation == 2


def test_auto_names():
    a, b = GRU(2), GRU(2)
    assert a.name.startswith("gru") and b.name != a.name
    assert GRUCell(2).name.startswith("gru_cell")
    assert RNN([GRUCell(2)]).cell.name.startswith("stacked_rnn_cells")


# ---------------------------------------------------------------- config
def test_gru_config_keys_order_and_values():
    cfg = GRU(4, dropout=0.25).get_config()
    assert list(cfg) == GRU_KEYS
    assert cfg["activation"] == "tanh" and cfg["recurrent_activation"] == "sigmoid"
    assert cfg["dtype"] == {"module": "keras", "class_name": "DTypePolicy",
                            "config": {"name": "float32"}, "registered_name": None}
    assert cfg["kernel_initializer"] == {
        "module": "keras.initializers", "class_name": "GlorotUniform",
        "config": {"seed": None, "input_axes": None, "output_axes": None},
        "registered_name": None}
    assert cfg["recurrent_initializer"]["config"] == {"seed": None, "gain": 1.0}
    assert cfg["bias_initializer"]["class_name"] == "Zeros"
    assert cfg["bias_initializer"]["config"] == {}
    assert cfg["dropout"] == 0.25 and cfg["seed"] is None
    assert GRU(2, activation=None).get_config()["activation"] == "linear"
    assert list(GRUCell(3).get_config()) == CELL_KEYS
    assert GRU(2, time_major=True).get_config()["time_major"] is True


def test_config_round_trip_everything():
    layer = GRU(3, activation="relu", recurrent_activation="hard_sigmoid", use_bias=True,
                kernel_regularizer="l2", recurrent_regularizer=fastgru.regularizers.L1(0.2),
                bias_regularizer="l1", activity_regularizer="l2", kernel_constraint="max_norm",
                recurrent_constraint="unit_norm", bias_constraint="non_neg", dropout=0.1,
                recurrent_dropout=0.2, seed=9, return_sequences=True, return_state=True,
                go_backwards=True, stateful=True, unroll=True, reset_after=False,
                zero_output_for_mask=True, time_major=True, dtype="float64", name="my_gru")
    cfg = layer.get_config()
    clone = GRU.from_config(cfg)
    assert clone.get_config() == cfg
    assert clone.name == "my_gru" and clone.dtype == np.float64 and clone.time_major


def test_cell_and_rnn_config_round_trip():
    cell = GRUCell(3, dropout=0.1, seed=2, name="c0")
    assert GRUCell.from_config(cell.get_config()).get_config() == cell.get_config()
    rnn = RNN(GRUCell(3), return_sequences=True)
    cfg = rnn.get_config()
    assert list(cfg) == ["name", "trainable", "dtype", "return_sequences", "return_state",
                         "go_backwards", "stateful", "unroll", "zero_output_for_mask", "cell"]
    assert cfg["cell"]["class_name"] == "GRUCell" and cfg["cell"]["module"] == "keras.layers"
    assert RNN.from_config(cfg).get_config() == cfg
    stacked = RNN([GRUCell(3), GRUCell(2)])
    scfg = stacked.get_config()
    assert scfg["cell"]["class_name"] == "StackedRNNCells"
    assert [c["config"]["units"] for c in scfg["cell"]["config"]["cells"]] == [3, 2]
    assert RNN.from_config(scfg).get_config() == scfg


def test_keras_serialized_gru_config_reads_back():
    # What Keras 3.15 writes for GRU(4, kernel_regularizer=L2(0.01), ...) (spec 4.1), plus
    # the legacy `implementation` key.
    cfg = {
        "name": "gru_7", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy",
                  "config": {"name": "float32"}, "registered_name": None},
        "return_sequences": True, "return_state": False, "go_backwards": False,
        "stateful": False, "unroll": False, "zero_output_for_mask": False, "units": 4,
        "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True,
        "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                               "config": {"seed": None}, "registered_name": None},
        "recurrent_initializer": {"module": "keras.initializers", "class_name": "Orthogonal",
                                  "config": {"seed": None, "gain": 1.0},
                                  "registered_name": None},
        "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                             "config": {}, "registered_name": None},
        "kernel_regularizer": {"module": "keras.regularizers", "class_name": "L2",
                               "config": {"l2": 0.01}, "registered_name": None},
        "recurrent_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
        "kernel_constraint": {"module": "keras.constraints", "class_name": "MaxNorm",
                              "config": {"max_value": 2, "axis": 0}, "registered_name": None},
        "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
        "recurrent_dropout": 0.0, "reset_after": True, "seed": None, "implementation": 0,
    }
    layer = GRU.from_config(cfg)
    assert layer.name == "gru_7" and layer.units == 4 and layer.return_sequences
    assert layer.kernel_regularizer == fastgru.regularizers.L2(0.01)
    assert layer.kernel_constraint == fastgru.constraints.MaxNorm(2, 0)
    layer.build((None, 3, 2))
    assert layer.cell.kernel.regularizer == fastgru.regularizers.L2(0.01)
    out = {k: v for k, v in layer.get_config().items()}
    assert list(out) == GRU_KEYS


def test_keras_serialized_rnn_cell_reads_back():
    cell_cfg = GRUCell(5, name="gru_cell").get_config()
    cfg = {"name": "rnn", "trainable": True, "dtype": "float32", "return_sequences": False,
           "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
           "zero_output_for_mask": False,
           "cell": {"module": "keras.layers", "class_name": "GRUCell", "config": cell_cfg,
                    "registered_name": None}}
    layer = RNN.from_config(cfg)
    assert isinstance(layer.cell, GRUCell) and layer.cell.units == 5

    class MyCell:
        state_size = 2

        def __init__(self, units=2):
            self.units = units

        def call(self, x, s):
            return s[0], s

        def get_config(self):
            return {"units": self.units}

        @classmethod
        def from_config(cls, c):
            return cls(**c)

    custom = RNN(MyCell())
    ccfg = custom.get_config()
    with pytest.raises(ValueError, match="custom_objects"):
        RNN.from_config(ccfg)
    assert isinstance(RNN.from_config(ccfg, custom_objects={"MyCell": MyCell}).cell, MyCell)


def test_regularization_losses_and_gradients(rng, fd):
    layer = GRU(3, kernel_regularizer="l2", recurrent_regularizer="l2", bias_regularizer="l1",
                bias_initializer="ones", dtype="float64")
    layer.build((2, 4, 5))
    assert len(layer.losses) == 3
    k, rk, b = (w.value for w in layer.weights)
    assert layer.losses[0] == pytest.approx(0.01 * (k * k).sum())
    assert layer.losses[2] == pytest.approx(0.01 * np.abs(b).sum())
    grads = layer.regularization_gradients()
    assert len(grads) == len(layer.trainable_weights)
    np.testing.assert_allclose(grads[0], fd(lambda: layer.losses[0], k), rtol=1e-6)
    assert GRU(2).regularization_gradients() == []
    g2 = GRU(2, kernel_regularizer="l1")
    g2.build((1, 1, 1))
    assert g2.regularization_gradients()[1] is None


def test_activity_regularizer_per_returned_tensor():
    layer = GRU(2, activity_regularizer="l2", return_state=True,
                kernel_initializer="ones", recurrent_initializer="ones")
    x = np.ones((4, 3, 2), np.float32)
    out, state = layer(x)
    assert len(layer.losses) == 2
    assert layer.losses[0] == pytest.approx(0.01 * float((out * out).sum()) / 4, rel=1e-5)


@pytest.mark.parametrize("shape,why", [
    ((None, None, -3), "Negative dimensions are not allowed"),
    ((-1, 4, 3), "Negative dimensions are not allowed"),
    ((None, None, 3.0), "Found invalid dimension '3.0'"),
    ((None, None, "3"), "Found invalid dimension '3'"),
    ((None, None, np.float32(3.5)), "Found invalid dimension '3.5'"),
    ((None, None, True), "Found invalid dimension 'True'"),
], ids=["negative-features", "negative-batch", "float", "str", "float32", "bool"])
def test_build_refuses_an_invalid_shape_naming_the_argument(shape, why):
    """GRU(4).build((None, None, -3)) gave NumPy's 'negative dimensions are not allowed'; Keras's
    shape rules (each dimension None or an integer >= 0), with the argument named."""
    with pytest.raises(ValueError, match=rf"Cannot convert .* to a shape \(argument "
                                         rf"`sequences_shape` of layer 'g'\)\. {why}"):
        GRU(4, name="g", stateful=shape[0] == -1).build(shape)
    with pytest.raises(ValueError, match=rf"\(argument `input_shape` of GRUCell 'c'\)\. {why}"):
        GRUCell(4, name="c").build((shape[0], shape[2]))


def test_build_takes_numpy_integer_dimensions():
    """NumPy integers and 0-d integer arrays are integers (a shape computed with NumPy)."""
    for dims in ((np.int64(2), np.int32(3), np.int64(4)), (None, np.array(3), np.uint8(4))):
        layer = GRU(5, stateful=dims[0] is not None)
        layer.build(dims)
        assert layer.cell.kernel.shape == (4, 15)
        cell = GRUCell(5)
        cell.build((dims[0], dims[2]))
        assert cell.input_dim == 4
        dense = fastgru.Dense(2)
        dense.build((dims[0], dims[2]))
        assert dense.kernel.shape == (4, 2)
        # kept as Python ints: the configs are JSON (a .keras / .npz file) as with ints
        model = fastgru.Sequential([GRU(5), fastgru.Dense(1)])
        model.build(dims)
        assert type(model._build_input_shape[2]) is int and type(cell.input_dim) is int
        json.dumps(model.get_config())
