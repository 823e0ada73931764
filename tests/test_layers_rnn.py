"""RNN over custom cells (the generic per-step loop) and stacks of GRUCells (layer by layer
on the engines), checked against a plain per-step Python loop implementing spec 3.4."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgru import GRU, RNN, GRUCell, StackedRNNCells


class MinimalRNNCell:
    """The Keras docs' example cell: h' = tanh(x W + h U); output = h'."""

    def __init__(self, units, input_dim, seed=0):
        r = np.random.default_rng(seed)
        self.units = self.state_size = units
        self.W = r.normal(size=(input_dim, units))
        self.U = r.normal(size=(units, units))

    def call(self, x, states):
        h = np.tanh(x @ self.W + states[0] @ self.U)
        return h, [h]


class TwoStateCell:
    """Two states of different sizes; output = 2 * second state; no output_size."""

    state_size = [2, 3]

    def call(self, x, states, training=False):
        a, b = states
        a2 = a + x[:, :2]
        b2 = b * 0.5 + x.sum(axis=1, keepdims=True)
        return 2 * b2, [a2, b2]


def keras_loop(step, x, states, mask, go_backwards=False, zero_output=False,
               return_sequences=True):
    """Spec 3.4 written out: every row computes; masked rows keep states, output repeats the
    previous output (zeros before any, or zeros with zero_output)."""
    B, T = x.shape[:2]
    y = None
    outs = []
    for k in range(T):
        t = T - 1 - k if go_backwards else k
        o, new = step(x[:, t], states)
        if y is None:
            y = np.zeros_like(o)
        if mask is None:
            states, y = new, o
        else:
            m = mask[:, t]
            states = [np.where(m.reshape((-1,) + (1,) * (n.ndim - 1)), n, s)
                      for n, s in zip(new, states)]
            y = np.where(m[:, None], o, 0 if zero_output else y)
        outs.append(y)
    return (np.stack(outs, 1) if return_sequences else y), states


def gru_stack_step(cells):
    def step(x, states):
        new = []
        for c, s in zip(cells, states):
            x, ns = c.call(x, [s])
            new.append(ns[0])
        return x, new
    return step


# ---------------------------------------------------------------- custom cells
@pytest.mark.parametrize("gb,zo", [(False, False), (True, False), (False, True)])
def test_custom_cell_generic_loop_matches_spec(gb, zo, rng):
    cell = MinimalRNNCell(3, 2)
    x = rng.normal(size=(3, 5, 2))
    mask = rng.random((3, 5)) > 0.4
    mask[2] = False
    h0 = rng.normal(size=(3, 3))
    layer = RNN(cell, return_sequences=True, return_state=True, go_backwards=gb,
                zero_output_for_mask=zo, dtype="float64")
    seq, state = layer(x, h0, mask=mask)
    want_seq, want_states = keras_loop(cell.call, x, [h0], mask, gb, zo)
    np.testing.assert_allclose(seq, want_seq, atol=1e-12)
    np.testing.assert_allclose(state, want_states[0], atol=1e-12)
    np.testing.assert_array_equal(seq[2], 0)
    np.testing.assert_allclose(state[2], h0[2])  # fully masked row keeps h0
    assert "generic per-step Python loop" in layer.explain(x)


def test_multi_state_cell_structure_and_shapes(rng):
    layer = RNN(TwoStateCell(), return_state=True, dtype="float64")
    x = rng.normal(size=(4, 3, 2))
    out, a, b = layer(x)
    assert out.shape == (4, 3) and a.shape == (4, 2) and b.shape == (4, 3)
    want, (wa, wb) = keras_loop(TwoStateCell().call, x, [np.zeros((4, 2)), np.zeros((4, 3))],
                                None, return_sequences=False)
    np.testing.assert_allclose(out, want)
    np.testing.assert_allclose(b, wb)
    assert layer.compute_output_shape((None, 3, 2)) == ((None, 2), (None, 2), (None, 3))
    assert RNN(TwoStateCell(), return_sequences=True).compute_output_shape((5, 7, 2)) == (5, 7, 2)

    class BadOut(TwoStateCell):
        output_size = [1]

    with pytest.raises(ValueError, match="output_size must be an integer."):
        RNN(BadOut()).compute_output_shape((1, 2, 2))


