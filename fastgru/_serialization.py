"""Keras-style serialisation of layers and cells: ``{"module", "class_name", "config",
"registered_name"}`` dicts, and the lookup that turns them back into objects.

fastgru classes are found by their Keras class names; anything else must be passed in
``custom_objects`` (like Keras) or registered with :func:`register`.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["ConfigObject", "ObjectFamily", "register", "serialize", "deserialize"]

class ConfigObject:
    """Keras-style small objects (initializers, regularizers, constraints): rebuilt from
    ``get_config()``, equal when type and config are equal, printed as their constructor."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ObjectFamily:
    """``get``/``serialize``/``deserialize`` for one family of Keras objects (initializers,
    regularizers, constraints), like ``keras.<family>.get``: None stays None, instances pass,
    names and aliases construct with defaults, config dicts deserialize, other callables are
    wrapped by ``wrap`` (and serialize back to themselves)."""

    def __init__(self, kind: str, module: str, base: type, classes: dict, aliases: dict,
                 wrap: type, fix_config=None):
        self.kind, self.module, self.base = kind, module, base
        self.classes, self.aliases, self.wrap = classes, aliases, wrap
        self.fix_config = fix_config or (lambda cfg: cfg)

    def _lookup(self, name, shown):
        cls = self.classes.get(name) or self.aliases.get(name)
        if cls is None:
            raise ValueError(f"Could not interpret {self.kind} identifier: {shown}")
        return cls

    def get(self, identifier):
        if identifier is None or isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            return self._lookup(identifier, identifier)()
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        if callable(identifier):
            return self.wrap(identifier)
        raise ValueError(f"Could not interpret {self.kind} identifier: {identifier}")

    def deserialize(self, config: dict):
        cls = self._lookup(config.get("class_name"), config)
        return cls.from_config(self.fix_config(dict(config.get("config") or {})))

    def serialize(self, obj):
        if obj is None:
            return None
        obj = self.get(obj)
        if isinstance(obj, self.wrap):
            return obj.fn
        return {"module": self.module, "class_name": type(obj).__name__,
                "config": obj.get_config(), "registered_name": None}


_REGISTRY: dict[str, type] = {}


def register(cls: type, name: str | None = None) -> type:
    """Make ``cls`` deserialisable under ``name`` (default: its class name)."""
    _REGISTRY[name or cls.__name__] = cls
    return cls


def _is_fastgru(cls) -> bool:
    return cls.__module__.split(".")[0] == "fastgru"


def serialize(obj) -> dict:
    cls = type(obj)
    if not hasattr(obj, "get_config"):
        raise TypeError(
            f"Cannot serialise {obj!r}: a cell or layer needs a `get_config()` method"
        )
    if _is_fastgru(cls):  # as Keras writes its own: Sequential is keras.Sequential (at any
        # depth; Keras refuses "keras.layers.Sequential")
        module = "keras" if cls.__name__ == "Sequential" else "keras.layers"
        return {"module": module, "class_name": cls.__name__,
                "config": obj.get_config(), "registered_name": None}
    return {"module": cls.__module__, "class_name": cls.__name__, "config": obj.get_config(),
            "registered_name": cls.__name__}


def _lookup(name, custom_objects):
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    return _REGISTRY.get(name)


_BUILD_HINTS = ("batch_input_shape", "batch_size")


def deserialize(config: Any, custom_objects: dict | None = None):
    """An object from its serialised dict (objects pass through unchanged)."""
    if not isinstance(config, dict):
        return config
    names = [config.get("registered_name"), config.get("class_name")]
    cls = next((c for c in (_lookup(n, custom_objects) for n in names if n) if c), None)
    if cls is None:
        raise ValueError(
            f"Could not locate class '{config.get('class_name')}'. Make sure custom classes "
            "are passed in `custom_objects={'Name': cls}` or registered with "
            "fastgru._serialization.register."
        )
    cfg = config.get("config", {})
    if _is_fastgru(cls) and isinstance(cfg, dict) and any(k in cfg for k in _BUILD_HINTS):
        # Keras 2 configs record the build shape on a model's first layer (the Sequential
        # reads it from there); our layer constructors, as Keras 3's, refuse these keys (a
        # user class's config is its own business)
        cfg = {k: v for k, v in cfg.items() if k not in _BUILD_HINTS}
    if _takes_custom_objects(cls.from_config):
        return cls.from_config(cfg, custom_objects=custom_objects)
    return cls.from_config(cfg)


def _takes_custom_objects(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "custom_objects" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
