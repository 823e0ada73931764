"""Frozen snapshots: ``RNN.freeze()`` (layers/frozen.py) and the CPU engine's ``Snapshot``.

A snapshot must return exactly what the layer (the engine's ``forward``) returns at freezing
time, bit for bit and in the same structure, for every configuration the layer takes; it must
own its weights (later edits of the layer never reach it) and carry its own stateful states."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgru
from fastgru import GRU, RNN, GRUCell, activations
from fastgru.engines import cpu
from fastgru.engines.base import GRUSpec, Weights

needs_cpu = pytest.mark.skipif(not cpu.available(), reason="CPU extension not built")


@pytest.fixture(autouse=True)
def threads_even_for_small_work(monkeypatch):
    """Tiny problems would otherwise run on one thread: the split paths would go untested."""
    monkeypatch.setattr(cpu, "_MIN_THREAD_WORK", 0)


def same(a, b):
    """Equal structure (tuple / list nesting) and bitwise-equal arrays."""
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), (type(a), type(b))
        for x, y in zip(a, b, strict=True):
            same(x, y)
        return
    assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def layer_for(cfg, D):
    kw = dict(return_sequences=cfg["seq"], return_state=cfg["state"],
              go_backwards=cfg["back"], time_major=cfg["tm"],
              zero_output_for_mask=cfg["zero"], dtype=cfg["dtype"])
    cell_kw = dict(reset_after=cfg["ra"], use_bias=cfg["bias"], seed=cfg["seed"],
                   bias_initializer="random_normal")
    if cfg["cells"] == 1:
        return GRU(cfg["u"], **cell_kw, **kw)
    # 0: a stack of one cell (its own initial-state and return-structure rules)
    return RNN([GRUCell(cfg["u"] + i, **cell_kw) for i in range(max(cfg["cells"], 1))], **kw)


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries(dict(
    B=st.integers(1, 5), T=st.integers(1, 7), D=st.integers(1, 9), u=st.integers(1, 70),
    seq=st.booleans(), state=st.booleans(), back=st.booleans(), tm=st.booleans(),
    zero=st.booleans(), ra=st.booleans(), bias=st.booleans(), cells=st.integers(0, 3),
    dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99),
    mask=st.sampled_from(["none", "random"]), init=st.sampled_from(["none", "bare", "list"]),
    threads=st.integers(1, 3))))
def test_frozen_matches_layer(cfg):
    rng = np.random.default_rng(cfg["seed"])
    B, T, D = cfg["B"], cfg["T"], cfg["D"]
    layer = layer_for(cfg, D)
    layer.n_threads = cfg["threads"]
    shape = (T, B, D) if cfg["tm"] else (B, T, D)
    x = rng.standard_normal(shape).astype(cfg["dtype"])
    mask = None
    if cfg["mask"] == "random":
        mask = rng.random(shape[:2]) < 0.7
    init = None
    units = [cfg["u"] + i for i in range(max(cfg["cells"], 1))]
    if cfg["init"] != "none":
        hs = [rng.standard_normal((B, n)).astype(cfg["dtype"]) for n in units]
        if cfg["cells"] == 1 and not isinstance(layer.cell, fastgru.StackedRNNCells):
            init = hs[0] if cfg["init"] == "bare" else [hs[0]]
        else:
            init = hs if cfg["init"] == "bare" else [[h] for h in hs]
    expected = layer(x, initial_state=init, mask=mask)
    frozen = layer.freeze()
    same(expected, frozen(x, initial_state=init, mask=mask))
    # its own weights: an in-place edit of the layer's (no version bump) does not reach it
    for v in layer.weights:
        v.value += 1
    same(expected, frozen(x, initial_state=init, mask=mask))


def test_frozen_takes_a_bare_state_of_its_dtype_as_it_is():
    """A one-cell frozen layer takes a bare (B, units) initial state of its dtype without the
    general checks (the same array, the result of the general path); other dtypes are cast,
    other shapes refused, a list goes the general way; a stateful layer still checks its
    batch first."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    layer = GRU(5, return_state=True)
    layer(x)
    frozen = layer.freeze()
    h = rng.standard_normal((2, 5)).astype(np.float32)
    (h0,), bare = frozen._states(h, 2)
    assert h0 is h and bare == [True]
    (h64,), bare = frozen._states(h.astype(np.float64), 2)
    assert h64.dtype == np.float32 and np.array_equal(h64, h) and bare == [True]
    (hl,), bare = frozen._states([h], 2)
    assert hl is h and bare == [False]
    with pytest.raises(ValueError, match=r"initial_state.*\(2, 5\)"):
        frozen._states(h[:, :4], 2)
    same(layer(x, initial_state=h), frozen(x, initial_state=h))
    stateful = GRU(5, stateful=True)
    stateful(x)
    with pytest.raises(ValueError, match="batch size"):
        stateful.freeze()(x[:1], initial_state=h[:1])


