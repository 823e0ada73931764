"""Optimizers: SGD, Adam and AdamW with the update rules of Keras 3.

An optimizer holds a list of :class:`~fastgru.variable.Variable` and updates their values *in
place* from gradients aligned with that list::

    opt = Adam(layer.trainable_weights, learning_rate=1e-3)
    y, tape = layer.forward(x, training=True)
    opt.step(layer.backward(tape, dy))      # a Grads iterates over its weight gradients

One ``step`` does what ``keras.optimizers.Optimizer.apply`` does, in the same order:

1. drop the (gradient, variable) pairs whose gradient is None;
2. clip the gradients: ``clipnorm`` (each tensor to that L2 norm), ``global_clipnorm`` (all
   tensors together) or ``clipvalue`` (elementwise), at most one of the three;
3. decoupled weight decay when ``weight_decay`` is set: ``var -= var * weight_decay * lr``;
4. the update rule of the optimizer (see each class), computed in the variable's dtype;
5. ``Variable.bump()``, then the variable's ``constraint`` (``constraint(value)`` is assigned
   back in place).

The learning rate is a float or a callable ``lr(step) -> float`` of the 0-based count of steps
already taken (Keras's ``LearningRateSchedule`` convention). Values may be NumPy or CuPy
arrays; the optimizer's slots (momentums, velocities) follow their variable's array module,
also when the layer moves between devices after the optimizer was made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._array import real_array
from .variable import Variable

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

LearningRate = float | Callable[[int], float]


def _xp(a):
    """The array module of ``a`` (cupy only if ``a`` is a CuPy array; never imported here)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _host(a) -> np.ndarray:
    return a.get() if _xp(a) is not np else np.array(a, copy=True)


def _like(a, ref):
    """``a`` as an array of ``ref``'s module and dtype (no copy when it already is one)."""
    xp = _xp(ref)
    if xp is np and _xp(a) is not np:
        a = a.get()
    return xp.asarray(a, dtype=ref.dtype)


def _check_positive(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"Argument `{name}` must be a float or None. Received: {name}={value!r}")
    if not value >= 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
    return float(value)


def _params_list(params) -> list[Variable]:
    if hasattr(params, "trainable_weights"):
        params = params.trainable_weights
    try:
        params = list(params)
    except TypeError:
        raise TypeError(
            "Argument `params` must be a list of Variables (e.g. layer.trainable_weights). "
            f"Received: {type(params).__name__}"
        ) from None
    seen = set()
    for p in params:
        if not isinstance(p, Variable):
            raise TypeError(
                f"Argument `params` must contain fastgru Variables. Received an item of type "
                f"{type(p).__name__}"
            )
        if p.uid in seen:
            raise ValueError(f"Argument `params` lists Variable {p.name!r} more than once")
        seen.add(p.uid)
    return params


def _iterations(value) -> int:
    """``state_dict()["iterations"]``: an integer >= 0 (a 0-d array or an integral float, as
    a file may give it back, taken too)."""
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
            raise TypeError  # (int() of a 1-element array is deprecated in NumPy)
        n = int(value)
        ok = n >= 0 and n == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"`state['iterations']` must be an integer >= 0 (the steps taken). "
                         f"Received: {value!r}")
    return n


