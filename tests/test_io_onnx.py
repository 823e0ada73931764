"""ONNX export (standard GRU operator) checked by running the graphs in ONNX Runtime against
fastgru's own outputs. Skips cleanly without onnx / onnxruntime."""

import numpy as np
import pytest

from fastgru.io import to_onnx
from fastgru.layers import GRU, RNN, GRUCell
from fastgru.layers.bidirectional import Bidirectional
from fastgru.layers.dense import Dense
from fastgru.layers.sequential import Sequential

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = dict(rtol=1e-5, atol=2e-6)
rng = np.random.default_rng(3)
B, T, D = 3, 6, 4


def _prepare(model, dim=D):
    model.build((None, None, dim) if not isinstance(model, Dense) else (None, dim))
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def _run(model, x, lens=None, h0=None, **kwargs):
    proto = to_onnx(model, sequence_lens=lens is not None, initial_state=h0 is not None,
                    **kwargs)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": x, **(h0 or {})}
    if lens is not None:
        feeds["sequence_lens"] = lens.astype(np.int32)
    return sess.run(None, feeds)


def _as_list(y):
    """Outputs flattened (stacked-RNN states come as one-element lists per cell)."""
    if isinstance(y, (list, tuple)):
        return [leaf for item in y for leaf in _as_list(item)]
    return [y]


CASES = {
    "gru": lambda: GRU(5),
    "gru_seq": lambda: GRU(5, return_sequences=True),
    "gru_back_seq": lambda: GRU(5, return_sequences=True, go_backwards=True),
    "gru_reset_before": lambda: GRU(5, reset_after=False, return_sequences=True),
    "gru_nobias_hard": lambda: GRU(5, use_bias=False, recurrent_activation="hard_sigmoid",
                                   return_sequences=True),
    "gru_relu_state": lambda: GRU(5, activation="relu", return_state=True),
    "gru_linear_back": lambda: GRU(3, activation="linear", go_backwards=True, reset_after=False),
    "bi_concat": lambda: Bidirectional(GRU(4, return_sequences=True)),
    "bi_sum_state": lambda: Bidirectional(GRU(4, return_state=True), merge_mode="sum"),
    "bi_ave": lambda: Bidirectional(GRU(4, return_sequences=True), merge_mode="ave"),
    "bi_mul": lambda: Bidirectional(GRU(4), merge_mode="mul"),
    "bi_none": lambda: Bidirectional(GRU(4, return_sequences=True), merge_mode=None),
    "bi_custom_backward": lambda: Bidirectional(
        GRU(4), backward_layer=GRU(4, go_backwards=True, reset_after=False)),
    "rnn_stacked": lambda: RNN([GRUCell(4), GRUCell(3)], return_sequences=True,
                               return_state=True),
    "rnn_stacked_back": lambda: RNN([GRUCell(4), GRUCell(3)], go_backwards=True),
    "sequential": lambda: Sequential([Bidirectional(GRU(4, return_sequences=True)),
                                      GRU(3, return_sequences=True),
                                      Dense(2, activation="softmax")]),
    "sequential_last": lambda: Sequential([GRU(4, return_sequences=True), GRU(3),
                                           Dense(2, activation="relu")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_fastgru(case, tmp_path):
    model = _prepare(CASES[case]())
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    expected = _as_list(model(x))
    got = _run(model, x, output_names=None)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, **TOL)
    # the graph is also written to disk and loads back
    to_onnx(model, tmp_path / "m.onnx")
    assert onnx.load(tmp_path / "m.onnx").graph.node


MASKED = ["gru", "gru_seq", "gru_back_seq", "gru_reset_before", "gru_relu_state", "bi_concat",
          "bi_sum_state", "bi_none", "bi_custom_backward", "rnn_stacked", "rnn_stacked_back",
          "sequential", "sequential_last"]


@pytest.mark.parametrize("case", MASKED)
def test_onnx_sequence_lens_match_right_padded_masks(case):
    model = _prepare(CASES[case]())
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    lens = np.array([T, 4, 1])
    mask = np.arange(T)[None, :] < lens[:, None]
    x[~mask] = 1e3  # padded values must not matter
    expected = _as_list(model(x, mask=mask))
    got = _run(model, x, lens)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, **TOL)


@pytest.mark.parametrize("rs", [True, False])
def test_zero_output_for_mask(rs):
    model = _prepare(GRU(3, return_sequences=rs, zero_output_for_mask=True))
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    lens = np.array([T, 2, 5])
    mask = np.arange(T)[None, :] < lens[:, None]
    np.testing.assert_allclose(_run(model, x, lens)[0], model(x, mask=mask), **TOL)


@pytest.mark.parametrize("case", ["gru_seq", "gru_back_seq", "gru_relu_state", "bi_concat",
                                  "bi_sum_state", "bi_custom_backward", "rnn_stacked"])
def test_initial_state_inputs(case):
    model = _prepare(CASES[case]())
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    lens = np.array([T, 3, 2])
    mask = np.arange(T)[None, :] < lens[:, None]
    if isinstance(model, Bidirectional):
        names = ["forward_initial_state", "backward_initial_state"]
        sizes = [model.forward_layer.units, model.backward_layer.units]
    elif isinstance(model, GRU):
        names, sizes = ["initial_state"], [model.units]
    else:
        names, sizes = ["initial_state_0", "initial_state_1"], [4, 3]
    h0 = {n: rng.normal(size=(B, u)).astype(np.float32) for n, u in zip(names, sizes, strict=True)}
    states = list(h0.values())
    expected = _as_list(model(x, initial_state=states if len(states) > 1 else states[0],
                              mask=mask))
    got = _run(model, x, lens, h0)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, **TOL)


