"""Export to ONNX with the standard ``GRU`` operator (needs the ``onnx`` package).

Mapping (KERAS_GRU_SPEC.md section 4.4): gates z, r, h in both; ``W = kernel.T``,
``R = recurrent_kernel.T``, ``B = [input bias, recurrent bias]``; ``reset_after=True`` is
``linear_before_reset=1``; ``reset_after=False`` is ``linear_before_reset=0`` with ``Rb = 0``.
``go_backwards`` is direction ``reverse`` (ONNX returns that direction's outputs in input time
order, so the Keras processing-order sequence is the time flip of ``Y``); a Bidirectional layer
whose two GRUs share their configuration is one ``bidirectional`` GRU node.

Masks: with ``sequence_lens=True`` the graph takes a second input ``sequence_lens`` (int32,
(B,)): the number of valid steps of each row, i.e. a right-padded Keras mask (every row needs
at least one valid step). ONNX Runtime zero-fills padded outputs; where Keras instead repeats
the last output (``zero_output_for_mask=False``, forward direction) the graph fills padded steps
with the final state, so results match fastgru's. Batch-major inputs are transposed to ONNX's
time-major layout inside the graph.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["to_onnx"]

# Keras activation name -> (ONNX RNN activation, alpha, beta); alpha/beta None = not used.
_RNN_ACTS = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
}
# Dense activations -> (ONNX op, attributes)
_DENSE_ACTS = {
    "linear": None,
    "relu": ("Relu", {}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "softmax": ("Softmax", {"axis": -1}),
    "log_softmax": ("LogSoftmax", {"axis": -1}),
    "elu": ("Elu", {"alpha": 1.0}),
    "selu": ("Selu", {}),
    "softplus": ("Softplus", {}),
    "softsign": ("Softsign", {}),
    "exponential": ("Exp", {}),
    "hard_sigmoid": ("HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.2}),
}


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError("fastgru.io.to_onnx needs the onnx package: pip install onnx") from e
    return onnx, helper, numpy_helper


class _Graph:
    def __init__(self, dtype):
        _, self.helper, self.numpy_helper = _onnx()
        self.dtype = np.dtype(dtype)
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, value, dtype=None) -> str:
        name = self.name(base)
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs,
                                                name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # small helpers
    def transpose(self, x, perm):
        return self.op("Transpose", [x], perm=list(perm))

    def squeeze(self, x, axis):
        return self.op("Squeeze", [x, self.const("axes", [axis], np.int64)])

    def unsqueeze(self, x, axis):
        return self.op("Unsqueeze", [x, self.const("axes", [axis], np.int64)])

    def flip0(self, x):
        i64 = np.int64
        return self.op("Slice", [x, self.const("starts", [-1], i64),
                                 self.const("ends", [np.iinfo(i64).min], i64),
                                 self.const("axes", [0], i64), self.const("steps", [-1], i64)])

    def gather(self, x, index, axis):
        return self.op("Gather", [x, self.const("index", index, np.int64)], axis=axis)


class _Cell:
    """One GRU cell's config and weights in Keras layout."""

    def __init__(self, cfg: dict, weights):
        self.units = int(cfg["units"])
        self.reset_after = bool(cfg.get("reset_after", True))
        self.use_bias = bool(cfg.get("use_bias", True))
        self.act = cfg.get("activation") or "linear"
        self.rec_act = cfg.get("recurrent_activation") or "linear"
        for a in (self.act, self.rec_act):
            if a not in _RNN_ACTS:
                raise ValueError(
                    f"ONNX GRU cannot express activation {a!r}; supported: {sorted(_RNN_ACTS)}"
                )
        self.kernel, self.recurrent = weights[0], weights[1]
        self.bias = weights[2] if self.use_bias else None

    def same_op(self, other: _Cell) -> bool:
        return (self.units, self.reset_after, self.use_bias, self.act, self.rec_act) == (
            other.units, other.reset_after, other.use_bias, other.act, other.rec_act)

    def wrb(self, dtype):
        u = self.units
        W = self.kernel.T
        R = self.recurrent.T
        if self.bias is None:
            B = np.zeros(6 * u)
        elif self.reset_after:
            B = np.concatenate([self.bias[0], self.bias[1]])
        else:  # the recurrent bias does not exist: Rb = 0
            B = np.concatenate([self.bias, np.zeros(3 * u)])
        return (np.asarray(W, dtype), np.asarray(R, dtype), np.asarray(B, dtype))

    def acts(self):
        names, alphas, betas = [], [], []
        for a in (self.rec_act, self.act):
            n, al, be = _RNN_ACTS[a]
            names.append(n)
            if al is not None:
                alphas.append(al)
            if be is not None:
                betas.append(be)
        return names, alphas, betas


