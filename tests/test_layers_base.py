"""The Layer base and Grads (notes/LAYER_API.md)."""

import numpy as np
import pytest

import fastgru
from fastgru import GRU, Grads, Layer
from fastgru.layers.base import standardize_dtype


class Affine(Layer):
    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n = n

    def build(self, shape):
        self.w = self.add_weight("w", (shape[-1], self.n), "ones", regularizer="l2")
        self.b = self.add_weight("b", (self.n,), "zeros", trainable=False)

    def call(self, x):
        return x @ self.w.value + self.b.value

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class Outer(Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.inner = self._track(Affine(2, name="inner"))

    def build(self, shape):
        self.own = self.add_weight("own", (1,), "ones")
        self.inner.build(shape)

    def call(self, x):
        return self.inner(x) * self.own.value


def test_build_on_first_call_names_and_scopes():
    layer = Outer(name="outer")
    assert not layer.built
    y = layer(np.ones((2, 3), np.float32))
    assert layer.built and layer.inner.built and y.shape == (2, 2)
    assert [w.name for w in layer.weights] == ["outer/own", "outer/inner/w", "outer/inner/b"]
    assert [w.name for w in layer.trainable_weights] == ["outer/own", "outer/inner/w"]
    assert [w.name for w in layer.non_trainable_weights] == ["outer/inner/b"]
    layer.trainable = False
    assert layer.trainable_weights == [] and layer.inner.trainable is False
    assert len(layer.non_trainable_weights) == 3
    assert layer.losses == []  # regularizers apply to trainable weights only


def test_auto_numbering_and_kwargs():
    a, b = Affine(1), Affine(1)
    assert a.name != b.name and a.name.startswith("affine")
    with pytest.raises(ValueError, match=r"Unrecognized keyword arguments passed to Affine: "
                                         r"\{'bogus': 3\}"):
        Affine(1, bogus=3)
    with pytest.raises(TypeError, match="`name`"):
        Affine(1, name=3)
    Affine(1, input_shape=(3,))  # Keras Layer kwargs are accepted


def test_config_round_trip_and_dtype_policy():
    layer = Affine(3, name="aff", dtype="float64", trainable=False)
    cfg = layer.get_config()
    assert cfg == {"name": "aff", "trainable": False,
                   "dtype": {"module": "keras", "class_name": "DTypePolicy",
                             "config": {"name": "float64"}, "registered_name": None}, "n": 3}
    clone = Affine.from_config(cfg)
    assert clone.dtype == np.float64 and clone.trainable is False
    assert standardize_dtype(np.float32) == np.float32
    with pytest.raises(ValueError, match="`dtype`"):
        standardize_dtype("int32")
    with pytest.raises(ValueError, match="`dtype`"):
        standardize_dtype("mixed_float16")


def test_grads_lookup():
    g = Grads(inputs=np.zeros(1), initial_state=None,
              weights=[np.ones(1), 2 * np.ones(1), 3 * np.ones(1)],
              names=["kernel", "kernel", "bias"],
              paths=["rnn/c0/kernel", "rnn/c1/kernel", "rnn/c1/bias"])
    assert g["c1/kernel"][0] == 2 and g["rnn/c0/kernel"][0] == 1 and g.bias[0] == 3
    assert g[0][0] == 1 and len(g) == 3 and [w[0] for w in g] == [1, 2, 3]
    with pytest.raises(AttributeError, match="ambiguous"):
        _ = g.kernel
    with pytest.raises(KeyError, match="no gradient named"):
        g["nothing"]
    with pytest.raises(ValueError, match="names"):
        Grads(weights=[1, 2], names=["a"])
    assert "rnn/c1/bias" in repr(g)


def test_to_cpu_keeps_values_and_bumps_versions():
    layer = GRU(2, stateful=True)
    layer(np.ones((1, 2, 3), np.float32))
    before = [w.version for w in layer.weights]
    assert layer.to("cpu") is layer
    assert all(w.version > v for w, v in zip(layer.weights, before))
    assert isinstance(layer.states[0].value, np.ndarray)
    with pytest.raises(ValueError, match="'cpu' or 'gpu'"):
        layer.to("tpu")


def test_to_moves_states_of_nested_sublayers():
    gru = GRU(2, stateful=True)
    gru(np.ones((1, 2, 3), np.float32))
    moved = []
    gru._move_state = lambda move: moved.append(move)
    outer = Layer(name="outer")
    mid = outer._track(Layer(name="mid"))
    mid._track(gru)
    outer.to("cpu")
    assert len(moved) == 1


def test_explain_default():
    assert "Affine" in Affine(1, name="x").explain(np.ones((1, 1)))


def test_weights_are_c_contiguous_so_engines_never_copy_them():
    """Variables keep C order (an F-ordered value is copied once, not on every engine call);
    the orthogonal recurrent initializer already returns C order."""
    import fastgru
    from fastgru import initializers
    from fastgru.variable import Variable

    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    v = Variable(f, "w")
    assert v.value.flags.c_contiguous and np.array_equal(v.value, f)
    q = initializers.get("orthogonal")((16, 48), "float32")
    assert q.flags.c_contiguous
    layer = fastgru.GRU(16)
    layer(np.zeros((2, 3, 5), np.float32))
    assert all(w.value.flags.c_contiguous for w in layer.weights)


@pytest.mark.parametrize("weights", [None, 3, "abc", {"kernel": 1}],
                         ids=["None", "int", "str", "dict"])
def test_set_weights_of_another_type_is_refused_naming_it(weights):
    """set_weights(None) gave "'NoneType' object is not iterable"."""
    g = GRU(3, name="g")
    g.build((None, None, 2))
    with pytest.raises(TypeError, match=r"`set_weights\(weights\)` on layer 'g' takes a list of "
                                        "arrays"):
        g.set_weights(weights)


def test_set_weights_refuses_a_ragged_weight_naming_it():
    g = GRU(1, name="g")
    g.build((None, None, 2))
    ragged = [[0.0, 0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="Weight 'g/gru_cell/kernel' of layer 'g' must be an "
                                         "array, or nested lists of one shape"):
        g.set_weights([ragged] + g.get_weights()[1:])


@pytest.mark.parametrize("make", [
    lambda: fastgru.Dense(3),
    lambda: fastgru.Bidirectional(fastgru.GRU(3)),
    lambda: fastgru.Sequential([fastgru.GRU(3, return_sequences=True), fastgru.Dense(1)]),
], ids=["Dense", "Bidirectional", "Sequential"])
def test_nested_lists_are_one_array_input(make):
    """Every layer takes one array, and nested lists of numbers as that array (as GRU does):
    the first call built from their shape (they were read as a structure of inputs and
    refused with a garbled shape), the same numbers as the array; ragged lists named."""
    x = np.random.default_rng(3).random((2, 3, 4)).astype(np.float32)
    a, b = make(), make()
    b.build(x.shape)
    a(x.tolist())  # built by the list's shape
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(a(x.tolist()), b(x))
    with pytest.raises(ValueError, match="Input of layer .* nested lists of one shape"):
        make()([[[1.0, 2.0]], [[3.0]]])


def test_copies_of_a_layer_have_variables_of_their_own():
    """A deep copy or an unpickled layer holds other Variables (uids of their own): weight
    lists de-duplicated by uid, the packed-weight caches keyed by (uid, version) and tape
    checks never take a copy's weights for the original's (uids came back with pickle and
    deepcopy, and the counter restarts in every process)."""
    import copy
    import pickle

    x = np.random.default_rng(4).random((2, 3, 4)).astype(np.float32)
    g = GRU(3, return_sequences=True)
    g(x)
    for other in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        uids = {w.uid for w in g.weights}
        assert uids.isdisjoint(w.uid for w in other.weights)
        assert len(fastgru.Sequential([g, other]).weights) == 2 * len(g.weights)
        np.testing.assert_array_equal(other(x), g(x))
        y, tape = g.forward(x)
        with pytest.raises(ValueError, match="recorded by another layer"):
            other.backward(tape, np.ones_like(y))
    shared = copy.deepcopy([g, g])  # one layer twice stays one layer
    assert shared[0].weights[0] is shared[1].weights[0]
