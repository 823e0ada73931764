"""fastgru: a Keras-3-compatible GRU for NumPy and CuPy arrays."""

from . import activations, constraints, initializers, regularizers
from ._random import set_seed
from .layers import GRU, RNN, Grads, GRUCell, Layer, StackedRNNCells
from .variable import Variable

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "GRUCell",
    "Grads",
    "Layer",
    "RNN",
    "StackedRNNCells",
    "Variable",
    "activations",
    "constraints",
    "initializers",
    "regularizers",
    "set_seed",
]