class Optimizer:
    """Base class: clipping, weight decay, constraints, learning rate, state and checkpoints.

    Subclasses name their per-variable slots in ``_slot_names`` and implement
    ``_update(i, var_value, grad, lr)``, which must change ``var_value`` in place.
    """

    _slot_names: tuple[str, ...] = ()

    def __init__(self, params, learning_rate: LearningRate = 0.001, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name: str | None = None):
        self.params = _params_list(params)
        self.learning_rate = learning_rate
        self.weight_decay = _check_positive("weight_decay", weight_decay)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if sum(v is not None for v in clips.values()) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )
        self.clipnorm = _check_positive("clipnorm", clipnorm)
        self.clipvalue = _check_positive("clipvalue", clipvalue)
        self.global_clipnorm = _check_positive("global_clipnorm", global_clipnorm)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._no_decay: set[int] = set()
        self._slots: dict[str, list] = {k: [None] * len(self.params) for k in self._slot_names}

    # ------------------------------------------------------------------ learning rate
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule is evaluated at ``iterations``)."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        if not callable(value):
            value = _check_positive("learning_rate", value, allow_none=False)
        self._learning_rate = value

    # ------------------------------------------------------------------ weight decay
    def exclude_from_weight_decay(self, var_list: Iterable[Variable] = None,
                                  var_names: Sequence[str] = None) -> None:
        """Exempt variables from ``weight_decay``: those in ``var_list``, and those whose name
        contains one of ``var_names`` (a regular expression each, as in Keras)."""
        ids = {id(v) for v in (var_list or ())}
        pattern = re.compile("|".join(var_names)) if var_names else None
        # positions in params, which a pickled optimizer keeps (its Variables' uids it does not)
        self._no_decay = {
            i for i, p in enumerate(self.params)
            if id(p) in ids or (pattern is not None and pattern.search(p.name))
        }

    # ------------------------------------------------------------------ the step
    def _slot(self, key: str, i: int, value):
        """Slot ``key`` of variable ``i``: zeros like it at first, and kept on its device."""
        s = self._slots[key][i]
        if s is None:
            s = _xp(value).zeros(value.shape, dtype=value.dtype)
        elif _xp(s) is not _xp(value):
            s = _like(s, value)
        self._slots[key][i] = s
        return s

    def _clip(self, grads: list) -> list:
        if self.clipnorm:
            out = []
            for g in grads:
                norm = float(_xp(g).sqrt(_xp(g).sum(g * g)))
                out.append(g * (self.clipnorm / max(norm, self.clipnorm)))
            return out
        if self.global_clipnorm:
            norm = math.sqrt(sum(float(_xp(g).sum(g * g)) for g in grads))
            c = self.global_clipnorm
            # Keras's formula: a no-op below the threshold, NaN when the norm is inf/NaN.
            scale = c * min(1.0 / norm if norm else math.inf, 1.0 / c) + (norm - norm)
            return [g * g.dtype.type(scale) for g in grads]
        if self.clipvalue:
            v = self.clipvalue
            return [_xp(g).clip(g, -v, v) for g in grads]
        return grads

    def step(self, grads) -> None:
        """Apply one update from ``grads``, aligned with ``params`` (None entries skipped)."""
        try:
            grads = list(grads)
        except TypeError:
            raise TypeError(
                "Argument `grads` must be a list of gradients aligned with the optimizer's "
                f"`params` (or a Grads). Received: {type(grads).__name__}"
            ) from None
        if len(grads) != len(self.params):
            raise ValueError(
                f"step() got {len(grads)} gradients for {len(self.params)} parameters; "
                "`grads` must be aligned with the optimizer's `params`"
            )
        idx = [i for i, g in enumerate(grads) if g is not None]
        if not idx:
            raise ValueError("No gradients provided for any variable.")
        gs = []
        for i in idx:
            var, g = self.params[i], grads[i]
            g = real_array(np, g, "Gradient for {!r} (`grads[{}]`)", var.name, i)
            if tuple(g.shape) != tuple(var.shape):
                raise ValueError(
                    f"Gradient for {var.name!r} has shape {tuple(g.shape)}, expected "
                    f"{tuple(var.shape)}"
                )
            gs.append(_like(g, var.value))
        gs = self._clip(gs)
        lr = self.learning_rate
        if self.weight_decay:
            for i in idx:
                if i not in self._no_decay:
                    v = self.params[i].value
                    t = v.dtype.type
                    v -= v * t(self.weight_decay) * t(lr)
        for i, g in zip(idx, gs, strict=True):
            self._update(i, self.params[i].value, g, lr)
        self.iterations += 1
        for i in idx:
            var = self.params[i]
            var.bump()
            if var.constraint is not None:
                var.assign(_like(var.constraint(var.value), var.value))

    def _update(self, i: int, value, grad, lr: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def get_config(self) -> dict:
        lr = self._learning_rate
        return {
            "name": self.name,
            "learning_rate": lr,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
        }

    def state_dict(self) -> dict[str, Any]:
        """Host copies of everything a resumed run needs: iterations, slots, config."""
        return {
            "class": type(self).__name__,
            "iterations": self.iterations,
            "config": self.get_config(),
            "slots": {k: [None if s is None else _host(s) for s in v]
                      for k, v in self._slots.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output (slots are copied onto each variable's device)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"Argument `state` must be a dict, as state_dict() returns. "
                            f"Received: {type(state).__name__}")
        if state.get("class") != type(self).__name__:
            raise ValueError(
                f"state_dict is for {state.get('class')!r}, cannot load into "
                f"{type(self).__name__}"
            )
        slots = state.get("slots")
        if not isinstance(slots, Mapping):
            raise TypeError("`state['slots']` must be a dict of slot name -> per-parameter "
                             f"arrays, as state_dict() returns. Received: {type(slots).__name__}")
        if set(slots) != set(self._slot_names):
            raise ValueError(f"state_dict slots {sorted(slots)} != {sorted(self._slot_names)}")
        for k, values in slots.items():
            if len(values) != len(self.params):
                raise ValueError(
                    f"state_dict has {len(values)} {k!r} slots for {len(self.params)} params"
                )
            for p, s in zip(self.params, values, strict=True):
                if s is not None and tuple(s.shape) != tuple(p.shape):
                    raise ValueError(
                        f"state_dict slot {k!r} for {p.name!r} has shape {tuple(s.shape)}, "
                        f"expected {tuple(p.shape)}"
                    )
        for k, values in slots.items():
            self._slots[k] = [None if s is None else _like(np.array(s, copy=True), p.value)
                              for p, s in zip(self.params, values, strict=True)]
        self.iterations = _iterations(state.get("iterations"))
        cfg = dict(state.get("config", {}))
        cfg.pop("name", None)
        for key, value in cfg.items():
            setattr(self, key, value)

    def __repr__(self):
        return (f"<{type(self).__name__} {len(self.params)} params, "
                f"iterations={self.iterations}>")


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum; Keras 3 ``SGD``::

        momentum == 0:  var -= lr * g
        else:           m = momentum * m - lr * g
                        var += m                          (classic)
                        var += momentum * m - lr * g      (nesterov, with the new m)
    """

    def __init__(self, params, learning_rate: LearningRate = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name: str | None = None):
        if (isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating))
                or not 0 <= momentum <= 1):
            raise ValueError(
                f"`momentum` must be a float between [0, 1]. Received: momentum={momentum!r}"
            )
        self._slot_names = ("momentums",) if momentum != 0 else ()
        super().__init__(params, learning_rate, weight_decay, clipnorm, clipvalue,
                         global_clipnorm, name)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, i, value, g, lr):
        t = value.dtype.type
        lr = t(lr)
        if not self._slot_names:
            value -= g * lr
            return
        mu = t(self.momentum)
        m = self._slot("momentums", i, value)
        m *= mu
        m -= g * lr
        if self.nesterov:
            value += m * mu - g * lr
        else:
            value += m

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras 3 form, with ``t`` the 1-based step::

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1)
        v += (g**2 - v) * (1 - beta_2)
        v_hat = max(v_hat, v)           (amsgrad only; then v_hat replaces v below)
        var -= alpha * m / (sqrt(v) + epsilon)

    ``weight_decay`` adds AdamW's decoupled decay ``var -= var * weight_decay * lr`` before the
    update (see :class:`AdamW`).
    """

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name: str | None = None):
        for key, val in (("beta_1", beta_1), ("beta_2", beta_2)):
            if isinstance(val, bool) or not isinstance(val, (int, float, np.floating)) \
                    or not 0 <= val < 1:
                raise ValueError(f"`{key}` must be a float in [0, 1). Received: {key}={val!r}")
        self._slot_names = ("momentums", "velocities") + (("velocity_hats",) if amsgrad else ())
        super().__init__(params, learning_rate, weight_decay, clipnorm, clipvalue,
                         global_clipnorm, name)
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon = _check_positive("epsilon", epsilon, allow_none=False)
        self.amsgrad = bool(amsgrad)

    def _update(self, i, value, g, lr):
        xp, t = _xp(value), value.dtype.type
        step = t(self.iterations + 1)
        b1, b2 = t(self.beta_1), t(self.beta_2)
        one = t(1)
        alpha = t(lr) * np.sqrt(one - b2 ** step) / (one - b1 ** step)
        m = self._slot("momentums", i, value)
        v = self._slot("velocities", i, value)
        vh = self._slot("velocity_hats", i, value) if self.amsgrad else None
        # (1 - beta) is formed in Python floats and then cast, as Keras does.
        consts = (t(1 - self.beta_1), t(1 - self.beta_2), alpha, t(self.epsilon))
        if xp is np:
            # the CPU engine's one pass where it applies (NumPy's dozen passes over a GRU's 1.2M
            # weights took 2-3.6 ms); imported here so that this module stands on its own
            from .engines import cpu

            if cpu.adam_update(value, g, m, v, vh, *consts):
                return
        _adam_arrays(xp, value, xp.asarray(g), m, v, vh, *consts)

    def get_config(self) -> dict:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


def _adam_arrays(xp, w, g, m, v, vh, c1, c2, alpha, eps):
    """One Adam update of w in place, with two scratch arrays of w's shape: the operations of
    ``m += (g - m) * c1; v += (g * g - v) * c2; w -= (m * alpha) / (sqrt(v) + eps)`` (v the
    running maximum vh under amsgrad) in the same order, so the same bits where g has w's dtype
    (step() casts it)."""
    a, b = xp.empty_like(w), xp.empty_like(w)
    xp.subtract(g, m, out=a)
    a *= c1
    m += a
    xp.multiply(g, g, out=a)
    a -= v
    a *= c2
    v += a
    if vh is not None:
        xp.maximum(vh, v, out=vh)
        v = vh
    xp.multiply(m, alpha, out=a)
    xp.sqrt(v, out=b)
    b += eps
    a /= b
    w -= a


class AdamW(Adam):
    """Adam with decoupled weight decay, Keras 3 defaults (``weight_decay=0.004``)."""

    def __init__(self, params, learning_rate: LearningRate = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name: str | None = None):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be set for AdamW. Received: None")
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm, name)