def _gru_node(g: _Graph, x_tm, cells, direction: str, lens, h0=None):
    """One ONNX GRU over time-major ``x_tm`` (T, B, D); ``cells``: one per direction; ``h0``:
    None or one (B, u) graph tensor per direction. Returns (Y (T, dirs, B, u), Y_h (dirs, B,
    u))."""
    Ws, Rs, Bs = zip(*(c.wrb(g.dtype) for c in cells), strict=True)
    names, alphas, betas = [], [], []
    for c in cells:
        n, a, b = c.acts()
        names += n
        alphas += a
        betas += b
    attrs = {"hidden_size": cells[0].units, "direction": direction, "activations": names,
             "linear_before_reset": int(cells[0].reset_after)}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    inputs = [x_tm, g.const("W", np.stack(Ws)), g.const("R", np.stack(Rs)),
              g.const("B", np.stack(Bs))]
    if lens or h0:
        inputs.append(lens or "")
    if h0:
        parts = [g.unsqueeze(h, 0) for h in h0]
        inputs.append(parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0))
    return g.op("GRU", inputs, n_out=2, **attrs)


class _Exporter:
    def __init__(self, g: _Graph, initial_states=None):
        self.g = g
        self.h0 = initial_states or {}  # id(layer) -> list of graph inputs (B, u)

    # -------------------------------------------------------------- masks
    def valid_steps(self, x_tm, lens):
        g = self.g
        T = g.op("Squeeze", [g.gather(g.op("Shape", [x_tm]), [0], 0)])
        steps = g.op("Range", [g.const("start", 0, np.int64), T, g.const("delta", 1, np.int64)])
        lens64 = g.op("Cast", [lens], to=7)  # INT64
        valid = g.op("Less", [g.unsqueeze(steps, 1), g.unsqueeze(lens64, 0)])  # (T, B)
        return g.unsqueeze(valid, 2), lens64, T

    def fill_padded(self, seq_tm, last, x_tm, lens):
        """Keras (zero_output_for_mask=False): padded steps repeat the last output."""
        valid, _, _ = self.valid_steps(x_tm, lens)
        return self.g.op("Where", [valid, seq_tm, self.g.unsqueeze(last, 0)])

    def zero_if_last_masked(self, last, x_tm, lens):
        g = self.g
        _, lens64, T = self.valid_steps(x_tm, lens)
        full = g.unsqueeze(g.op("Equal", [lens64, T]), 1)
        return g.op("Where", [full, last, g.const("zero", 0.0)])

    # -------------------------------------------------------------- layers
    def layer(self, layer, x, time_major: bool, lens):
        """Emit ``layer``; returns (outputs list, output time_major flag, next lens)."""
        from ..layers.bidirectional import Bidirectional
        from ..layers.dense import Dense
        from ..layers.sequential import Sequential

        if isinstance(layer, Sequential):
            for sub in layer.layers:
                outs, time_major, lens = self.layer(sub, x, time_major, lens)
                if len(outs) != 1:
                    raise ValueError(f"Layer '{sub.name}' inside a Sequential must return one "
                                     "tensor (no return_state, merge_mode=None).")
                x = outs[0]
            return [x], time_major, lens
        if isinstance(layer, Dense):
            return [self.dense(layer, x)], time_major, lens
        if isinstance(layer, Bidirectional):
            return self.bidirectional(layer, x, time_major, lens)
        if type(layer).__name__ in ("GRU", "RNN"):
            return self.recurrent(layer, x, time_major, lens)
        raise ValueError(f"Cannot export layer '{layer.name}' ({type(layer).__name__}) to ONNX.")

    def dense(self, layer, x):
        g = self.g
        w = layer.get_weights()
        y = g.op("MatMul", [x, g.const("kernel", w[0])])
        if layer.use_bias:
            y = g.op("Add", [y, g.const("bias", w[1])])
        name = layer.get_config()["activation"]
        if name not in _DENSE_ACTS:
            raise ValueError(f"ONNX export of Dense activation {name!r} is not supported; "
                             f"supported: {sorted(_DENSE_ACTS)}")
        spec = _DENSE_ACTS[name]
        return y if spec is None else g.op(spec[0], [y], **spec[1])

    @staticmethod
    def cells_of(layer):
        cfg = layer.get_config()
        weights = layer.get_weights()
        if type(layer).__name__ == "RNN":
            cell = cfg["cell"]
            cfgs = cell["config"]["cells"] if cell["class_name"] == "StackedRNNCells" else [cell]
            if any(c["class_name"] != "GRUCell" for c in cfgs):
                raise ValueError(f"RNN '{layer.name}': only GRUCells export to ONNX.")
            cfgs = [c["config"] for c in cfgs]
        else:
            cfgs = [cfg]
        cells, i = [], 0
        for c in cfgs:
            n = 3 if c.get("use_bias", True) else 2
            cells.append(_Cell(c, weights[i:i + n]))
            i += n
        return cfg, cells

    def to_tm(self, x, time_major):
        return x if time_major else self.g.transpose(x, (1, 0, 2))

    def from_tm(self, x, time_major):
        return x if time_major else self.g.transpose(x, (1, 0, 2))

    def recurrent(self, layer, x, time_major, lens):
        g = self.g
        cfg, cells = self.cells_of(layer)
        own_tm = bool(getattr(layer, "time_major", False))
        if own_tm != time_major:
            raise ValueError(f"Layer '{layer.name}': time_major={own_tm} but its input is "
                             f"{'time' if time_major else 'batch'}-major.")
        backwards = bool(cfg.get("go_backwards"))
        x_tm = self.to_tm(x, time_major)
        h, states = x_tm, []
        h0s = self.h0.get(id(layer), [None] * len(cells))
        for cell, h0 in zip(cells, h0s, strict=True):
            Y, Yh = _gru_node(g, h, [cell], "reverse" if backwards else "forward", lens,
                              [h0] if h0 else None)
            h = g.squeeze(Y, 1)
            states.append(g.squeeze(Yh, 0))
        last = states[-1]
        zero_out = bool(cfg.get("zero_output_for_mask"))
        if cfg.get("return_sequences"):
            seq = h
            if backwards:
                seq = g.flip0(seq)
            elif lens and not zero_out:
                seq = self.fill_padded(seq, last, x_tm, lens)
            out = self.from_tm(seq, time_major)
            next_lens = lens
        else:
            out = last
            if lens and zero_out and not backwards:
                out = self.zero_if_last_masked(last, x_tm, lens)
            next_lens = None
        outs = [out] + (states if cfg.get("return_state") else [])
        return outs, time_major, next_lens

    def bidirectional(self, layer, x, time_major, lens):
        g = self.g
        fcfg, fcells = self.cells_of(layer.forward_layer)
        bcfg, bcells = self.cells_of(layer.backward_layer)
        if len(fcells) != 1 or len(bcells) != 1:
            raise ValueError(f"Bidirectional '{layer.name}': only single GRU layers export.")
        if fcfg.get("go_backwards") or not bcfg.get("go_backwards"):
            raise ValueError(f"Bidirectional '{layer.name}': expected a forward layer and a "
                             "go_backwards layer.")
        x_tm = self.to_tm(x, time_major)
        h0f, h0b = self.h0.get(id(layer), (None, None))
        if fcells[0].same_op(bcells[0]):
            Y, Yh = _gru_node(g, x_tm, [fcells[0], bcells[0]], "bidirectional", lens,
                              [h0f, h0b] if h0f else None)
            yf, yb = g.squeeze(g.gather(Y, [0], 1), 1), g.squeeze(g.gather(Y, [1], 1), 1)
            hf, hb = g.squeeze(g.gather(Yh, [0], 0), 0), g.squeeze(g.gather(Yh, [1], 0), 0)
        else:
            Yf, Yhf = _gru_node(g, x_tm, fcells, "forward", lens, [h0f] if h0f else None)
            Yb, Yhb = _gru_node(g, x_tm, bcells, "reverse", lens, [h0b] if h0b else None)
            yf, yb = g.squeeze(Yf, 1), g.squeeze(Yb, 1)
            hf, hb = g.squeeze(Yhf, 0), g.squeeze(Yhb, 0)
        if layer.return_sequences:
            if lens and not fcfg.get("zero_output_for_mask"):
                yf = self.fill_padded(yf, hf, x_tm, lens)
            # (the backward direction's padded steps are leading zeros in Keras, as in ONNX)
            yf, yb = self.from_tm(yf, time_major), self.from_tm(yb, time_major)
            next_lens = lens
        else:
            if lens and fcfg.get("zero_output_for_mask"):
                hf_out = self.zero_if_last_masked(hf, x_tm, lens)
            else:
                hf_out = hf
            yf, yb = hf_out, hb
            next_lens = None
        mode = layer.merge_mode
        if mode == "concat":
            outs = [g.op("Concat", [yf, yb], axis=-1)]
        elif mode == "sum":
            outs = [g.op("Add", [yf, yb])]
        elif mode == "ave":
            outs = [g.op("Mul", [g.op("Add", [yf, yb]), g.const("half", 0.5)])]
        elif mode == "mul":
            outs = [g.op("Mul", [yf, yb])]
        else:
            outs = [yf, yb]
        if layer.return_state:
            outs += [hf, hb]
        return outs, time_major, next_lens


