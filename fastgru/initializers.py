"""Keras-named weight initializers, seeded and serialisable.

``init(shape, dtype="float32") -> numpy.ndarray``. An initializer with an integer ``seed``
returns the same values at every call (like Keras's stateless draws); with ``seed=None`` each
call draws from fastgru's global seeded stream (see ``fastgru._random``). Fans follow Keras
``compute_fans``: 2-D (fan_in, fan_out) = shape; 1-D both = shape[0]; N-D times the receptive
field ``prod(shape[:-2])``. ``get`` accepts names, class names, Keras serialised dicts,
instances and callables ``f(shape, dtype)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _random
from ._serialization import ConfigObject, ObjectFamily

__all__ = [
    "Initializer", "Zeros", "Ones", "Constant", "RandomUniform", "RandomNormal",
    "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeUniform",
    "HeNormal", "LecunUniform", "LecunNormal", "Orthogonal", "Identity", "get", "serialize",
    "deserialize",
]


def _dtype(dtype):
    dt = np.dtype("float32" if dtype is None else dtype)
    if dt.kind != "f":
        raise ValueError(f"Initializers produce floating arrays; got dtype={dtype!r}")
    return dt


def compute_fans(shape, input_axes=None, output_axes=None) -> tuple[float, float]:
    """(fan_in, fan_out) as Keras computes them: from the axes named when both are given."""
    shape = tuple(shape)
    if input_axes is not None and output_axes is not None:
        return (float(math.prod(shape[a] for a in input_axes)),
                float(math.prod(shape[a] for a in output_axes)))
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer(ConfigObject):
    """Base: ``__call__(shape, dtype)``, ``get_config()``, ``from_config(config)``."""

    def __call__(self, shape, dtype=None) -> np.ndarray:
        raise NotImplementedError


class _Seeded(Initializer):
    def __init__(self, seed=None):
        self.seed = _random.validate_seed(seed)

    def _rng(self) -> np.random.Generator:
        return _random.generator(self.seed)


class Zeros(Initializer):
    def __call__(self, shape, dtype=None):
        return np.zeros(tuple(shape), _dtype(dtype))


class Ones(Initializer):
    def __call__(self, shape, dtype=None):
        return np.ones(tuple(shape), _dtype(dtype))


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = value

    def __call__(self, shape, dtype=None):
        return np.full(tuple(shape), self.value, _dtype(dtype))

    def get_config(self):
        v = self.value
        return {"value": v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v}


class RandomUniform(_Seeded):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = minval, maxval

    def __call__(self, shape, dtype=None):
        v = self._rng().uniform(self.minval, self.maxval, tuple(shape))
        return v.astype(_dtype(dtype))

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class RandomNormal(_Seeded):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = mean, stddev

    def __call__(self, shape, dtype=None):
        v = self._rng().normal(self.mean, self.stddev, tuple(shape))
        return v.astype(_dtype(dtype))

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def _truncated_normal(rng, shape, mean, stddev):
    """Normal(mean, stddev) redrawn until within two standard deviations (Keras/TF rule)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return mean + stddev * out


class TruncatedNormal(RandomNormal):
    def __call__(self, shape, dtype=None):
        v = _truncated_normal(self._rng(), tuple(shape), self.mean, self.stddev)
        return v.astype(_dtype(dtype))


class VarianceScaling(_Seeded):
    """Draws with variance ``scale / fan`` (fan per ``mode``), from ``distribution`` in
    ``truncated_normal`` | ``untruncated_normal`` | ``uniform`` (limit sqrt(3 scale / fan))."""

    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        super().__init__(seed)
        if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) and scale > 0):
            raise ValueError(
                f"Argument `scale` must be positive float. Received: scale={scale}"
            )
        if mode not in self._MODES:
            raise ValueError(
                f"Invalid `mode` argument: expected one of {set(self._MODES)}. "
                f"Received: mode={mode}"
            )
        distribution = distribution.lower()
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in self._DISTS:
            raise ValueError(
                f"Invalid `distribution` argument: expected one of {set(self._DISTS)}. "
                f"Received: distribution={distribution}"
            )
        self.scale, self.mode, self.distribution = float(scale), mode, distribution
        self.input_axes, self.output_axes = input_axes, output_axes

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        scale = self.scale / max(1.0, fan)
        rng = self._rng()
        if self.distribution == "truncated_normal":
            v = _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
        elif self.distribution == "untruncated_normal":
            v = rng.normal(0.0, math.sqrt(scale), shape)
        else:
            limit = math.sqrt(3.0 * scale)
            v = rng.uniform(-limit, limit, shape)
        return v.astype(_dtype(dtype))

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution,
                "seed": self.seed, "input_axes": self.input_axes,
                "output_axes": self.output_axes}


