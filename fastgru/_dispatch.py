"""Which engine runs a GRU call, and why (DESIGN.md "Paths").

- NumPy input: ``engines.cpu`` when its compiled extension is built and it supports the spec;
  otherwise ``engines.reference`` (user Python activations always go there).
- CuPy input: ``engines.cudnn`` when ``cudnn.eligible(spec, mask, dropout)`` holds and
  ``use_cudnn`` is not False; otherwise ``engines.xp``. ``use_cudnn=True`` with an ineligible
  configuration raises, naming the rule that failed; with NumPy input it always raises
  (KERAS_GRU_SPEC.md 0.8).

Engine modules are imported lazily; a missing or broken one falls back (with the reason), so
the layers work with nothing compiled. Without ``engines.xp``, CuPy input runs the reference
engine through an explicit host round trip.
"""

from __future__ import annotations

import importlib
import types

from .engines import reference
from .engines.base import DropoutMasks, GRUSpec

__all__ = ["choose", "engine_kwargs", "load", "zeros_as_none", "CUDNN_REFUSED"]

CUDNN_REFUSED = (
    "use_cudnn=True was specified, but cuDNN is not supported for this layer configuration "
    "with this backend. Pass use_cudnn='auto' to fallback to a non-cuDNN implementation."
)

_cache: dict = {}

#: Let the CPU engine cache its packed recurrent kernel by Variable version (10-25% faster
#: small-batch calls). Safe with in-place edits that skip ``bump()``: the engine compares the kernel
#: with the bytes it was packed from on every hit.
CPU_WEIGHTS_KEY = True


def load(name: str):
    """``(module, None)`` for ``fastgru.engines.<name>``, or ``(None, why)`` if it cannot be
    imported (cached)."""
    if name not in _cache:
        try:
            _cache[name] = (importlib.import_module(f"fastgru.engines.{name}"), None)
        except Exception as e:  # ImportError, or a broken build raising anything at import
            _cache[name] = (None, f"{type(e).__name__}: {e}")
    return _cache[name]


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _to_host(a):
    if a is None:
        return None
    if isinstance(a, DropoutMasks):
        return DropoutMasks(_to_host(a.inputs), _to_host(a.recurrent))
    if isinstance(a, tuple) and hasattr(a, "_fields"):  # Weights / Gradients
        return type(a)(*(_to_host(v) for v in a))
    return a.get() if _is_cupy(a) else a


def _to_device(a):
    import cupy

    if a is None:
        return None
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(_to_device(v) for v in a))
    return cupy.asarray(a)


def _host_reference() -> types.ModuleType:
    """The reference engine on CuPy arrays, by copying to the host and back (slow; only when
    ``engines.xp`` is unavailable)."""
    mod = types.ModuleType("fastgru.engines.reference_host")
    mod.NAME = "reference (host copy)"

    def forward(x, weights, h0, spec, mask=None, dropout=None, training=False):
        out, h, tape = reference.forward(_to_host(x), _to_host(weights), _to_host(h0), spec,
                                         mask=_to_host(mask), dropout=_to_host(dropout),
                                         training=training)
        return _to_device(out), _to_device(h), tape

    def backward(tape, d_outputs=None, d_h_last=None):
        return _to_device(reference.backward(tape, _to_host(d_outputs), _to_host(d_h_last)))

    mod.forward, mod.backward = forward, backward
    return mod


_HOST_REFERENCE = _host_reference()


def _activation_problem(spec: GRUSpec):
    for arg, act in (("activation", spec.activation),
                     ("recurrent_activation", spec.recurrent_activation)):
        if not act.is_builtin:
            return f"`{arg}` is a user-supplied Python callable ({act._fn!r})"
    return None


def _choose_host(spec: GRUSpec):
    """``(engine, reason)`` for NumPy input: it depends only on the two activations and the
    CPU engine module, so choose() keeps the answer per such triple."""
    problem = _activation_problem(spec)
    if problem:
        return reference, f"{problem}, which only the reference engine can run"
    cpu, err = load("cpu")
    if cpu is None:
        return reference, f"the compiled CPU engine could not be imported ({err})"
    if not cpu.available():
        return reference, "the compiled CPU extension is not built"
    supports = getattr(cpu, "supports", None)
    verdict = supports(spec) if supports is not None else True
    ok, why = verdict if isinstance(verdict, tuple) else (bool(verdict), None)
    if not ok:
        return reference, ("the compiled CPU engine does not support this configuration"
                           + (f" ({why})" if why else ""))
    return cpu, "NumPy input and the compiled CPU kernels support this configuration"


