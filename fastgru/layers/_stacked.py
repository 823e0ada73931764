"""StackedRNNCells: a list of cells run as one (KERAS_GRU_SPEC.md 5.2).

Used by ``RNN([cell, cell, ...])``. The RNN layer runs stacks of GRUCells layer by layer on
the engines; ``call`` here is the per-step Keras protocol, used by the generic loop for stacks
that contain custom cells.
"""

from __future__ import annotations

from .. import _serialization
from .base import Layer

__all__ = ["StackedRNNCells"]


def _state_leaf_sizes(cell):
    size = cell.state_size
    return list(size) if isinstance(size, (list, tuple)) else [size]


class StackedRNNCells(Layer):
    """Wraps a list of cells: cell i's output is cell i+1's input; ``state_size`` lists each
    cell's state size; ``output_size`` is the last cell's."""

    def __init__(self, cells, **kwargs):
        super().__init__(**kwargs)
        for cell in cells:
            if not hasattr(cell, "call"):
                raise ValueError(
                    "All cells must have a `call` method. Received cell without a `call` "
                    f"method: {cell}"
                )
            if not hasattr(cell, "state_size"):
                raise ValueError(
                    "All cells must have a `state_size` attribute. Received cell without a "
                    f"`state_size`: {cell}"
                )
        self.cells = list(cells)
        if not self.cells:
            raise ValueError("StackedRNNCells needs at least one cell; received an empty list")
        for cell in self.cells:
            if isinstance(cell, Layer):
                self._track(cell)

    @property
    def state_size(self):
        return [c.state_size for c in self.cells]

    @property
    def output_size(self):
        last = self.cells[-1]
        if getattr(last, "output_size", None) is not None:
            return last.output_size
        size = last.state_size
        return size[0] if isinstance(size, (list, tuple)) else size

    def build(self, input_shape):
        shape = tuple(input_shape)
        for cell in self.cells:
            if hasattr(cell, "build") and not getattr(cell, "built", False):
                cell.build(shape)
            out = getattr(cell, "output_size", None)
            if out is None:
                out = _state_leaf_sizes(cell)[0]
            shape = shape[:-1] + (out,)

    def get_initial_state(self, batch_size=None):
        from .rnn import initial_cell_state

        return [initial_cell_state(cell, batch_size, self.dtype) for cell in self.cells]

    def call(self, inputs, states, training=False):
        from .rnn import call_cell

        new_states = []
        x = inputs
        for cell, s in zip(self.cells, states, strict=False):
            bare = not isinstance(s, (list, tuple))
            s_list = [s] if bare else list(s)
            x, ns = call_cell(cell, x, s_list, training)
            ns = list(ns) if isinstance(ns, (list, tuple)) else [ns]
            new_states.append(ns[0] if bare and len(ns) == 1 else ns)
        if len(self.cells) == 1:
            return x, new_states[0]
        return x, new_states

    def get_config(self):
        cfg = super().get_config()
        cfg["cells"] = [_serialization.serialize(c) for c in self.cells]
        return cfg

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        cells = [_serialization.deserialize(c, custom_objects) for c in config.pop("cells")]
        return cls(cells, **config)


_serialization.register(StackedRNNCells)
