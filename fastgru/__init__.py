"""fastgru: a Keras-3-compatible GRU for NumPy and CuPy arrays.

Layers: GRU, GRUCell, RNN (StackedRNNCells for a list of cells), Dense, Sequential,
Bidirectional; ``layer.freeze()`` gives an inference-only snapshot (FrozenRNN,
FrozenBidirectional, FrozenSequential). Submodules: activations, initializers, regularizers,
constraints, optim, io (save/load, Keras/PyTorch/ONNX), sklearn (estimators; needs
scikit-learn).
``set_seed(n)`` restarts the global random stream used by unseeded initializers and dropout.
"""

from . import activations, constraints, initializers, optim, regularizers
from ._random import set_seed
from ._threads import get_num_threads, set_num_threads
from .layers import (
    GRU,
    RNN,
    Bidirectional,
    Dense,
    FrozenBidirectional,
    FrozenRNN,
    FrozenSequential,
    Grads,
    GRUCell,
    Layer,
    Sequential,
    StackedRNNCells,
    compose,
)
from .variable import Variable

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "Bidirectional",
    "Dense",
    "FrozenBidirectional",
    "FrozenRNN",
    "FrozenSequential",
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
    "compose",
    "explain",
    "get_num_threads",
    "optim",
    "set_num_threads",
    "set_seed",
]


def explain(layer, x, mask=None) -> str:
    """Which engine (and CPU kernel) ``layer`` would run on ``x``, and why."""
    return layer.explain(x, mask=mask)


def __getattr__(name):
    # Optional-dependency submodules load on first use so `import fastgru` stays light.
    import importlib

    if name in ("io", "sklearn"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("GRUClassifier", "GRURegressor"):
        return getattr(importlib.import_module(".sklearn", __name__), name)
    raise AttributeError(f"module 'fastgru' has no attribute {name!r}")
