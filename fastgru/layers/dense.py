"""Dense: ``activation(inputs @ kernel + bias)`` on the last axis, as ``keras.layers.Dense``.

Inputs of any rank >= 2: ``(B, D)`` gives ``(B, units)``, ``(B, T, D)`` gives ``(B, T, units)``
(the usual head after ``GRU(..., return_sequences=True)``). Weights: ``kernel (D, units)``, then
``bias (units,)`` when ``use_bias``. A mask passes through unchanged (Keras: Dense supports
masking and does not alter it).
"""

from __future__ import annotations

import numpy as np

from .. import _serialization, activations, constraints, initializers, regularizers
from .._array import check_real
from .base import Grads, Layer, array_module, check_shape

__all__ = ["Dense"]


class _Softmax:
    """softmax / log_softmax over the last axis (not elementwise, so not in ``activations``)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, a):
        xp = array_module(a)
        s = a - a.max(axis=-1, keepdims=True)
        if self.name == "log_softmax":
            return s - xp.log(xp.exp(s).sum(axis=-1, keepdims=True))
        e = xp.exp(s)
        return e / e.sum(axis=-1, keepdims=True)

    def vjp(self, y, dy):
        """d loss / d a from d loss / d y, where y = self(a)."""
        if self.name == "log_softmax":
            return dy - array_module(y).exp(y) * dy.sum(axis=-1, keepdims=True)
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


_VECTOR_ACTIVATIONS = ("softmax", "log_softmax")


def _get_activation(identifier):
    name = identifier
    if isinstance(identifier, dict):  # Keras serialised form
        cfg = identifier.get("config")
        name = cfg if isinstance(cfg, str) else identifier.get("class_name")
    elif callable(identifier):  # keras.activations.softmax and the like
        name = activations.keras_activation_name(identifier)
    if isinstance(name, str) and name in _VECTOR_ACTIVATIONS:
        return _Softmax(name)
    return activations.get(identifier)


class Dense(Layer):
    """Densely connected layer: ``outputs = activation(inputs @ kernel + bias)``.

    Args:
        units: positive int, the size of the last output axis.
        activation: any Keras activation name (``"relu"``, ``"softmax"``, ...), an
            :class:`~fastgru.activations.Activation`, or None (linear).
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in Keras.
        name, dtype ("float32" default, or "float64"), trainable: Layer arguments.

    Shapes: inputs ``(..., D)`` -> outputs ``(..., units)``.

    Use it on its own (``Dense(3)(x)``), or as a model head:
    ``Sequential([GRU(8), Dense(1)])``.
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, lora_rank=None,
                 lora_alpha=None, quantization_config=None, **kwargs):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(
                "Received an invalid value for `units`, expected a positive integer. "
                f"Received: units={units!r}"
            )
        if lora_rank or quantization_config:
            raise ValueError(
                "Dense: LoRA and quantized kernels are not supported by fastgru. "
                f"Received: lora_rank={lora_rank!r}, quantization_config={quantization_config!r}"
            )
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = int(units)
        self.activation = _get_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.kernel = None
        self.bias = None
        self.input_dim = None
        self._build_input_shape = None

    # ------------------------------------------------------------------ build
    def build(self, input_shape) -> None:
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dense layer '{self.name}' needs inputs of rank >= 2 with a known last axis. "
                f"Received: input_shape={input_shape}"
            )
        input_shape = check_shape(input_shape,
                                  f"argument `input_shape` of Dense layer '{self.name}'")
        self.input_dim = int(input_shape[-1])
        self._build_input_shape = input_shape
        self.kernel = self.add_weight(
            "kernel", (self.input_dim, self.units), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight(
                "bias", (self.units,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def compute_mask(self, inputs, mask=None):
        return mask

    # ------------------------------------------------------------------ calling
    def _check(self, inputs):
        xp = array_module(inputs)
        x = check_real(xp.asarray(inputs), "Input of Dense layer '{}'", self.name)
        if x.ndim < 2:
            raise ValueError(
                f"Dense layer '{self.name}' expects inputs of rank >= 2 (batch, ..., features). "
                f"Received: shape={x.shape}"
            )
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"Dense layer '{self.name}' was built for {self.input_dim} input features; "
                f"received inputs of shape {x.shape} (last axis {x.shape[-1]})."
            )
        return x.astype(self.dtype, copy=False)

    def _weights(self, xp):
        k = self.kernel.value
        b = self.bias.value if self.use_bias else None
        if array_module(k) is not xp:  # weights on the other device than the input
            raise ValueError(
                f"Dense layer '{self.name}': inputs are {xp.__name__} arrays but the weights "
                f"live on the other device; move the layer with layer.to(...)."
            )
        return k, b

    def _affine(self, x):
        xp = array_module(x)
        k, b = self._weights(xp)
        a = x @ k
        return a + b if b is not None else a

    def call(self, inputs, mask=None, training: bool = False):
        """``(..., D) -> (..., units)``; ``mask`` is accepted for mask propagation and unused."""
        return self.activation(self._affine(self._check(inputs)))

    def forward(self, inputs, mask=None, training: bool = True):
        """``(outputs, tape)`` for :meth:`backward`."""
        if not self.built:
            self.build(self._build_shape(inputs))
        x = self._check(inputs)
        a = self._affine(x)
        y = self.activation(a)
        self._record_activity(y)
        return y, {"x": x, "a": a, "y": y}

    def backward(self, tape, d_outputs) -> Grads:
        """Gradients for ``forward``'s call: ``inputs`` (..., D), then kernel and bias (when
        trainable)."""
        x, a, y = tape["x"], tape["a"], tape["y"]
        dy = array_module(y).asarray(d_outputs, dtype=y.dtype)
        if dy.shape != y.shape:
            raise ValueError(
                f"Dense layer '{self.name}': d_outputs must have the outputs' shape {y.shape}; "
                f"received {dy.shape}"
            )
        if isinstance(self.activation, _Softmax):
            da = self.activation.vjp(y, dy)
        else:
            da = dy * self.activation.derivative(a)
        k = self.kernel.value
        dx = da @ k.T
        weights, names = [], []
        if self.trainable:
            d = x.shape[-1]
            weights.append(x.reshape(-1, d).T @ da.reshape(-1, self.units))
            names.append("kernel")
            if self.use_bias:
                weights.append(da.reshape(-1, self.units).sum(axis=0))
                names.append("bias")
        paths = [w.name for w in self.trainable_weights]
        return Grads(inputs=dx, initial_state=None, weights=weights, names=names, paths=paths)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        act = self.activation
        config = {
            "units": self.units,
            "activation": act.name if isinstance(act, _Softmax) else activations.serialize(act),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "quantization_config": None,
        }
        base = super().get_config()
        if self.activity_regularizer is not None:  # Keras lists it only when set
            base["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return {**base, **config}


_serialization.register(Dense)
