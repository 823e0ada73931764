"""Bidirectional: run a recurrent layer forwards and a copy backwards, merge the outputs.

Keras 3 semantics (``keras.layers.Bidirectional``): the forward layer is re-created from the
given layer's config (named ``forward_<name>``); unless ``backward_layer`` is given, the
backward layer is the same config with ``go_backwards`` flipped (``backward_<name>``). With
``return_sequences`` the backward outputs are flipped back to input time order and both layers
get ``zero_output_for_mask=True`` (Keras forces it, so masked steps output zeros). Weights:
the forward layer's, then the backward layer's. ``initial_state`` is a list whose first half
goes to the forward layer, the second half to the backward one; ``return_state`` returns
``(output, *forward_states, *backward_states)``.

The two directions run as two calls of the wrapped layer (every engine the layer can use
applies). One fused bidirectional cuDNN call would save a launch per step on GPUs; it is a
possible later optimisation, not done here.
"""

from __future__ import annotations

from .. import _serialization
from .base import Grads, Layer, array_module

__all__ = ["Bidirectional"]

_MERGE_MODES = ("sum", "mul", "ave", "concat", None)


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
    units): concat ``(B, T, 2u)`` / ``(B, 2u)``; sum/mul/ave ``(B, T, u)`` / ``(B, u)``;
    None: a tuple ``(forward_output, backward_output)``. With ``return_state``:
    ``(output, forward_state, backward_state)`` (``(fwd_out, bwd_out, fwd_state,
    bwd_state)`` for merge_mode None).

    Training: ``y, tape = layer.forward(x, mask=None, initial_state=None, training=True)``,
    ``grads = layer.backward(tape, dy)`` where ``dy`` mirrors ``y`` (tuples with
    return_state / merge_mode None; None entries allowed). ``grads.weights`` follows
    ``trainable_weights`` (forward, then backward); ``grads.initial_state`` is
    ``[d_forward_h0, d_backward_h0]``.
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
                layer, "backward_" + _remove_prefix(layer.name, "backward_"),
                go_backwards=not layer.go_backwards)
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
        if self._initial_weights is not None:
            n = len(self._initial_weights)
            self.forward_layer.set_weights(self._initial_weights[: n // 2])
            self.backward_layer.set_weights(self._initial_weights[n // 2:])
            self._initial_weights = None

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        out = self.forward_layer.compute_output_shape(sequences_shape)
        states = ()
        if self.return_state:
            out, states = out[0], tuple(out[1:])
        if self.merge_mode == "concat":
            out = tuple(out[:-1]) + (None if out[-1] is None else 2 * out[-1],)
        elif self.merge_mode is None:
            out = (tuple(out), tuple(out))
        if self.return_state:
            head = out if self.merge_mode is None else (tuple(out),)
            return tuple(head) + states + states
        return tuple(out) if self.merge_mode is not None else out

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, list):
            mask = mask[0]
        if self.return_sequences:
            out = (mask, mask) if not self.merge_mode else mask
        else:
            out = (None, None) if not self.merge_mode else None
        if self.return_state:
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

    def call(self, sequences, initial_state=None, mask=None, training: bool = False):
        f0, b0 = self._split_state(initial_state)
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
        kw = {"mask": mask, "training": training}
        yf, tf = self.forward_layer.forward(sequences, initial_state=f0, **kw)
        yb, tb = self.backward_layer.forward(sequences, initial_state=b0, **kw)
        y, fs = self._parts(yf, self.return_state)
        y_rev, bs = self._parts(yb, self.return_state)
        merged, y_c, y_rev_c = self._merge(y, y_rev)
        outputs = self._structure(merged, fs, bs)
        self._record_activity(outputs)
        tape = {"forward": tf, "backward": tb, "y": y_c, "y_rev": y_rev_c,
                "n_states": (len(fs), len(bs))}
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
            return d[0], d[1]
        if d is None:
            return None, None
        xp = array_module(y)
        d = xp.asarray(d, dtype=y.dtype)
        if self.merge_mode == "concat":
            u = y.shape[-1]
            expected = y.shape[:-1] + (2 * u,)
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
        return (f"{self.name}: forward: {self.forward_layer.explain(x, mask)} | backward: "
                f"{self.backward_layer.explain(x, mask)}")

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