def _preset(name, scale, mode, distribution):
    class _Preset(VarianceScaling):
        def __init__(self, seed=None, input_axes=None, output_axes=None):
            super().__init__(scale, mode, distribution, seed, input_axes, output_axes)

        def get_config(self):
            return {"seed": self.seed, "input_axes": self.input_axes,
                    "output_axes": self.output_axes}

    _Preset.__name__ = _Preset.__qualname__ = name
    _Preset.__doc__ = (f"VarianceScaling(scale={scale}, mode={mode!r}, "
                       f"distribution={distribution!r}).")
    return _Preset


GlorotUniform = _preset("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _preset("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeUniform = _preset("HeUniform", 2.0, "fan_in", "uniform")
HeNormal = _preset("HeNormal", 2.0, "fan_in", "truncated_normal")
LecunUniform = _preset("LecunUniform", 1.0, "fan_in", "uniform")
LecunNormal = _preset("LecunNormal", 1.0, "fan_in", "truncated_normal")


class Orthogonal(_Seeded):
    """Orthogonal matrix of the flattened (prod(shape[:-1]), shape[-1]) shape, times ``gain``.
    For a wide matrix such as GRU's (u, 3u) recurrent kernel the *rows* are orthonormal over
    all columns (Keras: QR of a normal draw of the tall orientation, sign-fixed, transposed)."""

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(
                "The tensor to initialize must be at least two-dimensional. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        rows = math.prod(shape[:-1])
        cols = shape[-1]
        a = self._rng().standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(_dtype(dtype), order="C")

    def get_config(self):
        return {"seed": self.seed, "gain": self.gain}


class Identity(Initializer):
    def __init__(self, gain=1.0):
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(
                "Identity matrix initializer can only be used for 2D matrices. "
                f"Received: shape={shape} of rank {len(shape)}."
            )
        return (self.gain * np.eye(*shape)).astype(_dtype(dtype))

    def get_config(self):
        return {"gain": self.gain}


_CLASSES = {c.__name__: c for c in (
    Zeros, Ones, Constant, RandomUniform, RandomNormal, TruncatedNormal, VarianceScaling,
    GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform, LecunNormal, Orthogonal,
    Identity)}
_ALIASES = {
    "zeros": Zeros, "zero": Zeros, "ones": Ones, "one": Ones, "constant": Constant,
    "random_uniform": RandomUniform, "uniform": RandomUniform, "random_normal": RandomNormal,
    "normal": RandomNormal, "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling, "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "he_uniform": HeUniform, "he_normal": HeNormal,
    "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal, "orthogonal": Orthogonal,
    "identity": Identity, "IdentityInitializer": Identity, "OrthogonalInitializer": Orthogonal,
}


class _Callable(Initializer):
    """A user function ``f(shape, dtype)`` (serialised as the function itself)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, shape, dtype=None):
        return np.asarray(self.fn(tuple(shape), dtype=_dtype(dtype)), dtype=_dtype(dtype))


def _keep_integer_seed(cfg: dict) -> dict:
    seed = cfg.get("seed")
    if isinstance(seed, dict):  # a serialised SeedGenerator: keep its integer seed
        cfg["seed"] = (seed.get("config") or {}).get("seed")
    return cfg


_FAMILY = ObjectFamily("initializer", "keras.initializers", Initializer,
                        _CLASSES, _ALIASES, _Callable, _keep_integer_seed)


def get(identifier) -> Initializer | None:
    """Resolve like ``keras.initializers.get``; None stays None."""
    return _FAMILY.get(identifier)


def deserialize(config: dict) -> Initializer:
    return _FAMILY.deserialize(config)


def serialize(initializer) -> Any:
    """The Keras 3 config form (None stays None; a wrapped user function is returned as is)."""
    return _FAMILY.serialize(initializer)