def test_time_major_and_uses_standard_gru_node():
    model = _prepare(Bidirectional(GRU(4, return_sequences=True, time_major=True)))
    x = rng.normal(size=(T, B, D)).astype(np.float32)
    proto = to_onnx(model)
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert len(grus) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in grus[0].attribute}
    assert attrs["direction"] == b"bidirectional" and attrs["linear_before_reset"] == 1
    assert not any(n.op_type == "Transpose" for n in proto.graph.node[:1])
    np.testing.assert_allclose(_run(model, x)[0], model(x), **TOL)


def test_reset_before_uses_linear_before_reset_0():
    proto = to_onnx(_prepare(GRU(2, reset_after=False)))
    (node,) = [n for n in proto.graph.node if n.op_type == "GRU"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["linear_before_reset"] == 0


def test_unsupported_raise():
    with pytest.raises(ValueError, match="activation"):
        to_onnx(_prepare(GRU(2, activation="gelu")))
    with pytest.raises(ValueError, match="not built"):
        to_onnx(GRU(2))
    with pytest.raises(ValueError, match="initial_state=True"):
        to_onnx(_prepare(Sequential([GRU(2)])), initial_state=True)
    with pytest.raises(ValueError, match="must return one"):
        to_onnx(_prepare(Sequential([GRU(2, return_state=True), Dense(1)])))
    for opset in (12, 11, "17", True):  # axes as inputs of Squeeze / Unsqueeze: >= 13
        with pytest.raises(ValueError, match="opset must be an int >= 13"):
            to_onnx(_prepare(GRU(2)), opset=opset)
    assert to_onnx(_prepare(GRU(2)), opset=np.int64(17)).opset_import[0].version == 17


@pytest.mark.parametrize("opset", [13, 14, 17])
def test_ir_version_is_the_oldest_for_the_opset(opset):
    """Not the installed onnx's newest IR version: ONNX Runtime 1.30 with onnx 1.23 rejected
    every exported model ("Unsupported model IR version: 14, max supported IR version: 13")."""
    proto = to_onnx(_prepare(GRU(2)), opset=opset)
    opsets = [onnx.helper.make_opsetid("", opset)]
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(opsets) <= 8


@pytest.mark.parametrize("make", [
    lambda: GRU(3),
    lambda: Bidirectional(GRU(3)),
    lambda: Sequential([GRU(3, return_sequences=True), Dense(2)]),
], ids=["gru", "bidirectional", "sequential"])
def test_a_frozen_snapshot_is_refused_naming_the_live_layer(make):
    """to_onnx(gru.freeze()) gave "'FrozenRNN' object has no attribute 'weights'": a snapshot
    holds no Variables to export; the message says to export the live layer."""
    layer = make()
    layer(np.ones((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match=r"Argument `model` is a frozen snapshot \(Frozen\w+ "
                                        r"'\w+'\): to_onnx exports live layers.*to_onnx\(layer\)"):
        to_onnx(layer.freeze())
    with pytest.raises(TypeError, match="Argument `model` must be a fastgru layer.*received str"):
        to_onnx("gru")
