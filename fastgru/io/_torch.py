"""PyTorch ``nn.GRU`` <-> fastgru weight mapping (KERAS_GRU_SPEC.md section 4.3).

PyTorch's GRU is Keras's ``reset_after=True`` GRU with tanh/sigmoid and gate order (r, z, n)
instead of (z, r, h), weights stored transposed and the two biases as separate vectors:

    weight_ih_l{k} (3u, D) = P(kernel).T        bias_ih_l{k} (3u,) = P(bias[0])
    weight_hh_l{k} (3u, u) = P(recurrent_kernel).T   bias_hh_l{k} (3u,) = P(bias[1])

where P swaps the first two gate blocks (it is its own inverse). ``_reverse`` keys hold the
backward direction of a bidirectional GRU. Layer ``k > 0`` of a stacked ``nn.GRU`` takes the
previous layer's full sequence (both directions concatenated), which is a fastgru
``Sequential`` of ``GRU(return_sequences=True)`` / ``Bidirectional(..., merge_mode="concat")``
layers. torch itself is optional: state dicts of tensors or NumPy arrays are accepted.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..layers.base import to_numpy

__all__ = [
    "keras_to_torch_gru", "torch_to_keras_gru", "from_torch_state_dict", "from_torch",
    "to_torch_state_dict", "to_torch",
]

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _host(a) -> np.ndarray:
    """A NumPy array from a NumPy/CuPy array or a torch tensor (any device)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: exact in float32
            a = a.float()
        return a.numpy()
    return to_numpy(a)


def _swap_rz(a: np.ndarray) -> np.ndarray:
    """Swap gate blocks 0 and 1 of the last axis: (z, r, h) <-> (r, z, h)."""
    u = a.shape[-1] // 3
    return np.concatenate([a[..., u:2 * u], a[..., :u], a[..., 2 * u:]], axis=-1)


def keras_to_torch_gru(kernel, recurrent_kernel, bias=None):
    """``(weight_ih (3u,D), weight_hh (3u,u), bias_ih (3u,) | None, bias_hh (3u,) | None)``
    from Keras weights ``kernel (D,3u)``, ``recurrent_kernel (u,3u)``, ``bias (2,3u)``."""
    kernel, recurrent_kernel = _host(kernel), _host(recurrent_kernel)
    # as torch_to_keras_gru checks its side: a wrong shape would otherwise map silently (a
    # kernel of 10 columns became a (10, D) weight_ih; gate blocks are columns // 3)
    if recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != 3 * recurrent_kernel.shape[0] \
            or kernel.ndim != 2 or kernel.shape[1] != recurrent_kernel.shape[1]:
        raise ValueError(
            "Expected kernel of shape (input, 3*units) and recurrent_kernel of shape (units, "
            f"3*units); received {kernel.shape} and {recurrent_kernel.shape}."
        )
    w_ih = np.ascontiguousarray(_swap_rz(kernel).T)
    w_hh = np.ascontiguousarray(_swap_rz(recurrent_kernel).T)
    if bias is None:
        return w_ih, w_hh, None, None
    bias = _host(bias)
    if bias.ndim != 2 or bias.shape[0] != 2 or bias.shape[1] != kernel.shape[1]:
        raise ValueError(
            "PyTorch's GRU is Keras's reset_after=True GRU, whose bias has shape (2, 3*units) = "
            f"(2, {kernel.shape[1]}); received a bias of shape {bias.shape} (reset_after=False "
            "has no PyTorch form)."
        )
    return w_ih, w_hh, _swap_rz(bias[0]), _swap_rz(bias[1])


