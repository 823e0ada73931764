"""PyTorch nn.GRU <-> fastgru: weight mapping (spec 4.3) checked against torch's outputs.

Tests that need torch skip cleanly without it; the NumPy-only mapping tests always run.
"""

import numpy as np
import pytest

from fastgru.io import (
    from_torch,
    from_torch_state_dict,
    keras_to_torch_gru,
    to_torch,
    to_torch_state_dict,
    torch_to_keras_gru,
)
from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential

try:
    import torch
except ImportError:  # the NumPy-only tests still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

rng = np.random.default_rng(7)


def _rand_weights(model):
    model.set_weights([rng.normal(scale=0.4, size=w.shape) for w in model.get_weights()])
    return model


# --------------------------------------------------------------------------- NumPy only
def test_gate_mapping_by_hand():
    u, d = 2, 3
    kernel = np.arange(d * 3 * u, dtype=float).reshape(d, 3 * u)  # columns z z r r h h
    rec = np.arange(u * 3 * u, dtype=float).reshape(u, 3 * u) + 100
    bias = np.arange(2 * 3 * u, dtype=float).reshape(2, 3 * u) + 1000
    w_ih, w_hh, b_ih, b_hh = keras_to_torch_gru(kernel, rec, bias)
    # torch rows are gates r, z, n: r = Keras block 1, z = block 0, n = block 2
    np.testing.assert_array_equal(w_ih[0:u], kernel[:, u:2 * u].T)
    np.testing.assert_array_equal(w_ih[u:2 * u], kernel[:, 0:u].T)
    np.testing.assert_array_equal(w_ih[2 * u:], kernel[:, 2 * u:].T)
    np.testing.assert_array_equal(w_hh[0:u], rec[:, u:2 * u].T)
    np.testing.assert_array_equal(b_ih, [1002, 1003, 1000, 1001, 1004, 1005])
    np.testing.assert_array_equal(b_hh, [1008, 1009, 1006, 1007, 1010, 1011])
    back = torch_to_keras_gru(w_ih, w_hh, b_ih, b_hh)
    for a, b in zip(back, (kernel, rec, bias), strict=True):
        np.testing.assert_array_equal(a, b)


def test_keras_to_torch_refuses_wrong_shapes():
    """Wrong Keras shapes raise, naming what was expected (they mapped silently: a kernel of
    10 columns gave a (10, D) weight_ih, a 1-D kernel a 1-D one, a (2, 9) bias 9 entries)."""
    k, rec, b = np.zeros((5, 12)), np.zeros((4, 12)), np.zeros((2, 12))
    for bad in ((np.zeros((5, 10)), rec), (np.zeros(12), rec), (k, np.zeros((12, 4))),
                (k, np.zeros((4, 10))), (np.zeros((5, 15)), rec)):
        with pytest.raises(ValueError, match=r"kernel of shape \(input, 3\*units\)"):
            keras_to_torch_gru(*bad)
    with pytest.raises(ValueError, match=r"\(2, 12\); received a bias of shape \(2, 9\)"):
        keras_to_torch_gru(k, rec, np.zeros((2, 9)))
    assert [a.shape for a in keras_to_torch_gru(k, rec, b)] == [(12, 5), (12, 4), (12,), (12,)]
    assert keras_to_torch_gru(np.zeros((0, 12)), rec)[0].shape == (12, 0)


def test_numpy_state_dict_round_trip_is_exact():
    model = Sequential([Bidirectional(GRU(3, return_sequences=True)),
                        Bidirectional(GRU(3, return_sequences=True))])
    model.build((None, None, 4))
    _rand_weights(model)
    sd = to_torch_state_dict(model, tensors=False)
    assert list(sd) == [f"{k}_l{i}{r}" for i in range(2) for r in ("", "_reverse")
                        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert sd["weight_ih_l1"].shape == (9, 6)
    back = from_torch_state_dict(sd, dtype="float64")
    assert isinstance(back, Sequential) and len(back.layers) == 2
    for a, b in zip(back.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float64))


