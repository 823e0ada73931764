"""RNN: the Keras 3 recurrent layer over any cell, with a fast path for GRU cells.

- A :class:`GRUCell`, or a stack of them, runs on the engines (``fastgru._dispatch``), one cell
  at a time over the whole sequence: cell i+1 consumes cell i's output sequence in processing
  order. With ``go_backwards`` only the first cell runs backwards (the later ones see its
  outputs already in processing order, with the mask reversed once). Intermediate cells use
  the engines' emitted outputs: they differ from the per-step loop's raw outputs only at masked
  steps, where the next cell keeps its state, emits nothing new and passes no gradient, so the
  results are identical (tests/test_layers_rnn.py::test_stacked_equals_per_step_loop checks
  it against a per-step loop).
- Any other cell (the Keras cell protocol, KERAS_GRU_SPEC.md 5.1) runs a per-step Python loop
  that implements the masking rule of spec 3.4 exactly.

Training (GRU cells only): ``forward(x, initial_state, mask, training=True) -> (outputs,
tape)``, ``backward(tape, d_outputs, d_state=None) -> Grads``; the backward passes of the
engines are chained down the stack.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _dispatch, _serialization
from .._array import as_array, check_real, real_array
from ..engines import reference
from ..variable import Variable
from ._stacked import StackedRNNCells
from .base import Grads, Layer, array_module, check_shape, to_numpy
from .cell import GRUCell

__all__ = ["RNN", "initial_cell_state", "call_cell"]


# --------------------------------------------------------------------------- helpers
def _is_nested(s) -> bool:
    return isinstance(s, (list, tuple))


def _flatten(s) -> list:
    if not isinstance(s, (list, tuple)):
        return [s]
    out = []  # leaves appended directly: a call per leaf was a quarter of a stateful call's
    for item in s:  # Python work
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def _pack_like(structure, leaves):
    """Rebuild ``structure`` with ``leaves`` (an iterator) in flatten order."""
    if _is_nested(structure):
        return [_pack_like(item, leaves) for item in structure]
    return next(leaves)


def _state_sizes(cell) -> list:
    size = cell.state_size
    return list(size) if _is_nested(size) else [size]


def initial_cell_state(cell, batch_size, dtype):
    """``cell.get_initial_state(batch_size)`` as a list, or zeros per ``state_size``."""
    get = getattr(cell, "get_initial_state", None)
    if get is not None:
        s = get(batch_size=batch_size)
        return list(s) if _is_nested(s) else [s]
    return [np.zeros((batch_size,) + ((d,) if isinstance(d, int) else tuple(d)), dtype)
            for d in _state_sizes(cell)]


def _accepts_training(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def cell_stepper(cell, training):
    """``step(x, states)`` for any cell (callable, else its ``call``), passing ``training``
    only if the cell's ``call`` takes it (inspected once, not per step)."""
    fn = cell if callable(cell) else cell.call
    if _accepts_training(getattr(cell, "call", fn)):
        return lambda x, states: fn(x, states, training=training)
    return fn


def call_cell(cell, x, states, training):
    """One step of any cell."""
    return cell_stepper(cell, training)(x, states)


def _where(xp, keep, new, old):
    """``new`` where the row's mask is set, else ``old``; ``keep`` is (B,)."""
    k = keep.reshape((keep.shape[0],) + (1,) * (new.ndim - 1))
    return xp.where(k, new, old)


_ZERO_STATE = GRUCell.get_initial_state


def _gru_cells(cell):
    """The list of GRUCells if ``cell`` runs on the engines, else None."""
    if isinstance(cell, GRUCell):
        return [cell]
    if isinstance(cell, StackedRNNCells) and all(isinstance(c, GRUCell) for c in cell.cells):
        return list(cell.cells)
    return None


@dataclass
class RNNTape:
    """What ``RNN.backward`` needs from a ``forward`` call (an explicit value: the layer
    keeps nothing). ``tapes``/``engines``: one per cell; ``dropout``: the masks used."""

    tapes: list
    engines: list
    reasons: list
    dropout: list
    bare: list
    batch: int
    steps: int
    input_dtype: Any
    input_module: Any = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- RNN
