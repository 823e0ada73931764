"""Dense and Sequential: values, Keras config/weights, mask propagation, compose, and
gradients against central finite differences (float64)."""

import numpy as np
import pytest
from conftest import central_diff

from fastgru.layers import GRU, Layer
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential, compose

rng = np.random.default_rng(5)


def numeric_grad(loss, arr, eps=1e-6, entries=None):
    return central_diff(loss, arr, eps, entries, rng)


def check_grads(model, x, call_kwargs=None, forward_kwargs=None, rtol=1e-6, atol=1e-8,
                entries=None):
    """Compare backward() with finite differences for the inputs and every trainable weight
    of ``model`` under the loss sum(outputs * R) (``entries``: how many random entries of each
    weight to check; all by default)."""
    call_kwargs = call_kwargs or {}
    y, tape = model.forward(x, **(forward_kwargs or call_kwargs))
    R = rng.normal(size=y.shape)
    grads = model.backward(tape, R)

    def loss():
        return float(np.sum(model(x, **call_kwargs) * R))

    np.testing.assert_allclose(grads.inputs, numeric_grad(loss, x), rtol=rtol, atol=atol)
    assert len(grads.weights) == len(model.trainable_weights)
    for var, g in zip(model.trainable_weights, grads.weights, strict=True):
        num = numeric_grad(loss, var.value, entries=entries)
        checked = ~np.isnan(num)
        np.testing.assert_allclose(g[checked], num[checked], rtol=rtol, atol=atol,
                                   err_msg=var.name)
    return grads


# --------------------------------------------------------------------------- Dense
def test_dense_values_2d_and_3d():
    d = Dense(3, activation="tanh", dtype="float64")
    x2 = rng.normal(size=(4, 5))
    y2 = d(x2)
    k, b = d.get_weights()
    np.testing.assert_allclose(y2, np.tanh(x2 @ k + b), rtol=1e-14)
    x3 = rng.normal(size=(2, 6, 5))
    np.testing.assert_allclose(d(x3), np.tanh(x3 @ k + b), rtol=1e-14)
    assert d(x3).shape == (2, 6, 3)
    assert d.compute_output_shape((None, 6, 5)) == (None, 6, 3)


