"""Cross-checks against the real Keras 3 (skipped when it is not installed): outputs, states
and gradients of GRU / stacked RNN on TensorFlow's generic loop (the spec's reference), and
configs read both ways."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

import fastgru  # noqa: E402
from fastgru import GRU, RNN, GRUCell  # noqa: E402

TF = keras.backend.backend() == "tensorflow"
needs_tf = pytest.mark.skipif(not TF, reason="Keras's masking reference is the TF loop")


def twin(kw, D, seed, rnn_flags=None):
    """A Keras layer and a float64 fastgru layer with the same weights."""
    k = keras.layers.GRU(use_cudnn=False, dtype="float64", **kw)
    k.build((None, None, D))
    r = np.random.default_rng(seed)
    k.set_weights([r.normal(scale=0.5, size=w.shape) for w in k.get_weights()])
    f = GRU.from_config({**k.get_config(), "name": None})
    f.build((None, None, D))
    f.set_weights(k.get_weights())
    return k, f


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@needs_tf
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), reset_after=st.booleans(), gb=st.booleans(),
       rs=st.booleans(), zo=st.booleans(), masked=st.booleans(), h0=st.booleans(),
       act=st.sampled_from(["tanh", "relu", "softsign"]),
       rec=st.sampled_from(["sigmoid", "hard_sigmoid"]))
def test_gru_matches_keras_tf(seed, reset_after, gb, rs, zo, masked, h0, act, rec):
    r = np.random.default_rng(seed)
    B, T, D = 3, 5, 4
    kw = dict(units=3, reset_after=reset_after, go_backwards=gb, return_sequences=rs,
              return_state=True, zero_output_for_mask=zo, activation=act,
              recurrent_activation=rec)
    k, f = twin(kw, D, seed)
    x = r.normal(size=(B, T, D))
    mask = r.random((B, T)) > 0.4 if masked else None
    init = r.normal(size=(B, 3)) if h0 else None
    want = k(x, initial_state=init, mask=mask)
    got = f(x, init, mask=mask)
    for g, w in zip(as_list(got), as_list(want), strict=True):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-10, atol=1e-12)


@needs_tf
def test_stacked_rnn_matches_keras_tf():
    # float32: Keras 3.15's stacked-cell loop mixes float32 zero states into float64 masks
    r = np.random.default_rng(1)
    cells = [keras.layers.GRUCell(3), keras.layers.GRUCell(2, reset_after=False)]
    k = keras.layers.RNN(cells, return_sequences=True, return_state=True, go_backwards=True)
    k.build((None, None, 4))
    k.set_weights([r.normal(scale=0.5, size=w.shape).astype("float32")
                   for w in k.get_weights()])
    f = RNN.from_config({**k.get_config(), "name": None})
    f.build((None, None, 4))
    f.set_weights(k.get_weights())
    x = r.normal(size=(3, 5, 4)).astype("float32")
    mask = r.random((3, 5)) > 0.4
    want = k(x, mask=mask)
    got = f(x, mask=mask)
    np.testing.assert_allclose(got[0], np.asarray(want[0]), rtol=1e-5, atol=1e-6)
    for gs, ws in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(gs[0], np.asarray(ws[0]), rtol=1e-5, atol=1e-6)


@needs_tf
def test_gradients_match_keras_tf():
    import tensorflow as tf

    r = np.random.default_rng(2)
    k, f = twin(dict(units=3, return_sequences=True, return_state=True, go_backwards=True),
                4, 3)
    x = r.normal(size=(2, 5, 4))
    h0 = r.normal(size=(2, 3))
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    dy = r.normal(size=(2, 5, 3))
    ds = r.normal(size=(2, 3))
    xt, ht = tf.constant(x), tf.constant(h0)
    with tf.GradientTape() as tape:
        tape.watch([xt, ht])
        y, s = k(xt, initial_state=ht, mask=mask)
        loss = tf.reduce_sum(y * dy) + tf.reduce_sum(s * ds)
    want = tape.gradient(loss, [xt, ht] + k.trainable_weights)
    (_, _), t = f.forward(x, h0, mask=mask)
    g = f.backward(t, (dy, ds))
    for got, w in zip([g.inputs, g.initial_state, *g.weights], want, strict=True):
        np.testing.assert_allclose(got, np.asarray(w), rtol=1e-9, atol=1e-12)


def test_configs_read_both_ways():
    k = keras.layers.GRU(5, activation="relu", kernel_regularizer="l2",
                         recurrent_constraint="unit_norm", bias_initializer="ones", dropout=0.2,
                         seed=4, return_sequences=True)
    kcfg = k.get_config()
    f = GRU.from_config(kcfg)
    assert f.get_config() == kcfg
    assert list(GRU(5).get_config()) == list(keras.layers.GRU(5).get_config())
    back = keras.layers.GRU.from_config(f.get_config())
    assert back.get_config() == kcfg
    kc = keras.layers.RNN([keras.layers.GRUCell(3), keras.layers.GRUCell(2)]).get_config()
    fc = RNN.from_config(kc).get_config()
    assert list(fc) == list(kc) and fc["cell"]["class_name"] == "StackedRNNCells"
    assert keras.layers.RNN.from_config(fc).get_config()["cell"]["config"]["cells"][1][
        "config"]["units"] == 2
    assert list(GRUCell(3).get_config()) == list(keras.layers.GRUCell(3).get_config())


def test_initializer_and_constraint_configs_match_keras():
    for name in ("zeros", "ones", "glorot_uniform", "glorot_normal", "he_uniform",
                 "he_normal", "lecun_uniform", "lecun_normal", "orthogonal",
                 "random_uniform", "random_normal", "truncated_normal", "variance_scaling"):
        assert fastgru.initializers.serialize(name) == keras.initializers.serialize(
            keras.initializers.get(name)), name
    for name in ("max_norm", "min_max_norm", "non_neg", "unit_norm"):
        assert fastgru.constraints.serialize(name) == keras.constraints.serialize(
            keras.constraints.get(name)), name
    w = np.random.default_rng(0).normal(size=(5, 4))
    for name in ("max_norm", "min_max_norm", "non_neg", "unit_norm"):
        np.testing.assert_allclose(fastgru.constraints.get(name)(w),
                                   np.asarray(keras.constraints.get(name)(w)), rtol=1e-6)
