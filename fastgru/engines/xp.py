"""The array-module-generic engine: vectorised per step, NumPy or CuPy (``xp`` from the input).

Every config the reference engine accepts with a builtin activation runs here: both
``reset_after`` variants, any mask, go_backwards, input/recurrent dropout masks,
``zero_output_for_mask``, ``return_sequences``. Work per call:

* one GEMM projects the inputs of all steps, ``(T*B, D) @ kernel`` (three with per-gate input
  dropout), into a time-major (T, B, 3u) buffer in processing order;
* per step one GEMM ``h @ recurrent_kernel`` (reset_after=False: two, the second on ``r*h``),
  then the gate math: on CuPy with tanh/sigmoid one fused elementwise kernel, otherwise array
  expressions with the activations of :mod:`fastgru.activations` (which dispatch to CuPy);
* backward: per step one GEMM for ``dh``; the weight and input gradients are a few large GEMMs
  over all steps after the loop.

Tape (training only), all (T, B, u) in processing order: the state entering each step, the
gates z, r, candidate hh, the reset-after recurrent projection ``h@Uh + b`` (reset_after) and,
for activations whose derivative does not follow from their output (anything but
sigmoid/tanh), the derivatives at the pre-activations. ``x`` and the masks are kept by
reference; backward rebuilds the time-major input it needs.

Masked positions of ``x`` are replaced by 0 before the projection, and gradients at masked
steps are selected with ``where``, so NaN/Inf in masked inputs cannot reach any result.
"""

from __future__ import annotations

from .._array import get_array_module
from .base import DropoutMasks, Gradients, GRUSpec, Tape, Weights

NAME = "xp"

# ---------------------------------------------------------------------------------------------
# Fused CuPy kernels (tanh / sigmoid only). The operations are written in the subset of C that
# is also Python once the leading "T " declarations and ";" are dropped, so the CPU tests can
# run the same strings (tests/test_engine_xp.py emulates ElementwiseKernel with NumPy).

_SIG = "1 / (1 + exp(-({})))"

_KERNEL_SOURCES = {
    # reset_after=True: p* input projections (+ biases), g* = h @ U slices, bh = recurrent bias h.
    "fwd_after": (
        "T pz, T pr, T ph, T gz, T gr, T gh, T bh, T h",
        "T z, T r, T hh, T rp, T o",
        "z = " + _SIG.format("pz + gz") + ";\n"
        "r = " + _SIG.format("pr + gr") + ";\n"
        "rp = gh + bh;\n"
        "hh = tanh(ph + r * rp);\n"
        "o = hh + z * (h - hh);\n",
    ),
    # reset_after=False, before the second GEMM: z, r and q = r * h (h dropped out if needed).
    "fwd_before_zr": (
        "T pz, T pr, T gz, T gr, T hq",
        "T z, T r, T q",
        "z = " + _SIG.format("pz + gz") + ";\n"
        "r = " + _SIG.format("pr + gr") + ";\n"
        "q = r * hq;\n",
    ),
    # reset_after=False, after the second GEMM gq = q @ Uh.
    "fwd_before_h": (
        "T ph, T gq, T h, T z",
        "T hh, T o",
        "hh = tanh(ph + gq);\no = hh + z * (h - hh);\n",
    ),
    # reset_after=True backward; g = d loss / d o at this step.
    "bwd_after": (
        "T g, T z, T r, T hh, T rp, T h",
        "T daz, T dar, T dah, T drh, T dhd",
        "T dah_ = (1 - z) * g * (1 - hh * hh);\n"
        "daz = (h - hh) * g * z * (1 - z);\n"
        "dah = dah_;\n"
        "dar = dah_ * rp * r * (1 - r);\n"
        "drh = dah_ * r;\n"
        "dhd = z * g;\n",
    ),
    # reset_after=False backward, before dq = dah @ Uh^T.
    "bwd_before_zh": (
        "T g, T z, T hh, T h",
        "T daz, T dah, T dhd",
        "daz = (h - hh) * g * z * (1 - z);\n"
        "dah = (1 - z) * g * (1 - hh * hh);\n"
        "dhd = z * g;\n",
    ),
    # reset_after=False backward, after dq.
    "bwd_before_r": (
        "T dq, T hq, T r",
        "T dar, T dhq",
        "dar = dq * hq * r * (1 - r);\ndhq = dq * r;\n",
    ),
}


def _factory(xp):
    """The ElementwiseKernel constructor for ``xp`` (None: no fused kernels on this module)."""
    if xp.__name__ == "cupy":
        return xp.ElementwiseKernel
    return None


_kernel_cache: dict = {}


