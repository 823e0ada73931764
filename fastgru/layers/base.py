"""Layer base class and Grads: the front-end contract every fastgru layer follows.

A :class:`Layer` owns :class:`~fastgru.variable.Variable` weights (created in ``build``), builds
itself on its first call from the input's shape, serialises with ``get_config``/``from_config``
like Keras, and trains without a framework through ``forward(..., training=True) -> (outputs,
tape)`` and ``backward(tape, d_outputs) -> Grads``. See notes/LAYER_API.md.

Naming follows Keras 3: an unnamed layer is called after its class in snake case, numbered
per name (``gru``, ``gru_1``, ...); weight names are paths built from the layers being built
(``gru/gru_cell/kernel``), because a layer's ``build`` runs inside its own name scope.
"""

from __future__ import annotations

import functools
import operator
import re
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .._array import as_array, check_real
from ..variable import Variable

__all__ = ["Layer", "Grads", "array_module", "to_numpy", "standardize_dtype", "dtype_policy"]

_SUPPORTED_DTYPES = ("float32", "float64")

_name_counts: dict[str, int] = defaultdict(int)
_name_lock = threading.Lock()
_scope = threading.local()


def _to_snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique_name(base: str) -> str:
    with _name_lock:
        n = _name_counts[base]
        _name_counts[base] += 1
    return base if n == 0 else f"{base}_{n}"


def _scope_stack() -> list:
    if not hasattr(_scope, "stack"):
        _scope.stack = []
    return _scope.stack


# --------------------------------------------------------------------------- array helpers
def array_module(x):
    """``cupy`` for a CuPy array, else ``numpy`` (never converts a CuPy array to NumPy)."""
    if type(x) is np.ndarray:  # the common case first (called several times per layer call)
        return np
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """A host NumPy array (``.get()`` for CuPy)."""
    if array_module(x) is not np:
        return x.get()
    return np.asarray(x)


def standardize_dtype(dtype) -> np.dtype:
    """The layer's compute dtype from None, a name, a NumPy dtype or a Keras DTypePolicy
    (object or serialised dict). Only float32 and float64 are supported."""
    if dtype is None:
        return np.dtype("float32")
    if isinstance(dtype, dict):  # {"module": "keras", "class_name": "DTypePolicy", ...}
        cfg = dtype.get("config", {})
        dtype = cfg.get("name", cfg) if isinstance(cfg, dict) else cfg
    elif hasattr(dtype, "compute_dtype") and hasattr(dtype, "name"):  # a DTypePolicy object
        dtype = dtype.name
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"Invalid value for argument `dtype`: expected one of {_SUPPORTED_DTYPES} "
            f"(or a DTypePolicy with one of them). Received: dtype={dtype!r}"
        )
    return dt


def dtype_policy(dtype: np.dtype) -> dict:
    """The Keras 3 serialised DTypePolicy for ``dtype``."""
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": np.dtype(dtype).name},
        "registered_name": None,
    }


def check_shape(shape, what: str) -> tuple:
    """``shape`` by Keras's rules (``standardize_shape``): each dimension None or an integer
    >= 0 (Python or NumPy integers, 0-d integer arrays), str, float (NumPy's float32 too) and
    bool refused even where ``int()`` takes them; returned as a tuple of Python ints and None
    (a config holding NumPy integers could not be written as JSON). ``what`` names the
    argument."""
    out = []
    for d in shape:
        if d is None:
            out.append(None)
            continue
        try:
            if isinstance(d, (bool, np.bool_)):
                raise TypeError
            n = operator.index(d)  # int() would truncate np.float32(3.5) to 3
        except Exception as e:
            raise ValueError(f"Cannot convert '{tuple(shape)}' to a shape ({what}). Found "
                             f"invalid dimension '{d}' of type '{type(d)}'.") from e
        if n < 0:
            raise ValueError(f"Cannot convert '{tuple(shape)}' to a shape ({what}). Negative "
                             "dimensions are not allowed.")
        out.append(n)
    return tuple(out)


def _leaves(structure):
    if isinstance(structure, (list, tuple)):
        for s in structure:
            yield from _leaves(s)
    elif structure is not None:
        yield structure