def _input_shape(model):
    from ._native import build_input_shape

    shape = build_input_shape(model)
    if shape is None:
        raise ValueError(f"Model '{model.name}' is not built: call it or build() it first.")
    return shape


def _initial_state_inputs(model):
    """(graph input names, {id(layer): per-cell/direction names}) for a recurrent model."""
    from ..layers.bidirectional import Bidirectional

    if isinstance(model, Bidirectional):
        names = ["forward_initial_state", "backward_initial_state"]
        units = [c.units for sub in (model.forward_layer, model.backward_layer)
                 for c in _Exporter.cells_of(sub)[1]]
        return list(zip(names, units, strict=True)), {id(model): names}
    if type(model).__name__ in ("GRU", "RNN"):
        cells = _Exporter.cells_of(model)[1]
        names = (["initial_state"] if len(cells) == 1 else
                 [f"initial_state_{i}" for i in range(len(cells))])
        return list(zip(names, [c.units for c in cells], strict=True)), {id(model): names}
    raise ValueError("initial_state=True needs a GRU, RNN or Bidirectional model (a Sequential "
                     "starts from zero states, as in Keras).")


def _check_exportable(model):
    """A TypeError unless ``model`` is a (live) fastgru layer."""
    from ..layers.base import Layer
    from ..layers.frozen import FrozenBidirectional, FrozenRNN, FrozenSequential

    if isinstance(model, Layer):
        return
    if isinstance(model, (FrozenRNN, FrozenBidirectional, FrozenSequential)):
        raise TypeError(
            f"Argument `model` is a frozen snapshot ({type(model).__name__} "
            f"'{getattr(model, 'name', '?')}'): to_onnx exports live layers. Export the layer "
            "it was frozen from: to_onnx(layer), not to_onnx(layer.freeze())."
        )
    raise TypeError("Argument `model` must be a fastgru layer (GRU, RNN of GRUCells, "
                    "Bidirectional, Dense or a Sequential of those); received "
                    f"{type(model).__name__}")


