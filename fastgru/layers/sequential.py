"""Sequential: a linear stack of layers, as ``keras.Sequential``, plus ``compose``.

Building models the way the Keras R interface pipes them (its ``object`` argument), in Python:

    model = Sequential([GRU(8, return_sequences=True), GRU(8), Dense(1)])
    model = Sequential(); model.add(GRU(8)); model.add(Dense(1))
    y = GRU(8)(x)                               # a layer applied to an array
    model = compose(compose(None, GRU(8)), Dense(1))   # None -> the layer; Sequential -> add

Masks flow through the stack like Keras's mask propagation: ``model(x, mask=m)`` passes ``m``
to every layer whose ``call`` takes a ``mask``; a layer's ``compute_mask`` gives the next mask
(GRU/RNN/Bidirectional keep it with ``return_sequences``, drop it otherwise; Dense keeps it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from .. import _serialization
from .base import Grads, Layer, check_shape

__all__ = ["Sequential", "compose"]


_TAKES: dict = {}


def _takes(fn, arg: str) -> bool:
    """Whether ``fn`` accepts the keyword ``arg`` (cached per function: called every step)."""
    key = (getattr(fn, "__func__", fn), arg)
    if key not in _TAKES:
        try:
            params = inspect.signature(fn).parameters
            _TAKES[key] = arg in params or any(p.kind is p.VAR_KEYWORD
                                               for p in params.values())
        except (TypeError, ValueError):
            _TAKES[key] = False
    return _TAKES[key]


def next_mask(layer, inputs, mask):
    """The mask after ``layer`` (Keras ``compute_mask``; layers without it drop the mask)."""
    if mask is None:
        return None
    fn = getattr(layer, "compute_mask", None)
    if fn is None:
        return None
    out = fn(inputs, mask)
    if isinstance(out, (list, tuple)):  # [output_mask, state masks...]
        out = out[0]
    return out


def _single(layer, outputs):
    if isinstance(outputs, (list, tuple)):
        raise ValueError(
            f"Layer '{layer.name}' returns {len(outputs)} tensors; every layer of a "
            "Sequential must return one (no return_state, no merge_mode=None)."
        )
    return outputs


def _single_shape(layer, shape):
    shape = tuple(shape)
    if shape and isinstance(shape[0], (list, tuple)):
        _single(layer, shape)
    return shape


def _unique(layers) -> list:
    out, seen = [], set()
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


class Sequential(Layer):
    """A linear stack of layers, each applied to the previous one's output.

    Args:
        layers: optional list of layers (``Sequential([GRU(8), Dense(1)])``).
        trainable, name, dtype: Layer arguments.

    Call: ``model(x, mask=None, training=False)``; ``x`` is what the first layer takes (for a
    GRU, ``(B, T, D)``), the result is the last layer's output. Training:
    ``y, tape = model.forward(x, mask=None, training=True)`` then
    ``grads = model.backward(tape, dy)`` (``grads.weights`` aligned with
    ``model.trainable_weights``: each layer's in order).

    Weights, ``get_weights``/``set_weights``, ``trainable_weights`` and ``losses`` aggregate the
    layers'. Every layer must return a single array.
    """

    def __init__(self, layers: Iterable[Layer] | None = None, trainable: bool = True,
                 name: str | None = None, **kwargs):
        super().__init__(name=name, trainable=trainable, **kwargs)
        self._layers: list[Layer] = []
        self._build_input_shape = None
        for layer in layers or ():
            self.add(layer)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer) -> Sequential:
        """Append ``layer`` (built right away when the model already is)."""
        if not isinstance(layer, Layer):
            raise TypeError(
                "Only fastgru layers can be added to a Sequential. "
                f"Received: {layer!r} of type {type(layer).__name__}"
            )
        if self.built and self._build_input_shape is not None and not layer.built:
            layer.build(self.compute_output_shape(self._build_input_shape))
        self._layers.append(layer)
        self._track(layer)
        return self

    def pop(self) -> Layer:
        """Remove and return the last layer."""
        if not self._layers:
            raise IndexError(f"Sequential '{self.name}' has no layers to pop.")
        layer = self._layers.pop()
        if not any(layer is other for other in self._layers):
            self._sublayers = [s for s in self._sublayers if s is not layer]
        return layer

    def build(self, input_shape=None) -> None:
        if input_shape is None:
            raise ValueError(f"Sequential '{self.name}'.build needs an input shape.")
        shape = check_shape(input_shape, f"argument `input_shape` of Sequential '{self.name}'")
        self._build_input_shape = shape
        for layer in self._layers:
            if not layer.built:
                layer.build(shape)
            shape = _single_shape(layer, layer.compute_output_shape(shape))

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = _single_shape(layer, layer.compute_output_shape(shape))
        return shape

    def compute_mask(self, inputs, mask=None):
        for layer in self._layers:
            mask = next_mask(layer, inputs, mask)
        return mask

    # ------------------------------------------------------------------ calling
    @staticmethod
    def _kwargs(fn: Callable, mask, training) -> dict:
        kwargs = {}
        if mask is not None and _takes(fn, "mask"):
            kwargs["mask"] = mask
        if _takes(fn, "training"):
            kwargs["training"] = training
        return kwargs

    def call(self, inputs, mask=None, training: bool = False):
        if not self._layers:
            raise ValueError(f"Sequential '{self.name}' has no layers.")
        x = inputs
        for layer in self._layers:
            y = _single(layer, layer(x, **self._kwargs(layer.call, mask, training)))
            mask = next_mask(layer, x, mask)
            x = y
        return x

    def forward(self, inputs, mask=None, training: bool = True):
        """``(outputs, tape)``: the outputs of ``__call__`` and the layers' tapes."""
        if not self._layers:
            raise ValueError(f"Sequential '{self.name}' has no layers.")
        if not self.built:
            self.build(self._build_shape(inputs))
        x, tapes = inputs, []
        for layer in self._layers:
            y, tape = layer.forward(x, **self._kwargs(layer.forward, mask, training))
            tapes.append(tape)
            mask = next_mask(layer, x, mask)
            x = _single(layer, y)
        return x, tapes

    def backward(self, tape, d_outputs) -> Grads:
        """Gradients of one ``forward`` call: ``inputs`` (shape of the inputs) and one array
        per trainable weight (``weights``, aligned with ``trainable_weights``). A layer used
        twice gets the sum of its gradients."""
        if not isinstance(tape, list) or len(tape) != len(self._layers):
            raise TypeError("Sequential.backward needs the tape returned by its forward().")
        acc: dict[int, object] = {}
        d = d_outputs
        for layer, t in zip(reversed(self._layers), reversed(tape), strict=True):
            g = layer.backward(t, d)
            for var, gw in zip(layer.trainable_weights, g.weights, strict=True):
                acc[var.uid] = gw if var.uid not in acc else acc[var.uid] + gw
            d = g.inputs
        params = self.trainable_weights
        return Grads(inputs=d, initial_state=None, weights=[acc.get(w.uid) for w in params],
                     names=[w.name.rsplit("/", 1)[-1] for w in params],
                     paths=[w.name for w in params])

    # ------------------------------------------------------------------ aggregated state
    def to(self, device: str) -> Sequential:
        for layer in _unique(self._layers):
            layer.to(device)
        return self

    def freeze(self, n_threads: int | None = None):
        """An inference-only snapshot (layers/frozen.py): recurrent layers frozen
        (``RNN.freeze``), the others copied, as of now."""
        from .frozen import FrozenSequential

        return FrozenSequential(self, n_threads)

    def explain(self, x, mask=None) -> str:
        """Each layer's engine choice for an inference call on ``x``."""
        lines = []
        for layer in self._layers:
            lines.append(layer.explain(x, mask=mask))
            y = layer(x, **self._kwargs(layer.call, mask, False))
            mask = next_mask(layer, x, mask)
            x = y
        return "\n".join(lines)

    def summary(self, print_fn: Callable[[str], None] = print) -> None:
        """Print one line per layer: name (class), output shape, parameter count."""
        rows, shape = [], self._build_input_shape
        for layer in self._layers:
            out = "?"
            if shape is not None:
                shape = _single_shape(layer, layer.compute_output_shape(shape))
                out = str(shape)
            count = sum(int(_size(w.shape)) for w in layer.weights)
            rows.append((f"{layer.name} ({type(layer).__name__})", out, str(count)))
        head = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(r[i]) for r in rows + [head]) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        lines = [f'Model: "{self.name}"', rule,
                 "".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), rule]
        lines += ["".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        total = sum(int(_size(w.shape)) for w in self.weights)
        trainable = sum(int(_size(w.shape)) for w in self.trainable_weights)
        lines += [rule, f"Total params: {total}", f"Trainable params: {trainable}",
                  f"Non-trainable params: {total - trainable}"]
        print_fn("\n".join(lines))

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        config = super().get_config()
        config["layers"] = [_serialization.serialize(layer) for layer in self._layers]
        if self._build_input_shape is not None:
            config["build_input_shape"] = list(self._build_input_shape)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        """From ``get_config()`` or a Keras 3 Sequential config (a leading ``InputLayer``
        gives the build shape). The model is built when an input shape is recorded."""
        config = dict(config)
        entries = config.pop("layers", [])
        shape = config.pop("build_input_shape", None)
        layers = []
        for entry in entries:
            if entry.get("class_name") == "InputLayer":
                c = entry.get("config", {})
                shape = c.get("batch_shape") or c.get("batch_input_shape") or shape
                continue
            layer_cfg = entry.get("config", {})
            if shape is None and not layers and layer_cfg.get("batch_input_shape"):
                shape = layer_cfg["batch_input_shape"]  # Keras 2: on the first layer
            layers.append(_serialization.deserialize(entry, custom_objects))
        model = cls(layers, **config)
        if shape is not None:
            model.build(tuple(shape))
        return model


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def compose(obj, layer: Layer):
    """Apply ``layer`` to ``obj`` the way the Keras R interface's ``object`` argument does.

    - ``obj`` is None: returns ``layer`` (compose later);
    - ``obj`` is a :class:`Sequential`: appends ``layer`` and returns the model;
    - ``obj`` is another layer: returns ``Sequential([obj, layer])``;
    - ``obj`` is an array (NumPy/CuPy): returns ``layer(obj)``.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"compose: `layer` must be a fastgru layer. Received: {layer!r}")
    if obj is None:
        return layer
    if isinstance(obj, Sequential):
        return obj.add(layer)
    if isinstance(obj, Layer):
        return Sequential([obj, layer])
    return layer(obj)


_serialization.register(Sequential)
