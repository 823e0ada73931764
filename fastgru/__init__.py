"""fastgru: a Keras-3-compatible GRU for NumPy and CuPy arrays.

Layers: GRU, GRUCell, RNN (StackedRNNCells for a list of cells), Dense, Sequential,
Bidirectional. Submodules: activations, initializers, regularizers, constraints, optim,
io (save/load, Keras/PyTorch/ONNX), sklearn (estimators; needs scikit-learn).
``set_seed(n)`` restarts the global random stream used by unseeded initializers and dropout.
"""

from . import activations, constraints, initializers, regularizers
from ._random import set_seed
from .layers import (
    GRU,
    RNN,
    Bidirectional,
    Dense,
    Grads,
    GRUCell,
    Layer,
    Sequential,
    StackedRNNCells,
)
from .variable import Variable

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "Bidirectional",
    "Dense",
    "GRUCell",
    "Grads",
    "Layer",
    "RNN",
    "Sequential",
    "StackedRNNCells",
    "Variable",
    "activations",
    "constraints",
    "initializers",
    "regularizers",
    "set_seed",
]
