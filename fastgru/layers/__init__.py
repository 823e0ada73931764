"""fastgru layers (pure Python front end over the engines)."""

from ._stacked import StackedRNNCells
from .base import Grads, Layer
from .bidirectional import Bidirectional
from .cell import GRUCell
from .dense import Dense
from .frozen import FrozenBidirectional, FrozenRNN, FrozenSequential
from .gru import GRU
from .rnn import RNN
from .sequential import Sequential, compose

__all__ = ["GRU", "Bidirectional", "Dense", "FrozenBidirectional", "FrozenRNN", "FrozenSequential",
           "GRUCell", "Grads", "Layer", "RNN", "Sequential", "StackedRNNCells", "compose"]
