"""Keras-named weight constraints: callables ``c(w) -> w'`` on NumPy or CuPy arrays.

Optimizers apply a Variable's constraint after each update (never in forward). Norms are taken
along ``axis`` (Keras default 0: each column, i.e. each output unit's incoming weights), with
Keras's epsilon 1e-7 in the denominators.
"""

from __future__ import annotations

from typing import Any

from ._array import get_array_module as _xp
from ._serialization import ConfigObject, ObjectFamily

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "get", "serialize",
           "deserialize"]

EPSILON = 1e-7


def _norms(w, axis):
    xp = _xp(w)  # axis: an int or a list / tuple of them (JSON configs hold lists)
    axis = tuple(axis) if isinstance(axis, list) else axis
    return xp.sqrt((w * w).sum(axis=axis, keepdims=True))


class Constraint(ConfigObject):
    def __call__(self, w):
        return w


class MaxNorm(Constraint):
    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w):
        xp = _xp(w)
        n = _norms(w, self.axis)
        desired = xp.clip(n, 0, self.max_value)
        return (w * (desired / (EPSILON + n))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class MinMaxNorm(Constraint):
    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w):
        xp = _xp(w)
        n = _norms(w, self.axis)
        desired = self.rate * xp.clip(n, self.min_value, self.max_value) + (1 - self.rate) * n
        return (w * (desired / (EPSILON + n))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


class NonNeg(Constraint):
    def __call__(self, w):
        # max(w, 0), as Keras: -inf -> 0 (w * (w >= 0) gave NaN) and no -0.0
        return _xp(w).maximum(w, 0).astype(w.dtype, copy=False)


class UnitNorm(Constraint):
    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w):
        return (w / (EPSILON + _norms(w, self.axis))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"axis": self.axis}


_CLASSES = {c.__name__: c for c in (MaxNorm, MinMaxNorm, NonNeg, UnitNorm)}
_ALIASES = {"max_norm": MaxNorm, "min_max_norm": MinMaxNorm, "non_neg": NonNeg,
            "unit_norm": UnitNorm}


class _Callable(Constraint):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, w):
        return self.fn(w)


_FAMILY = ObjectFamily("constraint", "keras.constraints", Constraint, _CLASSES, _ALIASES, _Callable)


def get(identifier) -> Constraint | None:
    """Resolve like ``keras.constraints.get``; None stays None."""
    return _FAMILY.get(identifier)


def deserialize(config: dict) -> Constraint:
    return _FAMILY.deserialize(config)


def serialize(constraint) -> Any:
    """The Keras 3 config form (None stays None; a wrapped user function is returned as is)."""
    return _FAMILY.serialize(constraint)