def test_frozen_owns_its_weights_and_config():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    layer = GRU(8, return_sequences=True)
    before = layer(x)
    frozen = layer.freeze()
    layer.set_weights([w * 2 for w in layer.get_weights()])
    layer.return_sequences = False
    after = layer(x)
    assert after.shape == (2, 8) and not np.allclose(after, before[:, -1])
    np.testing.assert_array_equal(frozen(x), before)
    refrozen = layer.freeze()
    np.testing.assert_array_equal(refrozen(x), after)


def test_frozen_stateful_carries_its_own_states():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, 4, 5)).astype(np.float32) for _ in range(3)]
    layer = GRU(6, stateful=True, return_sequences=True, return_state=True)
    layer(xs[0])  # the layer's state is now non-zero
    start = [v.value.copy() for v in layer.states]
    frozen = layer.freeze()
    want = [layer(x) for x in xs]
    for v, s in zip(layer.states, start, strict=True):  # rewind the layer
        v.assign(s)
    got = [frozen(x) for x in xs]
    for w, g in zip(want, got, strict=True):
        same(w, g)
    np.testing.assert_array_equal(frozen.states[0], want[-1][1])
    frozen.reset_state()
    layer.reset_state()
    same(layer(xs[0]), frozen(xs[0]))
    with pytest.raises(ValueError, match="batch size"):
        frozen(xs[0][:2])


def test_frozen_python_activation_runs_the_reference_engine():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3))
    layer = GRU(5, activation=lambda a: np.tanh(a) * 0.5, dtype="float64",
                return_sequences=True)
    expected = layer(x)
    frozen = layer.freeze()
    np.testing.assert_array_equal(frozen(x), expected)
    assert "engine 'reference'" in frozen.explain(x)


def test_frozen_input_conversion_and_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4))  # float64 into a float32 layer: cast as the layer does
    layer = GRU(3, return_state=True)
    expected = layer(x)
    frozen = layer.freeze()
    same(expected, frozen(x))
    same(layer(x.tolist()), frozen(x.tolist()))
    with pytest.raises(ValueError, match="built for D=4"):
        frozen(x[..., :3])
    with pytest.raises(ValueError, match="shape"):
        frozen(x[0])
    with pytest.raises(ValueError, match="at least one timestep"):
        frozen(x[:, :0])
    with pytest.raises(ValueError, match=r"initial_state.*\(2, 3\)"):
        frozen(x, initial_state=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="mask"):
        frozen(x, mask=np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="GRUCell"):
        RNN(_PlainCell()).freeze()
    with pytest.raises(ValueError, match="not built"):
        GRU(3).freeze()


class _PlainCell:
    state_size = 2

    def call(self, x, states):  # pragma: no cover - never run
        return x, states


def test_frozen_explain_and_repr():
    x = np.zeros((1, 2, 3), np.float32)
    layer = GRU(4)
    layer(x)
    frozen = layer.freeze(n_threads=1)
    text = fastgru.explain(frozen, x)
    assert text.startswith("gru") and "frozen" in text
    if cpu.available():
        assert "snapshot" in text and "training" not in text
    assert "FrozenRNN" in repr(frozen)


# ------------------------------------------------------------------ the engine's Snapshot
def make_weights(rng, D, u, dtype, reset_after=True):
    bias = rng.standard_normal((2, 3 * u) if reset_after else (3 * u,)).astype(dtype)
    return Weights(rng.standard_normal((D, 3 * u)).astype(dtype) * 0.5,
                   rng.standard_normal((u, 3 * u)).astype(dtype) * 0.5, bias)


@needs_cpu
@pytest.mark.parametrize("kernel", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_snapshot_matches_forward(kernel, dtype):
    from fastgru._cpu import _gru

    if ["generic", "avx2", "avx512"].index(kernel) > _gru.isa_best():
        pytest.skip(f"{kernel} not supported by this CPU")
    rng = np.random.default_rng(5)
    for B, T, D, u, ra in ((1, 9, 4, 70, True), (2, 3, 5, 8, False), (5, 12, 3, 33, True),
                           (1, 20, 16, 64, True)):
        spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"), reset_after=ra,
                       return_sequences=True)
        w = make_weights(rng, D, u, dtype, ra)
        x = rng.standard_normal((B, T, D)).astype(dtype)
        h0 = rng.standard_normal((B, u)).astype(dtype)
        mask = rng.random((B, T)) < 0.7
        for threads in (1, 2):
            snap = cpu.Snapshot(w, spec, n_threads=threads, kernel=kernel)
            for args in ((h0, mask), (None, None)):
                want = cpu.forward(x, w, args[0], spec, mask=args[1], n_threads=threads,
                                   kernel=kernel)
                got = snap.forward(x, *args)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])


