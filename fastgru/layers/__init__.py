"""fastgru layers (pure Python front end over the engines)."""

from .base import Grads, Layer

__all__ = ["Grads", "Layer"]
