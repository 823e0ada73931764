"""GRU calls: shapes, Keras's measured values (spec 3.4), masks, initial states, stateful,
time_major, dtypes, dropout and agreement with the reference engine."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgru
from fastgru import GRU
from fastgru.engines import reference
from fastgru.engines.base import DropoutMasks


def const_gru(**kw):
    return GRU(2, kernel_initializer=fastgru.initializers.Constant(0.01),
               recurrent_initializer=fastgru.initializers.Constant(0.02),
               bias_initializer=fastgru.initializers.Constant(0.03), **kw)


X24 = np.arange(24).reshape(2, 4, 3)
H0 = np.array([[1, 2], [3, 4]], np.float32)


def ref_run(layer, x, h0=None, mask=None, dropout=None):
    """The oracle: the reference engine in float64 on the layer's weights."""
    c = layer.cell
    w = type(c.engine_weights())(*(None if a is None else np.asarray(a, np.float64)
                                  for a in c.engine_weights()))
    x = np.asarray(x, np.float64)
    h0 = np.zeros((x.shape[0], c.units)) if h0 is None else np.asarray(h0, np.float64)
    spec = c.spec(layer.go_backwards, layer.return_sequences, layer.zero_output_for_mask)
    out, h, _ = reference.forward(x, w, h0, spec, mask=mask, dropout=dropout)
    return out, h


# ---------------------------------------------------------------- Keras values
def test_keras_doc_shape_example(rng):
    x = rng.random((32, 10, 8)).astype(np.float32)
    assert GRU(4)(x).shape == (32, 4)
    seq, state = GRU(4, return_sequences=True, return_state=True)(x)
    assert seq.shape == (32, 10, 4) and state.shape == (32, 4)


def test_measured_tf_masked_leading_and_fully_masked_rows():
    layer = const_gru(return_sequences=True, return_state=True)
    out, state = layer(X24, H0, mask=np.array([[0, 1, 0, 1], [0, 0, 0, 0]]))
    np.testing.assert_allclose(out[0], [[0, 0], [0.6467736, 1.2064872], [0.6467736, 1.2064872],
                                        [0.52910656, 0.8638054]], atol=1e-6)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_allclose(state, [[0.52910656, 0.8638054], [3, 4]], atol=1e-6)


def test_measured_tf_trailing_mask_and_zero_output_for_mask():
    mask = np.array([[True, True, True, False], [True] * 4])
    np.testing.assert_allclose(const_gru()(X24, mask=mask),
                               [[0.16347407] * 2, [0.453848] * 2], atol=1e-6)
    np.testing.assert_allclose(const_gru(zero_output_for_mask=True)(X24, mask=mask),
                               [[0, 0], [0.453848] * 2], atol=1e-6)


def test_measured_tf_go_backwards_mask():
    out = const_gru(go_backwards=True, return_sequences=True)(
        X24, mask=np.array([[1, 1, 0, 0], [1, 1, 1, 1]]))
    np.testing.assert_allclose(out[0], [[0, 0], [0, 0], [0.07501709] * 2, [0.07601666] * 2],
                               atol=1e-6)


def test_measured_tf_reset_before_go_backwards():
    out = const_gru(reset_after=False, go_backwards=True)(X24, H0)
    np.testing.assert_allclose(out, [[0.22235471, 0.31847006], [0.9599925, 1.1449765]],
                               atol=1e-6)


# ---------------------------------------------------------------- structure and forms
def test_last_output_equals_state_without_mask(rng):
    x = rng.random((3, 5, 2))
    for gb in (False, True):
        seq, state = GRU(3, return_sequences=True, return_state=True, go_backwards=gb)(x)
        np.testing.assert_array_equal(seq[:, -1], state)
        assert isinstance(GRU(2, return_state=True)(x), tuple)


