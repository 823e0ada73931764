"""The engine contract: what every engine takes and returns.

One GRU layer (one cell over one sequence) per call::

    forward(x, weights, h0, spec, mask=None, dropout=None, training=False)
        -> (outputs, h_last, tape)      # tape is None unless training
    backward(tape, d_outputs, d_h_last=None) -> Gradients

Shapes (B batch, T steps, D features, u units); all arrays share one floating dtype, which is
the compute dtype (float32 or float64):

- ``x``: (B, T, D), batch-major, any strides. Time-major and stacking are the front end's job.
- ``weights``: :class:`Weights` in Keras layout and gate order (z, r, h).
- ``h0``: (B, u).
- ``mask``: None or bool (B, T) in *input* time order (True = use the step).
- ``dropout``: None or :class:`DropoutMasks` (already scaled by 1/(1-rate)).
- ``outputs``: (B, T, u) in *processing* order when ``spec.return_sequences``, else (B, u),
  following the Keras masking rule (KERAS_GRU_SPEC.md section 3.4); ``h_last``: (B, u), the
  carried state after the last processed step.
- ``d_outputs`` has the shape of ``outputs`` (None = zeros); ``d_h_last`` (B, u) or None.

Masked positions never poison results: NaN/Inf in masked inputs leave outputs and gradients
finite.

Optional, for inference snapshots (``RNN.freeze``): ``Snapshot(weights, spec, *, n_threads=None)``
copies the weights once and has ``forward(x, h0=None, mask=None) -> (outputs, h_last)`` with the
same results as ``forward`` in inference (the CPU engine has one; others are called through
``forward`` on copied weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..activations import Activation


@dataclass(frozen=True)
class GRUSpec:
    """Static configuration of one GRU layer call."""

    units: int
    activation: Activation
    recurrent_activation: Activation
    reset_after: bool = True
    use_bias: bool = True
    go_backwards: bool = False
    return_sequences: bool = False
    zero_output_for_mask: bool = False

    def __post_init__(self):
        # a NumPy integer (np.int8(100)) would wrap in the engines' size arithmetic: a Python
        # int from here on; anything else is the engines' to refuse
        u = self.units
        if type(u) is not int and isinstance(u, np.integer):
            object.__setattr__(self, "units", int(u))


class Weights(NamedTuple):
    """Keras layout: kernel (D, 3u), recurrent_kernel (u, 3u), bias (2, 3u) when reset_after
    else (3u,), or None without bias."""

    kernel: Any
    recurrent_kernel: Any
    bias: Any = None


@dataclass(frozen=True)
class DropoutMasks:
    """Keep-masks already scaled by 1/(1-rate); each entry multiplies a step input or state.

    ``inputs``: None, (B, D) shared by the three gates (Keras implementation 2), or (3, B, D)
    one per gate z, r, h (implementation 1). ``recurrent``: None or (3, B, u), one per gate;
    only the gate projections see the dropped state, the final mix uses the undropped one.
    The same masks apply at every timestep.
    """

    inputs: Any = None
    recurrent: Any = None

    @property
    def empty(self) -> bool:
        return self.inputs is None and self.recurrent is None


class Gradients(NamedTuple):
    """Engine-level gradients, Keras layout: x (B, T, D), h0 (B, u), kernel, recurrent_kernel,
    bias (None without bias)."""

    x: Any
    h0: Any
    kernel: Any
    recurrent_kernel: Any
    bias: Any


@dataclass
class Tape:
    """What a training forward leaves for backward. ``engine`` names the module whose
    ``backward`` consumes it; ``saved`` is that engine's own record (opaque to everyone else).
    """

    engine: str
    spec: GRUSpec
    saved: dict = field(default_factory=dict)
    # Shapes the backward needs to validate d_outputs / d_h_last without touching ``saved``.
    batch: int = 0
    steps: int = 0
    dtype: Any | None = None
