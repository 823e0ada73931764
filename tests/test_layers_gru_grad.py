"""Layer training API (forward/backward -> Grads) against central finite differences of the
layer's own calls (float64, small shapes)."""

import numpy as np
import pytest

import fastgru
from fastgru import GRU, RNN, GRUCell


def _loss_fn(layer, x, h0, mask, dy, ds, training=False):
    rngs = [c._rng.bit_generator.state if c._rng is not None else None for c in _cells(layer)]

    def loss():
        for w in layer.weights:  # finite differences edit values in place: invalidate caches
            w.bump()
        for c, s in zip(_cells(layer), rngs):  # replay the same dropout masks
            if s is not None:
                c._rng.bit_generator.state = s
        out = layer(x, h0, mask=mask, training=training)
        if layer.return_state:
            y, *states = out
        else:
            y, states = out, []
        total = float((y * dy).sum())
        for s, d in zip(states, ds):
            s = s[0] if isinstance(s, list) else s
            total += float((s * d).sum())
        return total
    return loss


def _cells(layer):
    return layer.cell.cells if hasattr(layer.cell, "cells") else [layer.cell]


def _check(layer, x, h0, mask, fd, training=False, tol=1e-6):
    r = np.random.default_rng(1)
    layer.n_threads = 1  # hundreds of tiny calls: threads only add latency on a busy machine
    if training:  # create the cells' RNGs so the FD calls can replay their state
        for c in _cells(layer):
            c._rng = np.random.default_rng(42)
    state0 = [c._rng.bit_generator.state if c._rng is not None else None for c in _cells(layer)]
    out, tape = layer.forward(x, h0, mask=mask, training=training)
    y = out[0] if layer.return_state else out
    dy = r.normal(size=y.shape)
    n_states = len(out) - 1 if layer.return_state else 0
    ds = [r.normal(size=(x.shape[1] if layer.time_major else x.shape[0], c.units))
          for c in _cells(layer)][:n_states]
    if layer.return_state:
        d = (dy, *([d] if isinstance(out[1], list) else d for d in ds))
        grads = layer.backward(tape, d)
    else:
        grads = layer.backward(tape, dy)
    for c, s in zip(_cells(layer), state0):
        if s is not None:
            c._rng.bit_generator.state = s
    loss = _loss_fn(layer, x, h0, mask, dy, ds, training)
    for var, g in zip(layer.trainable_weights, grads):
        np.testing.assert_allclose(g, fd(loss, var.value), rtol=tol, atol=tol,
                                   err_msg=var.name)
    np.testing.assert_allclose(grads.inputs, fd(loss, x), rtol=tol, atol=tol)
    if h0 is not None:
        hs = h0 if isinstance(h0, list) else [h0]
        gh = grads.initial_state if isinstance(grads.initial_state, list) else \
            [grads.initial_state]
        for h, g in zip(hs, gh):
            np.testing.assert_allclose(g, fd(loss, h), rtol=tol, atol=tol)
    return grads


@pytest.mark.parametrize("kw", [
    {},
    {"return_sequences": True},
    {"return_state": True, "return_sequences": True, "go_backwards": True},
    {"return_state": True, "reset_after": False},
    {"use_bias": False, "return_sequences": True, "zero_output_for_mask": True},
    {"time_major": True, "return_sequences": True, "return_state": True},
])
def test_gru_grads_vs_finite_differences(kw, fd):
    r = np.random.default_rng(0)
    layer = GRU(3, dtype="float64", bias_initializer="random_normal", **kw)
    B, T = 2, 4
    x = r.normal(size=(T, B, 2) if kw.get("time_major") else (B, T, 2))
    h0 = r.normal(size=(B, 3))
    mask = r.random((B, T)) > 0.3
    mask[0, :] = True
    if kw.get("time_major"):
        mask = mask.T
    g = _check(layer, x, h0, mask, fd)
    assert g.names == ["kernel", "recurrent_kernel", "bias"][: len(g.weights)]
    assert g.kernel.shape == layer.cell.kernel.shape
    assert g.initial_state.shape == (B, 3)


def test_gru_grads_with_dropout(fd):
    r = np.random.default_rng(3)
    x = r.normal(size=(2, 3, 4))
    for kw in ({"dropout": 0.3}, {"dropout": 0.2, "recurrent_dropout": 0.4}):
        layer = GRU(2, dtype="float64", return_sequences=True, seed=0, **kw)
        _check(layer, x, None, None, fd, training=True)


