"""FrozenRNN: an inference-only snapshot of a GRU layer (``RNN.freeze()``).

What an ONNX Runtime session or an OpenVINO compiled model is to a trained network: the
weights are copied (and, on the compiled CPU engine, packed) once, when the snapshot is made,
together with the layer's configuration and the engine chosen for it. A call then does only
what that call needs: no weight version lookups, no bitwise check that cached packed weights
still match the layer's (which ``layer(x)`` does on every call, since the weights may be edited
in place), no engine choice. Same engines and kernels as the layer, so the same bits as
``layer(x)`` at the moment of freezing; later changes to the layer do not reach the snapshot.

Calls take NumPy arrays (a CuPy layer is frozen from host copies of its weights). A stateful
layer's snapshot carries its own states, starting from the layer's at freezing time.
``Bidirectional.freeze()`` freezes both directions and merges as the wrapper does;
``Sequential.freeze()`` freezes its recurrent layers and takes private copies of the others.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import _dispatch
from .._array import as_array, check_real
from ..engines.base import Weights
from ._stacked import StackedRNNCells
from .base import array_module, to_numpy
from .bidirectional import Bidirectional
from .rnn import _ZERO_STATE, RNN, _flatten, _gru_cells
from .sequential import Sequential, _single, next_mask

__all__ = ["FrozenBidirectional", "FrozenRNN", "FrozenSequential"]


class _EngineCall:
    """An engine without snapshots (the reference engine, for Python activations): its
    ``forward`` on private copies of the weights."""

    __slots__ = ("engine", "weights", "spec", "dtype", "units", "zeros_ok")

    def __init__(self, engine, weights, spec, dtype):
        self.engine, self.weights, self.spec = engine, weights, spec
        self.dtype, self.units = dtype, spec.units
        self.zeros_ok = _dispatch.zeros_as_none(engine)

    def __reduce__(self):  # an engine module does not pickle: its name does
        return _engine_call, (self.engine.__name__, self.weights, self.spec, self.dtype)

    def forward(self, x, h0=None, mask=None):
        if h0 is None and not self.zeros_ok:
            h0 = np.zeros((x.shape[0], self.units), self.dtype)
        out, h_last, _ = self.engine.forward(x, self.weights, h0, self.spec, mask=mask)
        return out, h_last


def _engine_call(engine_name, weights, spec, dtype):
    import importlib

    return _EngineCall(importlib.import_module(engine_name), weights, spec, dtype)


class FrozenRNN:
    """``layer.freeze()``: call it as the layer in inference, ``frozen(sequences,
    initial_state=None, mask=None)``, with the layer's return structure. ``reset_state()``
    zeroes a stateful snapshot's states; ``explain(x)`` names the engine and kernels."""

    def __init__(self, layer, n_threads: int | None = None):
        cells = _gru_cells(layer.cell)
        if cells is None:
            raise TypeError(
                f"freeze() needs a layer whose cell is a GRUCell or a stack of them; layer "
                f"'{layer.name}' has {type(layer.cell).__name__}"
            )
        if not layer.built or any(c.kernel is None for c in cells):
            raise ValueError(
                f"layer '{layer.name}' is not built: call it once, or build(input_shape) or "
                "set_weights it, before freeze()"
            )
        self.name = layer.name
        self.dtype = np.dtype(layer.dtype)
        self.return_sequences = bool(layer.return_sequences)
        self.return_state = bool(layer.return_state)
        self.go_backwards = bool(layer.go_backwards)
        self.time_major = bool(layer.time_major)
        self._stacked = isinstance(layer.cell, StackedRNNCells)
        self.state_size = list(layer.state_size)
        self._cell_sizes = layer._cell_state_sizes()
        self.input_dim = cells[0].input_dim
        self._units = [c.units for c in cells]
        self._dtypes = [np.dtype(c.dtype) for c in cells]
        # cells that make their own initial state (a GRUCell subclass): asked at each call
        self._init = [None if type(c).get_initial_state is _ZERO_STATE else c for c in cells]
        # one cell with one (units,) state: a bare (B, units) array of the layer's dtype is
        # taken as it is (_states), without the general checks' ~1.5 us per call
        sizes = self._cell_sizes[0][1]
        self._bare_size = (sizes[0] if not self._stacked and len(cells) == 1 and len(sizes) == 1
                           and isinstance(sizes[0], int) else None)
        probe = np.empty((0, 0, 0))
        self._runs, self._reasons = [], []
        for i, cell in enumerate(cells):
            spec = layer._cell_spec(cell, i, i == len(cells) - 1)
            engine, reason = _dispatch.choose(spec, probe)
            w = Weights(*(None if v is None else np.array(to_numpy(v.value), copy=True)
                          for v in (cell.kernel, cell.recurrent_kernel, cell.bias)))
            snapshot = getattr(engine, "Snapshot", None)
            if snapshot is not None:
                run = snapshot(w, spec, n_threads=n_threads)
            else:
                run = _EngineCall(engine, w, spec, self._dtypes[i])
            self._runs.append(run)
            self._reasons.append(reason)
        self.n_threads = n_threads
        self.stateful = bool(layer.stateful)
        self.states = None
        if self.stateful:
            leaves = [np.array(to_numpy(v.value), copy=True) for v in _flatten(layer.states)]
            self.states = leaves  # one (B, u) array per cell

    # ------------------------------------------------------------------ calling
    def __call__(self, sequences, initial_state=None, mask=None):
        x = sequences
        if type(x) is not np.ndarray:
            if array_module(x) is not np:
                raise TypeError(
                    f"a frozen layer ('{self.name}') takes NumPy arrays; received "
                    f"{type(x).__module__}.{type(x).__name__}"
                )
            x = as_array(np, x, "Input `sequences` of frozen layer '{}'", self.name)
        check_real(x, "Input `sequences` of frozen layer '{}'", self.name)
        if x.ndim != 3:
            raise ValueError(
                f"Input 0 of frozen layer '{self.name}' must have shape "
                f"{'(T, B, D)' if self.time_major else '(B, T, D)'}; received shape {x.shape}"
            )
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if self.time_major:
            x = x.swapaxes(0, 1)
        B, T, D = x.shape
        if T == 0:
            raise ValueError(f"Frozen layer '{self.name}' needs at least one timestep: the time "
                             f"axis of `sequences` is empty (shape {np.shape(sequences)})")
        if D != self.input_dim:
            raise ValueError(
                f"Input 0 of frozen layer '{self.name}' has {D} features but the layer was "
                f"built for D={self.input_dim}; received shape {np.shape(sequences)}"
            )
        mask = self._standardize_mask(mask, np, B, T)
        h0s, bare = self._states(initial_state, B)
        mask_proc = mask[:, ::-1] if (mask is not None and self.go_backwards) else mask
        finals = []
        inp = x
        for i, run in enumerate(self._runs):
            if inp.dtype != self._dtypes[i]:
                inp = inp.astype(self._dtypes[i])
            h0 = h0s[i]
            if h0 is None and self._init[i] is not None:
                h0 = np.asarray(self._init[i].get_initial_state(B)[0], self._dtypes[i])
            inp, h_last = run.forward(inp, h0, mask if i == 0 else mask_proc)
            finals.append(h_last)
        if self.stateful:
            self.states = [np.array(h, dtype=s.dtype, copy=True)
                           for h, s in zip(finals, self.states, strict=True)]
        return self._structure(inp, [[h] for h in finals] if self._stacked else finals[:1],
                               bare)

    def _states(self, initial_state, B):
        """(per-cell h0 or None for zeros, per-cell whether the user gave a bare array)."""
        if self.stateful:
            self._check_stateful_batch(B)
        if initial_state is None:
            n = len(self._runs)
            return (list(self.states) if self.stateful else [None] * n), [False] * n
        if (type(initial_state) is np.ndarray and initial_state.dtype == self.dtype
                and initial_state.shape == (B, self._bare_size)):
            return [initial_state.astype(self._dtypes[0], copy=False)], [True]
        states, bare = self._given_states(initial_state, np, B, self._cell_sizes)
        h0s = [s[0] for s in states] if self._stacked else states[:1]
        return [h.astype(dt, copy=False) for h, dt in zip(h0s, self._dtypes, strict=True)], bare

    # the layer's own rules, on the copied configuration (dtype, time_major, return_*,
    # _stacked, state_size, name, states)
    _standardize_mask, _state_array, _to = RNN._standardize_mask, RNN._state_array, RNN._to
    _given_states, _check_stateful_batch = RNN._given_states, RNN._check_stateful_batch
    _structure, compute_mask = RNN._structure, RNN.compute_mask

    # ------------------------------------------------------------------ state, explain
    def reset_state(self):
        """Zero a stateful snapshot's states (no-op otherwise)."""
        if self.states is not None:
            self.states = [np.zeros_like(s) for s in self.states]

    reset_states = reset_state

    def explain(self, x, mask=None) -> str:
        """Which engine and kernels a call on ``x`` runs, and why (``mask``, as the layer's
        explain takes it, changes neither: fastgru.explain(frozen, x) works too)."""
        shape = tuple(np.shape(x))
        if len(shape) != 3:
            raise ValueError(f"x must have 3 dimensions; received shape {shape}")
        B, T = (shape[1], shape[0]) if self.time_major else shape[:2]
        parts, D = [], shape[2]
        for i, (run, reason) in enumerate(zip(self._runs, self._reasons, strict=True)):
            if isinstance(run, _EngineCall):
                text = f"engine {run.engine.__name__.rsplit('.', 1)[-1]!r}: {reason}"
            else:
                text = (f"engine 'cpu' snapshot (weights copied and packed at freeze()): "
                        f"{reason}; " + run.describe((B, T, D)).rstrip("."))
            parts.append(text if len(self._runs) == 1 else f"cell {i}: {text}")
            D = self._units[i]
        return f"{self.name} (frozen): " + " ".join(parts) + "."

    def __repr__(self):
        return (f"<FrozenRNN {self.name!r} units={self._units} dtype={self.dtype.name} "
                f"return_sequences={self.return_sequences} return_state={self.return_state}>")


