"""fastgru layers (pure Python front end over the engines)."""

from ._stacked import StackedRNNCells
from .base import Grads, Layer
from .cell import GRUCell
from .gru import GRU
from .rnn import RNN

__all__ = ["GRU", "GRUCell", "Grads", "Layer", "RNN", "StackedRNNCells"]
