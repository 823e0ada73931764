"""Bidirectional: run a recurrent layer forwards and a copy backwards, merge the outputs.

Keras 3 semantics (``keras.layers.Bidirectional``): the forward layer is re-created from the
given layer's config (named ``forward_<name>``); unless ``backward_layer`` is given, the
backward layer is the same config with ``go_backwards=True`` (``backward_<name>``; so a
given layer that itself goes backwards is refused, as in Keras, rather than both running
backwards). With
``return_sequences`` the backward outputs are flipped back to input time order and both layers
get ``zero_output_for_mask=True`` (Keras forces it, so masked steps output zeros). Weights:
the forward layer's, then the backward layer's. ``initial_state`` is a list whose first half
goes to the forward layer, the second half to the backward one; ``return_state`` returns
``(output, *forward_states, *backward_states)``.

The two directions run as two calls of the wrapped layer (every engine the layer can use
applies), except on CuPy input when both layers are single GRU cells that cuDNN can run with
the same configuration (tanh/sigmoid, use_bias, reset_after, same units and dtype, no active
dropout, no unroll, ``use_cudnn`` not False, mask absent or right-padded): then one
CUDNN_BIDIRECTIONAL call (:func:`fastgru.engines.cudnn.forward_bidirectional`) computes both
directions, with the same results, states, tape/backward API and gradients as the two calls.
``explain()`` says which path a call takes and why.
"""

from __future__ import annotations

from .. import _dispatch, _serialization
from .._array import as_array, real_array
from .base import Grads, Layer, array_module
from .cell import GRUCell, _dropout_active

__all__ = ["Bidirectional"]

_MERGE_MODES = ("sum", "mul", "ave", "concat", None)
_RECURRENT_ATTRS = ("go_backwards", "return_sequences", "return_state", "stateful")