def torch_to_keras_gru(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """``(kernel (D,3u), recurrent_kernel (u,3u), bias (2,3u) | None)`` from one direction of
    one ``nn.GRU`` layer."""
    w_ih, w_hh = _host(weight_ih), _host(weight_hh)
    if w_ih.ndim != 2 or w_hh.ndim != 2 or w_hh.shape[0] != 3 * w_hh.shape[1] \
            or w_ih.shape[0] != w_hh.shape[0]:
        raise ValueError(
            "Expected weight_ih of shape (3*hidden, input) and weight_hh of shape "
            f"(3*hidden, hidden); received {w_ih.shape} and {w_hh.shape}."
        )
    kernel = np.ascontiguousarray(_swap_rz(w_ih.T))
    recurrent = np.ascontiguousarray(_swap_rz(w_hh.T))
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must be given together (or both omitted).")
    if bias_ih is None:
        return kernel, recurrent, None
    bias_ih, bias_hh = _host(bias_ih), _host(bias_hh)
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b.shape != (w_hh.shape[0],):
            raise ValueError(f"Expected {name} of shape (3*hidden,) = ({w_hh.shape[0]},); "
                             f"received {b.shape}.")
    bias = np.stack([_swap_rz(bias_ih), _swap_rz(bias_hh)])
    return kernel, recurrent, bias


# --------------------------------------------------------------------------- torch -> fastgru
def _parse_state_dict(state_dict, prefix: str):
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "Argument `state_dict` must be a mapping of parameter names to tensors or arrays, "
            "as nn.GRU.state_dict() returns (from_torch takes the module itself); received "
            f"{type(state_dict).__name__}"
        )
    entries: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        m = _KEY.match(rest)
        if m is None:
            if rest.startswith("weight_hr"):
                raise ValueError("nn.GRU with proj_size has no Keras equivalent.")
            raise ValueError(
                f"Unexpected key {key!r} in a GRU state dict: expected weight_ih_l<k>, "
                "weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k> (optionally with _reverse)."
            )
        kind, layer, rev = m.group(1), int(m.group(2)), bool(m.group(3))
        entries.setdefault((layer, rev), {})[kind] = _host(value)
    if not entries:
        raise ValueError(f"No GRU weights (weight_ih_l0 ...) found under prefix {prefix!r}.")
    num_layers = max(k[0] for k in entries) + 1
    bidirectional = any(k[1] for k in entries)
    for layer in range(num_layers):
        for rev in ((False, True) if bidirectional else (False,)):
            d = entries.get((layer, rev))
            if d is None or "weight_ih" not in d or "weight_hh" not in d:
                raise ValueError(
                    f"Missing weights for layer {layer}{' (reverse)' if rev else ''} in the "
                    "GRU state dict."
                )
    return entries, num_layers, bidirectional


def from_torch_state_dict(state_dict, *, batch_first: bool = True,
                          return_sequences: bool = True, dtype="float32", prefix: str = "",
                          name: str | None = None):
    """The fastgru model computing what an ``nn.GRU`` with these weights computes.

    Args:
        state_dict: ``module.state_dict()`` of an ``nn.GRU`` (tensors or NumPy arrays);
            ``num_layers``, ``bidirectional`` and ``bias`` are read from its keys.
        batch_first: the ``nn.GRU`` flag; False gives ``time_major=True`` layers
            (inputs ``(T, B, D)``, as PyTorch's default).
        return_sequences: of the last layer (PyTorch always returns the sequence; False gives
            Keras's last output, i.e. PyTorch's ``output[:, -1]``).
        dtype: the layers' dtype, "float32" or "float64".
        prefix: key prefix of the GRU inside a larger module's state dict (e.g. ``"rnn."``).
        name: name of the returned layer or Sequential.

    Returns:
        ``GRU`` (one layer), ``Bidirectional(GRU, merge_mode="concat")`` (one bidirectional
        layer), or a ``Sequential`` of those for ``num_layers > 1``.
    """
    from ..layers import GRU
    from ..layers.bidirectional import Bidirectional
    from ..layers.sequential import Sequential

    entries, num_layers, bidirectional = _parse_state_dict(state_dict, prefix)
    layers, expect_in = [], None
    for k in range(num_layers):
        dirs = (False, True) if bidirectional else (False,)
        mapped = []
        for r in dirs:
            e, where = entries[(k, r)], f"Layer {k}{' (reverse)' if r else ''}"
            try:
                mapped.append(torch_to_keras_gru(e["weight_ih"], e["weight_hh"],
                                                 e.get("bias_ih"), e.get("bias_hh")))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        shapes = {(m[0].shape, m[2] is not None) for m in mapped}
        if len(shapes) != 1:
            raise ValueError(f"Layer {k}: the two directions' weights differ in shape or bias.")
        units = mapped[0][1].shape[0]
        use_bias = mapped[0][2] is not None
        if expect_in is not None and mapped[0][0].shape[0] != expect_in:
            raise ValueError(
                f"{prefix}weight_ih_l{k} has {mapped[0][0].shape[0]} input columns, but layer "
                f"{k - 1} outputs {expect_in} (hidden size x directions)."
            )
        expect_in = units * len(dirs)
        kwargs = dict(return_sequences=return_sequences if k == num_layers - 1 else True,
                      use_bias=use_bias, reset_after=True, dtype=dtype)
        if not batch_first:
            kwargs["time_major"] = True
        single = num_layers == 1 and name is not None
        if bidirectional:
            layer = Bidirectional(GRU(units, **kwargs), merge_mode="concat",
                                  **({"name": name} if single else {}))
        else:
            layer = GRU(units, **kwargs, **({"name": name} if single else {}))
        input_dim = mapped[0][0].shape[0]
        layer.build((None, None, input_dim))
        layer.set_weights([w for m in mapped for w in m if w is not None])
        layers.append(layer)
    if num_layers == 1:
        return layers[0]
    return Sequential(layers, name=name)