def test_one_cell_stack_of_multi_state_cell(rng):
    x = rng.normal(size=(3, 4, 2))
    mask = rng.random((3, 4)) > 0.3
    # a one-cell stack returns its cell's states as a list, as Keras 3.15 does
    out, (a, b) = RNN([TwoStateCell()], return_state=True, dtype="float64")(x, mask=mask)
    want, (wa, wb) = keras_loop(TwoStateCell().call, x, [np.zeros((3, 2)), np.zeros((3, 3))],
                                mask, return_sequences=False)
    np.testing.assert_allclose(out, want)
    np.testing.assert_allclose(a, wa)
    np.testing.assert_allclose(b, wb)


def test_custom_cell_stateful_and_reset(rng):
    cell = MinimalRNNCell(2, 1)
    layer = RNN(cell, stateful=True, dtype="float64")
    x = rng.normal(size=(2, 6, 1))
    layer(x[:, :3])
    second = layer(x[:, 3:])
    whole = RNN(cell, dtype="float64")(x)
    np.testing.assert_allclose(second, whole)
    layer.reset_state()
    np.testing.assert_array_equal(layer.states[0].numpy(), 0)


def test_stateful_states_start_from_the_cells_initial_state(rng):
    """Spec 3.6: the stored states are created from get_initial_state(B); reset_state()
    zeroes them."""
    class OnesCell(GRUCell):
        def get_initial_state(self, batch_size=None):
            return [np.ones((batch_size, self.units), self.dtype)]

    cell = OnesCell(2, dtype="float64")
    layer = RNN(cell, stateful=True)
    x = rng.normal(size=(3, 4, 2))
    layer.build(x.shape)
    np.testing.assert_array_equal(layer.states[0].numpy(), 1)
    np.testing.assert_array_equal(layer(x), RNN(cell)(x, initial_state=[np.ones((3, 2))]))
    layer.reset_state()
    np.testing.assert_array_equal(layer.states[0].numpy(), 0)


def test_rnn_rank_check_and_any_rank_allowed(rng):
    with pytest.raises(ValueError, match="expected ndim>=3"):
        RNN(MinimalRNNCell(2, 2))(np.zeros((2, 2)))


# ---------------------------------------------------------------- stacks of GRU cells
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), gb=st.booleans(), zo=st.booleans(), rs=st.booleans(),
       n=st.integers(1, 3), masked=st.booleans())
def test_stacked_equals_per_step_loop(seed, gb, zo, rs, n, masked):
    r = np.random.default_rng(seed)
    units = [3, 2, 4][:n]
    cells = [GRUCell(u, dtype="float64", bias_initializer="random_normal",
                     reset_after=bool(i % 2 == 0)) for i, u in enumerate(units)]
    layer = RNN(cells, return_sequences=rs, return_state=True, go_backwards=gb,
                zero_output_for_mask=zo, dtype="float64")
    B, T = 3, 5
    x = r.normal(size=(B, T, 2))
    mask = r.random((B, T)) > 0.4 if masked else None
    h0 = [r.normal(size=(B, u)) for u in units]
    out, *states = layer(x, h0, mask=mask)
    want, want_states = keras_loop(gru_stack_step(cells), x, list(h0), mask, gb, zo, rs)
    np.testing.assert_allclose(out, want, atol=1e-12)
    got = states if n > 1 else [states[0]]
    for s, w in zip(got, want_states):
        np.testing.assert_allclose(s, w, atol=1e-12)