def test_unmappable_models_raise():
    with pytest.raises(ValueError, match="reset_after=False"):
        to_torch_state_dict(_built(GRU(2, reset_after=False)), tensors=False)
    with pytest.raises(ValueError, match="merge_mode"):
        to_torch_state_dict(_built(Bidirectional(GRU(2), merge_mode="sum")), tensors=False)
    with pytest.raises(ValueError, match="tanh"):
        to_torch_state_dict(_built(GRU(2, activation="relu")), tensors=False)
    with pytest.raises(ValueError, match="go_backwards"):
        to_torch_state_dict(_built(GRU(2, go_backwards=True)), tensors=False)
    with pytest.raises(ValueError, match="same units"):
        to_torch_state_dict(_built(Sequential([GRU(2, return_sequences=True), GRU(3)])),
                            tensors=False)
    with pytest.raises(ValueError, match="Dense"):
        to_torch_state_dict(_built(Sequential([GRU(2), Dense(1)])), tensors=False)
    with pytest.raises(ValueError, match="proj_size"):
        from_torch_state_dict({"weight_ih_l0": np.zeros((6, 3)), "weight_hh_l0": np.zeros((6, 2)),
                               "weight_hr_l0": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="Missing weights"):
        from_torch_state_dict({"weight_ih_l1": np.zeros((6, 3)), "weight_hh_l1": np.zeros((6, 2))})
    with pytest.raises(ValueError, match="stacked cells"):  # one cell per direction in nn.GRU
        to_torch_state_dict(_built(Bidirectional(RNN([GRUCell(2), GRUCell(2)]))), tensors=False)


def test_state_dicts_torch_would_refuse_are_refused():
    """As nn.GRU.load_state_dict: the layers chain (layer k's input size is layer k-1's
    hidden size x directions) and the biases are (3*hidden,)."""
    good = to_torch_state_dict(_built(Sequential([GRU(4, return_sequences=True), GRU(4)])),
                               tensors=False)
    bad = dict(good, weight_ih_l1=np.zeros((12, 5)))
    with pytest.raises(ValueError, match="weight_ih_l1 has 5 input columns, but layer 0 outputs 4"):
        from_torch_state_dict(bad)
    bad = dict(good, bias_hh_l1=np.zeros(11))
    with pytest.raises(ValueError, match=r"Layer 1: Expected bias_hh of shape .*\(11,\)"):
        from_torch_state_dict(bad)
    bi = to_torch_state_dict(_built(Bidirectional(GRU(2))), tensors=False)
    with pytest.raises(ValueError, match="the two directions"):
        from_torch_state_dict(dict(bi, weight_ih_l0_reverse=np.zeros((6, 4))))


def _built(model, dim=3):
    model.build((None, None, dim))
    return model


# --------------------------------------------------------------------------- against torch

@needs_torch
@pytest.mark.parametrize("num_layers,bidirectional,bias,batch_first", [
    (1, False, True, True), (1, True, True, True), (2, False, False, True),
    (2, True, True, False), (3, True, False, True), (1, False, True, False)])
def test_from_torch_matches_torch(num_layers, bidirectional, bias, batch_first):
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 3, num_layers=num_layers, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional).double()
    with torch.no_grad():  # non-zero everything, biases included
        for p in gru.parameters():
            p.normal_(0, 0.5)
    x = rng.normal(size=(2, 6, 4) if batch_first else (6, 2, 4))
    expected, h_n = gru(torch.from_numpy(x))
    model = from_torch(gru)
    ours = model(x)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    # Keras's last output (return_sequences=False) is torch's final state (unidirectional)
    if not bidirectional:
        last = from_torch(gru, return_sequences=False)(x)
        np.testing.assert_allclose(last, h_n[-1].detach().numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
def test_initial_state_maps_to_torch_h0():
    gru = torch.nn.GRU(3, 2, batch_first=True).double()
    x = rng.normal(size=(4, 5, 3))
    h0 = rng.normal(size=(4, 2))
    expected, _ = gru(torch.from_numpy(x), torch.from_numpy(h0[None]))
    model = from_torch(gru)
    np.testing.assert_allclose(model(x, initial_state=h0), expected.detach().numpy(),
                               rtol=1e-10, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("model_fn", [
    lambda: GRU(3, return_sequences=True),
    lambda: Bidirectional(GRU(3, return_sequences=True)),
    lambda: RNN([GRUCell(3), GRUCell(3)], return_sequences=True),
    lambda: Sequential([Bidirectional(GRU(3, return_sequences=True)),
                        Bidirectional(GRU(3, return_sequences=True))]),
])
def test_to_torch_matches_fastgru(model_fn):
    model = model_fn()
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    model.build((None, None, 4))
    _rand_weights(model)
    gru = to_torch(model)
    expected = model(x)
    if isinstance(model, RNN) and not isinstance(model, GRU):
        assert gru.num_layers == 2
    ours_in_torch, _ = gru(torch.from_numpy(x))
    np.testing.assert_allclose(ours_in_torch.detach().numpy(), expected, rtol=2e-5, atol=2e-6)
    # state dict of tensors round-trips bit-for-bit
    back = from_torch_state_dict(gru.state_dict())
    for a, b in zip(back.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_torch
def test_bfloat16_module_loads_exactly_as_float32():
    gru = torch.nn.GRU(3, 2, batch_first=True).to(torch.bfloat16)
    model = from_torch(gru)
    assert model.dtype == "float32"
    for a, b in zip(to_torch_state_dict(model, tensors=False).values(),
                    gru.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b.float().numpy())  # bfloat16 is exact in float32


@needs_torch
def test_prefixed_state_dict_of_a_larger_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(3, 2, batch_first=True)
            self.head = torch.nn.Linear(2, 1)

    net = Net()
    model = from_torch_state_dict(net.state_dict(), prefix="rnn.")
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), net.rnn(torch.from_numpy(x))[0].detach().numpy(),
                               rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="Unexpected key"):
        from_torch_state_dict(net.state_dict())


@pytest.mark.parametrize("sd", [[1, 2], None, "weight_ih_l0"], ids=["list", "None", "str"])
def test_from_torch_state_dict_names_a_state_dict_that_is_no_mapping(sd):
    """[1, 2] gave "'list' object has no attribute 'items'"."""
    with pytest.raises(TypeError, match="Argument `state_dict` must be a mapping of parameter "
                                        "names"):
        from_torch_state_dict(sd)