class FrozenBidirectional:
    """``Bidirectional.freeze()``: both directions frozen (FrozenRNN each), merged as the
    wrapper merges them (its own merge code); called as the wrapper in inference."""

    def __init__(self, layer, n_threads: int | None = None):
        for sub in (layer.forward_layer, layer.backward_layer):
            if not hasattr(sub, "freeze"):
                raise TypeError(f"freeze() needs recurrent layers inside Bidirectional; "
                                f"'{sub.name}' is a {type(sub).__name__}")
        self.name = layer.name
        self.forward_layer = layer.forward_layer.freeze(n_threads)
        self.backward_layer = layer.backward_layer.freeze(n_threads)
        self.dtype = np.dtype(layer.dtype)
        self.merge_mode = layer.merge_mode
        self.return_sequences = bool(layer.return_sequences)
        self.return_state = bool(layer.return_state)
        self.time_major = bool(layer.time_major)

    # the wrapper's own rules
    _split_state, _merge = Bidirectional._split_state, Bidirectional._merge
    _structure, compute_mask = Bidirectional._structure, Bidirectional.compute_mask
    _parts, _time_axis = staticmethod(Bidirectional._parts), Bidirectional._time_axis

    def __call__(self, sequences, initial_state=None, mask=None):
        f0, b0 = self._split_state(initial_state)
        y, fs = self._parts(self.forward_layer(sequences, initial_state=f0, mask=mask),
                            self.return_state)
        y_rev, bs = self._parts(self.backward_layer(sequences, initial_state=b0, mask=mask),
                                self.return_state)
        return self._structure(self._merge(y, y_rev)[0], fs, bs)

    def reset_state(self):
        """Zero both directions' states (stateful layers; no-op otherwise)."""
        self.forward_layer.reset_state()
        self.backward_layer.reset_state()

    reset_states = reset_state

    def explain(self, x, mask=None) -> str:
        """Which engine and kernels each direction runs, and why."""
        return (f"{self.name} (frozen): forward: {self.forward_layer.explain(x, mask)} "
                f"backward: {self.backward_layer.explain(x, mask)}")

    def __repr__(self):
        return (f"<FrozenBidirectional {self.name!r} merge_mode={self.merge_mode!r} "
                f"dtype={self.dtype.name}>")


