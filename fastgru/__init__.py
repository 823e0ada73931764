"""fastgru: a Keras-3-compatible GRU for NumPy and CuPy arrays."""

from . import activations, constraints, initializers, regularizers
from ._random import set_seed
from .layers.base import Grads, Layer
from .variable import Variable

__version__ = "0.1.0"

__all__ = [
    "Grads",
    "Layer",
    "Variable",
    "activations",
    "constraints",
    "initializers",
    "regularizers",
    "set_seed",
]