def _remove_prefix(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _copy_layer(layer: Layer, name: str, go_backwards: bool | None = None) -> Layer:
    cfg = _serialization.serialize(layer)
    cfg["config"] = dict(cfg["config"], name=name)
    if go_backwards is not None:
        cfg["config"]["go_backwards"] = go_backwards
    copy = _serialization.deserialize(cfg)
    if hasattr(layer, "use_cudnn"):  # not serialised (as in Keras): carry it over
        copy.use_cudnn = layer.use_cudnn
    return copy


class Bidirectional(Layer):
    """Bidirectional wrapper for recurrent layers (GRU, RNN).

    Args:
        layer: the recurrent layer (its config is copied; its weights are not reused).
        merge_mode: "concat" (default), "sum", "mul", "ave", or None (return both outputs).
        weights: optional initial weights (forward layer's, then backward layer's), set when
            the layer is built.
        backward_layer: optional layer for the backward direction (must have the opposite
            ``go_backwards`` and the same ``stateful``, ``return_sequences``,
            ``return_state``).
        name, trainable: Layer arguments; dtype defaults to the wrapped layer's (Keras would
            use the global float32 policy and cast a float64 layer's outputs down).

    Call: ``layer(sequences, initial_state=None, mask=None, training=False)``. Shapes (u =
    units): concat ``(B, T, 2u)`` / ``(B, 2u)`` (``u_f + u_b`` with a ``backward_layer`` of
    other units); sum/mul/ave ``(B, T, u)`` / ``(B, u)`` (equal units only);
    None: a tuple ``(forward_output, backward_output)``. With ``return_state``:
    ``(output, forward_state, backward_state)`` (``(fwd_out, bwd_out, fwd_state,
    bwd_state)`` for merge_mode None).

    Training: ``y, tape = layer.forward(x, mask=None, initial_state=None, training=True)``,
    ``grads = layer.backward(tape, dy)`` where ``dy`` mirrors ``y`` (tuples with
    return_state / merge_mode None; None entries allowed). ``grads.weights`` follows
    ``trainable_weights`` (forward, then backward); ``grads.initial_state`` is
    ``[d_forward_h0, d_backward_h0]``. On CuPy input an eligible pair runs as one
    bidirectional cuDNN call with the same results (module docstring; ``explain()``).
    """

    def __init__(self, layer: Layer, merge_mode: str | None = "concat", weights=None,
                 backward_layer: Layer | None = None, **kwargs):
        if not isinstance(layer, Layer):
            raise ValueError(
                "Please initialize `Bidirectional` layer with a `fastgru` layer instance. "
                f"Received: {layer}"
            )
        if backward_layer is not None and not isinstance(backward_layer, Layer):
            raise ValueError(
                f"`backward_layer` need to be a layer instance. Received: {backward_layer}"
            )
        for arg, sub in (("layer", layer), ("backward_layer", backward_layer)):
            missing = [a for a in _RECURRENT_ATTRS if sub is not None and not hasattr(sub, a)]
            if missing:
                raise ValueError(
                    f"`{arg}` of `Bidirectional` must be a recurrent layer (GRU, or RNN of "
                    f"cells); received {type(sub).__name__} layer '{sub.name}', which has no "
                    + ", ".join(f"`{a}`" for a in missing)
                )
        if merge_mode not in _MERGE_MODES:
            raise ValueError(
                f"Invalid merge mode. Received: {merge_mode}. Merge mode should be one of "
                '{"sum", "mul", "ave", "concat", None}'
            )
        if kwargs.get("dtype") is None:  # Keras would use the global float32 policy
            kwargs["dtype"] = layer.dtype
        super().__init__(**kwargs)
        self.forward_layer = _copy_layer(
            layer, "forward_" + _remove_prefix(layer.name, "forward_"))
        if backward_layer is None:
            self.backward_layer = _copy_layer(
                layer, "backward_" + _remove_prefix(layer.name, "backward_"), go_backwards=True)
        else:
            self.backward_layer = backward_layer
        self._verify_layer_config()
        for sub in (self.forward_layer, self.backward_layer):
            if getattr(sub, "zero_output_for_mask", None) is not None:
                sub.zero_output_for_mask = sub.return_sequences
        self._track(self.forward_layer)
        self._track(self.backward_layer)
        self.merge_mode = merge_mode
        self._initial_weights = list(weights) if weights else None
        self.stateful = layer.stateful
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.time_major = bool(getattr(layer, "time_major", False))
        self._build_input_shape = None

    def _verify_layer_config(self):
        fwd, bwd = self.forward_layer, self.backward_layer
        if fwd.go_backwards == bwd.go_backwards:
            raise ValueError(
                "Forward layer and backward layer should have different `go_backwards` value. "
                f"Received: forward_layer.go_backwards {fwd.go_backwards}, "
                f"backward_layer.go_backwards={bwd.go_backwards}"
            )
        for a in ("stateful", "return_sequences", "return_state"):
            if getattr(fwd, a) != getattr(bwd, a):
                raise ValueError(
                    "Forward layer and backward layer are expected to have the same value for "
                    f'attribute "{a}", got "{getattr(fwd, a)}" for forward layer and '
                    f'"{getattr(bwd, a)}" for backward layer'
                )
        if bool(getattr(fwd, "time_major", False)) != bool(getattr(bwd, "time_major", False)):
            raise ValueError("Forward layer and backward layer must have the same time_major.")

    # ------------------------------------------------------------------ build / shapes
    def build(self, sequences_shape, initial_state_shape=None) -> None:
        self._build_input_shape = tuple(sequences_shape)
        for sub in (self.forward_layer, self.backward_layer):
            if not sub.built:
                sub.build(sequences_shape)
        # sum / ave / mul of unequal outputs refused here (NumPy would broadcast a backward
        # layer of 1 unit over the forward one's units)
        self.compute_output_shape(sequences_shape)
        if self._initial_weights is not None:
            n = len(self._initial_weights)
            self.forward_layer.set_weights(self._initial_weights[: n // 2])
            self.backward_layer.set_weights(self._initial_weights[n // 2:])
            self._initial_weights = None

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        # the backward layer may have other units (backward_layer=): its own shapes
        out = self.forward_layer.compute_output_shape(sequences_shape)
        back = self.backward_layer.compute_output_shape(sequences_shape)
        states = back_states = ()
        if self.return_state:
            out, states = out[0], tuple(out[1:])
            back, back_states = back[0], tuple(back[1:])
        if self.merge_mode == "concat":
            last = None if out[-1] is None or back[-1] is None else out[-1] + back[-1]
            out = tuple(out[:-1]) + (last,)
        elif self.merge_mode is not None and tuple(out) != tuple(back):
            raise ValueError(
                f"Bidirectional '{self.name}' with merge_mode={self.merge_mode!r} needs forward "
                f"and backward outputs of one shape; the forward layer gives {tuple(out)} and "
                f"the backward layer {tuple(back)} (a `backward_layer` with other units works "
                "only with merge_mode='concat' or None)"
            )
        elif self.merge_mode is None:
            out = (tuple(out), tuple(back))
        if self.return_state:
            head = out if self.merge_mode is None else (tuple(out),)
            return tuple(head) + states + back_states
        return tuple(out) if self.merge_mode is not None else out

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, list):
            mask = mask[0]
        if self.return_sequences:
            out = (mask, mask) if not self.merge_mode else mask
        else:
            out = (None, None) if not self.merge_mode else None
        if self.return_state and self.stateful:  # as Keras: state masks only when stateful
            n = len(getattr(self.forward_layer, "state_size", [1])) * 2
            head = list(out) if isinstance(out, tuple) else [out]
            return head + [None] * n
        return out

    # ------------------------------------------------------------------ calling
    @property
    def _time_axis(self) -> int:
        return 0 if self.time_major else 1

    def _split_state(self, initial_state):
        if initial_state is None:
            return None, None
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) < 2:
            raise ValueError(
                "Bidirectional `initial_state` must be a list [forward_states..., "
                "backward_states...] with an even number of entries. "
                f"Received: {type(initial_state).__name__}"
            )
        if len(initial_state) % 2:
            raise ValueError(
                "Bidirectional `initial_state` needs as many backward states as forward states; "
                f"received {len(initial_state)} entries."
            )
        half = len(initial_state) // 2
        fwd, bwd = list(initial_state[:half]), list(initial_state[half:])
        return (fwd[0] if half == 1 else fwd), (bwd[0] if half == 1 else bwd)

    def _merge(self, y, y_rev):
        xp = array_module(y)
        y = y.astype(self.dtype, copy=False)
        y_rev = y_rev.astype(self.dtype, copy=False)
        if self.return_sequences:
            y_rev = xp.flip(y_rev, axis=self._time_axis)
        if self.merge_mode == "concat":
            return xp.concatenate([y, y_rev], axis=-1), y, y_rev
        if self.merge_mode == "sum":
            return y + y_rev, y, y_rev
        if self.merge_mode == "ave":
            return (y + y_rev) / 2, y, y_rev
        if self.merge_mode == "mul":
            return y * y_rev, y, y_rev
        return (y, y_rev), y, y_rev

    def _structure(self, merged, f_states, b_states):
        if not self.return_state:
            return merged
        head = merged if self.merge_mode is None else (merged,)
        return tuple(head) + tuple(f_states) + tuple(b_states)

    @staticmethod
    def _parts(result, return_state):
        if return_state:
            return result[0], list(result[1:])
        return result, []

    # ------------------------------------------------------------------ fused cuDNN call
    def _fused_rule(self, x, mask, training):
        """``(cudnn module, why)`` if one bidirectional cuDNN call can run this call (``x``
        batch-major in the cells' dtype, ``mask`` (B, T) bool or None), else ``(None, why
        not)``."""
        cudnn, err = _dispatch.load("cudnn")
        if cudnn is None:
            return None, f"the cuDNN engine could not be imported ({err})"
        if not cudnn.backend().accepts(x):
            return None, "the input is not a CuPy array"
        reason = self._static_fused_reason(training)
        if reason is not None:
            return None, reason
        if x.shape[0] == 0:
            return None, "empty batch (B == 0)"
        ok, why = cudnn.eligible_bidirectional(*self._fused_specs(), mask)
        return (cudnn, why) if ok else (None, why)

    def _static_fused_reason(self, training):
        """Why the wrapped layers' configuration rules the fused call out, or None."""
        fl, bl = self.forward_layer, self.backward_layer
        for sub in (fl, bl):
            cell = getattr(sub, "cell", None)
            if not isinstance(cell, GRUCell):  # a stack of cells is several cuDNN layers
                return f"layer '{sub.name}' is not a single GRU cell"
            if getattr(sub, "use_cudnn", "auto") == False:  # noqa: E712 - Keras: 0 too
                return f"layer '{sub.name}' has use_cudnn=False"
            blockers = sub._blockers(cell)
            if blockers:
                return f"layer '{sub.name}': {'; '.join(blockers)}"
            if _dropout_active(cell.dropout, training):
                return (f"layer '{sub.name}' applies input dropout (each direction draws "
                        f"its own mask; one call reads one input)")
        if fl.cell.dtype != bl.cell.dtype or fl.dtype != bl.dtype:
            return "the two layers compute in different dtypes"
        return None

    def _fused_pair(self):
        """(layer reading forwards, go_backwards layer): cuDNN pseudo-layers 0 and 1."""
        fl, bl = self.forward_layer, self.backward_layer
        return (bl, fl) if fl.go_backwards else (fl, bl)

    def _fused_specs(self):
        first, second = self._fused_pair()
        return tuple(sub.cell.spec(go_backwards=sub.go_backwards,
                                   return_sequences=sub.return_sequences,
                                   zero_output_for_mask=sub.zero_output_for_mask)
                     for sub in (first, second))

    def _fused_run(self, sequences, f0, b0, mask, training, record):
        """``(forward layer's result, backward layer's result, engine tape)`` of one fused
        call, each result as that layer's own call returns it; None when not eligible."""
        cudnn, _ = _dispatch.load("cudnn")
        if (cudnn is None or not cudnn.backend().accepts(sequences)
                or self._static_fused_reason(training) is not None):
            return None
        fl, bl = self.forward_layer, self.backward_layer
        x, m, st_f, bare_f, xp = fl._prepare(sequences, f0, mask)
        _, _, st_b, bare_b, _ = bl._prepare(sequences, b0, mask)
        x = x.astype(fl.cell.dtype, copy=False)
        if self._fused_rule(x, m, training)[0] is None:
            return None
        states = {id(fl): (st_f, bare_f), id(bl): (st_b, bare_b)}
        first, second = self._fused_pair()
        dt = first.cell.dtype
        spec_a, spec_b = self._fused_specs()
        out_a, h_a, out_b, h_b, etape = cudnn.forward_bidirectional(
            x, first.cell.engine_weights(), second.cell.engine_weights(),
            xp.asarray(states[id(first)][0][0], dtype=dt),
            xp.asarray(states[id(second)][0][0], dtype=dt), spec_a, spec_b, m,
            training=record, weights_key=(first.cell.weights_key(), second.cell.weights_key()))
        results = {}
        for sub, out, h in ((first, out_a, h_a), (second, out_b, h_b)):
            if sub.stateful:
                sub._write_states([h], xp)
            sub._called = True
            results[id(sub)] = sub._structure(out, [h], states[id(sub)][1])
            sub._record_activity(results[id(sub)])
        return results[id(fl)], results[id(bl)], etape

    def _fused_backward(self, tape, dy, dy_rev, d_states_f, d_states_b) -> Grads:
        etape = tape["fused"]
        fl, bl = self.forward_layer, self.backward_layer
        xp = tape["module"]
        B, T = etape.batch, etape.steps
        up = {id(fl): self._engine_upstream(fl, dy, d_states_f, xp, B, T),
              id(bl): self._engine_upstream(bl, dy_rev, d_states_b, xp, B, T)}
        first, second = self._fused_pair()
        dx, ga, gb = _dispatch.load("cudnn")[0].backward_bidirectional(
            etape, *up[id(first)], *up[id(second)])
        g = {id(first): ga, id(second): gb}
        dx = dx.astype(self.dtype, copy=False)
        if self.time_major:
            dx = dx.swapaxes(0, 1)
        weights, names, paths = [], [], []
        for sub in (fl, bl):
            trainable = {w.uid for w in sub.trainable_weights}
            gr = g[id(sub)]
            cell = sub.cell
            for var, short, value in ((cell.kernel, "kernel", gr.kernel),
                                      (cell.recurrent_kernel, "recurrent_kernel",
                                       gr.recurrent_kernel), (cell.bias, "bias", gr.bias)):
                if var is not None and var.uid in trainable:
                    weights.append(value)
                    names.append(short)
                    paths.append(var.name)
        return Grads(inputs=dx, initial_state=[g[id(fl)].h0, g[id(bl)].h0], weights=weights,
                     names=names, paths=paths)

    def _engine_upstream(self, sub, dy, d_states, xp, B, T):
        """(d_outputs, d_h_last) of one direction in the engine contract's form, validated as
        the layer's own ``backward`` does."""
        d = (dy, *d_states) if self.return_state else dy
        d_out, (dh,) = sub._split_d_outputs(d, None, 1, False)
        cell = sub.cell
        if d_out is not None:
            # nested lists too, as the inputs may be
            d_out = real_array(xp, sub._to(xp, d_out), "`d_outputs` of layer '{}'", self.name)
            if self.return_sequences and self.time_major:
                d_out = d_out.swapaxes(0, 1)
            expected = (B, T, cell.units) if self.return_sequences else (B, cell.units)
            if tuple(d_out.shape) != expected:
                raise ValueError(
                    f"`d_outputs` must have the shape of the outputs "
                    f"{sub._out_shape(B, T, cell.units)}; received {tuple(d_out.shape)}")
            d_out = xp.asarray(d_out, dtype=cell.dtype)
        if dh is not None:
            dh = sub._state_array(dh, xp, B, cell.units, "d_state").astype(cell.dtype)
        return d_out, dh

    # ------------------------------------------------------------------ calling
    def freeze(self, n_threads: int | None = None):
        """An inference-only snapshot of both directions (``RNN.freeze``), merged as here."""
        from .frozen import FrozenBidirectional

        return FrozenBidirectional(self, n_threads)

    def call(self, sequences, initial_state=None, mask=None, training: bool = False):
        f0, b0 = self._split_state(initial_state)
        fused = self._fused_run(sequences, f0, b0, mask, training, record=False)
        if fused is not None:
            (y, fs), (y_rev, bs) = (self._parts(r, self.return_state) for r in fused[:2])
            merged, _, _ = self._merge(y, y_rev)
            return self._structure(merged, fs, bs)
        kw = {"mask": mask, "training": training}
        y, fs = self._parts(self.forward_layer(sequences, initial_state=f0, **kw),
                            self.return_state)
        y_rev, bs = self._parts(self.backward_layer(sequences, initial_state=b0, **kw),
                                self.return_state)
        merged, _, _ = self._merge(y, y_rev)
        return self._structure(merged, fs, bs)

    def forward(self, sequences, initial_state=None, mask=None, training: bool = True):
        """``(outputs, tape)``: outputs as ``__call__``, tape for :meth:`backward`."""
        if not self.built:
            self.build(self._build_shape(sequences))
        f0, b0 = self._split_state(initial_state)
        fused = self._fused_run(sequences, f0, b0, mask, training, record=True)
        if fused is not None:
            yf, yb, etape = fused
            tf = tb = None
        else:
            kw = {"mask": mask, "training": training}
            yf, tf = self.forward_layer.forward(sequences, initial_state=f0, **kw)
            yb, tb = self.backward_layer.forward(sequences, initial_state=b0, **kw)
            etape = None
        y, fs = self._parts(yf, self.return_state)
        y_rev, bs = self._parts(yb, self.return_state)
        merged, y_c, y_rev_c = self._merge(y, y_rev)
        outputs = self._structure(merged, fs, bs)
        self._record_activity(outputs)
        tape = {"forward": tf, "backward": tb, "fused": etape, "module": array_module(y_c),
                "y": y_c, "y_rev": y_rev_c, "n_states": (len(fs), len(bs))}
        return outputs, tape

    def backward(self, tape, d_outputs) -> Grads:
        """Gradients of one ``forward`` call; ``d_outputs`` mirrors its outputs."""
        if not isinstance(tape, dict) or "forward" not in tape:
            raise TypeError("Bidirectional.backward needs the tape returned by its forward().")
        nf, nb = tape["n_states"]
        d_states_f = d_states_b = []
        d = d_outputs
        if self.return_state:
            if not isinstance(d, (list, tuple)):
                raise ValueError("With return_state, `d_outputs` must be a tuple mirroring the "
                                 "outputs: (d_output, d_forward_state, d_backward_state).")
            head = 2 if self.merge_mode is None else 1
            if len(d) != head + nf + nb:
                raise ValueError(f"`d_outputs` must have {head + nf + nb} entries; received "
                                 f"{len(d)}.")
            d_states_f = list(d[head:head + nf])
            d_states_b = list(d[head + nf:])
            d = d[0] if head == 1 else tuple(d[:2])
        dy, dy_rev = self._split_merge(d, tape)
        if dy_rev is not None and self.return_sequences:
            dy_rev = array_module(dy_rev).flip(dy_rev, axis=self._time_axis)
        if tape.get("fused") is not None:
            return self._fused_backward(tape, dy, dy_rev, d_states_f, d_states_b)
        gf = self._sub_backward(self.forward_layer, tape["forward"], dy, d_states_f)
        gb = self._sub_backward(self.backward_layer, tape["backward"], dy_rev, d_states_b)
        dx = gf.inputs + gb.inputs
        return Grads(inputs=dx, initial_state=[gf.initial_state, gb.initial_state],
                     weights=gf.weights + gb.weights, names=gf.names + gb.names,
                     paths=gf.paths + gb.paths)

    def _split_merge(self, d, tape):
        y, y_rev = tape["y"], tape["y_rev"]
        if self.merge_mode is None:
            if not isinstance(d, (list, tuple)) or len(d) != 2:
                raise ValueError("With merge_mode=None, `d_outputs` must be a pair "
                                 "(d_forward_output, d_backward_output).")
            xp = array_module(y)
            return tuple(  # (the backward half is flipped before its layer sees it)
                g if g is None or hasattr(g, "shape")
                else as_array(xp, g, "`d_outputs[{}]` of layer '{}'", i, self.name)
                for i, g in enumerate(d))
        if d is None:
            return None, None
        xp = array_module(y)
        d = xp.asarray(real_array(xp, d, "`d_outputs` of layer '{}'", self.name), dtype=y.dtype)
        if self.merge_mode == "concat":
            u = y.shape[-1]  # the backward layer may have other units (backward_layer=)
            expected = y.shape[:-1] + (u + y_rev.shape[-1],)
            if d.shape != expected:
                raise ValueError(f"`d_outputs` must have the outputs' shape {expected}; "
                                 f"received {d.shape}")
            return d[..., :u], d[..., u:]
        if d.shape != y.shape:
            raise ValueError(f"`d_outputs` must have the outputs' shape {y.shape}; received "
                             f"{d.shape}")
        if self.merge_mode == "sum":
            return d, d
        if self.merge_mode == "ave":
            return d / 2, d / 2
        return d * y_rev, d * y  # mul

    def _sub_backward(self, layer, tape, dy, d_states):
        if self.return_state:
            return layer.backward(tape, (dy, *d_states))
        return layer.backward(tape, dy)

    # ------------------------------------------------------------------ state, devices
    @property
    def states(self):
        fs, bs = self.forward_layer.states, self.backward_layer.states
        if fs and bs:
            return tuple(list(fs) + list(bs))
        return None

    def reset_state(self):
        if not self.stateful:
            raise AttributeError("Layer must be stateful.")
        self.forward_layer.reset_state()
        self.backward_layer.reset_state()

    def reset_states(self):
        self.reset_state()

    def to(self, device: str) -> Bidirectional:
        self.forward_layer.to(device)
        self.backward_layer.to(device)
        return self

    def explain(self, x, mask=None) -> str:
        """Which path a call on ``x`` (with ``mask``) would take, and why (inference)."""
        fl = self.forward_layer
        xp = array_module(x)
        xb = xp.asarray(x)
        if self.time_major:
            xb = xb.swapaxes(0, 1)
        m = None
        if mask is not None and getattr(fl, "_standardize_mask", None) is not None:
            m = fl._standardize_mask(mask, xp, xb.shape[0], xb.shape[1])
        if getattr(fl, "cell", None) is not None and hasattr(fl.cell, "dtype"):
            xb = xb.astype(fl.cell.dtype, copy=False)
        cudnn, why = self._fused_rule(xb, m, training=False)
        if cudnn is not None:
            return f"{self.name}: engine 'cudnn' (fused bidirectional): {why}."
        return (f"{self.name}: two calls (no fused bidirectional cuDNN call: {why}); forward: "
                f"{fl.explain(x, mask)} | backward: {self.backward_layer.explain(x, mask)}")

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        config = super().get_config()
        config["merge_mode"] = self.merge_mode
        config["layer"] = _serialization.serialize(self.forward_layer)
        config["backward_layer"] = _serialization.serialize(self.backward_layer)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        config["layer"] = _serialization.deserialize(config["layer"], custom_objects)
        backward = config.pop("backward_layer", None)
        if backward is not None:
            config["backward_layer"] = _serialization.deserialize(backward, custom_objects)
        return cls(**config)


_serialization.register(Bidirectional)
