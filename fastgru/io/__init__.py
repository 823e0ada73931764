"""Saving, loading and exchanging fastgru models.

- fastgru's own format: :func:`save` / :func:`load` (one ``.npz``: JSON config + weights,
  versioned, SHA-256-checked, never unpickled).
- Keras 3: :func:`load_keras` (a ``.keras`` archive -> the equivalent fastgru model),
  :func:`model_from_keras_config`, :func:`load_keras_weights` (``.weights.h5`` or
  ``.keras`` into a built model). Needs h5py.
- PyTorch ``nn.GRU``: :func:`from_torch_state_dict`, :func:`from_torch`,
  :func:`to_torch_state_dict`, :func:`to_torch`; weight-level :func:`torch_to_keras_gru` /
  :func:`keras_to_torch_gru`. torch is optional (NumPy arrays accepted).
- ONNX: :func:`to_onnx` (standard ``GRU`` operator; needs onnx).
"""

from ._keras import load_keras, load_keras_weights, model_from_keras_config
from ._native import FORMAT, VERSION, load, save
from ._onnx import to_onnx
from ._registry import deserialize_layer, serialize_layer
from ._torch import (
    from_torch,
    from_torch_state_dict,
    keras_to_torch_gru,
    to_torch,
    to_torch_state_dict,
    torch_to_keras_gru,
)

__all__ = [
    "FORMAT", "VERSION", "deserialize_layer", "from_torch", "from_torch_state_dict",
    "keras_to_torch_gru", "load", "load_keras", "load_keras_weights",
    "model_from_keras_config", "save", "serialize_layer", "to_onnx", "to_torch",
    "to_torch_state_dict", "torch_to_keras_gru",
]
