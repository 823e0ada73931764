"""Engine choice (fastgru._dispatch) with stand-in engine modules, so every branch is tested
whether or not the compiled CPU engine, CuPy or cuDNN exist on this machine."""

import types

import numpy as np
import pytest

from fastgru import GRU, RNN, GRUCell, _dispatch
from fastgru.engines import reference


class FakeCupyArray:
    """Only its module name matters to the dispatcher."""

    shape = (2, 3, 4)


FakeCupyArray.__module__ = "cupy"


def fake_engine(name, calls, **attrs):
    mod = types.ModuleType(f"fastgru.engines.{name}")

    def forward(x, weights, h0, spec, mask=None, dropout=None, training=False, **kw):
        calls.append(("forward", kw))
        return reference.forward(x, weights, h0, spec, mask=mask, dropout=dropout,
                                 training=training)

    def backward(tape, d_outputs=None, d_h_last=None, **kw):
        calls.append(("backward", kw))
        return reference.backward(tape, d_outputs, d_h_last)

    mod.forward, mod.backward = forward, backward
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


@pytest.fixture
def engines(monkeypatch):
    """Install stand-in engines: engines(cpu=module|None, cudnn=..., xp=...)."""
    def install(**mods):
        cache = dict(_dispatch._cache)
        for name, mod in mods.items():
            cache[name] = (mod, None) if mod is not None else (None, "ImportError: absent")
        monkeypatch.setattr(_dispatch, "_cache", cache)
    return install


def spec(**kw):
    return GRUCell(2, **kw).spec()


def test_numpy_falls_back_to_reference_with_reason(engines):
    engines(cpu=None)
    eng, why = _dispatch.choose(spec(), np.zeros((1, 2, 3)))
    assert eng is reference and "could not be imported" in why
    engines(cpu=fake_engine("cpu", [], available=lambda: False))
    eng, why = _dispatch.choose(spec(), np.zeros((1, 2, 3)))
    assert eng is reference and "not built" in why
    engines(cpu=fake_engine("cpu", [], available=lambda: True, supports=lambda s: False))
    eng, why = _dispatch.choose(spec(), np.zeros((1, 2, 3)))
    assert eng is reference and "does not support" in why
    engines(cpu=fake_engine("cpu", [], available=lambda: True,
                            supports=lambda s: (False, "no kernel for X")))
    eng, why = _dispatch.choose(spec(), np.zeros((1, 2, 3)))
    assert eng is reference and "no kernel for X" in why


def test_numpy_picks_cpu_and_passes_n_threads_only_to_it(engines, rng):
    calls = []
    cpu = fake_engine("cpu", calls, available=lambda: True,
                      supports=lambda s: (True, "built-in activations"),
                      describe_kernel=lambda s, shape, n_threads=None, dtype=None:
                      f"fused kernel on {shape}, {n_threads} threads")
    engines(cpu=cpu)
    eng, why = _dispatch.choose(spec(), np.zeros((1, 2, 3)))
    assert eng is cpu and "CPU" in why
    layer = GRU(3, return_sequences=True)
    layer.n_threads = 2
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    y, tape = layer.forward(x)
    layer.backward(tape, np.ones_like(y))
    key = layer.cell.weights_key()
    assert calls == [("forward", {"n_threads": 2, "weights_key": key}),
                     ("backward", {"n_threads": 2})]
    text = layer.explain(x)
    assert "engine 'cpu'" in text and "fused kernel on (2, 4, 3), 2 threads" in text
    # a user activation never goes to the compiled engine
    eng, why = _dispatch.choose(spec(activation=lambda a: a), np.zeros((1, 2, 3)))
    assert eng is reference and "user-supplied Python callable" in why


def test_reference_gets_no_n_threads(engines, rng):
    engines(cpu=None)
    layer = GRU(2)
    layer.n_threads = 3
    layer(rng.normal(size=(1, 2, 2)))  # the reference engine would reject the keyword


def test_use_cudnn_true_with_numpy_raises_at_call_time(rng):
    layer = GRU(2, use_cudnn=True)  # construction is fine (Keras raises at call time)
    with pytest.raises(ValueError, match="use_cudnn=True was specified.*NumPy"):
        layer(rng.normal(size=(1, 2, 2)))
    with pytest.raises(ValueError, match="CuPy"):
        _dispatch.choose(spec(), np.zeros((1, 2, 2)), use_cudnn=True)
    GRU(2, use_cudnn=1)(rng.normal(size=(1, 2, 2)))  # 1 behaves like "auto"