class RNN(Layer):
    """Base recurrent layer (Keras 3 ``RNN``).

    Args: ``cell`` (a cell object, or a list of cells = StackedRNNCells), return_sequences,
    return_state, go_backwards, stateful, unroll (accepted; same numbers), zero_output_for_mask
    (all False), ``time_major`` (False; True: inputs (T, B, ...), sequence outputs (T, B, out),
    masks (T, B)), Layer kwargs (name, dtype "float32"|"float64", trainable,
    activity_regularizer).

    Call: ``layer(sequences (B, T, D), initial_state=None, mask=None (B, T), training=False)``
    -> output (B, T, out) or (B, out); with return_state a tuple ``(output, *states)``.
    NumPy in, NumPy out; CuPy in, CuPy out; computed in the cells' dtype, returned in the
    layer's.
    """

    supports_masking = True

    def __init__(self, cell, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, time_major=False,
                 **kwargs):
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        if not hasattr(cell, "call"):
            raise ValueError(f"Argument `cell` should have a `call` method. Received: cell={cell}")
        if not hasattr(cell, "state_size"):
            raise ValueError(
                "The RNN cell should have a `state_size` attribute (single integer or list of "
                f"integers, one integer per RNN state). Received: cell={cell}"
            )
        size = cell.state_size
        if size is None:
            raise ValueError("state_size must be specified as property on the RNN cell.")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer, list, tuple)):
            raise ValueError(
                "state_size must be an integer, or a list/tuple of integers (one for each "
                "state tensor)."
            )
        super().__init__(**kwargs)
        self.cell = cell
        if isinstance(cell, Layer):
            self._track(cell)
        self.single_state = not _is_nested(size)
        self.state_size = [int(size)] if self.single_state else list(size)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.stateful = stateful
        self.unroll = unroll
        self.zero_output_for_mask = zero_output_for_mask
        self.time_major = bool(time_major)
        self.use_cudnn = "auto"
        self.n_threads = None  # forwarded to the CPU engine only
        self.states = None  # stateful: per-cell structure of Variables ("rnn_state")
        self._state_bare = None

    # ------------------------------------------------------------------ building
    def _build_shape(self, inputs, *args, **kwargs):
        if hasattr(inputs, "shape"):
            return tuple(inputs.shape)
        return as_array(np, inputs, "Input `sequences` of layer '{}'", self.name).shape

    def _batch_major_shape(self, shape):
        shape = tuple(shape)
        if self.time_major and len(shape) >= 2:
            shape = (shape[1], shape[0]) + shape[2:]
        return shape

    def build(self, sequences_shape, initial_state_shape=None):
        self._check_rank(tuple(sequences_shape))
        sequences_shape = check_shape(sequences_shape,
                                      f"argument `sequences_shape` of layer '{self.name}'")
        shape = self._batch_major_shape(sequences_shape)
        if self.stateful and shape[0] is None:
            raise ValueError(
                "When using `stateful=True` in a RNN, the batch size must be static. Found "
                f"dynamic batch size: sequence.shape={tuple(sequences_shape)}"
            )
        step_shape = (shape[0],) + shape[2:]
        if hasattr(self.cell, "build") and not getattr(self.cell, "built", False):
            self.cell.build(step_shape)
        if self.stateful:
            self._create_states(shape[0])

    def _create_states(self, batch):
        """The stored states start as the cell's get_initial_state(batch) (zeros unless a
        cell says otherwise, spec 3.6); reset_state() zeroes them."""
        init = self._default_states(batch, np)
        self.states = _pack_like(init, iter(
            [Variable(np.array(to_numpy(leaf), copy=True), f"{self.name}/rnn_state",
                      trainable=False)
             for leaf in _flatten(init)]))

    def _check_rank(self, shape):
        if len(shape) < 3:
            raise ValueError(
                f"Input 0 of layer '{self.name}' is incompatible with the layer: expected "
                f"ndim>=3 (batch, timesteps, features), found ndim={len(shape)}. Full shape "
                f"received: {tuple(shape)}"
            )

    # ------------------------------------------------------------------ state handling
    def _default_states(self, batch, xp):
        """Per-cell structure of zero states (lists, as the cells' get_initial_state)."""
        if self._stacked:
            return [[xp.asarray(s) for s in initial_cell_state(c, batch, self.dtype)]
                    for c in self.cell.cells]
        return [xp.asarray(s) for s in initial_cell_state(self.cell, batch, self.dtype)]

    def get_initial_state(self, batch_size: int):
        """Zero states for ``batch_size`` rows, in the cell's structure (Keras RNN API)."""
        return self._default_states(batch_size, np)

    def reset_state(self):
        """Zero the stored states of a stateful layer (no-op otherwise); also for stacks."""
        if self.states is None:
            return
        for var in _flatten(self.states):
            var.value = array_module(var.value).zeros_like(var.value)
            var.bump()

    def reset_states(self):
        self.reset_state()

    def _move_state(self, move):
        if self.states is not None:
            for var in _flatten(self.states):
                var.value = move(var.value)
                var.bump()

    # ------------------------------------------------------------------ input handling
    def _prepare(self, sequences, initial_state, mask, lazy_zeros=False):
        """(x batch-major in the layer dtype, mask (B, T) bool or None, states, bare, xp);
        ``lazy_zeros``: default zero states as None."""
        xp = array_module(sequences)
        what = "Input `sequences` of layer '{}'"
        x = (xp.asarray(sequences) if hasattr(sequences, "shape") else
             as_array(np, sequences, what, self.name))
        check_real(x, what, self.name)
        self._check_rank(x.shape)
        if not self.built:
            self.build(tuple(x.shape))
        self._match_device(xp)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if self.time_major:
            x = x.swapaxes(0, 1)
        B, T = x.shape[:2]
        if T == 0:
            raise ValueError(
                f"Layer '{self.name}' needs at least one timestep: the time axis of `sequences` "
                f"is empty (shape {tuple(np.shape(sequences))})"
            )
        self._check_features(x.shape)
        mask = self._standardize_mask(mask, xp, B, T)
        states, bare = self._standardize_states(initial_state, xp, B, lazy_zeros)
        return x, mask, states, bare, xp

    def _match_device(self, xp):
        """Weights live where the layer was first called: a layer built on host that sees
        its first CuPy input moves there; later mismatches ask for ``layer.to(...)``."""
        first = self._first_variable()
        if first is None or array_module(first.value) is xp:
            return
        device = "cpu" if xp is np else "gpu"
        if not getattr(self, "_called", False):
            self.to(device)
            return
        held = "CuPy (GPU)" if device == "cpu" else "NumPy (CPU)"
        raise ValueError(
            f"Layer '{self.name}' holds its weights as {held} arrays but received a "
            f"{'NumPy' if xp is np else 'CuPy'} array: call `layer.to('{device}')` first"
        )

    def _check_features(self, shape):
        first = self._cells[0]
        dim = getattr(first, "input_dim", None) if getattr(first, "built", False) else None
        if dim is not None and shape[-1] != dim:
            layout = "(T, B, D)" if self.time_major else "(B, T, D)"
            raise ValueError(
                f"Input 0 of layer '{self.name}' has {shape[-1]} features but the layer was "
                f"built for D={dim}: expected `sequences` of shape {layout} with D={dim}, "
                f"received {self._user_shape(shape)}"
            )

    def _user_shape(self, shape):
        shape = tuple(shape)
        return (shape[1], shape[0]) + shape[2:] if self.time_major else shape

    def _standardize_mask(self, mask, xp, B, T):
        if mask is None:
            return None
        if not hasattr(mask, "dtype"):  # nested lists: a ragged one named
            mask = as_array(np, mask, "Argument `mask` of layer '{}'", self.name)
        if array_module(mask) is not xp:
            mask = xp.asarray(to_numpy(mask)) if xp is not np else to_numpy(mask)
        mask = xp.asarray(mask)
        if mask.dtype.kind not in "biuf":  # Keras casts masks to bool: numbers and booleans
            raise TypeError(
                f"Argument `mask` of layer '{self.name}' must be boolean, integer or float "
                f"(nonzero = keep); received an array of dtype {mask.dtype}"
            )
        expected = (T, B) if self.time_major else (B, T)
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"Argument `mask` must have shape {'(T, B)' if self.time_major else '(B, T)'} "
                f"= {expected} to match `sequences`; received shape {tuple(mask.shape)}"
            )
        mask = mask.astype(bool)
        return mask.T if self.time_major else mask

    def _standardize_states(self, initial_state, xp, B, lazy_zeros=False):
        """Per-cell structure of state arrays and, per cell, whether the user gave a bare
        array (returned states keep that form). ``lazy_zeros``: default zero states of GRU
        cells as None (h0=None for the engines)."""
        stacked = self._stacked
        if initial_state is None:
            if self.stateful:
                self._check_stateful_batch(B)
                states = _pack_like(self.states, iter(
                    [self._to(xp, v.value) for v in _flatten(self.states)]))
            elif lazy_zeros:
                states = [[None] for _ in self.cell.cells] if stacked else [None]
            else:
                states = self._default_states(B, xp)
            bare = [False] * (len(self.cell.cells) if stacked else 1)
            return states, bare
        if self.stateful:
            self._check_stateful_batch(B)
        return self._given_states(initial_state, xp, B, self._cell_state_sizes())

    def _cell_state_sizes(self) -> list:
        """Per cell (name, state sizes); one entry for a lone cell."""
        return [(getattr(c, "name", i), _state_sizes(c)) for i, c in enumerate(self._cells)]

    def _given_states(self, initial_state, xp, B, cell_sizes):
        """``initial_state`` as given, checked against ``cell_sizes`` (``_cell_state_sizes``):
        (per-cell state arrays, per cell whether a bare array was given). Reads only
        ``name``, ``dtype`` and ``_stacked`` of self: FrozenRNN shares it."""
        if not self._stacked:
            given = list(initial_state) if _is_nested(initial_state) else [initial_state]
            expected = cell_sizes[0][1]
            if len(given) < len(expected):
                raise ValueError(
                    f"Argument `initial_state` of layer '{self.name}' must hold "
                    f"{len(expected)} state(s); received {len(given)}"
                )
            # Keras uses as many leading states as the cell has (GRU: only element 0).
            states = [self._state_array(g, xp, B, d, "initial_state")
                      for g, d in zip(given, expected, strict=False)]
            return states, [not _is_nested(initial_state)]
        given = list(initial_state) if _is_nested(initial_state) else [initial_state]
        # a one-cell stack given h or [h] (flat) returns its state flat, as Keras; None or
        # [[h]] (nested) return [h]
        flat1 = len(cell_sizes) == 1 and (len(given) != 1 or not _is_nested(given[0]))
        if flat1:
            given = [initial_state]
        if len(given) != len(cell_sizes):
            raise ValueError(
                f"Argument `initial_state` of layer '{self.name}' must hold one entry per "
                f"cell ({len(cell_sizes)}); received {len(given)}"
            )
        states, bare = [], []
        for i, ((name, sizes), g) in enumerate(zip(cell_sizes, given, strict=True)):
            leaves = list(g) if _is_nested(g) else [g]
            if len(leaves) < len(sizes):
                raise ValueError(
                    f"Argument `initial_state[{i}]` must hold {len(sizes)} state(s) for cell "
                    f"'{name}'; received {len(leaves)}"
                )
            states.append([self._state_array(leaf, xp, B, d, f"initial_state[{i}]")
                           for leaf, d in zip(leaves, sizes, strict=False)])
            bare.append(not _is_nested(g) or flat1)
        return states, bare

    def _to(self, xp, a):
        if array_module(a) is not xp:
            a = xp.asarray(to_numpy(a)) if xp is not np else to_numpy(a)
        return a

    def _state_array(self, value, xp, B, size, arg):
        what = "Argument `{}` of layer '{}'"
        a = value if hasattr(value, "shape") else as_array(np, value, what, arg, self.name)
        a = check_real(self._to(xp, a), what, arg, self.name)
        try:
            a = xp.asarray(a, dtype=self.dtype)
        except (TypeError, ValueError) as e:  # e.g. a dict (a 0-d object array)
            raise TypeError(
                f"{what.format(arg, self.name)} must be an array of shape (batch, units), or a "
                f"list of them (one per state); received {type(value).__name__} ({e})"
            ) from e
        expected = (B,) + ((size,) if isinstance(size, int) else tuple(size))
        if tuple(a.shape) != expected:
            raise ValueError(
                f"Argument `{arg}` of layer '{self.name}' must have shape (batch, units) = "
                f"{expected}; received shape {tuple(a.shape)}"
            )
        return a

    def _check_stateful_batch(self, B):
        leaves = _flatten(self.states)
        if leaves and leaves[0].shape[0] != B:
            raise ValueError(
                "If an RNN is stateful, the batch size of the input sequences must be the same "
                "as the batch size of the initial state. \n"
                f"- Expected batch size: {leaves[0].shape[0]}\n- Received batch size: {B}"
            )

    # ------------------------------------------------------------------ calling
    def call(self, sequences, initial_state=None, mask=None, training=False):
        outputs, _ = self._run(sequences, initial_state, mask, training, record=False)
        return outputs

    def forward(self, sequences, initial_state=None, mask=None, training=True):
        """``(outputs, tape)``: outputs as ``__call__``; ``training`` only switches dropout
        (the tape is always recorded). GRU cells only."""
        if _gru_cells(self.cell) is None:
            raise NotImplementedError(
                f"forward/backward of layer '{self.name}' need GRUCell cells (or a stack of "
                f"them); the cell {self.cell!r} runs only in the per-step inference loop"
            )
        outputs, tape = self._run(sequences, initial_state, mask, training, record=True)
        self._record_activity(outputs)
        return outputs, tape

    def _blockers(self, cell) -> list:
        rules = []
        if self.unroll:
            rules.append("unroll=True")
        if cell.recurrent_dropout != 0:
            rules.append("recurrent_dropout > 0")
        return rules

    def _choose(self, cell, spec, x, mask, masks):
        if x.shape[0] == 0:  # nothing to compute: the reference loop handles empty arrays
            engine = reference if array_module(x) is np else _dispatch._HOST_REFERENCE
            if self.use_cudnn is True:
                _dispatch.choose(spec, x, mask, masks, self.use_cudnn,
                                 blockers=self._blockers(cell))
            return engine, "empty batch (B == 0)"
        return _dispatch.choose(spec, x, mask, masks, self.use_cudnn,
                                blockers=self._blockers(cell))

    def _run(self, sequences, initial_state, mask, training, record):
        cells = _gru_cells(self.cell)
        # Engines take h0=None as zeros: no default state arrays to build for them (unless a
        # subclass of GRUCell makes its own initial state)
        lazy = cells is not None and all(type(c).get_initial_state is _ZERO_STATE for c in cells)
        x, mask, states, bare, xp = self._prepare(sequences, initial_state, mask, lazy)
        if cells is None:
            output, final = self._generic_loop(x, mask, states, training, xp)
            tape = None
        else:
            output, final, tape = self._engine_path(cells, x, mask, states, bare, training,
                                                    record, xp)
        if self.stateful:
            self._write_states(final, xp)
        self._called = True
        return self._structure(output, final, bare), tape

    def _engine_path(self, cells, x, mask, states, bare, training, record, xp):
        B, T = x.shape[:2]
        stacked = self._stacked
        h0s = [s[0] for s in states] if stacked else [states[0]]
        mask_proc = mask[:, ::-1] if (mask is not None and self.go_backwards) else mask
        tapes, engines, reasons, drops, finals = [], [], [], [], []
        inp = x
        for i, cell in enumerate(cells):
            last = i == len(cells) - 1
            spec = self._cell_spec(cell, i, last)
            if inp.dtype != cell.dtype:
                inp = inp.astype(cell.dtype)
            m = mask if i == 0 else mask_proc
            masks = cell.dropout_masks(B, inp.shape[-1], training, xp, dtype=cell.dtype)
            engine, reason = self._choose(cell, spec, inp, m, masks)
            h0 = h0s[i]
            if h0 is not None:
                h0 = xp.asarray(h0, dtype=cell.dtype)
            elif not _dispatch.zeros_as_none(engine):
                h0 = xp.zeros((B, cell.units), cell.dtype)
            out, h_last, tape = engine.forward(
                inp, cell.engine_weights(), h0, spec,
                mask=m, dropout=masks, training=record,
                **_dispatch.engine_kwargs(engine, self.n_threads, cell.weights_key()))
            tapes.append(tape)
            engines.append(engine)
            reasons.append(reason)
            drops.append(masks)
            finals.append(h_last)
            inp = out
        final = [[h] for h in finals] if stacked else [finals[0]]
        layer_tape = None
        if record:
            layer_tape = RNNTape(tapes, engines, reasons, drops, bare, B, T, self.dtype, xp,
                                 meta={"layer": self.name, "cells": [c.name for c in cells],
                                       "weights": [c.weights_key() for c in cells]})
        return inp, final, layer_tape

    def _generic_loop(self, x, mask, states, training, xp):
        """Keras's per-step loop (spec 3.4) for any cell: every row computes every step;
        masked rows keep their states, emit the previous output (0 before the first, or 0
        with zero_output_for_mask)."""
        B, T = x.shape[:2]
        gru_cells = [c for c in self._cells if isinstance(c, GRUCell)]
        for c in gru_cells:  # one set of masks per call, reused at every step
            c._step_masks = c.dropout_masks(B, c.input_dim, training, xp)
        try:
            outputs, y_prev = [], None
            step = cell_stepper(self.cell, training)
            single_stack = self._stacked and len(self.cell.cells) == 1
            for k in range(T):
                t = T - 1 - k if self.go_backwards else k
                o, new = step(x[:, t], states)
                if single_stack:  # a one-cell stack returns that cell's states: keep per-cell
                    new = [new]
                new = list(new) if _is_nested(new) else [new]
                if y_prev is None:
                    y_prev = xp.zeros_like(o)
                if mask is None:
                    states, y = new, o
                else:
                    keep = mask[:, t]
                    old = iter(_flatten(states))
                    states = _pack_like(new, iter(
                        [_where(xp, keep, n, next(old)) for n in _flatten(new)]))
                    fill = xp.zeros_like(o) if self.zero_output_for_mask else y_prev
                    y = _where(xp, keep, o, fill)
                y_prev = y
                if self.return_sequences:
                    outputs.append(y)
        finally:
            for c in gru_cells:
                c._step_masks = None
        output = xp.stack(outputs, axis=1) if self.return_sequences else y_prev
        return output, states

    def _write_states(self, final, xp):
        for var, value in zip(_flatten(self.states), _flatten(final), strict=True):
            var.value = xp.array(value, dtype=var.value.dtype, copy=True) \
                if array_module(var.value) is xp else xp.asarray(value).astype(var.value.dtype)
            var.bump()

    @property
    def _stacked(self) -> bool:
        return isinstance(self.cell, StackedRNNCells)

    @property
    def _cells(self) -> list:
        """The cells in order: those of the stack, or the lone cell."""
        return self.cell.cells if self._stacked else [self.cell]

    def _structure(self, output, final, bare):
        """Cast to the layer dtype, restore time-major layout, build the return value (on
        every call, frozen ones too: no conversion where none is needed)."""
        dtype = self.dtype
        if output.dtype != dtype:
            output = output.astype(dtype)
        if self.return_sequences and self.time_major:
            output = array_module(output).ascontiguousarray(output.swapaxes(0, 1))
        if not self.return_state:
            return output
        cast = lambda s: s if s.dtype == dtype else s.astype(dtype)  # noqa: E731
        if len(final) == 1 and not _is_nested(final[0]):  # one cell, one state (GRU)
            return (output, cast(final[0]))
        if self._stacked:
            per_cell = []
            for s, b in zip(final, bare, strict=True):
                s = list(s) if _is_nested(s) else [s]
                s = [_pack_like(leaf, iter([cast(v) for v in _flatten(leaf)])) for leaf in s]
                per_cell.append(s[0] if b and len(s) == 1 else s)
            states = per_cell[0] if len(per_cell) == 1 and bare[0] else per_cell
            states = states if _is_nested(states) else [states]
        else:
            states = [cast(s) for s in _flatten(final)]
        return (output, *states)

    # ------------------------------------------------------------------ backward
    def backward(self, tape: RNNTape, d_outputs, d_state=None) -> Grads:
        """Gradients of one ``forward`` call. ``d_outputs`` mirrors what forward returned
        (with return_state a tuple ``(d_output, d_state...)``, entries may be None); ``d_state``
        may instead be given separately. Weight regularization is not included (see
        ``regularization_gradients``). The tape holds the inputs and weights by reference: a
        weight changed since the forward call (its Variable's version) is refused; a write
        into ``Variable.value`` without ``bump()``, or an edit of the inputs, is not seen."""
        if not isinstance(tape, RNNTape):
            raise TypeError(f"backward needs the tape returned by forward(); got {type(tape)}")
        cells = _gru_cells(self.cell)
        recorded, now = tape.meta.get("weights"), [c.weights_key() for c in cells]
        if recorded is not None and recorded != now:

            def uids(keys):  # the weights' identities, without their versions
                return [tuple(None if w is None else w[0] for w in k) for k in keys]

            if uids(recorded) != uids(now):
                raise ValueError(
                    f"Layer '{self.name}': this tape was recorded by another layer "
                    f"('{tape.meta.get('layer')}'); pass it to that layer's backward."
                )
            # the engines' tapes hold the weights by reference: the gradients would mix the
            # recorded forward with the new values
            raise ValueError(
                f"Layer '{self.name}': its weights changed (set_weights, assign or an optimizer "
                "step) since the forward call that recorded this tape; run forward again."
            )
        stacked = self._stacked
        d_out, d_states = self._split_d_outputs(d_outputs, d_state, len(cells), stacked)
        xp = tape.input_module
        B, T = tape.batch, tape.steps
        if d_out is not None:
            # nested lists too, as the inputs may be
            d_out = real_array(xp, self._to(xp, d_out), "`d_outputs` of layer '{}'", self.name)
            given = tuple(np.shape(d_out))  # as the caller laid it out (time-major or not)
            if self.return_sequences and self.time_major:
                d_out = d_out.swapaxes(0, 1)
            u = cells[-1].units
            expected = (B, T, u) if self.return_sequences else (B, u)
            if tuple(d_out.shape) != expected:
                raise ValueError(
                    f"`d_outputs` must have the shape of the outputs {self._out_shape(B, T, u)};"
                    f" received {given}"
                )
        grads = [None] * len(cells)
        g = d_out
        for i in range(len(cells) - 1, -1, -1):
            cell = cells[i]
            if g is not None:
                g = xp.asarray(g, dtype=cell.dtype)
            dh = d_states[i]
            if dh is not None:
                dh = self._state_array(dh, xp, B, cell.units, "d_state").astype(cell.dtype)
            engine = tape.engines[i]
            grads[i] = engine.backward(tape.tapes[i], g, dh, **_dispatch.engine_kwargs(
                engine, self.n_threads, backward=True))
            g = grads[i].x
        dx = g.astype(self.dtype, copy=False)
        if self.time_major:
            dx = dx.swapaxes(0, 1)
        trainable = {w.uid for w in self.trainable_weights}
        weights, names, paths = [], [], []
        for cell, gr in zip(cells, grads, strict=True):
            for var, short, value in ((cell.kernel, "kernel", gr.kernel),
                                      (cell.recurrent_kernel, "recurrent_kernel",
                                       gr.recurrent_kernel),
                                      (cell.bias, "bias", gr.bias)):
                if var is not None and var.uid in trainable:
                    weights.append(value)
                    names.append(short)
                    paths.append(var.name)
        h0 = [gr.h0 for gr in grads]
        return Grads(dx, h0 if stacked else h0[0], weights, names, paths)

    def _cell_spec(self, cell, i: int, last: bool):
        """Cell i of the stack runs as one engine layer: only the first goes backwards (the
        later ones take its outputs already in processing order), only the last may return a
        single step, and zero_output_for_mask applies to the final outputs only."""
        return cell.spec(go_backwards=self.go_backwards and i == 0,
                         return_sequences=self.return_sequences if last else True,
                         zero_output_for_mask=self.zero_output_for_mask and last)

    def _out_shape(self, B, T, u):
        if not self.return_sequences:
            return (B, u)
        return (T, B, u) if self.time_major else (B, T, u)

    def _split_d_outputs(self, d_outputs, d_state, n_cells, stacked):
        """(d_output, per-cell d_h_last list)."""
        per_cell = [None] * n_cells
        d_out = d_outputs
        if self.return_state and isinstance(d_outputs, (list, tuple)):
            if d_state is not None:
                raise ValueError("give the state gradient either inside `d_outputs` or as "
                                 "`d_state`, not both")
            if not d_outputs:
                raise ValueError(
                    f"`d_outputs` of layer '{self.name}' (return_state=True) must mirror the "
                    "outputs of forward: (d_output, d_state...), entries may be None; received "
                    f"an empty {type(d_outputs).__name__}"
                )
            d_out, rest = d_outputs[0], list(d_outputs[1:])
            d_state = rest if stacked and n_cells > 1 else (rest[0] if rest else None)
        if d_state is None:
            return d_out, per_cell
        if not stacked:
            per_cell[0] = self._first_state(d_state, "d_state")
            return d_out, per_cell
        entries = d_state if n_cells > 1 else [d_state]
        if len(entries) != n_cells:
            raise ValueError(
                f"`d_state` must hold one entry per cell ({n_cells}); received {len(entries)}"
            )
        for i, e in enumerate(entries):
            per_cell[i] = self._first_state(e, f"d_state[{i}]")
        return d_out, per_cell

    def _first_state(self, s, arg):
        """A cell's (only) state gradient from ``s``: an array, or a list holding it."""
        if not _is_nested(s):
            return s
        if not s:
            raise ValueError(
                f"`{arg}` of layer '{self.name}' must be an array of shape (batch, units), or a "
                f"list holding one (or None); received an empty {type(s).__name__}"
            )
        return s[0]

    # ------------------------------------------------------------------ shapes, masks
    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        shape = self._batch_major_shape(sequences_shape)
        batch, length = shape[0], shape[1]
        states_shape = []
        for size in self.state_size:
            if isinstance(size, (list, tuple)):
                states_shape.append([(batch, s) for s in size])
            else:
                states_shape.append((batch, size))
        output_size = getattr(self.cell, "output_size", None)
        if output_size is None:
            output_size = self.state_size[0]
        if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)):
            raise ValueError("output_size must be an integer.")
        if self.return_sequences:
            output_shape = ((length, batch, output_size) if self.time_major
                            else (batch, length, output_size))
        else:
            output_shape = (batch, output_size)
        if self.return_state:
            return (output_shape, *states_shape)
        return output_shape

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * len(self.state_size)
        return output_mask

    # ------------------------------------------------------------------ freeze
    def freeze(self, n_threads: int | None = None):
        """An inference-only snapshot of this layer (GRU cells): weights copied and packed
        now, configuration and engine fixed, and the least work per call (layers/frozen.py):
        ``frozen(sequences, initial_state=None, mask=None)`` returns what ``layer(...)`` does
        in inference, bit for bit as of now; later changes to the layer do not reach it.
        ``n_threads``: the CPU engine's threads per call (default: the layer's ``n_threads``,
        else fastgru's default at each call)."""
        from .frozen import FrozenRNN

        return FrozenRNN(self, self.n_threads if n_threads is None else n_threads)

    # ------------------------------------------------------------------ explain
    def explain(self, x, mask=None) -> str:
        """Which engine a call on ``x`` (with ``mask``) would use, and why (inference)."""
        cells = _gru_cells(self.cell)
        if cells is None:
            return (f"{self.name}: generic per-step Python loop, because the cell "
                    f"{type(self.cell).__name__} is not a GRUCell (or a stack of them).")
        xp = array_module(x)
        xb = xp.asarray(x)
        self._check_rank(xb.shape)  # the call's own check (a shape tuple is not an input)
        if self.time_major:
            xb = xb.swapaxes(0, 1)

        def stand_in(shape, dtype):
            # engines are chosen and described by type, shape and dtype alone: a zero-stride
            # view, not a converted copy of x or a zeros array of each cell's outputs (which
            # allocated up to the call's own memory, for a sentence)
            return xp.broadcast_to(xp.zeros((), dtype), shape)

        m = self._standardize_mask(mask, xp, xb.shape[0], xb.shape[1]) if mask is not None \
            else None
        parts = []
        inp = xb if xb.dtype == cells[0].dtype else stand_in(xb.shape, cells[0].dtype)
        for i, cell in enumerate(cells):
            spec = self._cell_spec(cell, i, i == len(cells) - 1)
            mi = m if (i == 0 or m is None or not self.go_backwards) else m[:, ::-1]
            engine, reason = self._choose(cell, spec, inp, mi, None)
            text = _dispatch.describe(engine, reason, spec, inp, self.n_threads)
            parts.append(text if len(cells) == 1 else f"cell {i} ({cell.name}): {text}")
            inp = stand_in(inp.shape[:2] + (cell.units,), cell.dtype)
        return f"{self.name}: " + " ".join(parts)

    # ------------------------------------------------------------------ config
    def _rnn_config(self) -> dict:
        cfg = super().get_config()
        cfg.update({
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "stateful": self.stateful,
            "unroll": self.unroll,
            "zero_output_for_mask": self.zero_output_for_mask,
        })
        return cfg

    def _time_major_config(self, cfg):
        if self.time_major:  # fastgru extension; absent by default so configs match Keras
            cfg["time_major"] = True
        return cfg

    def get_config(self) -> dict:
        cfg = self._rnn_config()
        cfg["cell"] = _serialization.serialize(self.cell)
        return self._time_major_config(cfg)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        cell = _serialization.deserialize(config.pop("cell"), custom_objects)
        return cls(cell, **config)


_serialization.register(RNN)
_serialization.register(GRUCell)