def test_stacked_grads_vs_finite_differences(fd):
    r = np.random.default_rng(5)
    x = r.normal(size=(2, 4, 3))
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], bool)
    for gb in (False, True):
        layer = RNN([GRUCell(3, dtype="float64", bias_initializer="random_normal"),
                     GRUCell(2, dtype="float64", reset_after=False)],
                    dtype="float64", return_sequences=True, return_state=True, go_backwards=gb)
        h0 = [r.normal(size=(2, 3)), r.normal(size=(2, 2))]
        g = _check(layer, x, h0, mask, fd)
        assert isinstance(g.initial_state, list) and len(g.initial_state) == 2
        second = layer.cell.cells[1].name
        assert g[f"{second}/kernel"].shape == (3, 6)
        with pytest.raises(KeyError, match="ambiguous"):
            g["kernel"]
        assert len(g.weights) == 6


def test_backward_forms_and_errors():
    r = np.random.default_rng(2)
    layer = GRU(2, dtype="float64", return_state=True)
    x = r.normal(size=(2, 3, 2))
    (y, s), tape = layer.forward(x)
    g1 = layer.backward(tape, (np.ones_like(y), np.ones_like(s)))
    g2 = layer.backward(tape, np.ones_like(y), d_state=np.ones_like(s))
    g3 = layer.backward(tape, (np.ones_like(y) * 2, None))
    g4 = layer.backward(tape, (None, np.ones_like(s) * 2))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b)
    for a, b, c in zip(g1, g3, g4):
        np.testing.assert_allclose(2 * a, b + c, atol=1e-12)
    assert list(g1) == g1.weights and len(g1) == 3
    np.testing.assert_array_equal(g1.recurrent_kernel, g1["recurrent_kernel"])
    with pytest.raises(ValueError, match="`d_outputs` must have the shape"):
        layer.backward(tape, (np.ones((3, 2)), None))
    with pytest.raises(ValueError, match="not both"):
        layer.backward(tape, (y, s), d_state=s)
    # time-major: the message quotes the shape as given (it quoted it transposed, so that a
    # batch-major (2, 3, 2) read "must have ... (3, 2, 2); received (3, 2, 2)")
    tm = GRU(2, dtype="float64", return_sequences=True, time_major=True)
    ytm, ttm = tm.forward(x.swapaxes(0, 1))
    with pytest.raises(ValueError, match=r"outputs \(3, 2, 2\); received \(2, 3, 2\)"):
        tm.backward(ttm, np.ones((2, 3, 2)))
    with pytest.raises(TypeError, match="tape"):
        layer.backward("nope", y)
    with pytest.raises(AttributeError):
        _ = g1.nothing
    frozen = GRU(2, trainable=False)
    yy, t2 = frozen.forward(x)
    assert frozen.backward(t2, np.ones_like(yy)).weights == []


def test_a_tape_is_refused_once_the_weights_change():
    """The engines' tapes hold the weights by reference: backward after set_weights or an
    optimizer step would mix the recorded forward with the new weights."""
    from fastgru.optim import SGD

    r = np.random.default_rng(5)
    layer = GRU(3, dtype="float64")
    x = r.normal(size=(2, 4, 2))
    y, tape = layer.forward(x)
    layer.set_weights([w * 2 for w in layer.get_weights()])
    with pytest.raises(ValueError, match="weights changed .* run forward again"):
        layer.backward(tape, np.ones_like(y))
    y, tape = layer.forward(x)
    grads = layer.backward(tape, np.ones_like(y))
    SGD(layer.trainable_weights, learning_rate=0.1).step(list(grads.weights))
    with pytest.raises(ValueError, match="weights changed"):
        layer.backward(tape, np.ones_like(y))


def test_a_tape_of_another_layer_is_named_as_such():
    """Another layer's tape, even one of the same configuration, is not a weight change."""
    x = np.random.default_rng(6).normal(size=(2, 4, 2))
    a, b = GRU(3, name="first"), GRU(3, name="second")
    y, tape = a.forward(x)
    b(x)
    with pytest.raises(ValueError, match=r"Layer 'second': this tape was recorded by another "
                                         r"layer \('first'\)"):
        b.backward(tape, np.ones_like(y))
    a.backward(tape, np.ones_like(y))  # its own layer takes it