def test_initial_state_forms(rng):
    layer = GRU(3)
    x = rng.random((2, 4, 5)).astype(np.float32)
    h = rng.random((2, 3)).astype(np.float32)
    base = layer(x, h)
    np.testing.assert_array_equal(layer(x, [h]), base)
    np.testing.assert_array_equal(layer(x, initial_state=(h,)), base)
    np.testing.assert_array_equal(layer(x, [h, np.zeros((7, 7))]), base)  # extras ignored
    np.testing.assert_array_equal(layer(x, h.astype(np.float64)), base)
    assert not np.allclose(layer(x), base)
    with pytest.raises(ValueError, match=r"`initial_state`.*\(2, 3\).*\(3, 3\)"):
        layer(x, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"`initial_state`.*\(2, 3\).*\(2, 4\)"):
        layer(x, np.zeros((2, 4)))


def test_input_validation(rng):
    layer = GRU(2)
    with pytest.raises(ValueError) as e:
        layer(np.zeros((2, 3)))
    assert str(e.value) == (f"Input 0 of layer '{layer.name}' is incompatible with the layer: "
                            "expected ndim=3, found ndim=2. Full shape received: (2, 3)")
    layer(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"built for D=4.*\(B, T, D\).*received \(2, 3, 5\)"):
        layer(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(B, T\) = \(2, 3\)"):
        layer(np.zeros((2, 3, 4)), mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="at least one timestep"):
        layer(np.zeros((2, 0, 4)))


def test_empty_batch():
    layer = GRU(3, return_sequences=True, return_state=True)
    out, state = layer(np.zeros((0, 4, 2), np.float32))
    assert out.shape == (0, 4, 3) and state.shape == (0, 3)
    y, tape = GRU(3).forward(np.zeros((0, 2, 2)))
    assert y.shape == (0, 3)


def test_dtypes(rng):
    x_int = np.arange(12).reshape(1, 4, 3)
    layer = GRU(2)
    assert layer(x_int).dtype == np.float32
    assert layer(x_int.astype(np.float64)).dtype == np.float32
    l64 = GRU(2, dtype="float64", return_state=True)
    out, st = l64(x_int)
    assert out.dtype == np.float64 and st.dtype == np.float64
    assert l64.cell.kernel.dtype == np.float64
    mask_float = np.array([[1.0, 0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(layer(x_int, mask=mask_float),
                                  layer(x_int, mask=mask_float.astype(bool)))


def test_nan_in_nan_out_and_masked_nan_clean(rng):
    x = rng.random((2, 3, 2))
    x[0, 1, 0] = np.nan
    out = GRU(2)(x)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    mask = np.ones((2, 3), bool)
    mask[0, 1] = False
    layer = GRU(2, return_sequences=True)
    assert np.isfinite(layer(x, mask=mask)).all()


def test_time_major(rng):
    x = rng.random((3, 5, 2)).astype(np.float32)
    m = rng.random((3, 5)) > 0.3
    bm = GRU(4, return_sequences=True, return_state=True)
    bm.build((None, 5, 2))
    tm = GRU(4, return_sequences=True, return_state=True, time_major=True)
    tm.build((5, None, 2))
    tm.set_weights(bm.get_weights())
    seq_b, st_b = bm(x, mask=m)
    seq_t, st_t = tm(x.swapaxes(0, 1), mask=m.T)
    np.testing.assert_array_equal(seq_t, seq_b.swapaxes(0, 1))
    np.testing.assert_array_equal(st_t, st_b)
    assert tm.compute_output_shape((5, None, 2)) == ((5, None, 4), (None, 4))
    with pytest.raises(ValueError, match=r"\(T, B\)"):
        tm(x.swapaxes(0, 1), mask=m)


def test_compute_output_shape_and_mask():
    assert GRU(4).compute_output_shape((None, 10, 8)) == (None, 4)
    assert GRU(4, return_sequences=True, return_state=True).compute_output_shape(
        (32, None, 8)) == ((32, None, 4), (32, 4))
    m = np.ones((2, 3), bool)
    assert GRU(2).compute_mask(None, m) is None
    assert GRU(2, return_sequences=True).compute_mask(None, m) is m
    assert GRU(2, return_sequences=True, return_state=True).compute_mask(None, m) == [m, None]
    assert GRU(2).supports_masking is True


def test_unroll_same_numbers(rng):
    x = rng.random((2, 4, 3))
    a = GRU(3, return_sequences=True)
    b = GRU(3, return_sequences=True, unroll=True)
    a.build(x.shape)
    b.build(x.shape)
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(a(x), b(x))


# ---------------------------------------------------------------- stateful
def test_stateful_chunks_equal_one_call(rng):
    x = rng.random((2, 9, 3)).astype(np.float32)
    m = rng.random((2, 9)) > 0.2
    full = GRU(4, return_sequences=True)
    full.build((2, 9, 3))
    st = GRU(4, return_sequences=True, stateful=True)
    st.build((2, 3, 3))
    st.set_weights(full.get_weights())
    assert len(st.weights) == 3 and len(st.get_weights()) == 3
    parts = [st(x[:, i:i + 3], mask=m[:, i:i + 3]) for i in (0, 3, 6)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full(x, mask=m), atol=1e-6)
    np.testing.assert_allclose(st.states[0].numpy(), _state_of(full, x, m), atol=1e-6)
    st.reset_state()
    np.testing.assert_array_equal(st.states[0].numpy(), 0)
    np.testing.assert_allclose(st(x[:, :3], mask=m[:, :3]), parts[0], atol=1e-7)
    st.reset_states()
    with pytest.raises(TypeError):
        st.reset_state(states=[np.zeros((2, 4))])


def _state_of(layer, x, m):
    clone = GRU.from_config({**layer.get_config(), "return_state": True,
                             "return_sequences": False})
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    return clone(x, mask=m)[1]


def test_stateful_initial_state_and_batch_check(rng):
    layer = GRU(2, stateful=True, return_state=True)
    x = rng.random((2, 3, 1))
    h = rng.random((2, 2))
    _, s1 = layer(x, h)
    fresh = GRU(2, return_state=True)
    fresh.build(x.shape)
    fresh.set_weights(layer.get_weights())
    np.testing.assert_allclose(s1, fresh(x, h)[1], atol=1e-7)
    np.testing.assert_allclose(layer.states[0].numpy(), s1)
    with pytest.raises(ValueError) as e:
        layer(rng.random((3, 3, 1)))
    assert str(e.value) == ("If an RNN is stateful, the batch size of the input sequences must "
                            "be the same as the batch size of the initial state. \n- Expected "
                            "batch size: 2\n- Received batch size: 3")
    with pytest.raises(ValueError, match=r"batch size must be static. Found dynamic batch "
                                         r"size: sequence.shape=\(None, 4, 3\)"):
        GRU(2, stateful=True).build((None, 4, 3))
    layer.build((2, 3, 1))  # building again resets the states
    np.testing.assert_array_equal(layer.states[0].numpy(), 0)
    GRU(2).reset_state()  # no-op without states


# ---------------------------------------------------------------- vs the reference engine
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), D=st.integers(1, 4), u=st.integers(1, 4),
       reset_after=st.booleans(), use_bias=st.booleans(), go_backwards=st.booleans(),
       return_sequences=st.booleans(), zero_out=st.booleans(), masked=st.booleans(),
       act=st.sampled_from(["tanh", "relu", "hard_sigmoid", "softsign"]),
       seed=st.integers(0, 2**16))
def test_layer_equals_reference(B, T, D, u, reset_after, use_bias, go_backwards,
                                return_sequences, zero_out, masked, act, seed):
    r = np.random.default_rng(seed)
    x = r.normal(size=(B, T, D))
    h0 = r.normal(size=(B, u))
    mask = (r.random((B, T)) > 0.3) if masked else None
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        layer = GRU(u, activation=act, reset_after=reset_after, use_bias=use_bias,
                    go_backwards=go_backwards, return_sequences=return_sequences,
                    zero_output_for_mask=zero_out, return_state=True, dtype=dtype,
                    bias_initializer="random_normal")
        out, state = layer(x, h0, mask=mask)
        ref_out, ref_h = ref_run(layer, x, h0, mask)
        np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
        np.testing.assert_allclose(state, ref_h, rtol=tol, atol=tol)


def test_user_callable_activation_runs_on_reference(rng):
    layer = GRU(2, activation=lambda a: np.tanh(a) * 0.5)
    x = rng.random((2, 3, 2))
    assert layer(x).shape == (2, 2)
    assert "user-supplied Python callable" in layer.explain(x)


def _scaled_tanh(a):
    return np.tanh(a) * 0.5


_scaled_tanh.derivative = lambda a: np.full(a.shape[-1:], 0.5)  # (units,): not a's shape


@pytest.mark.parametrize("which", ["activation", "derivative"])
def test_user_callable_of_another_shape_is_refused(which, rng):
    """A user activation (or its derivative) returning a scalar or one value per unit would
    broadcast over the batch unseen: the call names the function and both shapes."""
    x = rng.random((2, 3, 2))
    if which == "activation":
        layer = GRU(2, activation=lambda a: np.float64(0.5), return_sequences=True)
        with pytest.raises(ValueError, match=r"must return an array of its argument's shape "
                                             r"\(2, 2\); it returned float64 of shape \(\)"):
            layer(x)
    else:
        layer = GRU(2, activation=_scaled_tanh, return_sequences=True)
        y, tape = layer.forward(x, training=True)  # the activation itself is fine
        with pytest.raises(ValueError, match=r"derivative must return .* shape \(2,\)"):
            layer.backward(tape, np.ones_like(y))


def _linear(a):
    return a * 0.5


def _linear_array_slope(a):
    return a * 0.5


_linear.derivative = lambda a: 0.5  # one number: the slope everywhere, as before c082ca6
_linear_array_slope.derivative = lambda a: np.full(np.shape(a), 0.5)


@pytest.mark.parametrize("which", ["activation", "recurrent_activation"])
def test_user_derivative_may_be_one_number(which, rng):
    """A constant derivative (a linear piece) given as a scalar trains as the same constant
    given as an array of the argument's shape (the shape check takes it: it multiplies
    elementwise, so no batch broadcast can go wrong)."""
    x = rng.random((2, 3, 2))
    layers = [GRU(2, return_sequences=True, dtype="float64", **{which: act})
              for act in (_linear, _linear_array_slope)]
    dense = [fastgru.Dense(3, activation=act, dtype="float64")
             for act in (_linear, _linear_array_slope)]
    for pair, inp in ((layers, x), (dense, x[:, 0])):
        pair[0](inp)
        pair[1](inp)
        pair[1].set_weights(pair[0].get_weights())
        grads = []
        for layer in pair:
            y, tape = layer.forward(inp, training=True)
            grads.append(layer.backward(tape, np.ones_like(y)))
        np.testing.assert_array_equal(grads[0].inputs, grads[1].inputs)
        for a, b in zip(grads[0].weights, grads[1].weights, strict=True):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- dropout
def test_dropout_inactive_without_training_and_rate_one(rng):
    x = rng.random((3, 4, 5))
    layer = GRU(3, dropout=0.5, recurrent_dropout=0.5, seed=1)
    ref = GRU(3)
    ref.build(x.shape)
    layer.build(x.shape)
    ref.set_weights(layer.get_weights())
    np.testing.assert_array_equal(layer(x), ref(x))
    assert layer.cell._rng is None  # nothing drawn at inference (spec 0.7)
    one = GRU(3, dropout=1.0)
    one.build(x.shape)
    one.set_weights(layer.get_weights())
    np.testing.assert_array_equal(one(x, training=True), ref(x))


def test_dropout_masks_shapes_statistics_and_semantics(rng):
    cell = GRU(6, dropout=0.3, seed=4).cell
    m = cell.dropout_masks(4000, 50, training=True)
    assert m.inputs.shape == (4000, 50) and m.recurrent is None
    vals = np.unique(m.inputs)
    np.testing.assert_allclose(vals, [0, 1 / 0.7], rtol=1e-6)
    assert abs((m.inputs > 0).mean() - 0.7) < 0.01
    assert abs(m.inputs.mean() - 1.0) < 0.02
    c1 = GRU(6, dropout=0.3, recurrent_dropout=0.2, seed=4).cell
    m1 = c1.dropout_masks(5, 7, training=True)
    assert m1.inputs.shape == (3, 5, 7) and m1.recurrent.shape == (3, 5, 6)
    assert GRU(6, dropout=0.3, implementation=1).cell.dropout_masks(5, 7, True).inputs.shape \
        == (3, 5, 7)
    m2 = GRU(6, recurrent_dropout=0.2).cell.dropout_masks(5, 7, True)
    assert m2.inputs is None and m2.recurrent.shape == (3, 5, 6)
    assert cell.dropout_masks(5, 7, training=False) is None


def test_dropout_training_equals_reference_with_recorded_masks(rng):
    x = rng.normal(size=(3, 4, 5))
    for kw in ({"dropout": 0.4}, {"dropout": 0.3, "recurrent_dropout": 0.3},
               {"recurrent_dropout": 0.5, "reset_after": False}):
        layer = GRU(3, seed=7, return_sequences=True, dtype="float64", **kw)
        out, tape = layer.forward(x, training=True)
        masks = tape.dropout[0]
        assert isinstance(masks, DropoutMasks)
        np.testing.assert_allclose(out, ref_run(layer, x, dropout=masks)[0], atol=1e-12)
        assert not np.allclose(out, layer(x))


def test_same_seed_same_dropout_masks(rng):
    x = rng.normal(size=(2, 3, 4))

    def run(seed):
        layer = GRU(3, dropout=0.5, recurrent_dropout=0.5, seed=seed,
                    kernel_initializer=fastgru.initializers.GlorotUniform(seed=1),
                    recurrent_initializer=fastgru.initializers.Orthogonal(seed=2))
        return [layer(x, training=True) for _ in range(3)]

    a, b, c = run(5), run(5), run(6)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    assert not np.allclose(a[1], a[2])  # a fresh mask per call
    assert not np.allclose(a[0], c[0])
    fastgru.set_seed(3)
    d = run(None)
    fastgru.set_seed(3)
    e = run(None)
    np.testing.assert_array_equal(d[0], e[0])


def test_default_zero_state_and_a_cell_subclass_initial_state(rng):
    """Without initial_state the engines start from zeros (the CPU engine takes h0=None, the
    others a zeros array): the same bits as explicit zeros. A GRUCell subclass that makes its
    own initial state still has it used."""
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    layer = GRU(6, return_sequences=True, return_state=True)
    y, h = layer(x)
    y0, h0 = layer(x, initial_state=np.zeros((3, 6), np.float32))
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(h, h0)
    assert not fastgru._dispatch.zeros_as_none(reference)

    class HalfStart(fastgru.GRUCell):
        def get_initial_state(self, batch_size=None):
            return [np.full((batch_size, self.units), 0.5, self.dtype)]

    rnn = fastgru.RNN(HalfStart(6), return_sequences=True)
    rnn(x)
    rnn.cell.set_weights(layer.cell.get_weights())
    start = np.full((3, 6), 0.5, np.float32)
    np.testing.assert_array_equal(rnn(x), layer(x, initial_state=start)[0])
    assert not np.allclose(rnn(x), y)


def test_cell_steps_see_weight_updates(rng):
    """A GRUCell's own step calls reuse the engine's packed weights by Variable version; every
    update, bumped or written in place, still reaches them (the engine checks the bytes)."""
    cell = fastgru.GRUCell(3, dtype="float64")
    x, h = rng.normal(size=(2, 4)), rng.normal(size=(2, 3))

    def expected():
        spec = cell.spec()
        w = cell.engine_weights()
        return reference.forward(x[:, None, :], w, h, spec)[1]

    first, _ = cell(x, [h])
    np.testing.assert_allclose(first, expected(), atol=1e-12)
    cell.recurrent_kernel.assign(cell.recurrent_kernel.value * 0.5)
    np.testing.assert_allclose(cell(x, [h])[0], expected(), atol=1e-12)
    cell.kernel.value[1, 2] += 0.5  # in place, no bump
    cell.recurrent_kernel.value[0, 0] = 0.25
    np.testing.assert_allclose(cell(x, [h])[0], expected(), atol=1e-12)
    assert not np.allclose(cell(x, [h])[0], first)


def test_cell_spec_follows_the_cells_attributes():
    """spec() is memoised by its fields' current values: the same object for the same call,
    and a changed attribute gives a spec with the new value."""
    cell = fastgru.GRUCell(3)
    a = cell.spec(return_sequences=True)
    assert cell.spec(return_sequences=True) is a and a.return_sequences
    assert cell.spec() is not a and not cell.spec().return_sequences
    cell.activation = fastgru.activations.get("relu")
    cell.reset_after = False
    b = cell.spec(return_sequences=True)
    assert b.activation.name == "relu" and b.reset_after is False and a.activation.name == "tanh"


def test_layer_moved_to_cpu_keeps_working(rng):
    layer = GRU(2)
    x = rng.random((1, 2, 3))
    a = layer(x)
    np.testing.assert_array_equal(layer.to("cpu")(x), a)


@pytest.mark.parametrize("cpu_cache", [False, True])
def test_weight_updates_reach_the_engine(rng, monkeypatch, cpu_cache):
    """Engines cache packed weights by Variable version: every sanctioned update is seen."""
    monkeypatch.setattr(fastgru._dispatch, "CPU_WEIGHTS_KEY", cpu_cache)
    x = rng.normal(size=(2, 4, 3))
    layer = GRU(3, dtype="float64")
    first = layer(x)
    new = [w * 1.5 for w in layer.get_weights()]
    layer.set_weights(new)
    np.testing.assert_allclose(layer(x), ref_run(layer, x)[0], atol=1e-12)
    layer.cell.recurrent_kernel.assign(new[1] * 0.5)
    np.testing.assert_allclose(layer(x), ref_run(layer, x)[0], atol=1e-12)
    layer.cell.recurrent_kernel.value[...] = 0.0
    layer.cell.recurrent_kernel.bump()
    np.testing.assert_allclose(layer(x), ref_run(layer, x)[0], atol=1e-12)
    layer.cell.recurrent_kernel.value[0, 0] = 0.25  # in place, no bump: still seen
    np.testing.assert_allclose(layer(x), ref_run(layer, x)[0], atol=1e-12)
    assert not np.allclose(layer(x), first)


# ---------------------------------------------------------------- values that are not real
def _not_real_calls():
    """(name, call) pairs: each passes one complex array where the layers take real ones."""
    x = np.ones((2, 3, 5), "f4")
    c = lambda a: a + 1j  # noqa: E731 - complex of the same shape

    def backward_of(layer, d):
        (y, _), tape = layer.forward(x, training=True)
        layer.backward(tape, (d(y), None))

    def bidirectional_backward():
        b = fastgru.Bidirectional(GRU(4, return_sequences=True))
        y, tape = b.forward(x, training=True)
        b.backward(tape, c(y))

    def frozen():
        g = GRU(4)
        g(x)
        g.freeze()(c(x))

    def set_weights():
        g = GRU(4)
        g(x)
        g.set_weights([c(w) for w in g.get_weights()])

    return [
        ("sequences", lambda: GRU(4)(c(x))),
        ("sequences", lambda: GRU(4)(np.full((2, 3, 5), "a"))),
        ("sequences", frozen),
        ("initial_state", lambda: GRU(4)(x, initial_state=c(np.zeros((2, 4))))),
        ("inputs", lambda: fastgru.GRUCell(4)(c(x[:, 0]), [np.zeros((2, 4), "f4")])),
        ("states", lambda: fastgru.GRUCell(4)(x[:, 0], [c(np.zeros((2, 4)))])),
        ("Dense", lambda: fastgru.Dense(3)(c(x))),
        ("d_outputs", lambda: backward_of(GRU(4, return_state=True), c)),
        ("d_outputs", bidirectional_backward),
        ("Weight", set_weights),
    ]


@pytest.mark.parametrize("what,call", _not_real_calls(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_complex_or_string_values_are_refused_naming_the_argument(what, call):
    """Complex values would lose their imaginary parts in the conversion to the layer's float
    dtype (NumPy only warns) and strings fail deep in NumPy: a TypeError names the argument."""
    with pytest.raises(TypeError, match=f"{what}.*must hold real numbers"):
        call()


# ---------------------------------------------------------------- mask dtypes
def _called(layer, x, frozen):
    """``layer`` itself, or (``frozen``) its snapshot after a first call builds it."""
    if not frozen:
        return layer
    layer(x)
    return layer.freeze()


@pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
def test_numeric_masks_are_cast_to_bool(rng, dtype, frozen):
    """Keras casts a mask to bool: booleans, integers and floats (nonzero = keep)."""
    layer = GRU(3, return_sequences=True)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    call = _called(layer, x, frozen)
    keep = np.array([[1, 0, 1, 1], [0, 0, 2, 1]])
    np.testing.assert_array_equal(call(x, mask=keep.astype(dtype)),
                                  call(x, mask=keep.astype(bool)))


@pytest.mark.parametrize("mask", [
    np.array([["a", "", "c", "d"], ["a", "b", "", "d"]]),
    np.array([[b"a", b"", b"c", b"d"], [b"a", b"b", b"", b"d"]]),
    np.ones((2, 4), complex),
    np.zeros((2, 4), "V4"),
    np.array([[1, None, 1, 1], [1, 1, 1, 1]], dtype=object),
], ids=["str", "bytes", "complex", "void", "object"])
@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
def test_non_numeric_masks_are_refused_naming_mask(mask, frozen):
    """Strings, bytes and objects were taken by truthiness ('' and None as False) and complex
    masks by their nonzero-ness, where the CPU engine itself refuses them."""
    layer = GRU(3)
    x = np.ones((2, 4, 5), np.float32)
    call = _called(layer, x, frozen)
    with pytest.raises(TypeError, match=r"`mask`.*must be boolean, integer or float"):
        call(x, mask=mask)


def test_ragged_mask_is_refused_naming_mask():
    with pytest.raises(ValueError, match=r"`mask` of layer 'g' must be an array.*not ragged"):
        GRU(3, name="g")(np.ones((2, 3, 5), np.float32), mask=[[1, 1, 1], [1, 1]])


# ---------------------------------------------------------------- ragged lists, other types
def _frozen_call(x):
    g = GRU(3, name="g")
    g(np.ones((2, 3, 5), np.float32))
    return g.freeze()(x)


_RAGGED_X = [[[1.0] * 5] * 3, [[1.0] * 5] * 2]  # sequences of 3 and 2 steps
_H = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("arg,call", [
    ("sequences", lambda: GRU(3, name="g")(_RAGGED_X)),
    ("sequences", lambda: _frozen_call(_RAGGED_X)),
    ("initial_state", lambda: GRU(3, name="g")(np.ones((2, 3, 5)),
                                                initial_state=[[[0.0] * 3, [0.0] * 2]])),
], ids=["layer", "frozen", "initial_state"])
def test_ragged_nested_lists_are_refused_naming_the_argument(arg, call):
    """NumPy's 'inhomogeneous shape after 1 dimensions' named no argument."""
    with pytest.raises(ValueError, match=f"`{arg}` of (frozen )?layer 'g' must be an array, or "
                                         "nested lists of one shape"):
        call()


@pytest.mark.parametrize("state", [{"h": _H}, {_H.tobytes()}, object()],
                         ids=["dict", "set", "object"])
@pytest.mark.parametrize("frozen", [False, True], ids=["layer", "frozen"])
def test_initial_state_of_another_type_is_refused_naming_it(state, frozen):
    """A dict as initial_state gave "float() argument must be ... not 'dict'"."""
    layer = GRU(3, name="g")
    x = np.ones((2, 4, 5), np.float32)
    call = _called(layer, x, frozen)
    with pytest.raises(TypeError, match=r"`initial_state` of layer 'g' must be an array of "
                                        r"shape \(batch, units\).*received "
                                        f"{type(state).__name__} "):
        call(x, initial_state=state)