def test_stacked_return_structures(rng):
    x = rng.normal(size=(2, 3, 4))
    layer = RNN([GRUCell(3), GRUCell(2)], return_state=True)
    out, s0, s1 = layer(x)
    assert isinstance(s0, list) and s0[0].shape == (2, 3) and s1[0].shape == (2, 2)
    out2, f0, f1 = layer(x, [np.zeros((2, 3)), np.zeros((2, 2))])  # flat list -> tensors
    assert f0.shape == (2, 3) and not isinstance(f0, list)
    np.testing.assert_array_equal(out, out2)
    out3, n0, n1 = layer(x, [[np.zeros((2, 3))], [np.zeros((2, 2))]])
    assert isinstance(n0, list)
    with pytest.raises(ValueError, match="one entry per cell"):
        layer(x, [np.zeros((2, 3))] * 3)
    with pytest.raises(ValueError, match=r"initial_state\[1\]"):
        layer(x, [np.zeros((2, 3)), np.zeros((2, 5))])
    # a one-cell stack as Keras 3.15: None or [[h]] give (out, [h]); h or [h] give (out, h)
    one = RNN([GRUCell(3)], return_state=True)
    o, s = one(x)
    assert isinstance(s, list) and s[0].shape == (2, 3)
    h = np.zeros((2, 3))
    assert isinstance(one(x, [[h]])[1], list)
    for flat in (h, [h]):
        assert one(x, flat)[1].shape == (2, 3)
    assert layer.compute_output_shape((None, 3, 4)) == ((None, 2), (None, 3), (None, 2))
    assert layer.state_size == [3, 2] and layer.cell.output_size == 2
    init = layer.get_initial_state(5)
    assert [s[0].shape for s in init] == [(5, 3), (5, 2)]
    assert GRU(4).get_initial_state(2)[0].shape == (2, 4)


def test_stacked_weights_order_names_and_dtype(rng):
    c0, c1 = GRUCell(3), GRUCell(2, use_bias=False)
    layer = RNN([c0, c1], name="stk")
    layer.build((None, 5, 4))
    assert [w.shape for w in layer.weights] == [(4, 9), (3, 9), (2, 9), (3, 6), (2, 6)]
    assert layer.weights[0].name == f"stk/{layer.cell.name}/{c0.name}/kernel"
    assert isinstance(layer.cell, StackedRNNCells)


def test_stacked_stateful_reset_state_works(rng):
    layer = RNN([GRUCell(3), GRUCell(2)], stateful=True, return_state=True)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    layer(x)
    assert any(np.abs(v.numpy()).sum() > 0 for v in (layer.states[0][0], layer.states[1][0]))
    layer.reset_state()  # AttributeError in Keras (spec 0.5)
    assert all(np.abs(v.numpy()).sum() == 0 for v in (layer.states[0][0], layer.states[1][0]))
    full = RNN([GRUCell(3), GRUCell(2)])
    full.build((2, 6, 4))
    full.set_weights(layer.get_weights())
    layer.reset_states()
    x6 = rng.normal(size=(2, 6, 4)).astype(np.float32)
    layer(x6[:, :3])
    out, *_ = layer(x6[:, 3:])
    np.testing.assert_allclose(out, full(x6), atol=1e-6)


def test_stacked_dropout_each_cell_own_masks(rng):
    layer = RNN([GRUCell(3, dropout=0.5, seed=1), GRUCell(2, recurrent_dropout=0.5, seed=2)],
                return_sequences=True)
    y, tape = layer.forward(rng.normal(size=(4, 3, 5)), training=True)
    assert tape.dropout[0].inputs.shape == (4, 5)
    assert tape.dropout[1].inputs is None and tape.dropout[1].recurrent.shape == (3, 4, 2)