_host_choice: dict = {}  # (activation, recurrent_activation, cpu module) -> choice


def choose(spec: GRUSpec, x, mask=None, dropout: DropoutMasks | None = None,
           use_cudnn="auto", *, blockers=()):
    """``(engine_module, reason)`` for one layer call.

    ``blockers``: cuDNN rules the layer configuration already fails (e.g. ``"unroll=True"``,
    ``"recurrent_dropout > 0"``), checked before the engine's own ``eligible``.
    """
    if use_cudnn not in ("auto", True, False):
        raise ValueError(
            "Invalid valid received for argument `use_cudnn`. Expected one of "
            f"{{'auto', True, False}}. Received: use_cudnn={use_cudnn}"
        )
    if not _is_cupy(x):
        if use_cudnn is True:
            raise ValueError(
                f"{CUDNN_REFUSED} (cuDNN runs on CuPy arrays only; the input is a NumPy "
                "array, so pass a CuPy array or use_cudnn='auto'.)"
            )
        # keyed by the CPU engine module too: a different one (tests install stand-ins)
        # answers afresh
        key = (spec.activation, spec.recurrent_activation, load("cpu")[0])
        choice = _host_choice.get(key)
        if choice is None:
            choice = _choose_host(spec)
            if len(_host_choice) >= 64:
                _host_choice.clear()
            _host_choice[key] = choice
        return choice

    # CuPy input
    why_not = None
    if use_cudnn == False:  # noqa: E712 - Keras accepts 0 like False (membership by ==)
        why_not = "use_cudnn=False"
    elif blockers:
        why_not = "; ".join(blockers)
    else:
        cudnn, err = load("cudnn")
        if cudnn is None:
            why_not = f"the cuDNN engine could not be imported ({err})"
        else:
            ok, reason = cudnn.eligible(spec, mask, dropout)
            if ok:
                return cudnn, "CuPy input and the configuration meets the cuDNN rules"
            why_not = reason
    if use_cudnn is True:
        raise ValueError(f"{CUDNN_REFUSED} Failed rule: {why_not}.")
    problem = _activation_problem(spec)
    xp_engine, err = load("xp")
    if xp_engine is None or problem:
        cause = problem or f"the xp engine could not be imported ({err})"
        return _HOST_REFERENCE, f"cuDNN not used ({why_not}); {cause}: reference engine via host"
    return xp_engine, f"CuPy input, cuDNN not used ({why_not})"


def engine_kwargs(engine, n_threads=None, weights_key=None, backward=False) -> dict:
    """Extra keywords for an engine call: ``n_threads`` for the CPU engine only; the CPU and
    cuDNN forwards take ``weights_key`` (the Variables' (uid, version)) to reuse their packed
    weights across calls."""
    name = getattr(engine, "__name__", "")
    if name == "fastgru.engines.cpu":
        if backward or weights_key is None or not CPU_WEIGHTS_KEY:
            return {"n_threads": n_threads}
        return {"n_threads": n_threads, "weights_key": weights_key}
    if name == "fastgru.engines.cudnn" and not backward and weights_key is not None:
        return {"weights_key": weights_key}
    return {}


def zeros_as_none(engine) -> bool:
    """Whether ``engine.forward`` takes ``h0=None`` for a zero initial state (engines that
    say so with ``H0_NONE_IS_ZEROS``, the CPU engine: no zeros array to make and check on every
    call)."""
    return getattr(engine, "H0_NONE_IS_ZEROS", False) is True


def describe(engine, reason: str, spec: GRUSpec, x, n_threads=None) -> str:
    """One sentence naming the engine and why (plus the CPU kernel's own description)."""
    name = getattr(engine, "NAME", None) or engine.__name__.rsplit(".", 1)[-1]
    text = f"engine '{name}': {reason}"
    kernel = getattr(engine, "describe_kernel", None)
    if kernel is not None:
        text += (f"; {kernel(spec, tuple(x.shape), n_threads=n_threads, dtype=x.dtype)}"
                 .rstrip("."))
    return text + "."
