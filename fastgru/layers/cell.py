"""GRUCell: the weights, configuration and dropout masks of one GRU layer.

The cell owns ``kernel (D, 3u)``, ``recurrent_kernel (u, 3u)`` and ``bias`` ((2, 3u) when
``reset_after`` else (3u,); absent without ``use_bias``), gate order z, r, h
(KERAS_GRU_SPEC.md 1.1, 2.1). Whole sequences never loop over ``call``: the RNN layers hand the
cell's weights and :meth:`spec` to an engine. ``call`` (one step) exists for the Keras cell
protocol: direct use and custom-cell stacks, and it runs on the same engines (T = 1).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _random, activations, constraints, initializers, regularizers
from .._array import as_array, check_real
from ..engines.base import DropoutMasks, GRUSpec, Weights
from .base import Layer, array_module, check_shape

__all__ = ["GRUCell"]


def validate_units(units) -> int:
    """A positive int. Floats raise ValueError at construction (Keras fails later); None or
    strings raise TypeError (as Keras's ``<=`` comparison does)."""
    if isinstance(units, bool) or not isinstance(units, numbers.Real):
        raise TypeError(
            "Received an invalid value for argument `units`, expected a positive integer, "
            f"got {units!r}."
        )
    if not isinstance(units, numbers.Integral) or units <= 0:
        raise ValueError(
            "Received an invalid value for argument `units`, expected a positive integer, "
            f"got {units}."
        )
    return int(units)


def validate_rate(value, name: str) -> float:
    """A dropout rate in [0, 1] (Keras clips silently; fastgru raises, spec 0.1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a float in [0, 1]. Received: {name}={value!r}"
        )
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"Argument `{name}` must be a float in [0, 1]. Received: {name}={value}"
        )
    return value


def _dropout_active(rate: float, training) -> bool:
    # Keras applies a mask only when training and 0 < rate < 1 (rate 1.0 is a no-op).
    return bool(training) and 0.0 < rate < 1.0


def _keep_mask(rng: np.random.Generator, rate: float, shape, dtype) -> np.ndarray:
    keep = rng.random(shape) >= rate
    return (keep / (1.0 - rate)).astype(dtype)


class GRUCell(Layer):
    """Cell class for the GRU layer (Keras 3 ``GRUCell``), same arguments and defaults.

    Args: units; activation ("tanh"); recurrent_activation ("sigmoid"); use_bias (True);
    kernel_initializer ("glorot_uniform"); recurrent_initializer ("orthogonal");
    bias_initializer ("zeros"); kernel/recurrent/bias regularizer and constraint (None);
    dropout, recurrent_dropout (0.0, in [0, 1]); reset_after (True); seed (None: dropout
    masks from fastgru's global seeded stream); ``implementation`` (hidden, 2; 1 or any
    recurrent_dropout gives per-gate masks); Layer kwargs name, dtype, trainable.

    Step call: ``cell(x_t (B, D), states, training=False) -> (h (B, u), [h])``.
    """

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, kernel_constraint=None, recurrent_constraint=None,
                 bias_constraint=None, dropout=0.0, recurrent_dropout=0.0, reset_after=True,
                 seed=None, **kwargs):
        implementation = kwargs.pop("implementation", 2)
        units = validate_units(units)
        super().__init__(**kwargs)
        self.units = units
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = validate_rate(dropout, "dropout")
        self.recurrent_dropout = validate_rate(recurrent_dropout, "recurrent_dropout")
        self.reset_after = reset_after
        self.seed = _random.validate_seed(seed)
        self.implementation = 1 if (implementation == 1 or self.recurrent_dropout != 0) else 2
        self.state_size = units
        self.output_size = units
        self._rng = None  # created on the first mask draw (spec 0.7)
        self._step_masks = None  # masks of the current RNN call (custom-cell stacks)
        self.kernel = self.recurrent_kernel = self.bias = None
        self._specs = {}  # spec() by its fields: building a frozen dataclass costs ~3 us a call

    # ------------------------------------------------------------------ weights
    def build(self, input_shape):
        input_dim = input_shape[-1] if len(input_shape) else None
        if input_dim is None:
            raise ValueError(
                f"GRUCell '{self.name}' needs a known feature size (last axis of the input); "
                f"received input_shape={tuple(input_shape)}"
            )
        input_shape = check_shape(input_shape, f"argument `input_shape` of GRUCell '{self.name}'")
        self.input_dim = int(input_dim)
        u3 = 3 * self.units
        self.kernel = self.add_weight("kernel", (self.input_dim, u3), self.kernel_initializer,
                                      self.kernel_regularizer, self.kernel_constraint)
        self.recurrent_kernel = self.add_weight(
            "recurrent_kernel", (self.units, u3), self.recurrent_initializer,
            self.recurrent_regularizer, self.recurrent_constraint)
        if self.use_bias:
            shape = (2, u3) if self.reset_after else (u3,)
            self.bias = self.add_weight("bias", shape, self.bias_initializer,
                                        self.bias_regularizer, self.bias_constraint)

    def engine_weights(self) -> Weights:
        """The current weight arrays in the engine contract's layout."""
        return Weights(self.kernel.value, self.recurrent_kernel.value,
                       self.bias.value if self.bias is not None else None)

    def weights_key(self) -> tuple:
        """Identifies the current weight values, for engines that cache a packed form."""
        k, r, b = self.kernel, self.recurrent_kernel, self.bias
        return (None if k is None else (k.uid, k.version),
                None if r is None else (r.uid, r.version),
                None if b is None else (b.uid, b.version))

    def spec(self, go_backwards=False, return_sequences=False,
             zero_output_for_mask=False) -> GRUSpec:
        # Keyed by every field's current value (attributes set after construction count).
        key = (self.units, self.activation, self.recurrent_activation, bool(self.reset_after),
               bool(self.use_bias), bool(go_backwards), bool(return_sequences),
               bool(zero_output_for_mask))
        specs = self.__dict__.setdefault("_specs", {})  # cells unpickled from older versions
        spec = specs.get(key)
        if spec is None:
            if len(specs) >= 16:
                specs.clear()
            spec = specs[key] = GRUSpec(*key)
        return spec

    # ------------------------------------------------------------------ dropout
    def dropout_masks(self, batch: int, input_dim: int, training, xp=np,
                      dtype=None) -> DropoutMasks | None:
        """This call's masks, or None. Drawn only when they are used (training and
        0 < rate < 1); implementation 2 without recurrent dropout: one (B, D) input mask
        shared by the gates; otherwise (3, B, D) input and (3, B, u) recurrent masks (z, r, h),
        input masks drawn first."""
        use_in = _dropout_active(self.dropout, training)
        use_rec = _dropout_active(self.recurrent_dropout, training)
        if not (use_in or use_rec):
            return None
        dtype = self.dtype if dtype is None else dtype
        if self._rng is None:
            self._rng = _random.generator(self.seed)
        per_gate = self.implementation == 1
        m_in = m_rec = None
        if use_in:
            shape = (3, batch, input_dim) if per_gate else (batch, input_dim)
            m_in = xp.asarray(_keep_mask(self._rng, self.dropout, shape, dtype))
        if use_rec:
            shape = (3, batch, self.units)
            m_rec = xp.asarray(_keep_mask(self._rng, self.recurrent_dropout, shape, dtype))
        return DropoutMasks(m_in, m_rec)

    # ------------------------------------------------------------------ cell protocol
    def get_initial_state(self, batch_size=None):
        return [np.zeros((batch_size or 0, self.units), self.dtype)]

    def call(self, inputs, states, training=False):
        """One step: ``inputs`` (B, D), ``states`` an array (B, u) or ``[h]``; returns
        ``(h_new, [h_new])``. Inside an RNN call the masks of that call are reused."""
        from .. import _dispatch

        xp = array_module(inputs)
        what = "{} '{}': a step's `{}`"
        kind = type(self).__name__
        x = xp.asarray(check_real(xp.asarray(inputs), what, kind, self.name, "inputs"),
                       dtype=self.dtype)
        if isinstance(states, (list, tuple)):
            if not states:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': `states` must hold one array of shape "
                    f"(batch, units) = (batch, {self.units}); received an empty "
                    f"{type(states).__name__}."
                )
            h = states[0]
        else:
            h = states
        h = xp.asarray(check_real(xp.asarray(h), what, kind, self.name, "states"),
                       dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': a step's `inputs` must have shape "
                f"(batch, {self.input_dim}); received {tuple(x.shape)}."
            )
        if h.shape != (x.shape[0], self.units):
            raise ValueError(
                f"{type(self).__name__} '{self.name}': `states` must hold one array of shape "
                f"(batch, units) = {(x.shape[0], self.units)}; received {tuple(h.shape)}."
            )
        masks = self._step_masks
        if masks is None:
            masks = self.dropout_masks(x.shape[0], x.shape[-1], training, xp)
        spec = self.spec()
        engine, _ = _dispatch.choose(spec, x, None, masks, use_cudnn=False)
        # the weights key lets the CPU engine reuse its packed weights from step to step
        _, h_new, _ = engine.forward(x[:, None, :], self.engine_weights(), h, spec,
                                     dropout=masks,
                                     **_dispatch.engine_kwargs(engine, None, self.weights_key()))
        return h_new, [h_new]  # a GRU's output and state are the same tensor

    def __call__(self, inputs, states=None, training=False):
        if not hasattr(inputs, "shape"):  # nested lists, as Keras takes them
            inputs = as_array(np, inputs, "{} '{}': a step's `inputs`", type(self).__name__,
                              self.name)
        if not self.built:
            self.build(tuple(inputs.shape))
        if states is None:
            states = [array_module(inputs).zeros((inputs.shape[0], self.units), self.dtype)]
        return self.call(inputs, states, training=training)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg.update({
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "reset_after": self.reset_after,
            "seed": self.seed,
        })
        return cfg