@needs_cpu
def test_snapshot_copies_weights_and_checks_inputs():
    rng = np.random.default_rng(6)
    spec = GRUSpec(6, activations.get("tanh"), activations.get("sigmoid"))
    w = make_weights(rng, 4, 6, np.float32)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    snap = cpu.Snapshot(w, spec)
    want = cpu.forward(x, w, None, spec)
    for a in w:
        a *= 3
    got = snap.forward(x)
    np.testing.assert_array_equal(got[0], want[0])
    zeros = snap.forward(x, None)[1]
    assert not np.array_equal(zeros, cpu.forward(x, w, None, spec)[1])
    with pytest.raises(TypeError, match="float32"):
        snap.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="4 features"):
        snap.forward(x[..., :3])
    with pytest.raises(ValueError, match="h0"):
        snap.forward(x, np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match="mask"):
        snap.forward(x, None, np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="kernel"):
        cpu.Snapshot(Weights(w.kernel[:, :5], w.recurrent_kernel, w.bias), spec)
    empty = snap.forward(np.zeros((0, 3, 4), np.float32))
    assert empty[0].shape == (0, 6) and empty[1].shape == (0, 6)


def half_tanh(a):  # a user activation that pickles (by name): the reference engine runs it
    return np.tanh(a) * 0.5


@pytest.mark.parametrize("activation", ["tanh", half_tanh])
def test_frozen_pickles(activation):
    import pickle

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    layer = RNN([GRUCell(9), GRUCell(4, activation=activation)], return_sequences=True,
                return_state=True, stateful=True)
    layer(x)
    frozen = layer.freeze(n_threads=2)
    loaded = pickle.loads(pickle.dumps(frozen))
    if activation is half_tanh:
        assert "engine 'reference'" in loaded.explain(x)
    same(frozen(x), loaded(x))
    same(frozen(x), loaded(x))  # the states moved on alike


@settings(max_examples=25, deadline=None)
@given(st.fixed_dictionaries(dict(
    merge=st.sampled_from(["concat", "sum", "mul", "ave", None]), seq=st.booleans(),
    state=st.booleans(), tm=st.booleans(), mask=st.booleans(), init=st.booleans(),
    stateful=st.booleans(), seed=st.integers(0, 99))))
def test_frozen_bidirectional_matches_layer(cfg):
    rng = np.random.default_rng(cfg["seed"])
    B, T, D, u = 3, 5, 4, 6
    layer = fastgru.Bidirectional(
        GRU(u, return_sequences=cfg["seq"], return_state=cfg["state"], time_major=cfg["tm"],
            stateful=cfg["stateful"], seed=cfg["seed"], bias_initializer="random_normal"),
        merge_mode=cfg["merge"])
    shape = (T, B, D) if cfg["tm"] else (B, T, D)
    x = rng.standard_normal(shape).astype(np.float32)
    mask = (rng.random(shape[:2]) < 0.7) if cfg["mask"] else None
    init = [rng.standard_normal((B, u)).astype(np.float32) for _ in range(2)] \
        if cfg["init"] else None
    layer(x)  # built (and, stateful, with non-zero states)
    frozen = layer.freeze()
    same(layer(x, initial_state=init, mask=mask), frozen(x, initial_state=init, mask=mask))
    same(layer(x, mask=mask), frozen(x, mask=mask))  # stateful: both carried their states
    assert "forward" in frozen.explain(x)


def test_frozen_concurrent_calls_bit_identical(in_threads):
    """A server shares one snapshot between its threads: concurrent calls (split-units teams
    at batch 1, row groups at batch 6) return what serial calls return."""
    rng = np.random.default_rng(8)
    layer = GRU(70, return_sequences=True, return_state=True)
    xs = [rng.standard_normal((b, 9, 5)).astype(np.float32) for b in (1, 6, 1, 6)]
    layer(xs[0])
    frozen = layer.freeze(n_threads=2)
    want = [frozen(x) for x in xs]
    results = []

    def work(i):
        for _ in range(10):
            results.append((i, frozen(xs[i])))

    in_threads(work, 4)
    assert len(results) == 40
    for i, got in results:
        same(want[i], got)


