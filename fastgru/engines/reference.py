"""The reference engine: plain NumPy, one step at a time, written to be read.

It is the oracle every other engine is tested against (run it in float64), and the path for
user-supplied Python activations. See ``engines/base.py`` for the contract; the maths is
KERAS_GRU_SPEC.md sections 1.2-1.3 (cell), 3.4 (masking) and 3.5 (dropout).
"""

from __future__ import annotations

import numpy as np

from .base import DropoutMasks, Gradients, GRUSpec, Tape, Weights

NAME = "reference"


def _split3(a):
    """Column blocks (z, r, h) of the last axis."""
    u = a.shape[-1] // 3
    return a[..., :u], a[..., u : 2 * u], a[..., 2 * u :]


def _gate_inputs(x_t, masks):
    """The step input seen by each gate (z, r, h), dropped out if masks are given."""
    if masks is None:
        return (x_t, x_t, x_t)
    if masks.ndim == 2:  # one mask shared by the three gates
        xd = x_t * masks
        return (xd, xd, xd)
    return tuple(x_t * masks[g] for g in range(3))


def _biases(weights: Weights, spec: GRUSpec, dtype):
    """(input bias (3u,), recurrent bias (3u,) or None) with zeros standing in for no bias."""
    u3 = 3 * spec.units
    if not spec.use_bias or weights.bias is None:
        return np.zeros(u3, dtype), (np.zeros(u3, dtype) if spec.reset_after else None)
    b = weights.bias
    if spec.reset_after:
        return b[0], b[1]
    return b, None


def _kept(a, m):
    """``a`` on unmasked rows, exact zeros on masked ones (even where ``a`` is NaN)."""
    return a if m is None else np.where(m, a, 0).astype(a.dtype, copy=False)


def _order(spec: GRUSpec, steps: int):
    return range(steps - 1, -1, -1) if spec.go_backwards else range(steps)


def forward(x, weights: Weights, h0, spec: GRUSpec, mask=None, dropout: DropoutMasks = None,
            training: bool = False):
    B, T, _ = x.shape
    u = spec.units
    dtype = x.dtype
    act, rec_act = spec.activation, spec.recurrent_activation
    W = _split3(weights.kernel)
    U = _split3(weights.recurrent_kernel)
    b_in, b_rec = _biases(weights, spec, dtype)
    bi = _split3(b_in)
    br = _split3(b_rec) if b_rec is not None else None
    mx = dropout.inputs if dropout is not None else None
    mh = dropout.recurrent if dropout is not None else None

    h = h0
    y = np.zeros((B, u), dtype)
    outs = np.empty((B, T, u), dtype) if spec.return_sequences else None
    rec = {"xg": [], "hg": [], "h": [], "pre": [], "rp_h": [], "q": []} if training else None

    for k, t in enumerate(_order(spec, T)):
        xg = _gate_inputs(x[:, t], mx)
        hg = (h, h, h) if mh is None else tuple(h * mh[g] for g in range(3))
        a_z = xg[0] @ W[0] + bi[0] + hg[0] @ U[0]
        a_r = xg[1] @ W[1] + bi[1] + hg[1] @ U[1]
        if spec.reset_after:
            a_z = a_z + br[0]
            a_r = a_r + br[1]
        z, r = rec_act(a_z), rec_act(a_r)
        if spec.reset_after:
            rp_h = hg[2] @ U[2] + br[2]
            q = None
            a_h = xg[2] @ W[2] + bi[2] + r * rp_h
        else:
            rp_h = None
            q = r * hg[2]
            a_h = xg[2] @ W[2] + bi[2] + q @ U[2]
        hh = act(a_h)
        o = z * h + (1 - z) * hh

        if mask is None:
            h_new, y = o, o
        else:
            m = mask[:, t : t + 1]
            h_new = np.where(m, o, h)
            y = np.where(m, o, 0 if spec.zero_output_for_mask else y)
        if training:
            rec["xg"].append(xg)
            rec["hg"].append(hg)
            rec["h"].append(h)
            rec["pre"].append((a_z, a_r, a_h))
            rec["rp_h"].append(rp_h)
            rec["q"].append(q)
        h = h_new
        if outs is not None:
            outs[:, k] = y

    outputs = outs if spec.return_sequences else (y.copy() if y is h else y)  # never aliased
    tape = None
    if training:
        saved = dict(rec, weights=weights, mask=mask, dropout=dropout, x_shape=x.shape)
        tape = Tape(NAME, spec, saved, batch=B, steps=T, dtype=dtype)
    return outputs, h, tape