def from_torch(module, *, return_sequences: bool = True, dtype=None, name: str | None = None):
    """``from_torch_state_dict`` for an ``nn.GRU`` module (reads its ``batch_first``; dtype
    float64 when the module is double, else float32)."""
    for attr in ("hidden_size", "num_layers", "bidirectional", "batch_first", "state_dict"):
        if not hasattr(module, attr):
            raise TypeError(f"Expected a torch.nn.GRU module. Received: {type(module).__name__}")
    if type(module).__name__ != "GRU":
        raise TypeError(f"Expected a torch.nn.GRU module. Received: {type(module).__name__}")
    sd = module.state_dict()
    if dtype is None:
        dtype = "float64" if str(next(iter(sd.values())).dtype) == "torch.float64" else "float32"
    return from_torch_state_dict(sd, batch_first=module.batch_first,
                                 return_sequences=return_sequences, dtype=dtype, name=name)


# --------------------------------------------------------------------------- fastgru -> torch
def _gru_config_check(cfg: dict, where: str):
    act, rec = cfg.get("activation"), cfg.get("recurrent_activation")
    if act != "tanh" or rec != "sigmoid":
        raise ValueError(
            f"{where}: PyTorch's GRU uses tanh and sigmoid; received activation={act!r}, "
            f"recurrent_activation={rec!r}."
        )
    if not cfg.get("reset_after", True):
        raise ValueError(f"{where}: reset_after=False has no PyTorch equivalent.")


def _torch_layers(model) -> list:
    """One entry per ``nn.GRU`` layer: a list of (kernel, recurrent, bias|None) per direction,
    plus whether the model's layers are time-major."""
    from ..layers.bidirectional import Bidirectional
    from ..layers.sequential import Sequential

    kind = type(model).__name__
    if isinstance(model, Sequential):
        out = []
        for layer in model.layers:
            out.extend(_torch_layers(layer))
        return out
    if not model.built:
        raise ValueError(f"Layer '{model.name}' is not built: call it or build() it first.")
    w = model.get_weights()
    if isinstance(model, Bidirectional):
        if model.merge_mode != "concat":
            raise ValueError(
                f"Bidirectional '{model.name}': PyTorch concatenates the two directions; "
                f"merge_mode={model.merge_mode!r} has no nn.GRU form."
            )
        if model.forward_layer.go_backwards:
            raise ValueError(f"Bidirectional '{model.name}': its forward layer runs backwards; "
                             "nn.GRU's first direction is the forward one.")
        parts = []
        for sub in (model.forward_layer, model.backward_layer):
            entries = _torch_layers_plain(sub, allow_backwards=True)
            if len(entries) != 1:
                raise ValueError(
                    f"Bidirectional '{model.name}': its layers run {len(entries)} stacked "
                    "cells; nn.GRU's bidirectional layers hold one cell per direction (stack "
                    "Bidirectional(GRU) layers in a Sequential instead)."
                )
            parts.append(entries[0])
        return [(parts, _time_major(model.forward_layer))]
    if kind in ("GRU", "RNN"):
        return [([d], _time_major(model)) for d in _torch_layers_plain(model, w)]
    raise ValueError(
        f"Cannot map layer '{model.name}' ({kind}) to torch.nn.GRU: only GRU, RNN of GRUCells, "
        "Bidirectional(GRU) and Sequential of those."
    )


