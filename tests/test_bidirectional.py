"""Bidirectional: Keras semantics (checked here against an explicit composition of two GRUs;
tests/test_io_keras.py checks the same layer against Keras itself), config, errors, and
gradients against central finite differences (float64)."""

import numpy as np
import pytest
from test_dense_sequential import numeric_grad

from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional

rng = np.random.default_rng(9)
B, T, D, U = 3, 5, 4, 3
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1]], bool)


def _layer(merge_mode="concat", rs=True, state=False, units=U, dim=D, **kw):
    layer = Bidirectional(GRU(units, return_sequences=rs, return_state=state, dtype="float64",
                              **kw), merge_mode=merge_mode)
    layer.build((None, None, dim))
    layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in layer.get_weights()])
    return layer


def _leaves(y):
    if isinstance(y, (list, tuple)):
        return [leaf for item in y for leaf in _leaves(item)]
    return [y]


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("rs", [True, False])
def test_matches_two_gru_composition(merge_mode, rs):
    layer = _layer(merge_mode, rs, state=True)
    x = rng.normal(size=(B, T, D))
    h0f, h0b = rng.normal(size=(B, U)), rng.normal(size=(B, U))
    out = layer(x, initial_state=[h0f, h0b], mask=MASK)

    w = layer.get_weights()
    fwd = GRU(U, return_sequences=rs, return_state=True, zero_output_for_mask=rs,
              dtype="float64")
    bwd = GRU(U, return_sequences=rs, return_state=True, zero_output_for_mask=rs,
              go_backwards=True, dtype="float64")
    fwd.build((None, T, D))
    bwd.build((None, T, D))
    fwd.set_weights(w[:3])
    bwd.set_weights(w[3:])
    yf, hf = fwd(x, initial_state=h0f, mask=MASK)
    yb, hb = bwd(x, initial_state=h0b, mask=MASK)
    if rs:
        yb = yb[:, ::-1]
    merged = {"concat": lambda: np.concatenate([yf, yb], -1), "sum": lambda: yf + yb,
              "mul": lambda: yf * yb, "ave": lambda: (yf + yb) / 2,
              None: lambda: (yf, yb)}[merge_mode]()
    expected = (*merged, hf, hb) if merge_mode is None else (merged, hf, hb)
    assert len(out) == len(expected)
    for a, b in zip(out, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    shapes = layer.compute_output_shape((B, T, D))
    assert [tuple(s) for s in shapes] == [a.shape for a in out]


def test_keras_forces_zero_output_for_mask_with_sequences():
    layer = _layer("concat", rs=True)
    assert layer.forward_layer.zero_output_for_mask and layer.backward_layer.zero_output_for_mask
    y = layer(rng.normal(size=(B, T, D)), mask=MASK)
    np.testing.assert_array_equal(y[~MASK], 0)  # both halves zero at masked steps
    assert not _layer("concat", rs=False).forward_layer.zero_output_for_mask


def test_structure_weights_and_names():
    layer = Bidirectional(GRU(2, name="enc"), name="bi")
    layer.build((None, None, 3))
    assert layer.forward_layer.name == "forward_enc"
    assert layer.backward_layer.name == "backward_enc"
    assert [w.name for w in layer.weights][:1] == ["bi/forward_enc/gru_cell/kernel"]
    assert [w.name.split("/")[1] for w in layer.weights] == ["forward_enc"] * 3 + \
        ["backward_enc"] * 3
    again = Bidirectional(layer.forward_layer)  # no doubled prefix
    assert again.forward_layer.name == "forward_enc"


def test_weights_argument_and_config_round_trip():
    src = _layer("ave", rs=True)
    w = src.get_weights()
    layer = Bidirectional(GRU(U, return_sequences=True, dtype="float64"), merge_mode="ave",
                          weights=w)
    x = rng.normal(size=(B, T, D))
    np.testing.assert_array_equal(layer(x), src(x))
    cfg = layer.get_config()
    assert list(cfg) == ["name", "trainable", "dtype", "merge_mode", "layer", "backward_layer"]
    assert cfg["backward_layer"]["config"]["go_backwards"] is True
    clone = Bidirectional.from_config(cfg)
    clone.build((None, T, D))
    clone.set_weights(w)
    np.testing.assert_array_equal(clone(x), src(x))


def test_custom_backward_layer_and_errors():
    layer = Bidirectional(GRU(2), backward_layer=GRU(3, go_backwards=True, reset_after=False))
    y = layer(rng.normal(size=(2, 4, 3)).astype(np.float32))
    assert y.shape == (2, 5)
    with pytest.raises(ValueError, match="go_backwards"):
        Bidirectional(GRU(2), backward_layer=GRU(2))
    with pytest.raises(ValueError, match="go_backwards"):  # Keras: the copy always goes
        Bidirectional(GRU(2, go_backwards=True))         # backwards, so both would
    with pytest.raises(ValueError, match="return_sequences"):
        Bidirectional(GRU(2), backward_layer=GRU(2, go_backwards=True, return_sequences=True))
    with pytest.raises(ValueError, match="merge mode"):
        Bidirectional(GRU(2), merge_mode="max")
    with pytest.raises(ValueError, match="layer instance"):
        Bidirectional("gru")
    with pytest.raises(ValueError, match="even number|as many"):
        Bidirectional(GRU(2))(np.zeros((1, 2, 3), np.float32),
                              initial_state=[np.zeros((1, 2), np.float32)] * 3)


def test_backward_layer_with_other_units():
    """concat takes a backward layer of other units (Keras does): its shapes, its gradients
    (before, backward() asked for 2 x the forward units); sum / ave / mul refuse it instead
    of broadcasting a 1-unit layer over the other's units."""
    def make(merge_mode, bu, state=False):
        layer = Bidirectional(
            GRU(2, return_sequences=True, return_state=state, dtype="float64"),
            merge_mode=merge_mode,
            backward_layer=GRU(bu, return_sequences=True, return_state=state,
                               go_backwards=True, dtype="float64"))
        layer.build((None, None, 2))
        return layer

    x = rng.normal(size=(2, 3, 2))
    for merge_mode, state in (("concat", False), ("concat", True), (None, True)):
        layer = make(merge_mode, 3, state)
        y, tape = layer.forward(x)
        leaves = _leaves(y)
        shapes = layer.compute_output_shape(x.shape)
        shapes = shapes if isinstance(shapes[0], tuple) else [shapes]
        assert [tuple(s) for s in shapes] == [a.shape for a in leaves]
        R = [rng.normal(size=a.shape) for a in leaves]
        g = layer.backward(tape, tuple(R) if len(R) > 1 else R[0])

        def loss(layer=layer, R=R):
            return float(sum(np.sum(a * r) for a, r in zip(_leaves(layer(x)), R, strict=True)))

        np.testing.assert_allclose(g.inputs, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    assert make("concat", 3).freeze()(x).shape == (2, 3, 5)
    for merge_mode in ("sum", "ave", "mul"):
        with pytest.raises(ValueError, match=r"forward layer gives \(None, None, 2\) and the "
                                             r"backward layer \(None, None, 1\)"):
            make(merge_mode, 1)  # build refuses, so do compute_output_shape and the call
        layer = Bidirectional(GRU(2, return_sequences=True), merge_mode=merge_mode,
                              backward_layer=GRU(1, return_sequences=True, go_backwards=True))
        with pytest.raises(ValueError, match="backward layer .*merge_mode='concat'"):
            layer(x)
        with pytest.raises(ValueError, match="backward layer .*merge_mode='concat'"):
            layer.compute_output_shape(x.shape)


def test_time_major_equals_batch_major():
    bm = _layer("concat", rs=True)
    tm = Bidirectional(GRU(U, return_sequences=True, dtype="float64", time_major=True))
    tm.build((T, None, D))
    tm.set_weights(bm.get_weights())
    x = rng.normal(size=(B, T, D))
    np.testing.assert_allclose(tm(x.swapaxes(0, 1)), bm(x).swapaxes(0, 1), rtol=1e-13)


def test_stacked_rnn_inside():
    layer = Bidirectional(RNN([GRUCell(2), GRUCell(3)], return_state=True))
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    out = layer(x)
    assert out[0].shape == (2, 6) and len(out) == 5


@pytest.mark.parametrize("merge_mode,rs,state", [
    ("concat", True, False), ("sum", True, True), ("mul", True, False), ("ave", False, True),
    (None, True, True), ("mul", False, False)])
def test_gradients_match_finite_differences(merge_mode, rs, state):
    layer = _layer(merge_mode, rs, state, units=2, dim=2)  # small: finite differences are slow
    x = rng.normal(size=(2, 3, 2))
    h0 = [rng.normal(size=(2, 2)), rng.normal(size=(2, 2))]
    mask = np.array([[1, 1, 1], [0, 1, 0]], bool)
    y, tape = layer.forward(x, initial_state=h0, mask=mask)
    leaves = _leaves(y)
    R = [rng.normal(size=leaf.shape) for leaf in leaves]
    d = tuple(R) if len(R) > 1 else R[0]
    g = layer.backward(tape, d)

    def loss():
        out = layer(x, initial_state=h0, mask=mask)
        return float(sum(np.sum(a * r) for a, r in zip(_leaves(out), R, strict=True)))

    tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g.inputs, numeric_grad(loss, x), **tol)
    for i in range(2):
        np.testing.assert_allclose(g.initial_state[i], numeric_grad(loss, h0[i]), **tol)
    assert g.paths == [w.name for w in layer.trainable_weights]
    for var, gw in zip(layer.trainable_weights, g.weights, strict=True):
        num = numeric_grad(loss, var.value, entries=3)
        ok = ~np.isnan(num)
        np.testing.assert_allclose(gw[ok], num[ok], err_msg=var.name, **tol)


def test_backward_accepts_none_parts():
    layer = _layer(None, rs=True, state=True)
    x = rng.normal(size=(B, T, D))
    y, tape = layer.forward(x)
    g = layer.backward(tape, (np.ones_like(y[0]), None, None, None))
    y2, tape2 = layer.forward(x)
    g2 = layer.backward(tape2, (np.ones_like(y[0]), np.zeros_like(y[1]), None, None))
    np.testing.assert_allclose(g.inputs, g2.inputs, rtol=1e-14)
    with pytest.raises(ValueError, match="entries"):
        layer.backward(tape, (np.ones_like(y[0]),))


def test_activity_losses_of_the_wrapped_layers_count():
    """As Keras: Bidirectional.losses holds the forward and backward layers' activity losses
    (one per returned tensor) after a call."""
    layer = Bidirectional(GRU(3, activity_regularizer="l2", return_state=True))
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    layer(x)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    assert len(layer.losses) == 4  # (output, state) of each direction
    assert layer.losses == fwd.losses + bwd.losses


@pytest.mark.parametrize("merge_mode", ["concat", None])
@pytest.mark.parametrize("rs", [True, False])
def test_compute_mask_with_return_state_as_keras(merge_mode, rs):
    """Keras 3.15 adds state masks only for stateful layers: otherwise the output's alone."""
    layer = Bidirectional(GRU(3, return_sequences=rs, return_state=True), merge_mode=merge_mode)
    mask = np.array([[True, True, False]])
    got = layer.compute_mask(np.zeros((1, 3, 2)), mask)
    out = mask if rs else None
    want = (out, out) if merge_mode is None else out
    if merge_mode is None:
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want, strict=True):
            assert (g is None and w is None) or np.array_equal(g, w)
    else:
        assert (got is None and want is None) or np.array_equal(got, want)


@pytest.mark.parametrize("arg", ["layer", "backward_layer"])
def test_a_layer_that_is_not_recurrent_is_named(arg):
    """Bidirectional(GRU(4), backward_layer=Dense(3)) gave "'Dense' object has no attribute
    'go_backwards'", and Bidirectional(Dense(3)) 'Unrecognized keyword arguments passed to
    Dense: {'go_backwards': True}'."""
    from fastgru.layers.dense import Dense

    kwargs = ({"layer": Dense(3, name="d")} if arg == "layer" else
              {"layer": GRU(4), "backward_layer": Dense(3, name="d")})
    with pytest.raises(ValueError, match=f"`{arg}` of `Bidirectional` must be a recurrent "
                                         "layer.*received Dense layer 'd'.*`go_backwards`"):
        Bidirectional(**kwargs)