def test_mixed_stack_with_custom_cell_runs_generic(rng):
    g = GRUCell(3, dtype="float64")
    m = MinimalRNNCell(2, 3)
    layer = RNN([g, m], return_sequences=True, dtype="float64")
    x = rng.normal(size=(2, 4, 5))
    mask = rng.random((2, 4)) > 0.3
    out = layer(x, mask=mask)

    def step(xt, states):
        o, s0 = g.call(xt, [states[0]])
        o2, s1 = m.call(o, [states[1]])
        return o2, [s0[0], s1[0]]

    want, _ = keras_loop(step, x, [np.zeros((2, 3)), np.zeros((2, 2))], mask)
    np.testing.assert_allclose(out, want, atol=1e-12)


def test_gru_cell_direct_step_and_protocol(rng):
    cell = GRUCell(3, dtype="float64")
    x = rng.normal(size=(2, 4))
    h, states = cell(x, [np.zeros((2, 3))])
    assert h.shape == (2, 3) and states[0] is h
    assert cell.state_size == 3 and cell.output_size == 3
    assert cell.get_initial_state(batch_size=2)[0].shape == (2, 3)
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(batch, 4\); .* \(2, 5\)"):
        cell(rng.normal(size=(2, 5)), [np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"`inputs` must have shape .* received \(2, 1, 4\)"):
        cell(x[:, None], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"`states` must hold .* \(2, 3\); received \(2, 4\)"):
        cell(x, [np.zeros((2, 4))])
    gru = GRU(3, dtype="float64")
    gru.build((2, 1, 4))
    gru.set_weights(cell.get_weights())
    np.testing.assert_allclose(gru(x[:, None]), h, atol=1e-12)


class IdentityCell:
    """Passes its input through; one dummy state. Forces the generic per-step loop."""

    def __init__(self, size):
        self.state_size = 1
        self.output_size = size

    def call(self, x, states):
        return x, [states[0]]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), gb=st.booleans(), zo=st.booleans(), rs=st.booleans(),
       training=st.booleans(), per_gate=st.booleans())
def test_generic_loop_equals_engine_path(seed, gb, zo, rs, training, per_gate):
    r = np.random.default_rng(seed)
    x = r.normal(size=(3, 5, 4))
    mask = r.random((3, 5)) > 0.4
    kw = dict(dropout=0.4, recurrent_dropout=0.3 if per_gate else 0.0, seed=seed,
              dtype="float64", bias_initializer="random_normal")
    flags = dict(return_sequences=rs, go_backwards=gb, zero_output_for_mask=zo,
                 dtype="float64")
    a = GRUCell(3, **kw)
    b = GRUCell(3, **kw)
    fast = RNN(a, **flags)
    slow = RNN([b, IdentityCell(3)], **flags)
    fast.build(x.shape)
    slow.build(x.shape)
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(slow(x, mask=mask, training=training),
                               fast(x, mask=mask, training=training), atol=1e-12)


@pytest.mark.parametrize("states", [[], ()], ids=["list", "tuple"])
def test_gru_cell_empty_states_are_named(rng, states):
    """GRUCell(4)(x, []) gave 'IndexError: list index out of range'."""
    with pytest.raises(ValueError, match=r"GRUCell 'c': `states` must hold one array of shape "
                                         r"\(batch, units\) = \(batch, 3\); received an empty"):
        GRUCell(3, name="c")(rng.normal(size=(2, 4)), states)


def test_gru_cell_takes_nested_lists_and_names_a_ragged_one(rng):
    """A list input gave "'list' object has no attribute 'shape'": lists are taken as Keras
    takes them, and a ragged one is named."""
    cell = GRUCell(3, dtype="float64")
    x = rng.normal(size=(2, 4))
    h0 = [np.zeros((2, 3))]
    np.testing.assert_array_equal(cell(x.tolist(), h0)[0], cell(x, h0)[0])
    np.testing.assert_array_equal(GRUCell(3)(x.tolist())[0].shape, (2, 3))  # unbuilt, no state
    with pytest.raises(ValueError, match=r"GRUCell 'c': a step's `inputs` must be an array, or "
                                         "nested lists of one shape"):
        GRUCell(3, name="c")([[1.0, 2.0], [1.0]])