def backward(tape: Tape, d_outputs=None, d_h_last=None) -> Gradients:
    """Backpropagation through time over the steps recorded in ``tape``."""
    spec, s = tape.spec, tape.saved
    B, T, D = s["x_shape"]
    u = spec.units
    dtype = tape.dtype
    weights, mask, dropout = s["weights"], s["mask"], s["dropout"]
    act, rec_act = spec.activation, spec.recurrent_activation
    W = _split3(weights.kernel)
    U = _split3(weights.recurrent_kernel)
    mx = dropout.inputs if dropout is not None else None
    mh = dropout.recurrent if dropout is not None else None

    dW = [np.zeros((D, u), dtype) for _ in range(3)]
    dU = [np.zeros((u, u), dtype) for _ in range(3)]
    db_in = [np.zeros(u, dtype) for _ in range(3)]
    db_rec = [np.zeros(u, dtype) for _ in range(3)]
    dx = np.zeros((B, T, D), dtype)

    gs = np.zeros((B, u), dtype) if d_h_last is None else np.array(d_h_last, dtype)
    gy = np.zeros((B, u), dtype)
    if d_outputs is not None and not spec.return_sequences:
        gy = np.array(d_outputs, dtype)

    order = list(_order(spec, T))
    for k in range(T - 1, -1, -1):
        t = order[k]
        if d_outputs is not None and spec.return_sequences:
            gy = gy + d_outputs[:, k]
        xg, hg, h = s["xg"][k], s["hg"][k], s["h"][k]
        a_z, a_r, a_h = s["pre"][k]
        z, r, hh = rec_act(a_z), rec_act(a_r), act(a_h)

        # Output and state selection under the mask (section 3.4). `where`, not a multiply,
        # so that NaN/Inf computed at masked steps cannot leak into the gradients.
        if mask is None:
            m = None
            do = gy + gs
            gy_prev = np.zeros_like(gy)
            gs_prev = np.zeros_like(gs)
        else:
            m = mask[:, t : t + 1]
            do = np.where(m, gy + gs, 0)
            gy_prev = np.zeros_like(gy) if spec.zero_output_for_mask else np.where(m, 0, gy)
            gs_prev = np.where(m, 0, gs)

        # o = z * h + (1 - z) * hh
        dh = z * do
        da_z = _kept((h - hh) * do * rec_act.derivative(a_z), m)
        da_h = _kept((1 - z) * do * act.derivative(a_h), m)
        if spec.reset_after:
            rp_h = s["rp_h"][k]
            da_r = _kept(da_h * rp_h * rec_act.derivative(a_r), m)
            d_rp = (da_z, da_r, _kept(da_h * r, m))
            for g in range(3):
                dU[g] += hg[g].T @ d_rp[g]
                db_rec[g] += d_rp[g].sum(axis=0)
                dhg = d_rp[g] @ U[g].T
                dh = dh + (dhg if mh is None else dhg * mh[g])
        else:
            q = _kept(s["q"][k], m)
            dq = da_h @ U[2].T
            dU[2] += q.T @ da_h
            da_r = _kept(dq * hg[2] * rec_act.derivative(a_r), m)
            dhg_h = _kept(dq * r, m)
            for g, da in ((0, da_z), (1, da_r)):
                dU[g] += hg[g].T @ da
                dhg = da @ U[g].T
                dh = dh + (dhg if mh is None else dhg * mh[g])
            dh = dh + (dhg_h if mh is None else dhg_h * mh[2])

        da_x = (da_z, da_r, da_h)
        dx_t = np.zeros((B, D), dtype)
        for g in range(3):
            xin = _kept(xg[g], m)
            dW[g] += xin.T @ da_x[g]
            db_in[g] += da_x[g].sum(axis=0)
            dxg = da_x[g] @ W[g].T
            if mx is None:
                dx_t += dxg
            else:
                dx_t += dxg * (mx if mx.ndim == 2 else mx[g])
        dx[:, t] = _kept(dx_t, m)

        gs = gs_prev + _kept(dh, m)
        gy = gy_prev

    kernel = np.concatenate(dW, axis=1)
    recurrent = np.concatenate(dU, axis=1)
    bias = None
    if spec.use_bias and weights.bias is not None:
        if spec.reset_after:
            bias = np.stack([np.concatenate(db_in), np.concatenate(db_rec)])
        else:
            bias = np.concatenate(db_in)
    return Gradients(dx, gs, kernel, recurrent, bias)