class FrozenSequential:
    """``Sequential.freeze()``: each recurrent layer frozen (``freeze()``), every other layer a
    private deep copy on the host (its weights as of freezing), called in turn as the model
    calls them in inference, masks propagated as there."""

    def __init__(self, model, n_threads: int | None = None):
        if not model.layers:
            raise ValueError(f"Sequential '{model.name}' has no layers.")
        self.name = model.name
        self._layers = []
        for layer in model.layers:
            if hasattr(layer, "freeze"):
                self._layers.append(layer.freeze(n_threads))
            else:
                if not getattr(layer, "built", True):  # it would make its own weights later
                    raise ValueError(
                        f"Layer '{layer.name}' of Sequential '{model.name}' is not built: call "
                        "the model or build() it before freeze() (a snapshot holds the weights "
                        "as of freezing)."
                    )
                mine = copy.deepcopy(layer)
                if hasattr(mine, "to"):
                    mine.to("cpu")
                self._layers.append(mine)

    _kwargs, compute_mask = staticmethod(Sequential._kwargs), Sequential.compute_mask  # its rules

    @property
    def layers(self) -> list:
        return list(self._layers)

    def __call__(self, inputs, mask=None):
        x = inputs
        for layer in self._layers:
            x, mask = self._apply(layer, x, mask)
        return x

    def _apply(self, layer, x, mask):
        """(layer's output, the mask after it), as the model's call runs a layer."""
        # a frozen layer's signature by its class (_takes caches per function)
        fn = type(layer).__call__ if isinstance(layer, _FROZEN) else layer.call
        y = _single(layer, layer(x, **self._kwargs(fn, mask, False)))
        return y, next_mask(layer, x, mask)

    def reset_state(self):
        """Zero the frozen recurrent layers' states (stateful ones; no-op otherwise)."""
        for layer in self._layers:
            if isinstance(layer, _FROZEN):
                layer.reset_state()

    reset_states = reset_state

    def explain(self, x, mask=None) -> str:
        """The frozen recurrent layers' engines and kernels, layer by layer."""
        lines = []
        for layer in self._layers:
            if isinstance(layer, _FROZEN):
                lines.append(layer.explain(x, mask))
            x, mask = self._apply(layer, x, mask)
        return "\n".join(lines)

    def __repr__(self):
        return f"<FrozenSequential {self.name!r} layers={len(self._layers)}>"


_FROZEN = (FrozenRNN, FrozenBidirectional, FrozenSequential)