def test_dense_softmax_and_dtype():
    d = Dense(4, activation="softmax")
    y = d(rng.normal(size=(3, 7)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1, rtol=1e-6)
    assert d.get_config()["activation"] == "softmax"


def _named(fn, name, module):
    fn.__name__, fn.__module__ = name, module
    return fn


def test_keras_activation_functions_map_by_module():
    """keras.activations.* functions map to ours (softmax to Dense's vector activation); other
    Keras functions of the same name do not: keras.ops.gelu defaults to the tanh
    approximation, unlike keras.activations.gelu."""
    from fastgru import activations

    def fake(name, module):
        return _named(lambda a: a, name, module)

    k_softmax = fake("softmax", "keras.src.activations.activations")
    d = Dense(3, activation=k_softmax)
    np.testing.assert_allclose(d(rng.normal(size=(2, 4))).sum(-1), 1, rtol=1e-6)
    assert d.get_config()["activation"] == "softmax"
    assert activations.get(fake("gelu", "keras.src.activations.activations")).name == "gelu"
    ops_gelu = activations.get(fake("gelu", "keras.src.ops.nn"))
    assert ops_gelu.name is None and ops_gelu.code is None  # a user callable
    assert activations.get(fake("tanh", "keras.src.ops.numpy")).name == "tanh"  # same maths


@pytest.mark.parametrize("activation", [None, "tanh", "sigmoid", "softmax", "log_softmax",
                                        "elu", "softplus"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_dense_gradients(activation, shape):
    d = Dense(3, activation=activation, dtype="float64")
    d.build(shape)
    d.set_weights([rng.normal(size=w.shape) for w in d.get_weights()])
    g = check_grads(d, rng.normal(size=shape))
    assert g.names == ["kernel", "bias"] and g.kernel.shape == (4, 3)


def test_dense_no_bias_and_not_trainable():
    d = Dense(2, use_bias=False, dtype="float64")
    x = rng.normal(size=(3, 4))
    d.build(x.shape)
    assert [w.name for w in d.weights] == [d.name + "/kernel"]
    check_grads(d, x)
    d.trainable = False
    y, tape = d.forward(x)
    g = d.backward(tape, np.ones_like(y))
    assert g.weights == [] and d.trainable_weights == []
    np.testing.assert_allclose(g.inputs, np.ones((3, 2)) @ d.get_weights()[0].T)


def test_dense_config_matches_keras_keys_and_round_trips():
    d = Dense(5, activation="relu", kernel_regularizer="l2", bias_constraint="non_neg",
              name="head")
    cfg = d.get_config()
    assert list(cfg) == ["name", "trainable", "dtype", "units", "activation", "use_bias",
                         "kernel_initializer", "bias_initializer", "kernel_regularizer",
                         "bias_regularizer", "kernel_constraint", "bias_constraint",
                         "quantization_config"]
    assert cfg["kernel_regularizer"]["class_name"] == "L2"
    again = Dense.from_config(cfg)
    assert again.get_config() == cfg
    assert "activity_regularizer" in Dense(2, activity_regularizer="l1").get_config()


def test_dense_losses_and_bad_input():
    d = Dense(2, kernel_regularizer="l2", bias_regularizer="l1")
    d.build((None, 3))
    k = d.get_weights()[0]
    assert d.losses == pytest.approx([0.01 * float((k.astype(np.float64) ** 2).sum()), 0.0],
                                     rel=1e-5)
    with pytest.raises(ValueError, match="units"):
        Dense(0)
    with pytest.raises(ValueError, match="units"):
        Dense(2.5)
    with pytest.raises(ValueError, match="3 input features"):
        d(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="rank >= 2"):
        d(np.zeros(3))
    with pytest.raises(ValueError, match="LoRA"):
        Dense(2, lora_rank=4)


# --------------------------------------------------------------------------- Sequential
def _model64():
    return Sequential([GRU(3, return_sequences=True, dtype="float64"),
                       Bidirectional(GRU(2, return_sequences=True, dtype="float64")),
                       GRU(2, go_backwards=True, dtype="float64"),
                       Dense(2, activation="tanh", dtype="float64")])


def test_sequential_is_the_chain_of_its_layers():
    model = _model64()
    x = rng.normal(size=(2, 4, 3))
    y = model(x)
    h = x
    for layer in model.layers:
        h = layer(h)
    np.testing.assert_array_equal(y, h)
    assert model.built and model.compute_output_shape((None, 4, 3)) == (None, 2)
    assert len(model.weights) == 3 + 6 + 3 + 2
    assert model.trainable_weights == [w for lay in model.layers for w in lay.trainable_weights]


def test_sequential_mask_propagation():
    model = _model64()
    x = rng.normal(size=(3, 5, 3))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 0, 1]], bool)
    x[~mask] = np.nan  # masked steps must not matter anywhere in the stack
    y = model(x, mask=mask)
    assert np.isfinite(y).all()
    l0, l1, l2, l3 = model.layers
    manual = l3(l2(l1(l0(x, mask=mask), mask=mask), mask=mask))
    np.testing.assert_allclose(y, manual, rtol=1e-13)
    assert model.compute_mask(x, mask) is None  # the last GRU drops it
    seq_only = Sequential(model.layers[:2])
    assert seq_only.compute_mask(x, mask) is mask