# --------------------------------------------------------------------------- Grads
class Grads:
    """Gradients of one layer call.

    ``inputs``: d loss / d inputs (shape of the inputs); ``initial_state``: GRU (B, u) array,
    stacked RNN a list per cell, None when not applicable; ``weights``: aligned with
    ``layer.trainable_weights``; ``names``: short names aligned with ``weights``
    (``"kernel"``...); ``paths``: the weights' full names (``"gru/gru_cell/kernel"``).

    ``grads.kernel`` looks a weight up by unique short name; ``grads["gru_cell_1/kernel"]``
    by path or path suffix (or int index). Iterating yields ``weights``, so an optimizer can
    take a Grads directly.
    """

    def __init__(self, inputs=None, initial_state=None, weights: Sequence = (),
                 names: Sequence[str] = (), paths: Sequence[str] | None = None):
        self.inputs = inputs
        self.initial_state = initial_state
        self.weights = list(weights)
        self.names = list(names)
        self.paths = list(paths) if paths is not None else list(self.names)
        if len(self.names) != len(self.weights) or len(self.paths) != len(self.weights):
            raise ValueError(
                f"Grads: {len(self.weights)} weight gradients but {len(self.names)} names "
                f"and {len(self.paths)} paths"
            )

    def __iter__(self) -> Iterator:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def _lookup(self, key: str):
        if key in self.paths:
            return self.weights[self.paths.index(key)]
        hits = [i for i, p in enumerate(self.paths) if p.endswith("/" + key)]
        if not hits:
            hits = [i for i, n in enumerate(self.names) if n == key]
        if len(hits) == 1:
            return self.weights[hits[0]]
        if not hits:
            raise KeyError(f"no gradient named {key!r}; known: {self.paths}")
        raise KeyError(
            f"gradient name {key!r} is ambiguous ({[self.paths[i] for i in hits]}); "
            "use a longer path"
        )

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer, slice)):
            return self.weights[key]
        return self._lookup(str(key))

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("inputs", "initial_state", "weights", "names",
                                            "paths"):
            raise AttributeError(name)
        try:
            return self._lookup(name)
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __repr__(self):
        shapes = ", ".join(
            f"{p}={None if w is None else tuple(w.shape)}"
            for p, w in zip(self.paths, self.weights, strict=True)
        )
        return f"Grads({shapes})"