def to_onnx(model, path=None, *, sequence_lens: bool = False, initial_state: bool = False,
            opset: int = 17, dtype="float32", output_names=None):
    """Export ``model`` (GRU, RNN of GRUCells, Bidirectional(GRU), Dense, or a Sequential of
    those; built) as an ONNX graph and return the ``onnx.ModelProto``; also written to ``path``
    when given.

    Graph inputs: ``x`` with the model's layout (``(B, T, D)``, or ``(T, B, D)`` for
    ``time_major`` layers; ``(B, D)``/``(B, T, D)`` for a Dense model); with
    ``sequence_lens=True`` also ``sequence_lens`` int32 ``(B,)`` (see the module notes); with
    ``initial_state=True`` (GRU, RNN, Bidirectional) the initial states, ``(B, u)`` each:
    ``initial_state`` (``initial_state_<i>`` per cell of a stacked RNN), or
    ``forward_initial_state`` and ``backward_initial_state``.
    Outputs: the model's outputs in order (``output``, then states when ``return_state``).
    Inference only (dropout off, stateful states not carried; without ``initial_state`` the
    graph starts from zeros). ``dtype``: "float32", or "float64" (a valid ONNX graph, but ONNX
    Runtime 1.32's GRU kernel refuses double).
    """
    _check_exportable(model)
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or opset < 13:
        raise ValueError(f"opset must be an int >= 13 (the graph's Squeeze / Unsqueeze take "
                         f"their axes as inputs, as from opset 13); received {opset!r}.")
    opset = int(opset)
    onnx, helper, _ = _onnx()
    g = _Graph(dtype)
    shape = _input_shape(model)
    time_major = bool(getattr(_first_layer(model), "time_major", False))
    dims = []
    for i, d in enumerate(shape):
        if d is not None and i == len(shape) - 1:
            dims.append(int(d))
        else:
            dims.append(("steps" if time_major else "batch") if i == 0 else
                        ("batch" if time_major else "steps") if i == 1 else f"d{i}")
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info("x", elem, dims)]
    lens = None
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", onnx.TensorProto.INT32,
                                                    ["batch"]))
        lens = "sequence_lens"
    h0 = {}
    if initial_state:
        specs, h0 = _initial_state_inputs(model)
        inputs += [helper.make_tensor_value_info(n, elem, ["batch", u]) for n, u in specs]
    outs, _, _ = _Exporter(g, h0).layer(model, "x", time_major, lens)
    if output_names is None:
        output_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    if len(output_names) != len(outs):
        raise ValueError(f"output_names has {len(output_names)} names; the model has "
                         f"{len(outs)} outputs.")
    for src, dst in zip(outs, output_names, strict=True):
        g.nodes.append(helper.make_node("Identity", [src], [dst], name=g.name("out")))
    out_shapes = _output_shapes(model, shape, len(outs))
    outputs = [helper.make_tensor_value_info(n, elem, s)
               for n, s in zip(output_names, out_shapes, strict=True)]
    graph = helper.make_graph(g.nodes, model.name, inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", opset)]
    # The oldest IR version that expresses the opset, not the installed onnx's newest: an
    # ONNX Runtime older than that onnx rejects newer IR versions ("Unsupported model IR
    # version") even when it implements every operator.
    proto = helper.make_model(graph, producer_name="fastgru", opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto


def _output_shapes(model, input_shape, n):
    """Shapes of the n graph outputs (unknown dims None)."""
    shapes = model.compute_output_shape(tuple([None] * (len(input_shape) - 1)
                                              + [input_shape[-1]]))
    if n == 1 and not (shapes and isinstance(shapes[0], (list, tuple))):
        shapes = [shapes]
    flat = []
    for s in shapes:  # stacked-RNN states may come as lists of shapes
        if s and isinstance(s[0], (list, tuple)):
            flat.extend(s)
        else:
            flat.append(s)
    if len(flat) != n:
        return [None] * n
    return [[None if d is None else int(d) for d in s] for s in flat]


def _first_layer(model):
    from ..layers.sequential import Sequential

    while isinstance(model, Sequential):
        if not model.layers:
            raise ValueError(f"Sequential '{model.name}' has no layers.")
        model = model.layers[0]
    from ..layers.bidirectional import Bidirectional

    if isinstance(model, Bidirectional):
        return model.forward_layer
    return model
