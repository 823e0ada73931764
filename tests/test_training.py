"""Training without a framework: learning, explicit tapes, regularization, constraints."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import central_diff

import fastgru
from fastgru import GRU, RNN, Dense, GRUCell, Sequential, optim


def _glorot(seed):
    return fastgru.initializers.GlorotUniform(seed=seed)


def _masked_window_sum(rng, n, T=12):
    """Inputs (n, T, 2): channel 0 values, channel 1 a 0/1 marker; target: the sum of the
    marked values. Rows have random lengths (right padding) given by the mask."""
    x = np.zeros((n, T, 2), np.float32)
    x[..., 0] = rng.uniform(-1, 1, (n, T))
    lengths = rng.integers(4, T + 1, n)
    mask = np.arange(T)[None, :] < lengths[:, None]
    for i in range(n):
        marked = rng.choice(lengths[i], 2, replace=False)
        x[i, marked, 1] = 1
    y = (x[..., 0] * x[..., 1] * mask).sum(axis=1, keepdims=True)
    x[~mask] = 0
    return x, mask, y.astype(np.float32)


def test_gru_and_dense_learn_masked_window_sum_with_adam():
    """A GRU(16) + Dense(1) trained with Adam reaches a validation MSE below 0.02 (the
    target's variance is about 0.6; 0.003 is typical) within 300 minibatch steps: about a
    second on 2 cores."""
    rng = np.random.default_rng(0)
    x, mask, y = _masked_window_sum(rng, 512)
    x_val, mask_val, y_val = _masked_window_sum(rng, 256)
    gru, head = GRU(16, seed=1), Dense(1, kernel_initializer=_glorot(2))
    model = Sequential([gru, head])
    model.build(x.shape)
    opt = optim.Adam(model.trainable_weights, learning_rate=0.01)

    t0 = time.perf_counter()
    for _ in range(300):
        idx = rng.choice(len(x), 64, replace=False)
        pred, tape = model.forward(x[idx], mask=mask[idx], training=True)
        d_pred = 2 * (pred - y[idx]) / len(idx)
        opt.step(model.backward(tape, d_pred))
    elapsed = time.perf_counter() - t0

    val_mse = float(np.mean((model(x_val, mask=mask_val) - y_val) ** 2))
    baseline = float(np.var(y_val))
    assert val_mse < 0.02, (val_mse, baseline)
    assert val_mse < baseline / 10
    assert elapsed < 60  # generous: a regression guard against pathological slowness only


def test_interleaved_tapes_are_independent(rng):
    x1, x2 = rng.normal(size=(2, 3, 5, 4))
    layer = GRU(3, return_sequences=True, dtype="float64", seed=0)
    y1, t1 = layer.forward(x1)
    y2, t2 = layer.forward(x2)
    g2 = layer.backward(t2, np.ones_like(y2))
    g1 = layer.backward(t1, np.ones_like(y1))
    # The same pairs run one after another give the same gradients.
    g1_seq = layer.backward(layer.forward(x1)[1], np.ones_like(y1))
    g2_seq = layer.backward(layer.forward(x2)[1], np.ones_like(y2))
    for a, b in zip(list(g1) + [g1.inputs], list(g1_seq) + [g1_seq.inputs]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(list(g2) + [g2.inputs], list(g2_seq) + [g2_seq.inputs]):
        np.testing.assert_array_equal(a, b)


def test_forward_backward_in_parallel_threads_match_serial(rng):
    xs = [rng.normal(size=(4, 6, 3)).astype(np.float32) for _ in range(4)]
    layer = GRU(5, return_sequences=True, seed=3)
    layer.build(xs[0].shape)

    def run(x):
        y, tape = layer.forward(x)
        return layer.backward(tape, np.ones_like(y))

    serial = [run(x) for x in xs]
    results = [None] * len(xs)

    def worker(i):
        for _ in range(3):
            results[i] = run(xs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for a, b in zip(list(got) + [got.inputs], list(want) + [want.inputs]):
            np.testing.assert_array_equal(a, b)


def test_stacked_cells_with_dropout_gradients_match_finite_differences(rng):
    """RNN([GRUCell, GRUCell]) with recurrent dropout: the tape records the masks, so the
    gradient is exact for the function with those masks fixed."""
    x = rng.normal(size=(3, 4, 2))
    cells = [GRUCell(3, dropout=0.3, recurrent_dropout=0.4, seed=5, dtype="float64"),
             GRUCell(2, reset_after=False, recurrent_dropout=0.5, seed=6, dtype="float64")]
    layer = RNN(cells, return_sequences=True, dtype="float64")
    layer.build(x.shape)
    y, tape = layer.forward(x, training=True)
    d_y = rng.normal(size=y.shape)
    g = layer.backward(tape, d_y)

    # Replay the same dropout masks: a forward with an identical seed stream.
    def loss():
        replay = RNN([GRUCell(3, dropout=0.3, recurrent_dropout=0.4, seed=5, dtype="float64"),
                      GRUCell(2, reset_after=False, recurrent_dropout=0.5, seed=6,
                              dtype="float64")], return_sequences=True, dtype="float64")
        replay.build(x.shape)
        replay.set_weights([w.value for w in layer.weights])
        out, _ = replay.forward(x, training=True)
        return float((out * d_y).sum())

    assert abs(loss() - float((y * d_y).sum())) < 1e-12  # the replay sees the same masks
    for var, grad in zip(layer.trainable_weights, g):
        num = central_diff(loss, var.value)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_regularization_losses_and_gradients(rng):
    layer = GRU(3, kernel_regularizer="l2", recurrent_regularizer=fastgru.regularizers.L1(0.05),
                bias_regularizer={"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}},
                dtype="float64", seed=0)
    layer.build((2, 4, 3))
    for w in layer.weights:
        w.value[...] = rng.normal(size=w.shape)
    assert len(layer.losses) == 3
    grads = layer.regularization_gradients()
    for var, grad in zip(layer.trainable_weights, grads):
        num = central_diff(lambda: sum(layer.losses), var.value)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_constraint_holds_after_every_optimizer_step(rng):
    layer = GRU(4, kernel_constraint="non_neg", recurrent_constraint="max_norm", seed=0)
    x = rng.normal(size=(8, 5, 3)).astype(np.float32)
    layer.build(x.shape)
    opt = optim.SGD(layer.trainable_weights, learning_rate=0.5, momentum=0.9)
    for _ in range(5):
        y, tape = layer.forward(x)
        opt.step(layer.backward(tape, -np.ones_like(y)))
        kernel, recurrent = layer.get_weights()[:2]
        assert (kernel >= 0).all()
        assert np.linalg.norm(recurrent, axis=0).max() <= 2.0 + 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_training_step_keeps_dtype_and_changes_loss(dtype, rng):
    x = rng.normal(size=(6, 7, 4)).astype(dtype)
    y_true = rng.normal(size=(6, 2)).astype(dtype)
    model = Sequential([GRU(5, dtype=dtype, seed=0),
                        Dense(2, dtype=dtype, kernel_initializer=_glorot(0))])
    model.build(x.shape)
    opt = optim.Adam(model.trainable_weights, learning_rate=0.05)
    losses = []
    for _ in range(30):
        pred, tape = model.forward(x)
        losses.append(float(np.mean((pred - y_true) ** 2)))
        opt.step(model.backward(tape, 2 * (pred - y_true) / pred.size))
    assert losses[-1] < 0.5 * losses[0]
    assert all(w.value.dtype == np.dtype(dtype) for w in model.trainable_weights)
