"""Keras-named elementwise activations with their derivatives.

Every activation is an :class:`Activation`: callable on NumPy (or CuPy, through NumPy's
dispatch protocols) arrays, with ``derivative(a)`` giving d act / d a at the *pre-activation*
``a``, and ``code``: the integer the compiled kernels use to select the same function
(``CODES`` below is the contract with ``src_c/``; never reorder it, only append).

Conventions at kinks (every engine uses the same): derivatives take the value of the piece that
holds for the strict inequality written in each definition, e.g. relu'(0) = 0,
hard_sigmoid'(+-3) = 0, hard_tanh'(+-1) = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# name -> code used by the compiled kernels. Append only.
CODES = {
    "linear": 0,
    "tanh": 1,
    "sigmoid": 2,
    "hard_sigmoid": 3,
    "relu": 4,
    "elu": 5,
    "selu": 6,
    "softplus": 7,
    "softsign": 8,
    "silu": 9,
    "gelu": 10,
    "exponential": 11,
    "hard_silu": 12,
    "hard_tanh": 13,
    "leaky_relu": 14,
    "relu6": 15,
    "mish": 16,
    "log_sigmoid": 17,
    "tanh_shrink": 18,
    "celu": 19,
    "squareplus": 20,
    "sparse_plus": 21,
    "soft_shrink": 22,
    "hard_shrink": 23,
    "sparse_sigmoid": 24,
}
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
LEAKY_SLOPE = 0.2
SQUAREPLUS_B = 4.0
SHRINK_THRESHOLD = 0.5
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Activation:
    """A named activation: ``act(a)``, ``act.derivative(a)``, ``act.name``, ``act.code``.

    ``code`` is None for user callables, which run on the reference engine only.
    """

    __slots__ = ("name", "code", "_fn", "_grad", "doc")

    def __init__(self, name, fn: Callable, grad: Callable | None, code=None, doc=None):
        self.name = name
        self.code = code
        self._fn = fn
        self._grad = grad
        self.doc = doc

    def __call__(self, a):
        out = self._fn(a)
        if self.code is None:
            self._check_shape(out, a, "")
        return out

    def derivative(self, a):
        if self._grad is None:
            raise NotImplementedError(
                f"activation {self._fn!r} has no derivative: give the callable a "
                "`derivative(a)` attribute to train with it"
            )
        out = self._grad(a)
        if self.code is None:
            self._check_shape(out, a, "'s derivative", scalar_ok=True)
        return out

    def _check_shape(self, out, a, what, scalar_ok=False):
        # a user function's scalar or (units,) result would broadcast over the batch unseen; a
        # derivative may be one number (a linear piece's slope, `lambda a: 1.0`): it only ever
        # multiplies elementwise, so a constant is the same values at every entry
        shape = np.shape(out)
        if shape != np.shape(a) and not (scalar_ok and shape == ()):
            raise ValueError(
                f"activation {self._fn!r}{what} must return an array of its argument's shape "
                f"{np.shape(a)}{' (or one number)' if scalar_ok else ''}; it returned "
                f"{type(out).__name__} of shape {shape}"
            )

    @property
    def is_builtin(self) -> bool:
        return self.code is not None

    def __repr__(self):
        return f"<fastgru activation {self.name or self._fn!r}>"

    def __reduce__(self):  # builtins pickle by name
        if self.is_builtin:
            return (get, (self.name,))
        return (Activation, (self.name, self._fn, self._grad, None, self.doc))


def _erf(a):
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupyx.scipy.special as sp
    else:
        import scipy.special as sp
    return sp.erf(a)


def _sigmoid(a):
    # exp of a non-positive argument only: no overflow warnings, exact in both tails.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def _softplus(a):
    return np.logaddexp(a, 0).astype(a.dtype, copy=False)


def _one(a):
    return np.ones_like(a)


def _cast(f):
    """Results keep the input's dtype (np.where with Python constants would promote)."""
    return lambda a: f(a).astype(a.dtype, copy=False)


def _d_tanh(a):
    t = np.tanh(a)
    return 1 - t * t


def _d_sigmoid(a):
    s = _sigmoid(a)
    return s * (1 - s)


def _elu(a, alpha=1.0):
    return np.where(a > 0, a, alpha * np.expm1(np.minimum(a, 0)))


def _silu(a):
    return a * _sigmoid(a)


def _d_silu(a):
    s = _sigmoid(a)
    return s * (1 + a * (1 - s))


def _gelu(a):
    return 0.5 * a * (1 + _erf(a / _SQRT2))


def _d_gelu(a):
    return 0.5 * (1 + _erf(a / _SQRT2)) + a * np.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _mish(a):
    return a * np.tanh(_softplus(a))


def _d_mish(a):
    t = np.tanh(_softplus(a))
    return t + a * (1 - t * t) * _sigmoid(a)


def _inside(a, lo, hi):
    return ((a > lo) & (a < hi)).astype(a.dtype)


