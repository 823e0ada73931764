"""Keras-named weight regularizers with values and gradients.

``reg(w) -> float`` is the loss term Keras adds to ``layer.losses``; ``reg.gradient(w)`` is its
derivative (an array like ``w``, NumPy or CuPy), which ``Layer.regularization_gradients()``
returns so a training loop can add it to the weight gradients (``backward`` never folds it in).
L1: ``l1 * sum|w|`` (gradient ``l1 * sign(w)``, 0 at 0); L2: ``l2 * sum w^2``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._array import get_array_module as _xp
from ._serialization import ConfigObject, ObjectFamily

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "serialize", "deserialize"]




def _validate(value, name):
    if (isinstance(value, numbers.Number) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
        return float(value)
    raise ValueError(
        f"Invalid value for argument {name}: expected a non-negative float."
        f"Received: {name}={value}"
    )


class Regularizer(ConfigObject):
    def __call__(self, w) -> float:
        raise NotImplementedError

    def gradient(self, w):
        raise NotImplementedError


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _validate(0.0 if l1 is None else l1, "l1")
        self.l2 = _validate(0.0 if l2 is None else l2, "l2")

    def __call__(self, w) -> float:
        xp = _xp(w)
        out = 0.0
        if self.l1:
            out += self.l1 * float(xp.abs(w).sum())
        if self.l2:
            out += self.l2 * float((w * w).sum())
        return out

    def gradient(self, w):
        xp = _xp(w)
        return (self.l1 * xp.sign(w) + (2.0 * self.l2) * w).astype(w.dtype, copy=False)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1, l2=0.0)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l1=0.0, l2=0.01 if l2 is None else l2)

    def get_config(self):
        return {"l2": self.l2}


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2, "l1": L1, "l2": L2, "l1l2": L1L2,
            "l1_l2": L1L2}  # "l1l2" is Keras's name; "l1_l2" kept for configs of ours


class _Callable(Regularizer):
    """A user function ``f(w) -> float``; ``f.gradient(w)`` (if present) gives its gradient."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, w):
        return float(self.fn(w))

    def gradient(self, w):
        grad = getattr(self.fn, "gradient", None)
        if grad is None:
            raise NotImplementedError(
                f"regularizer {self.fn!r} has no `gradient(w)` attribute: cannot differentiate it"
            )
        return grad(w)


_FAMILY = ObjectFamily("regularizer", "keras.regularizers", Regularizer, _CLASSES, {}, _Callable)


def get(identifier) -> Regularizer | None:
    """Resolve like ``keras.regularizers.get``; None stays None."""
    return _FAMILY.get(identifier)


def deserialize(config: dict) -> Regularizer:
    return _FAMILY.deserialize(config)


def serialize(regularizer) -> Any:
    """The Keras 3 config form (None stays None; a wrapped user function is returned as is)."""
    return _FAMILY.serialize(regularizer)