@pytest.mark.parametrize("masked", [False, True])
def test_frozen_sequential_matches_model(masked):
    import pickle

    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 7, 5)).astype(np.float32)
    mask = (rng.random((4, 7)) < 0.7) if masked else None
    inner = fastgru.Sequential([GRU(6, return_sequences=True, go_backwards=True),
                                fastgru.Dense(5, activation="tanh")])
    model = fastgru.Sequential([
        GRU(8, return_sequences=True, seed=1, bias_initializer="random_normal"),
        fastgru.Bidirectional(GRU(6, return_sequences=True, seed=2), merge_mode="sum"),
        inner, GRU(4, seed=3), fastgru.Dense(3, activation="relu")])
    expected = model(x, mask=mask)
    frozen = model.freeze(n_threads=2)
    np.testing.assert_array_equal(frozen(x, mask=mask), expected)
    model.set_weights([w * 0.5 for w in model.get_weights()])  # not the snapshot's business
    assert not np.array_equal(model(x, mask=mask), expected)
    np.testing.assert_array_equal(frozen(x, mask=mask), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(frozen))(x, mask=mask), expected)
    text = fastgru.explain(frozen, x, mask=mask)
    assert len(frozen.layers) == 5
    assert text.count("engine 'cpu' snapshot" if cpu.available() else "engine 'reference'") == 5
    assert frozen.compute_mask(x, mask) is None  # the last GRU drops it, as in the model
    gru = GRU(3, return_state=True)
    gru(x)
    with pytest.raises(ValueError, match="returns 2"):  # as the model's own call says
        fastgru.Sequential([gru]).freeze()(x)
    built = GRU(3)
    built(x)
    with pytest.raises(ValueError, match="Layer 'late' .* is not built"):  # it would make
        fastgru.Sequential([built, fastgru.Dense(2, name="late")]).freeze()  # its own weights


def test_frozen_from_device_weights_takes_host_copies(monkeypatch):
    """A layer whose weights and states live on the GPU (CuPy arrays) is frozen from host
    copies (``.get()``): here a stand-in 'cupy' module and array type."""
    import sys
    import types

    class DeviceArray:
        def __init__(self, a):
            self._a = np.array(a)
            self.shape, self.dtype = self._a.shape, self._a.dtype

        def get(self):
            return self._a.copy()

    fake = types.ModuleType("cupy")
    DeviceArray.__module__ = "cupy"
    monkeypatch.setitem(sys.modules, "cupy", fake)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    layer = GRU(5, stateful=True, return_sequences=True, bias_initializer="random_normal")
    layer(x)
    state = layer.states[0].value.copy()  # non-zero
    want = layer(x)
    layer.states[0].value = DeviceArray(state)  # back to that state, on the "device"
    for v in layer.weights:
        v.value = DeviceArray(v.value)
    frozen = layer.freeze()
    assert all(type(s) is np.ndarray for s in frozen.states)
    np.testing.assert_array_equal(frozen(x), want)


_INHERITED = {}  # what a fork()ed worker inherits from its parent


def _call_inherited(x):
    return _INHERITED["frozen"](x)


@needs_cpu
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_frozen_in_a_forked_worker():
    """A pre-forking server freezes once and forks: the worker calls the inherited snapshot
    (one thread there, since GNU OpenMP hangs a child whose parent ran a team; same bits)."""
    import multiprocessing

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 12, 6)).astype(np.float32)
    layer = GRU(70, return_sequences=True)
    layer(x)
    frozen = layer.freeze(n_threads=2)
    want = frozen(x)  # the parent has run a 2-thread team (batch 1 splits the units)
    _INHERITED["frozen"] = frozen
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_call_inherited, (x,)).get(timeout=60)
    finally:
        _INHERITED.clear()
    np.testing.assert_array_equal(got, want)


def test_live_layer_concurrent_calls_bit_identical(in_threads):
    """The live layer shared between threads (its packed-weight cache, dispatch and plan
    caches): concurrent calls, with masks and with training-mode forwards, return what serial
    calls return."""
    rng = np.random.default_rng(9)
    layer = GRU(70, return_sequences=True, return_state=True)
    layer.n_threads = 2
    xs = [rng.standard_normal((b, 9, 5)).astype(np.float32) for b in (1, 6, 1, 6)]
    masks = [None, rng.random((6, 9)) < 0.8, None, None]
    layer(xs[0])
    want = [layer(x, mask=m) for x, m in zip(xs, masks)]
    want_fwd = [layer.forward(x, mask=m, training=True)[0] for x, m in zip(xs, masks)]
    results = []

    def work(i):
        for _ in range(10):
            results.append((i, layer(xs[i], mask=masks[i]),
                            layer.forward(xs[i], mask=masks[i], training=True)[0]))

    in_threads(work, 4)
    assert len(results) == 40
    for i, got, fwd in results:
        same(want[i], got)
        same(want_fwd[i], fwd)
