"""Variable: a named weight array with its constraint, regularizer and a version counter.

Layers hold their weights as Variables; optimizers update ``value`` in place and call
``bump()``; engines that cache a packed form of a weight (the CPU kernels' packed recurrent
matrix, cuDNN's weight space) key the cache on ``(id(variable), variable.version)``.
"""

from __future__ import annotations

import itertools

_ids = itertools.count()


class Variable:
    __slots__ = ("name", "value", "trainable", "constraint", "regularizer", "version", "uid")

    def __init__(self, value, name: str, trainable: bool = True, constraint=None,
                 regularizer=None):
        flags = getattr(value, "flags", None)
        if flags is not None and not flags.c_contiguous:
            value = value.copy(order="C")  # engines take C order: else a copy on every call
        self.value = value
        self.name = name
        self.trainable = trainable
        self.constraint = constraint
        self.regularizer = regularizer
        self.version = 0
        self.uid = next(_ids)  # stable identity for caches (id() can be reused)

    def __setstate__(self, state):
        # a copy (pickle, copy.copy / deepcopy) is another Variable: a uid of its own, so that
        # what is keyed on uids (packed-weight caches, de-duplicated weight lists, tapes) never
        # takes it for the original (the counter restarts in every process, too)
        _, slots = state if isinstance(state, tuple) else (None, state)
        for name, value in (slots or {}).items():
            setattr(self, name, value)
        self.uid = next(_ids)

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    @property
    def path(self):
        return self.name

    def bump(self):
        """Mark the value as changed in place (invalidates packed copies: the cuDNN weight
        space is cached by (uid, version) alone; the CPU engine also compares values)."""
        self.version += 1

    def assign(self, new_value):
        """Copy ``new_value`` into the existing buffer (shape must match) and bump."""
        if tuple(new_value.shape) != tuple(self.value.shape):
            raise ValueError(
                f"Variable {self.name!r} has shape {tuple(self.value.shape)}, "
                f"cannot assign a value of shape {tuple(new_value.shape)}"
            )
        self.value[...] = new_value
        self.bump()

    def numpy(self):
        """A host NumPy copy of the value (works for CuPy values too)."""
        v = self.value
        return v.get() if hasattr(v, "get") and not hasattr(v, "__array_interface__") else v.copy()

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.numpy(), dtype=dtype)

    def __repr__(self):
        return f"<Variable {self.name} shape={tuple(self.value.shape)} dtype={self.value.dtype}>"