def test_sequential_gradients_with_mask():
    model = _model64()
    x = rng.normal(size=(2, 3, 3))
    model.build(x.shape)
    model.set_weights([rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    g = check_grads(model, x, {"mask": mask}, entries=3)
    assert g.paths == [w.name for w in model.trainable_weights]


def test_shared_layer_gradients_are_summed():
    shared = Dense(3, activation="tanh", dtype="float64")
    model = Sequential([shared, shared, Dense(1, dtype="float64")])
    x = rng.normal(size=(4, 3))
    model.build(x.shape)
    assert len(model.trainable_weights) == 4
    check_grads(model, x)


def test_sequential_weights_config_and_losses():
    model = Sequential([GRU(4, return_sequences=True, kernel_regularizer="l2"),
                        GRU(2, activity_regularizer="l1"), Dense(1, bias_regularizer="l2")],
                       name="net")
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    y = model(x)
    assert len(model.losses) == 3  # the GRU's activity loss, then kernel l2, dense bias l2
    act = float(model.layers[1].activity_regularizer(y_mid := model.layers[1](model.layers[0](x))))
    assert model.losses[0] == pytest.approx(act / 2, rel=1e-5) and y_mid.shape == (2, 2)
    frozen = Sequential(model.layers, trainable=False)  # as Keras: no weight losses then
    assert frozen.trainable_weights == [] and len(frozen.losses) == 1
    cfg = model.get_config()
    assert list(cfg)[:4] == ["name", "trainable", "dtype", "layers"]
    assert cfg["build_input_shape"] == [2, 5, 3]
    clone = Sequential.from_config(cfg)
    assert clone.built
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(x), y)
    with pytest.raises(ValueError, match="expecting"):
        clone.set_weights(model.get_weights()[:-1])


def test_sequential_from_keras_style_config_with_input_layer():
    cfg = {"name": "k", "trainable": True, "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 7, 2], "name": "in"}},
        {"module": "keras.layers", "class_name": "GRU", "config": {"units": 3, "name": "g"}},
        {"module": "keras.layers", "class_name": "Dense", "config": {"units": 1, "name": "d"}},
    ]}
    model = Sequential.from_config(cfg)
    assert model.built and model.layers[0].get_weights()[0].shape == (2, 9)


def test_add_pop_summary_and_errors(capsys):
    model = Sequential()
    model.add(GRU(2))
    model.add(Dense(1))
    model.build((None, 4, 3))
    model.add(Dense(2))  # built on arrival
    assert model.layers[-1].built
    assert model.pop() is not None and len(model.layers) == 2
    model.summary()
    text = capsys.readouterr().out
    assert "GRU" in text and "Dense" in text and "Total params: 45" in text
    with pytest.raises(TypeError, match="fastgru layers"):
        model.add("dense")
    bad = Sequential([GRU(2, return_state=True), Dense(1)])
    with pytest.raises(ValueError, match="must return one"):
        bad(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="no layers"):
        Sequential()(np.zeros((1, 2)))


def test_compose_like_the_r_interface():
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    gru = GRU(2)
    assert compose(None, gru) is gru
    model = compose(gru, Dense(1))
    assert isinstance(model, Sequential) and model.layers[0] is gru
    again = compose(model, Dense(3))
    assert again is model and len(model.layers) == 3
    y = compose(x, GRU(5, return_sequences=True))  # an array: the layer's output
    assert y.shape == (2, 4, 5)
    with pytest.raises(TypeError):
        compose(x, "gru")
    assert isinstance(model, Layer)


def test_explain_and_to_cpu():
    model = Sequential([GRU(2, return_sequences=True), Bidirectional(GRU(2)), Dense(1)])
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    y = model(x)
    text = model.explain(x)
    assert len(text.splitlines()) == 3 and "forward" in text
    assert model.to("cpu") is model
    np.testing.assert_array_equal(model(x), y)
    with pytest.raises(ValueError, match="device"):
        Dense(1).to("tpu")


def test_dense_build_refuses_a_negative_dimension_naming_the_argument():
    with pytest.raises(ValueError, match=r"Cannot convert '\(None, -3\)' to a shape \(argument "
                                         r"`input_shape` of Dense layer 'd'\)\. Negative"):
        Dense(2, name="d").build((None, -3))