def test_forward_float32_and_optimizer_style_iteration():
    r = np.random.default_rng(4)
    layer = GRU(3)
    x = r.normal(size=(2, 5, 4)).astype(np.float32)
    y, tape = layer.forward(x, training=False)
    np.testing.assert_allclose(y, layer(x), atol=1e-6)
    grads = layer.backward(tape, np.ones_like(y))
    assert all(g.dtype == np.float32 and g.shape == w.shape
               for g, w in zip(grads, layer.trainable_weights))
    assert grads.inputs.dtype == np.float32


def test_forward_on_custom_cell_is_refused():
    class Cell:
        state_size = 2

        def call(self, x, s):
            return s[0], s

    with pytest.raises(NotImplementedError, match="GRUCell"):
        RNN(Cell()).forward(np.zeros((1, 2, 2)))


def test_masked_nan_inputs_keep_gradients_finite():
    r = np.random.default_rng(6)
    x = r.normal(size=(2, 4, 3))
    mask = np.ones((2, 4), bool)
    mask[1, 2:] = False
    x[1, 2:] = np.nan
    layer = GRU(2, dtype="float64", return_sequences=True)
    y, tape = layer.forward(x, mask=mask)
    assert np.isfinite(y).all()
    g = layer.backward(tape, np.ones_like(y))
    assert np.isfinite(g.inputs).all() and np.isfinite(g.kernel).all()
    assert all(np.isfinite(w).all() for w in g)


def test_state_written_back_by_forward():
    layer = GRU(2, stateful=True, dtype="float64")
    x = np.ones((1, 3, 1))
    y, _ = layer.forward(x)
    np.testing.assert_allclose(layer.states[0].numpy(), y)


@pytest.mark.parametrize("d,arg", [
    ((), "d_outputs"), ([], "d_outputs"), ((None, []), "d_state"), ((None, ()), "d_state"),
], ids=["empty-tuple", "empty-list", "empty-state-list", "empty-state-tuple"])
def test_empty_d_outputs_or_state_of_a_return_state_layer_is_named(d, arg):
    """backward(tape, ()) gave 'IndexError: tuple index out of range'."""
    layer = GRU(3, return_state=True, name="g")
    (y, _), tape = layer.forward(np.ones((2, 4, 5)), training=True)
    with pytest.raises(ValueError, match=f"`{arg}` of layer 'g'.*received an empty"):
        layer.backward(tape, d)


def test_empty_d_state_entry_of_a_stack_is_named():
    layer = RNN([GRUCell(3), GRUCell(2)], return_state=True, name="g")
    _, tape = layer.forward(np.ones((2, 4, 5)), training=True)
    with pytest.raises(ValueError, match=r"`d_state\[1\]` of layer 'g'.*received an empty list"):
        layer.backward(tape, None, d_state=[None, []])


@pytest.mark.parametrize("make", [
    lambda: GRU(3, return_sequences=True, dtype="float64"),
    lambda: GRU(3, dtype="float64"),
    lambda: fastgru.Bidirectional(GRU(3, return_sequences=True, dtype="float64")),
    lambda: fastgru.Bidirectional(GRU(3, return_sequences=True, dtype="float64"),
                                  merge_mode=None),
], ids=["sequences", "last", "bidirectional", "bidirectional-pair"])
def test_d_outputs_as_nested_lists(make):
    """d_outputs as nested lists (the inputs may be): the gradients of the same array; a
    ragged one named."""
    x = np.random.default_rng(7).normal(size=(2, 3, 4))
    layer = make()
    y, tape = layer.forward(x)
    pair = isinstance(y, tuple)
    want = layer.backward(tape, tuple(np.ones_like(a) for a in y) if pair else np.ones_like(y))
    got = layer.backward(tape, [np.ones_like(a).tolist() for a in y] if pair
                         else np.ones_like(y).tolist())
    np.testing.assert_array_equal(got.inputs, want.inputs)
    for a, b in zip(got.weights, want.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    ragged = [[[1.0] * 3] * 3, [[1.0] * 3]]
    with pytest.raises(ValueError, match=r"`d_outputs(\[0\])?` of layer .* nested lists of "
                                         r"one shape"):
        layer.backward(tape, [ragged, ragged] if pair else ragged)
