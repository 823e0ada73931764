"""GRU: the Keras 3 ``GRU`` layer (an RNN over one GRUCell named ``"gru_cell"``)."""

from __future__ import annotations

from .. import _serialization, activations, constraints, initializers, regularizers
from .cell import GRUCell
from .rnn import RNN

__all__ = ["GRU"]

_USE_CUDNN_CHOICES = ("auto", True, False)


class GRU(RNN):
    """Gated Recurrent Unit layer, argument for argument Keras 3's ``keras.layers.GRU``.

    Args: ``units``; activation ("tanh"), recurrent_activation ("sigmoid"), use_bias (True),
    kernel_initializer ("glorot_uniform"), recurrent_initializer ("orthogonal"),
    bias_initializer ("zeros"), kernel/recurrent/bias regularizer, activity_regularizer,
    kernel/recurrent/bias constraint (None), dropout, recurrent_dropout (0.0, in [0, 1]),
    seed (None), return_sequences, return_state, go_backwards, stateful, unroll (False),
    reset_after (True), use_cudnn ("auto" | True | False), and the kwargs
    zero_output_for_mask (False), time_major (False, fastgru extension), name,
    dtype ("float32" | "float64"), trainable.

    Weights (gate order z, r, h): ``kernel (D, 3u)``, ``recurrent_kernel (u, 3u)``,
    ``bias (2, 3u)`` (reset_after) or ``(3u,)``.

    Call: ``gru(sequences (B, T, D), initial_state=None (B, u), mask=None (B, T),
    training=False)`` -> ``(B, u)``, or ``(B, T, u)`` with return_sequences; with return_state
    ``(output, state (B, u))``. NumPy in, NumPy out; CuPy in, CuPy out.

    Training: ``y, tape = gru.forward(x, initial_state=None, mask=None, training=True)`` then
    ``g = gru.backward(tape, dy, d_state=None)``: ``g.inputs``, ``g.initial_state``,
    ``g.kernel``, ``g.recurrent_kernel``, ``g.bias`` (iterating ``g`` follows
    ``gru.trainable_weights``). Regularization is NOT folded into ``backward``: add
    ``gru.regularization_gradients()`` (aligned with ``trainable_weights``) yourself if you
    train with regularizers; ``gru.losses`` gives their values.

    Weights are :class:`~fastgru.variable.Variable` s; engines cache packed copies keyed on
    their version, so change them with ``set_weights``/``Variable.assign`` (or call
    ``variable.bump()`` after editing ``variable.value`` in place).

    ``gru.explain(x, mask=None)`` says which engine a call would run and why.
    """

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, reset_after=True,
                 use_cudnn="auto", **kwargs):
        cell = GRUCell(
            units, activation=activation, recurrent_activation=recurrent_activation,
            use_bias=use_bias, kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer, bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
            dropout=dropout, recurrent_dropout=recurrent_dropout, reset_after=reset_after,
            seed=seed, dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
            name="gru_cell", implementation=kwargs.pop("implementation", 2),
        )
        kwargs.pop("cell", None)  # some legacy configs carry it; GRU always builds its own
        rnn_keys = ("zero_output_for_mask", "time_major")
        rnn_kwargs = {k: kwargs.pop(k) for k in rnn_keys if k in kwargs}
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         activity_regularizer=activity_regularizer, **rnn_kwargs, **kwargs)
        try:
            valid = use_cudnn in _USE_CUDNN_CHOICES
        except Exception:  # e.g. an array: no truth value
            valid = False
        if not valid:
            raise ValueError(
                "Invalid valid received for argument `use_cudnn`. Expected one of "
                f"{{'auto', True, False}}. Received: use_cudnn={use_cudnn}"
            )
        self.use_cudnn = use_cudnn

    def _check_rank(self, shape):
        if len(shape) != 3:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected "
                f"ndim=3, found ndim={len(shape)}. Full shape received: {tuple(shape)}"
            )

    # ------------------------------------------------------------------ cell properties
    units = property(lambda self: self.cell.units)
    activation = property(lambda self: self.cell.activation)
    recurrent_activation = property(lambda self: self.cell.recurrent_activation)
    use_bias = property(lambda self: self.cell.use_bias)
    kernel_initializer = property(lambda self: self.cell.kernel_initializer)
    recurrent_initializer = property(lambda self: self.cell.recurrent_initializer)
    bias_initializer = property(lambda self: self.cell.bias_initializer)
    kernel_regularizer = property(lambda self: self.cell.kernel_regularizer)
    recurrent_regularizer = property(lambda self: self.cell.recurrent_regularizer)
    bias_regularizer = property(lambda self: self.cell.bias_regularizer)
    kernel_constraint = property(lambda self: self.cell.kernel_constraint)
    recurrent_constraint = property(lambda self: self.cell.recurrent_constraint)
    bias_constraint = property(lambda self: self.cell.bias_constraint)
    dropout = property(lambda self: self.cell.dropout)
    recurrent_dropout = property(lambda self: self.cell.recurrent_dropout)
    reset_after = property(lambda self: self.cell.reset_after)
    implementation = property(lambda self: self.cell.implementation)
    seed = property(lambda self: self.cell.seed)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        cfg = self._rnn_config()
        c = self.cell
        cfg.update({
            "units": c.units,
            "activation": activations.serialize(c.activation),
            "recurrent_activation": activations.serialize(c.recurrent_activation),
            "use_bias": c.use_bias,
            "kernel_initializer": initializers.serialize(c.kernel_initializer),
            "recurrent_initializer": initializers.serialize(c.recurrent_initializer),
            "bias_initializer": initializers.serialize(c.bias_initializer),
            "kernel_regularizer": regularizers.serialize(c.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(c.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(c.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": constraints.serialize(c.kernel_constraint),
            "recurrent_constraint": constraints.serialize(c.recurrent_constraint),
            "bias_constraint": constraints.serialize(c.bias_constraint),
            "dropout": c.dropout,
            "recurrent_dropout": c.recurrent_dropout,
            "reset_after": c.reset_after,
            "seed": c.seed,
        })
        return self._time_major_config(cfg)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


_serialization.register(GRU)