# --------------------------------------------------------------------------- Layer
class Layer:
    """Base of every fastgru layer.

    Subclasses implement ``build(input_shape)`` (creating weights with :meth:`add_weight`),
    ``call(inputs, ...)``, and, to be trainable, ``forward``/``backward``. ``build`` runs in the
    layer's name scope and sets ``built``; ``__call__`` builds from the first input's shape.
    """

    # input_shape / input_dim are accepted with Keras 3's warning (they build nothing here
    # either); Keras 2's batch_input_shape / batch_size are refused, as in Keras 3, since a
    # stateful layer given one would silently stay unbuilt (configs drop them on loading)
    _KNOWN_KWARGS = ("name", "dtype", "trainable", "autocast", "input_shape", "input_dim")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "build" in cls.__dict__:
            cls.build = _wrap_build(cls.__dict__["build"])

    def __init__(self, name: str | None = None, dtype=None, trainable: bool = True,
                 activity_regularizer=None, **kwargs):
        unknown = {k: v for k, v in kwargs.items() if k not in self._KNOWN_KWARGS}
        if unknown:
            raise ValueError(
                f"Unrecognized keyword arguments passed to {type(self).__name__}: {unknown}"
            )
        if kwargs.get("input_shape") is not None or kwargs.get("input_dim") is not None:
            warnings.warn(
                f"Do not pass an `input_shape`/`input_dim` argument to a layer "
                f"({type(self).__name__}): it is ignored. A layer builds from its first input "
                "or `build(input_shape)`, a Sequential likewise.", UserWarning, stacklevel=3)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Argument `name` must be a string. Received: name={name!r}")
        self.name = name if name else _unique_name(_to_snake_case(type(self).__name__))
        self.dtype = standardize_dtype(dtype)
        self._trainable = bool(trainable)
        self.built = False
        self._variables: list[Variable] = []
        self._sublayers: list[Layer] = []
        self._activity_losses: list = []
        from .. import regularizers

        self.activity_regularizer = regularizers.get(activity_regularizer)

    # ------------------------------------------------------------------ weights
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool):
        self._trainable = bool(value)
        for layer in self._sublayers:
            layer.trainable = value

    def _track(self, layer: Layer) -> Layer:
        """Register a sublayer whose weights belong to this layer (after its own)."""
        if not any(layer is s for s in self._sublayers):
            self._sublayers.append(layer)
        return layer

    def add_weight(self, name: str, shape, initializer="zeros", regularizer=None,
                   constraint=None, trainable: bool = True, dtype=None) -> Variable:
        """Create a Variable named by the current scope path (``gru/gru_cell/kernel``)."""
        from .. import constraints, initializers, regularizers

        dt = standardize_dtype(dtype if dtype is not None else self.dtype)
        init = initializers.get(initializer)
        value = np.asarray(init(tuple(shape), dtype=dt), dtype=dt)
        stack = _scope_stack()
        prefix = "/".join(n for _, n in stack) if stack else self.name
        var = Variable(value, f"{prefix}/{name}", trainable=trainable,
                       constraint=constraints.get(constraint),
                       regularizer=regularizers.get(regularizer))
        self._variables.append(var)
        return var

    @property
    def weights(self) -> list[Variable]:
        out, seen = [], set()
        for w in self._variables + [w for s in self._sublayers for w in s.weights]:
            if w.uid not in seen:
                seen.add(w.uid)
                out.append(w)
        return out

    def _first_variable(self) -> Variable | None:
        """``weights[0]`` (None when there is none) without building the list: the per-call
        device check needs only one."""
        if self._variables:
            return self._variables[0]
        for s in self._sublayers:
            v = s._first_variable()
            if v is not None:
                return v
        return None

    @property
    def trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return []
        own = [w for w in self._variables if w.trainable]
        return _dedupe(own + [w for s in self._sublayers for w in s.trainable_weights])

    @property
    def non_trainable_weights(self) -> list[Variable]:
        trainable = {w.uid for w in self.trainable_weights}
        return [w for w in self.weights if w.uid not in trainable]

    @property
    def variables(self) -> list[Variable]:
        return self.weights

    def get_weights(self) -> list[np.ndarray]:
        return [w.numpy() for w in self.weights]

    def set_weights(self, weights) -> None:
        own = self.weights
        if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Iterable):
            raise TypeError(
                f"`set_weights(weights)` on layer '{self.name}' takes a list of arrays, one per "
                f"weight as `get_weights()` returns them; received {type(weights).__name__}"
            )
        weights = list(weights)
        if len(weights) != len(own):
            raise ValueError(
                f"You called `set_weights(weights)` on layer '{self.name}' with a weight list "
                f"of length {len(weights)}, but the layer was expecting {len(own)} weights."
            )
        for var, value in zip(own, weights, strict=True):
            if not hasattr(value, "shape"):  # nested lists: a ragged one named
                value = as_array(np, value, "Weight {!r} of layer '{}'", var.name, self.name)
            shape = tuple(value.shape)
            if shape != tuple(var.shape):
                raise ValueError(
                    f"Layer {self.name} weight shape {tuple(var.shape)} is not compatible "
                    f"with provided weight shape {shape}."
                )
        for var, value in zip(own, weights, strict=True):
            xp = array_module(var.value)
            if xp is np:
                value = to_numpy(value)
            value = check_real(xp.asarray(value), "Weight {!r} of layer '{}'", var.name,
                               self.name)
            var.assign(xp.asarray(value, dtype=var.dtype))

    # ------------------------------------------------------------------ regularization
    @property
    def losses(self) -> list[float]:
        """As Keras: the activity regularization losses of the last call, then the weight
        regularization losses (one per regularised trainable weight)."""
        return self._activity_loss_values() + self._weight_loss_values()

    def _activity_loss_values(self) -> list[float]:
        """Its own, then its sublayers' (a Bidirectional's directions, a Sequential's layers):
        theirs are losses of the model too, in Keras's order."""
        return [float(v) for v in self._activity_losses] + [
            v for s in self._sublayers for v in s._activity_loss_values()]

    def _weight_loss_values(self) -> list[float]:
        return [float(w.regularizer(w.value)) for w in self.trainable_weights
                if w.regularizer is not None]

    def regularization_gradients(self) -> list:
        """d(sum of weight regularization losses)/d w, aligned with ``trainable_weights``;
        None where a weight has no regularizer."""
        return [
            None if w.regularizer is None else w.regularizer.gradient(w.value)
            for w in self.trainable_weights
        ]

    # ------------------------------------------------------------------ calling
    def build(self, input_shape) -> None:
        """Create the weights; the base layer has none."""

    def call(self, inputs, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement call()")

    def _build_shape(self, inputs, *args, **kwargs):
        """The shape ``build`` receives on the first call: the input's (every layer here takes
        one array; nested lists of numbers are one, as NumPy reads them)."""
        if hasattr(inputs, "shape"):
            return tuple(inputs.shape)
        return as_array(np, inputs, "Input of layer '{}'", self.name).shape

    def __call__(self, inputs, *args, **kwargs):
        if not self.built:
            self.build(self._build_shape(inputs, *args, **kwargs))
        outputs = self.call(inputs, *args, **kwargs)
        self._record_activity(outputs)
        return outputs

    def _record_activity(self, outputs) -> None:
        """Keras: the activity regularizer applies to every returned tensor, divided by its
        batch size, one loss per tensor (losses of the previous call are replaced)."""
        self._activity_losses = []
        reg = self.activity_regularizer
        if reg is None:
            return
        for leaf in _leaves(outputs):
            batch = leaf.shape[0] if getattr(leaf, "ndim", 0) else 1
            self._activity_losses.append(float(reg(leaf)) / max(int(batch), 1))

    def forward(self, inputs, *args, training: bool = True, **kwargs):
        """``(outputs, tape)``: the outputs of ``__call__`` and what ``backward`` needs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, tape, d_outputs, *args, **kwargs) -> Grads:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def compute_output_shape(self, input_shape):
        return input_shape

    def explain(self, x, mask=None) -> str:
        return f"{self.name} ({type(self).__name__}) computes with NumPy/CuPy array operations."

    # ------------------------------------------------------------------ devices
    def to(self, device: str) -> Layer:
        """Move every Variable (and state) to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy)."""
        if device not in ("cpu", "gpu"):
            raise ValueError(f"Argument `device` must be 'cpu' or 'gpu'. Received: {device!r}")
        if device == "gpu":
            try:
                import cupy
            except ImportError as e:  # pragma: no cover - depends on the machine
                raise RuntimeError("Layer.to('gpu') needs CuPy installed") from e
            move = lambda v: cupy.asarray(v)  # noqa: E731
        else:
            move = to_numpy
        for w in self._all_variables():
            w.value = move(w.value)
            w.bump()
        for layer in self._layer_tree():
            layer._move_state(move)
        return self

    def _layer_tree(self) -> list[Layer]:
        """This layer and every sublayer below it, each once."""
        out, stack, seen = [], [self], set()
        while stack:
            layer = stack.pop()
            if id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
                stack.extend(layer._sublayers)
        return out

    def _all_variables(self) -> list[Variable]:
        return self.weights

    def _move_state(self, move) -> None:
        """Hook for layers holding non-weight arrays (stateful RNN states)."""

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable, "dtype": dtype_policy(self.dtype)}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"


def _dedupe(ws):
    out, seen = [], set()
    for w in ws:
        if w.uid not in seen:
            seen.add(w.uid)
            out.append(w)
    return out


def _wrap_build(build):
    @functools.wraps(build)
    def wrapped(self, input_shape, *args, **kwargs):
        stack = _scope_stack()
        pushed = not stack or stack[-1][0] is not self
        if pushed:
            stack.append((self, self.name))
        try:
            result = build(self, input_shape, *args, **kwargs)
        finally:
            if pushed:
                stack.pop()
        self.built = True
        return result

    wrapped._fastgru_wrapped = True
    return wrapped


Layer.build = _wrap_build(Layer.__dict__["build"])