def _kernels(xp, spec: GRUSpec):
    """Fused kernels for tanh/sigmoid on CuPy (created once per factory), else None."""
    if spec.activation.name != "tanh" or spec.recurrent_activation.name != "sigmoid":
        return None
    make = _factory(xp)
    if make is None:
        return None
    ks = _kernel_cache.get(make)
    if ks is None:
        ks = {name: make(i, o, op, "fastgru_gru_" + name)
              for name, (i, o, op) in _KERNEL_SOURCES.items()}
        _kernel_cache[make] = ks
    return ks


# ---------------------------------------------------------------------------------------------
# Helpers


def _check(x, weights: Weights, h0, spec: GRUSpec, mask, dropout):
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"x must be a 3-D (batch, timesteps, features) array, got shape "
                         f"{getattr(x, 'shape', None)}")
    B, T, D = x.shape
    u = spec.units
    if tuple(weights.kernel.shape) != (D, 3 * u):
        raise ValueError(f"kernel must have shape {(D, 3 * u)}, got {tuple(weights.kernel.shape)}")
    if tuple(weights.recurrent_kernel.shape) != (u, 3 * u):
        raise ValueError(f"recurrent_kernel must have shape {(u, 3 * u)}, got "
                         f"{tuple(weights.recurrent_kernel.shape)}")
    if spec.use_bias and weights.bias is not None:
        want = (2, 3 * u) if spec.reset_after else (3 * u,)
        if tuple(weights.bias.shape) != want:
            raise ValueError(f"bias must have shape {want}, got {tuple(weights.bias.shape)}")
    if tuple(h0.shape) != (B, u):
        raise ValueError(f"h0 must have shape {(B, u)}, got {tuple(h0.shape)}")
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must have shape {(B, T)}, got {tuple(mask.shape)}")
    if dropout is not None:
        mx, mh = dropout.inputs, dropout.recurrent
        if mx is not None and tuple(mx.shape) not in ((B, D), (3, B, D)):
            raise ValueError(f"dropout.inputs must have shape {(B, D)} or {(3, B, D)}, got "
                             f"{tuple(mx.shape)}")
        if mh is not None and tuple(mh.shape) != (3, B, u):
            raise ValueError(f"dropout.recurrent must have shape {(3, B, u)}, got "
                             f"{tuple(mh.shape)}")


def check_upstream(spec: GRUSpec, B: int, T: int, d_outputs, d_h_last) -> None:
    """ValueError unless d_outputs / d_h_last (each may be None) match the forward's outputs."""
    u = spec.units
    want = (B, T, u) if spec.return_sequences else (B, u)
    if d_outputs is not None and tuple(d_outputs.shape) != want:
        raise ValueError(f"d_outputs must have shape {want}, got {tuple(d_outputs.shape)}")
    if d_h_last is not None and tuple(d_h_last.shape) != (B, u):
        raise ValueError(f"d_h_last must have shape {(B, u)}, got {tuple(d_h_last.shape)}")


def _masks(xp, dropout, dt):
    """(input mask, recurrent mask) in the compute dtype (a float64 mask must not promote
    float32 activations), None where absent."""
    if dropout is None:
        return None, None
    return tuple(None if m is None else xp.asarray(m).astype(dt, copy=False)
                 for m in (dropout.inputs, dropout.recurrent))


def _biases(xp, weights: Weights, spec: GRUSpec):
    """(input bias (3u,) or None, recurrent bias (3u,) or None)."""
    if not spec.use_bias or weights.bias is None:
        return None, None
    if spec.reset_after:
        return weights.bias[0], weights.bias[1]
    return weights.bias, None


def _time_major(xp, x, mask_pm, go_backwards):
    """x as a C-contiguous (T, B, D) array in processing order, masked steps set to 0."""
    xs = (x[:, ::-1] if go_backwards else x).transpose(1, 0, 2)
    if mask_pm is not None:
        return xp.where(mask_pm[:, :, None], xs, 0).astype(x.dtype, copy=False)
    return xp.ascontiguousarray(xs)


def _mask_pm(xp, mask, go_backwards):
    """Mask as a (T, B) bool array in processing order, or None when it masks nothing (NumPy;
    on CuPy this check would cost a device sync, so the mask is kept)."""
    if mask is None:
        return None
    m = xp.asarray(mask).astype(bool, copy=False)
    m = xp.ascontiguousarray((m[:, ::-1] if go_backwards else m).T)
    if xp.__name__ == "numpy" and m.all():
        return None
    return m