def test_cupy_routes(engines):
    x = FakeCupyArray()
    xp_mod = fake_engine("xp", [])
    cudnn_ok = fake_engine("cudnn", [], eligible=lambda s, m, d: (True, ""))
    engines(cudnn=cudnn_ok, xp=xp_mod)
    assert _dispatch.choose(spec(), x)[0] is cudnn_ok
    assert _dispatch.choose(spec(), x, use_cudnn=True)[0] is cudnn_ok
    eng, why = _dispatch.choose(spec(), x, use_cudnn=False)
    assert eng is xp_mod and "use_cudnn=False" in why
    assert _dispatch.choose(spec(), x, use_cudnn=0)[0] is xp_mod
    eng, why = _dispatch.choose(spec(), x, blockers=["unroll=True"])
    assert eng is xp_mod and "unroll=True" in why
    with pytest.raises(ValueError, match="Failed rule: recurrent_dropout > 0"):
        _dispatch.choose(spec(), x, use_cudnn=True, blockers=["recurrent_dropout > 0"])

    cudnn_no = fake_engine("cudnn", [],
                           eligible=lambda s, m, d: (False, "mask is not right-padded"))
    engines(cudnn=cudnn_no, xp=xp_mod)
    eng, why = _dispatch.choose(spec(), x, mask=object())
    assert eng is xp_mod and "mask is not right-padded" in why
    with pytest.raises(ValueError) as e:
        _dispatch.choose(spec(), x, use_cudnn=True)
    assert str(e.value).startswith(_dispatch.CUDNN_REFUSED)
    assert "mask is not right-padded" in str(e.value)

    engines(cudnn=None, xp=None)
    eng, why = _dispatch.choose(spec(), x)
    assert eng is _dispatch._HOST_REFERENCE and "host" in why
    with pytest.raises(ValueError, match="cuDNN engine could not be imported"):
        _dispatch.choose(spec(), x, use_cudnn=True)


def test_invalid_use_cudnn_in_choose():
    with pytest.raises(ValueError, match="Invalid valid received for argument `use_cudnn`"):
        _dispatch.choose(spec(), np.zeros((1, 1, 1)), use_cudnn="x")


def test_engine_kwargs(monkeypatch):
    cpu = types.ModuleType("fastgru.engines.cpu")
    cudnn = types.ModuleType("fastgru.engines.cudnn")
    monkeypatch.setattr(_dispatch, "CPU_WEIGHTS_KEY", True)
    assert _dispatch.engine_kwargs(cpu, 4, ((1, 0),)) == {"n_threads": 4,
                                                          "weights_key": ((1, 0),)}
    assert _dispatch.engine_kwargs(cpu, 4, ((1, 0),), backward=True) == {"n_threads": 4}
    monkeypatch.setattr(_dispatch, "CPU_WEIGHTS_KEY", False)
    assert _dispatch.engine_kwargs(cpu, 4, ((1, 0),)) == {"n_threads": 4}
    assert _dispatch.engine_kwargs(reference, 4, ((1, 0),)) == {}
    assert _dispatch.engine_kwargs(cudnn, 4, ((1, 0),)) == {"weights_key": ((1, 0),)}
    assert _dispatch.engine_kwargs(cudnn, 4, ((1, 0),), backward=True) == {}
    cell = GRUCell(2)
    cell.build((1, 3))
    key = cell.weights_key()
    cell.kernel.bump()
    assert cell.weights_key() != key


def test_explain_stacked_and_custom(rng, engines):
    engines(cpu=None)
    x = rng.normal(size=(2, 3, 4))
    text = RNN([GRUCell(2), GRUCell(3, activation=lambda a: a)]).explain(x)
    assert "cell 0" in text and "cell 1" in text and "user-supplied" in text
    assert "engine 'reference'" in GRU(2).explain(x, mask=np.ones((2, 3)))


@pytest.mark.parametrize("bad", [(1, 100, 64), np.zeros((2, 3))])
def test_explain_rejects_what_a_call_rejects(bad):
    """A shape tuple (or a 2-D array) is not an input: the call's own rank error, not a
    failure deep in the kernel description."""
    for layer in (GRU(2), RNN(GRUCell(2))):
        with pytest.raises(ValueError, match="Input 0 of layer .* expected ndim"):
            layer.explain(bad)


def test_explain_allocates_nothing_of_the_call_size():
    """explain reads shapes and dtypes: it made a float32 copy of a float64 x and a zeros
    array of every cell's outputs (here 16 + 2 MB; at a broadcast (2**20, 2**12, 5) input,
    64 GiB), for a sentence."""
    import tracemalloc

    x = np.broadcast_to(np.zeros((1, 1, 64)), (64, 1000, 64))  # float64, for float32 cells
    for layer in (GRU(8), RNN([GRUCell(8), GRUCell(4)]), GRU(8, time_major=True)):
        layer.explain(x)  # first calls import and cache
        tracemalloc.start()
        try:
            text = layer.explain(x)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "engine" in text and peak < 1 << 20, peak


def test_layer_results_equal_reference_whatever_engine_runs(rng):
    """Whatever dispatch picks on this machine (compiled CPU engine or reference)."""
    x = rng.normal(size=(3, 6, 4))
    mask = rng.random((3, 6)) > 0.3
    layer = GRU(5, return_sequences=True, return_state=True, dtype="float64",
                bias_initializer="random_normal")
    out, state = layer(x, mask=mask)
    w = layer.cell.engine_weights()
    ref_out, ref_h, _ = reference.forward(x, w, np.zeros((3, 5)), layer.cell.spec(
        return_sequences=True), mask=mask)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state, ref_h, rtol=1e-10, atol=1e-12)
