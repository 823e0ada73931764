"""Sequence glue around cuDNN's padded RNN calls, as array-module-generic gathers.

cuDNN runs each row b over its first ``L[b]`` steps (right padding, lengths >= 1) and
zero-fills outputs after them. The engine contract wants Keras's generic-loop semantics
(KERAS_GRU_SPEC.md 3.3-3.4, CUDNN_NOTES.md section 3), which these functions produce:

* forward direction: padded steps repeat the last emitted output (zeros with
  ``zero_output_for_mask``);
* ``go_backwards``: each row is reversed within its length before cuDNN; in processing order
  the first ``T - L`` outputs are zeros, then cuDNN's outputs;
* rows with ``L == 0`` (fully masked) run with length 1 on zero input and are then overridden:
  outputs 0, final state = h0, no gradient into the weights;
* BIDIRECTIONAL: the backward half of cuDNN's output is time-aligned; :func:`reverse_within_length`
  turns it into the go_backwards layer's processing order, after which the same gathers apply.

``L`` is a device int array (B,); ``t`` indexes the padded time axis. Each backward function
is the transpose of its forward gather.
"""

from __future__ import annotations


def mask_lengths(xp, mask):
    """(lengths (B,) int32 on the host, per-row right-padded flags (B,) bool on the host).

    One reduction on the device and one device -> host copy."""
    m = xp.asarray(mask).astype(bool, copy=False)
    B, T = m.shape
    L = m.sum(axis=1, dtype=xp.int32)
    ok = (m == (xp.arange(T)[None, :] < L[:, None])).all(axis=1)
    both = xp.stack([L, ok.astype(xp.int32)])
    if hasattr(both, "get"):
        both = both.get()
    return both[0].astype("int32"), both[1].astype(bool)


def _t(xp, T):
    return xp.arange(T)[None, :]


def _take_t(xp, a, src):
    """a[b, src[b, t], :] for a (B, T, F) and src (B, T)."""
    return xp.take_along_axis(a, src[:, :, None], axis=1)


def input_gather(xp, x, L, go_backwards: bool):
    """cuDNN's input (B, T, D): x in processing order within each row's length, 0 beyond it.

    ``L`` None means no mask (all rows full length)."""
    T = x.shape[1]
    if L is None:
        return xp.ascontiguousarray(x[:, ::-1] if go_backwards else x)
    t = _t(xp, T)
    keep = (t < L[:, None])[:, :, None]
    if go_backwards:
        x = _take_t(xp, x, xp.clip(L[:, None] - 1 - t, 0, T - 1))
    return xp.ascontiguousarray(xp.where(keep, x, 0).astype(x.dtype, copy=False))


def input_gather_backward(xp, dx_c, L, go_backwards: bool):
    """d loss / d x from cuDNN's dx (the within-length reversal is its own transpose)."""
    return input_gather(xp, dx_c, L, go_backwards)


def _last_source(xp, L, T, go_backwards, zero_output_for_mask):
    """(source step of the last output (B,), whether the last output is nonzero (B,))."""
    src = xp.clip(L - 1, 0, T - 1)
    live = L > 0
    if zero_output_for_mask and not go_backwards:
        live = L == T  # the last processed step is masked unless the row is full
    return src, live


def outputs(xp, y_c, hy, h0, L, spec):
    """(outputs as the contract wants, h_last) from cuDNN's y (B, T, u) and hy (B, u)."""
    B, T, u = y_c.shape
    if L is None:
        return (y_c if spec.return_sequences else y_c[:, -1]), hy
    Lc = L[:, None]
    h_last = xp.where(Lc > 0, hy, h0).astype(hy.dtype, copy=False)
    if not spec.return_sequences:
        src, live = _last_source(xp, L, T, spec.go_backwards, spec.zero_output_for_mask)
        last = y_c[xp.arange(B), src]
        return xp.where(live[:, None], last, 0).astype(y_c.dtype, copy=False), h_last
    t = _t(xp, T)
    if spec.go_backwards:
        keep = t >= T - Lc
        out = _take_t(xp, y_c, xp.clip(t - (T - Lc), 0, T - 1))
    elif spec.zero_output_for_mask:
        keep, out = t < Lc, y_c
    else:
        keep = xp.broadcast_to(Lc > 0, (B, T))
        out = _take_t(xp, y_c, xp.clip(xp.minimum(t, Lc - 1), 0, T - 1))
    return xp.where(keep[:, :, None], out, 0).astype(y_c.dtype, copy=False), h_last


def outputs_backward(xp, d_out, d_h_last, L, spec, shape, dtype):
    """(dy for cuDNN (B, T, u), dhy for cuDNN (B, u), the part of dh0 that bypasses cuDNN).

    ``d_out``/``d_h_last`` may be None (zeros)."""
    B, T, u = shape
    dhy = xp.zeros((B, u), dtype) if d_h_last is None else xp.asarray(d_h_last, dtype)
    dh0_direct = None
    if L is not None:
        dead = (L == 0)[:, None]
        dh0_direct = xp.where(dead, dhy, 0).astype(dtype, copy=False)
        dhy = xp.where(dead, 0, dhy).astype(dtype, copy=False)
    if d_out is None:
        return xp.zeros(shape, dtype), dhy, dh0_direct
    d_out = xp.asarray(d_out, dtype)
    if L is None:
        if spec.return_sequences:
            return xp.ascontiguousarray(d_out), dhy, None
        dy = xp.zeros(shape, dtype)
        dy[:, -1] = d_out
        return dy, dhy, None
    t = _t(xp, T)
    Lc = L[:, None]
    if not spec.return_sequences:
        src, live = _last_source(xp, L, T, spec.go_backwards, spec.zero_output_for_mask)
        at = (t == src[:, None]) & live[:, None]
        dy = xp.where(at[:, :, None], d_out[:, None, :], 0)
    elif spec.go_backwards:
        src = xp.clip(t + (T - Lc), 0, T - 1)
        dy = xp.where((t < Lc)[:, :, None], _take_t(xp, d_out, src), 0)
    elif spec.zero_output_for_mask:
        dy = xp.where((t < Lc)[:, :, None], d_out, 0)
    else:
        # out[b, t] = y[b, min(t, L-1)]: step L-1 collects the gradient of every t >= L-1.
        tail = xp.cumsum(d_out[:, ::-1], axis=1)[:, ::-1]
        dy = xp.where((t < Lc - 1)[:, :, None], d_out,
                      xp.where((t == Lc - 1)[:, :, None], tail, 0))
    return xp.ascontiguousarray(dy.astype(dtype, copy=False)), dhy, dh0_direct


def reverse_within_length(xp, a, L):
    """``a[b, L-1-t]`` for t < L, 0 beyond (a plain time flip when ``L`` is None); its own
    transpose.

    Converts cuDNN's BIDIRECTIONAL backward half (time-aligned: the value at input step t is
    the state after the reverse pass has read steps L-1 .. t) into what a unidirectional run
    over the row reversed within its length emits at processing step t, and back."""
    return input_gather(xp, a, L, True)