def _input_projection(xp, X, K, mx, b_in):
    """P (T, B, 3u) = dropped-out X @ K + b_in."""
    T, B, D = X.shape
    u3 = K.shape[1]
    u = u3 // 3
    if mx is None or mx.ndim == 2:
        Xin = X if mx is None else X * mx
        P = (Xin.reshape(T * B, D) @ K).reshape(T, B, u3)
    else:  # one mask per gate
        P = xp.empty((T, B, u3), X.dtype)
        for g in range(3):
            P[:, :, g * u:(g + 1) * u] = ((X * mx[g]).reshape(T * B, D)
                                          @ K[:, g * u:(g + 1) * u]).reshape(T, B, u)
    if b_in is not None:
        P += b_in
    return P


# ---------------------------------------------------------------------------------------------
# Forward


def forward(x, weights: Weights, h0, spec: GRUSpec, mask=None, dropout: DropoutMasks = None,
            training: bool = False):
    """See :mod:`fastgru.engines.base`. Returns ``(outputs, h_last, tape | None)``."""
    _check(x, weights, h0, spec, mask, dropout)
    xp = get_array_module(x, h0, weights.kernel)
    B, T, D = x.shape
    u = spec.units
    dt = x.dtype
    K, U = weights.kernel, weights.recurrent_kernel
    b_in, b_rec = _biases(xp, weights, spec)
    mx, mh = _masks(xp, dropout, dt)
    act, rec_act = spec.activation, spec.recurrent_activation
    ks = _kernels(xp, spec)
    generic_rec = rec_act.name != "sigmoid"
    generic_act = act.name != "tanh"

    m_pm = _mask_pm(xp, mask, spec.go_backwards)
    X = _time_major(xp, x, m_pm, spec.go_backwards)
    P = _input_projection(xp, X, K, mx, b_in)
    if spec.reset_after and b_rec is not None:
        P[:, :, : 2 * u] += b_rec[: 2 * u]  # z, r recurrent biases fold into the projection
    bh = b_rec[2 * u:] if b_rec is not None else xp.zeros(u, dt)

    # Per-step storage: the tape arrays when training, else one reusable scratch step.
    n = T if training else 1
    Hs = xp.empty((T, B, u), dt) if training else None
    Z, R, HH = (xp.empty((n, B, u), dt) for _ in range(3))
    RP = xp.empty((n, B, u), dt) if spec.reset_after else None
    DZ = DR = DH = None
    if training and generic_rec:
        DZ, DR = xp.empty((T, B, u), dt), xp.empty((T, B, u), dt)
    if training and generic_act:
        DH = xp.empty((T, B, u), dt)

    ncols = 3 * u if spec.reset_after else 2 * u
    G = xp.empty((B, ncols), dt)
    Uzr = U[:, : 2 * u]
    Uh = U[:, 2 * u:]
    outs = xp.empty((B, T, u), dt) if spec.return_sequences else None
    h = xp.asarray(h0, dt)
    y = xp.zeros((B, u), dt) if m_pm is not None else None

    for k in range(T):
        s = k if training else 0
        if training:
            Hs[k] = h
        # recurrent GEMM(s) for z, r (and h when reset_after)
        if mh is None:
            xp.matmul(h, U if spec.reset_after else Uzr, out=G)
        else:
            for g in range(ncols // u):
                G[:, g * u:(g + 1) * u] = (h * mh[g]) @ U[:, g * u:(g + 1) * u]
        Pk = P[k]
        pz, pr, ph = Pk[:, :u], Pk[:, u:2 * u], Pk[:, 2 * u:]
        gz, gr = G[:, :u], G[:, u:2 * u]
        z, r, hh = Z[s], R[s], HH[s]
        if spec.reset_after:
            rp = RP[s]
            if ks is not None:
                o = xp.empty((B, u), dt)
                ks["fwd_after"](pz, pr, ph, gz, gr, G[:, 2 * u:], bh, h, z, r, hh, rp, o)
            else:
                a_z, a_r = pz + gz, pr + gr
                z[...] = rec_act(a_z)
                r[...] = rec_act(a_r)
                rp[...] = G[:, 2 * u:] + bh
                a_h = ph + r * rp
                hh[...] = act(a_h)
                o = hh + z * (h - hh)
        else:
            hq = h if mh is None else h * mh[2]
            if ks is not None:
                q = xp.empty((B, u), dt)
                ks["fwd_before_zr"](pz, pr, gz, gr, hq, z, r, q)
                gq = q @ Uh
                o = xp.empty((B, u), dt)
                ks["fwd_before_h"](ph, gq, h, z, hh, o)
            else:
                a_z, a_r = pz + gz, pr + gr
                z[...] = rec_act(a_z)
                r[...] = rec_act(a_r)
                a_h = ph + (r * hq) @ Uh
                hh[...] = act(a_h)
                o = hh + z * (h - hh)
        if DZ is not None:
            DZ[k] = rec_act.derivative(a_z)
            DR[k] = rec_act.derivative(a_r)
        if DH is not None:
            DH[k] = act.derivative(a_h)

        if m_pm is None:
            h = o
            y = o
        else:
            m = m_pm[k][:, None]
            h = xp.where(m, o, h)
            y = xp.where(m, o, 0 if spec.zero_output_for_mask else y).astype(dt, copy=False)
        if outs is not None:
            outs[:, k] = y

    if T == 0:
        y = xp.zeros((B, u), dt)
    # without a mask the last output is the state itself: a copy, so that editing one never
    # changes the other (the cpu engine returns two arrays too)
    outputs = outs if spec.return_sequences else (y.copy() if y is h else y)
    tape = None
    if training:
        saved = dict(x=x, mask_pm=m_pm, weights=weights, dropout=dropout, Hs=Hs, Z=Z, R=R,
                     HH=HH, RP=RP, DZ=DZ, DR=DR, DH=DH)
        tape = Tape(NAME, spec, saved, batch=B, steps=T, dtype=dt)
    return outputs, h, tape


# ---------------------------------------------------------------------------------------------
# Backward


def backward(tape: Tape, d_outputs=None, d_h_last=None) -> Gradients:
    """Backpropagation through time over ``tape`` (from :func:`forward` with training=True)."""
    if tape.engine != NAME:
        raise ValueError(f"tape was recorded by engine {tape.engine!r}, not {NAME!r}")
    spec, s = tape.spec, tape.saved
    x, m_pm, weights, dropout = s["x"], s["mask_pm"], s["weights"], s["dropout"]
    xp = get_array_module(x, weights.kernel)
    B, T, D = x.shape
    u = spec.units
    dt = tape.dtype
    K, U = weights.kernel, weights.recurrent_kernel
    Uzr, Uh = U[:, : 2 * u], U[:, 2 * u:]
    mx, mh = _masks(xp, dropout, dt)
    ks = _kernels(xp, spec)
    Hs, Z, R, HH, RP = s["Hs"], s["Z"], s["R"], s["HH"], s["RP"]
    DZ, DR_, DH = s["DZ"], s["DR"], s["DH"]

    check_upstream(spec, B, T, d_outputs, d_h_last)

    # DA: d loss / d gate pre-activations (z, r, h) per step = the input-projection gradient.
    # reset_after: DRP holds (da_z, da_r, da_h * r), the gradient of h@U + b_rec; its h block is
    # replaced by da_h after the weight gradients of U are taken, turning it into DA.
    DA = xp.empty((T, B, 3 * u), dt)
    DAh = xp.empty((T, B, u), dt) if spec.reset_after else None
    gs = xp.zeros((B, u), dt) if d_h_last is None else xp.array(d_h_last, dt)
    gy = None
    if d_outputs is not None:
        d_outputs = xp.asarray(d_outputs, dt)  # the tape's dtype (a float64 one promoted dh0)
        if not spec.return_sequences:
            gy = d_outputs

    for k in range(T - 1, -1, -1):
        if d_outputs is not None and spec.return_sequences:
            gy = d_outputs[:, k] if gy is None else gy + d_outputs[:, k]
        g = gs if gy is None else gs + gy
        m = None
        if m_pm is not None:
            m = m_pm[k][:, None]
            g = xp.where(m, g, 0).astype(dt, copy=False)
        h, z, r, hh = Hs[k], Z[k], R[k], HH[k]
        Dk = DA[k]
        daz, dar, dah = Dk[:, :u], Dk[:, u:2 * u], Dk[:, 2 * u:]

        if spec.reset_after:
            rp = RP[k]
            dahk = DAh[k]
            if ks is not None:
                dhd = xp.empty((B, u), dt)
                ks["bwd_after"](g, z, r, hh, rp, h, daz, dar, dahk, dah, dhd)
            else:
                dzp = z * (1 - z) if DZ is None else DZ[k]
                drp = r * (1 - r) if DR_ is None else DR_[k]
                dhp = 1 - hh * hh if DH is None else DH[k]
                dahk[...] = (1 - z) * g * dhp
                daz[...] = (h - hh) * g * dzp
                dar[...] = dahk * rp * drp
                dah[...] = dahk * r
                dhd = z * g
            if m is not None:
                Dk[...] = xp.where(m, Dk, 0)
                dahk[...] = xp.where(m, dahk, 0)
            if mh is None:
                dh = dhd + Dk @ U.T
            else:
                dh = dhd
                for gi in range(3):
                    sl = slice(gi * u, (gi + 1) * u)
                    dh = dh + (Dk[:, sl] @ U[:, sl].T) * mh[gi]
        else:
            hq = h if mh is None else h * mh[2]
            if ks is not None:
                dhd = xp.empty((B, u), dt)
                ks["bwd_before_zh"](g, z, hh, h, daz, dah, dhd)
                if m is not None:
                    Dk[...] = xp.where(m, Dk, 0)
                dq = dah @ Uh.T
                dhq = xp.empty((B, u), dt)
                ks["bwd_before_r"](dq, hq, r, dar, dhq)
            else:
                dzp = z * (1 - z) if DZ is None else DZ[k]
                drp = r * (1 - r) if DR_ is None else DR_[k]
                dhp = 1 - hh * hh if DH is None else DH[k]
                daz[...] = (h - hh) * g * dzp
                dah[...] = (1 - z) * g * dhp
                dhd = z * g
                if m is not None:
                    Dk[...] = xp.where(m, Dk, 0)
                dq = dah @ Uh.T
                dar[...] = dq * hq * drp
                dhq = dq * r
            if m is not None:
                dar[...] = xp.where(m, dar, 0)
                dhq = xp.where(m, dhq, 0)
            dzr = Dk[:, : 2 * u]
            if mh is None:
                dh = dhd + dzr @ Uzr.T + dhq
            else:
                dh = dhd + (daz @ Uzr[:, :u].T) * mh[0] + (dar @ Uzr[:, u:].T) * mh[1] \
                    + dhq * mh[2]

        if m is None:
            gs = dh
            gy = None
        else:
            gs = xp.where(m, dh, gs).astype(dt, copy=False)
            if gy is not None:
                gy = None if spec.zero_output_for_mask else xp.where(m, 0, gy).astype(dt)

    # Weight gradients: a few GEMMs over all (T*B) rows.
    TB = T * B
    Hs2 = Hs.reshape(TB, u)
    dU = xp.empty((u, 3 * u), dt)

    def hin(gi):  # the state as seen by gate gi's recurrent projection
        return Hs2 if mh is None else (Hs * mh[gi]).reshape(TB, u)

    DA2 = DA.reshape(TB, 3 * u)
    db_rec = None
    if spec.reset_after:
        if mh is None:
            dU[...] = Hs2.T @ DA2
        else:
            for gi in range(3):
                sl = slice(gi * u, (gi + 1) * u)
                dU[:, sl] = hin(gi).T @ DA2[:, sl]
        if spec.use_bias and weights.bias is not None:
            db_rec = DA2.sum(axis=0)
        DA[:, :, 2 * u:] = DAh
    else:
        if mh is None:
            dU[:, : 2 * u] = Hs2.T @ DA2[:, : 2 * u]
        else:
            for gi in range(2):
                sl = slice(gi * u, (gi + 1) * u)
                dU[:, sl] = hin(gi).T @ DA2[:, sl]
        Q = R * (Hs if mh is None else Hs * mh[2])
        if m_pm is not None:  # padded steps' r may be inf (an unbounded rec_act): inf * 0
            Q = xp.where(m_pm[:, :, None], Q, 0).astype(dt, copy=False)
        dU[:, 2 * u:] = Q.reshape(TB, u).T @ DA2[:, 2 * u:]

    X = _time_major(xp, x, m_pm, spec.go_backwards)
    X2 = X.reshape(TB, D)
    if mx is None or mx.ndim == 2:
        Xin = X2 if mx is None else (X * mx).reshape(TB, D)
        dK = Xin.T @ DA2
        dX = (DA2 @ K.T).reshape(T, B, D)
        if mx is not None:
            dX *= mx
    else:
        dK = xp.empty((D, 3 * u), dt)
        dX = xp.zeros((T, B, D), dt)
        for gi in range(3):
            sl = slice(gi * u, (gi + 1) * u)
            dK[:, sl] = (X * mx[gi]).reshape(TB, D).T @ DA2[:, sl]
            dX += (DA2[:, sl] @ K[:, sl].T).reshape(T, B, D) * mx[gi]
    if m_pm is not None:
        dX = xp.where(m_pm[:, :, None], dX, 0).astype(dt, copy=False)
    dx = (dX[::-1] if spec.go_backwards else dX).transpose(1, 0, 2)
    dx = xp.ascontiguousarray(dx)

    bias = None
    if spec.use_bias and weights.bias is not None:
        db_in = DA2.sum(axis=0)
        bias = xp.stack([db_in, db_rec]) if spec.reset_after else db_in
    return Gradients(dx, gs, dK, dU, bias)
