"""Layer (de)serialisation for files, over a closed set of fastgru classes.

Only the classes listed in ``LOADABLE`` can be named by a file's top-level config, and nested
configs resolve through fastgru's own registry (``fastgru._serialization``): reading a file
never imports or runs code named by the file.
"""

from __future__ import annotations

from typing import Any

from .. import _serialization

LOADABLE = ("GRU", "GRUCell", "RNN", "Bidirectional", "Dense", "Sequential")


def _register_all() -> None:
    """Import the layer modules so that every fastgru class is registered."""
    from .. import layers  # noqa: F401  (GRU, GRUCell, RNN register on import)
    from ..layers import bidirectional, dense, sequential  # noqa: F401


def serialize_layer(layer) -> dict[str, Any]:
    """``{"module", "class_name", "config", "registered_name"}`` as Keras writes it."""
    _register_all()
    return _serialization.serialize(layer)


def deserialize_layer(config: dict):
    """A fastgru layer from ``serialize_layer``'s form (or Keras's own, same keys)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "Expected a serialised layer: a dict with 'class_name' and 'config'. "
            f"Received: {config!r:.200}"
        )
    _register_all()
    name = config["class_name"]
    if name not in LOADABLE:
        raise ValueError(
            f"Unsupported layer class {name!r}: fastgru builds {list(LOADABLE)} (and a Keras "
            "InputLayer inside a Sequential)."
        )
    return _serialization.deserialize({"class_name": name, "config": config.get("config", {})})