def _time_major(layer) -> bool:
    return bool(getattr(layer, "time_major", False))


def _torch_layers_plain(layer, weights=None, allow_backwards: bool = False) -> list:
    """(kernel, recurrent, bias|None) per GRU cell of a GRU or RNN layer."""
    cfg = layer.get_config()
    weights = layer.get_weights() if weights is None else weights
    if cfg.get("go_backwards") and not allow_backwards:
        raise ValueError(
            f"Layer '{layer.name}': a go_backwards GRU alone has no nn.GRU form "
            "(use Bidirectional)."
        )
    if type(layer).__name__ == "RNN":
        cell = cfg["cell"]
        cells = (cell["config"]["cells"] if cell["class_name"] == "StackedRNNCells" else [cell])
        cell_cfgs = []
        for c in cells:
            if c["class_name"] != "GRUCell":
                raise ValueError(f"RNN '{layer.name}': only GRUCell maps to nn.GRU.")
            cell_cfgs.append(c["config"])
    else:
        cell_cfgs = [cfg]
    out, i = [], 0
    for c in cell_cfgs:
        _gru_config_check(c, f"Layer '{layer.name}'")
        n = 3 if c.get("use_bias", True) else 2
        k, r = weights[i], weights[i + 1]
        b = weights[i + 2] if n == 3 else None
        out.append((k, r, b))
        i += n
    return out


def to_torch_state_dict(model, *, tensors: bool = True) -> OrderedDict:
    """An ``nn.GRU`` state dict (keys ``weight_ih_l0``, ... in PyTorch's order) for ``model``:
    a GRU, an RNN of GRUCells, a ``Bidirectional(GRU, merge_mode="concat")``, or a Sequential
    of those (all with the same units, tanh/sigmoid, reset_after=True, same use_bias).

    ``tensors=True`` gives torch tensors (loadable with ``gru.load_state_dict``; needs torch),
    False NumPy arrays.
    """
    layers = _torch_layers(model)
    units = {d[1].shape[0] for dirs, _ in layers for d in dirs}
    biases = {d[2] is not None for dirs, _ in layers for d in dirs}
    ndirs = {len(dirs) for dirs, _ in layers}
    if len(units) != 1 or len(biases) != 1 or len(ndirs) != 1:
        raise ValueError(
            "nn.GRU needs every layer to have the same units, use_bias and directions; "
            f"received units {sorted(units)}, use_bias {sorted(biases)}, directions "
            f"{sorted(ndirs)}."
        )
    convert = _tensor if tensors else (lambda a: a)
    sd = OrderedDict()
    for k, (dirs, _) in enumerate(layers):
        for j, (kern, rec, bias) in enumerate(dirs):
            suffix = f"_l{k}" + ("_reverse" if j == 1 else "")
            w_ih, w_hh, b_ih, b_hh = keras_to_torch_gru(kern, rec, bias)
            sd["weight_ih" + suffix] = convert(w_ih)
            sd["weight_hh" + suffix] = convert(w_hh)
            if b_ih is not None:
                sd["bias_ih" + suffix] = convert(b_ih)
                sd["bias_hh" + suffix] = convert(b_hh)
    return sd


def _tensor(a):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "to_torch_state_dict(tensors=True) needs PyTorch (pip install torch); pass "
            "tensors=False for NumPy arrays."
        ) from e
    return torch.from_numpy(np.ascontiguousarray(a).copy())


def to_torch(model):
    """A ``torch.nn.GRU`` with ``model``'s weights (see ``to_torch_state_dict``); float64 models
    give a double module; time-major models give ``batch_first=False``."""
    import torch

    layers = _torch_layers(model)
    sd = to_torch_state_dict(model)
    first = layers[0][0][0]
    gru = torch.nn.GRU(first[0].shape[0], first[1].shape[0], num_layers=len(layers),
                       bias=first[2] is not None, batch_first=not layers[0][1],
                       bidirectional=len(layers[0][0]) == 2)
    if first[0].dtype == np.float64:
        gru = gru.double()
    gru.load_state_dict(sd)
    return gru