_DEFS = {
    "linear": (lambda a: a, _one),
    "tanh": (np.tanh, _d_tanh),
    "sigmoid": (_sigmoid, _d_sigmoid),
    "hard_sigmoid": (lambda a: np.clip(a / 6 + 0.5, 0, 1), lambda a: _inside(a, -3, 3) / 6),
    "relu": (lambda a: np.maximum(a, 0), lambda a: (a > 0).astype(a.dtype)),
    "elu": (_elu, lambda a: np.where(a > 0, 1, np.exp(np.minimum(a, 0)))),
    "selu": (
        lambda a: SELU_SCALE * _elu(a, SELU_ALPHA),
        lambda a: np.where(a > 0, SELU_SCALE, SELU_SCALE * SELU_ALPHA * np.exp(np.minimum(a, 0))),
    ),
    "softplus": (_softplus, _sigmoid),
    "softsign": (lambda a: a / (1 + np.abs(a)), lambda a: 1 / (1 + np.abs(a)) ** 2),
    "silu": (_silu, _d_silu),
    "gelu": (_gelu, _d_gelu),
    "exponential": (np.exp, np.exp),
    "hard_silu": (
        lambda a: a * np.clip(a + 3, 0, 6) / 6,
        lambda a: np.where(a > 3, 1, np.where(a > -3, (2 * a + 3) / 6, 0)),
    ),
    "hard_tanh": (lambda a: np.clip(a, -1, 1), lambda a: _inside(a, -1, 1)),
    "leaky_relu": (
        lambda a: np.where(a > 0, a, LEAKY_SLOPE * a),
        lambda a: np.where(a > 0, 1, LEAKY_SLOPE),
    ),
    "relu6": (lambda a: np.clip(a, 0, 6), lambda a: _inside(a, 0, 6)),
    "mish": (_mish, _d_mish),
    "log_sigmoid": (lambda a: -_softplus(-a), lambda a: _sigmoid(-a)),
    "tanh_shrink": (lambda a: a - np.tanh(a), lambda a: np.tanh(a) ** 2),
    "celu": (
        lambda a: np.maximum(a, 0) + np.minimum(0, np.expm1(np.minimum(a, 0))),
        lambda a: np.where(a > 0, 1, np.exp(np.minimum(a, 0))),
    ),
    "squareplus": (
        lambda a: 0.5 * (a + np.sqrt(a * a + SQUAREPLUS_B)),
        lambda a: 0.5 * (1 + a / np.sqrt(a * a + SQUAREPLUS_B)),
    ),
    "sparse_plus": (
        # comparisons ordered so that NaN falls through to a NaN result (as Keras)
        lambda a: np.where(a <= -1, 0, np.where(a < 1, 0.25 * (a + 1) ** 2, a)),
        lambda a: np.where(a >= 1, 1, np.where(a > -1, 0.5 * (a + 1), 0)),
    ),
    "soft_shrink": (
        lambda a: np.where(
            a > SHRINK_THRESHOLD, a - SHRINK_THRESHOLD,
            np.where(a < -SHRINK_THRESHOLD, a + SHRINK_THRESHOLD, 0)),
        lambda a: (np.abs(a) > SHRINK_THRESHOLD).astype(a.dtype),
    ),
    "hard_shrink": (
        lambda a: np.where(np.abs(a) > SHRINK_THRESHOLD, a, 0),
        lambda a: (np.abs(a) > SHRINK_THRESHOLD).astype(a.dtype),
    ),
    "sparse_sigmoid": (
        lambda a: np.where(a <= -1, 0, np.where(a >= 1, 1, 0.5 * (a + 1))),
        lambda a: _inside(a, -1, 1) * 0.5,
    ),
}

_REGISTRY: dict[str, Activation] = {}
for _name, (_f, _g) in _DEFS.items():
    _REGISTRY[_name] = Activation(_name, _cast(_f), _cast(_g), CODES[_name])
    globals()[_name] = _REGISTRY[_name]
for _alias, _target in ALIASES.items():
    globals()[_alias] = _REGISTRY[_target]
del _name, _f, _g, _alias, _target

NAMES = tuple(CODES)


# keras.ops functions whose defaults differ from the activation of the same name:
# keras.ops.gelu is the tanh approximation by default, keras.activations.gelu (and ours) exact
_KERAS_OPS_DIFFER = frozenset({"gelu"})


def keras_activation_name(fn) -> str | None:
    """The name of ``fn`` if it is a Keras function computing our activation of that name
    (keras.activations.*, tf.keras' too, and keras.ops.* but gelu), else None."""
    parts = (getattr(fn, "__module__", "") or "").split(".")
    name = getattr(fn, "__name__", None)
    if parts[0] not in ("keras", "tf_keras"):
        return None
    if "activations" in parts or ("ops" in parts and name not in _KERAS_OPS_DIFFER):
        return name
    return None


def get(identifier) -> Activation:
    """Resolve an activation like ``keras.activations.get``.

    Accepts a name (or alias), ``None`` (linear), an :class:`Activation`, a Keras serialized
    dict (``{"class_name": "function", "config": "tanh", ...}`` or
    ``{"class_name": "tanh"}``), or any callable (a user function: reference engine only; a
    ``derivative`` attribute on it enables training).
    """
    if identifier is None:
        return _REGISTRY["linear"]
    if isinstance(identifier, Activation):
        return identifier
    if isinstance(identifier, str):
        key = ALIASES.get(identifier, identifier)
        if key in _REGISTRY:
            return _REGISTRY[key]
        raise ValueError(f"Could not interpret activation function identifier: {identifier}")
    if isinstance(identifier, dict):
        cfg = identifier.get("config")
        name = cfg if isinstance(cfg, str) else identifier.get("class_name")
        if isinstance(cfg, dict) and "name" in cfg:
            name = cfg["name"]
        if isinstance(name, str):
            return get(name)
        raise ValueError(f"Could not interpret activation function identifier: {identifier}")
    if callable(identifier):
        name = keras_activation_name(identifier)
        if name in _REGISTRY:  # e.g. keras.activations.tanh
            return _REGISTRY[name]
        return Activation(None, identifier, getattr(identifier, "derivative", None), None)
    raise ValueError(f"Could not interpret activation function identifier: {identifier}")


def serialize(activation) -> str | Callable:
    """The Keras config form: the name string (None -> 'linear'); user callables unchanged."""
    act = get(activation)
    return act.name if act.is_builtin else act._fn
