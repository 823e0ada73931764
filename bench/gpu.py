"""GPU benchmark: fastgru's cuDNN and xp engines against PyTorch nn.GRU (cuDNN), one GRU layer.

Times, on CUDA events, the median of ``--repeats`` runs after ``--warmup`` runs of
* ``forward``: inference forward (return_sequences=True, no mask);
* ``train``: training forward + backward with an all-ones output gradient (weights re-packed
  every step, as in a training loop where they change).
Every peer first runs once on the same float32 weights and inputs and is compared with
fastgru-cudnn (max |diff| / max |ref|). TF32 is off for everyone unless ``--tf32`` (PyTorch's
own default allows TF32 for cuDNN RNNs, so it is switched off explicitly). The ``torch/...``
columns are PyTorch's time divided by fastgru's: above 1, fastgru is faster.

    python bench/gpu.py                      # all shapes, all peers
    python bench/gpu.py --shapes 32x100x64x128 --peers cudnn,torch --repeats 50
    python bench/gpu.py --peers cudnn --algo persist-static --shapes 8x100x128x256

Shapes are B x T x D x H (batch, timesteps, input features, units).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

SHAPES = ["1x100x64x128", "1x1000x128x256", "32x100x64x128", "64x200x128x256",
          "256x50x256x512", "16x500x512x1024", "512x100x512x1024"]
PEERS = ("cudnn", "xp", "torch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--shapes", default=",".join(SHAPES),
                   help="comma-separated BxTxDxH shapes (default: the seven standard ones)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--modes", default="forward,train", help="forward,train or one of them")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per cell (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--tf32", action="store_true", help="allow TF32 (fastgru and PyTorch)")
    from fastgru.engines.cudnn import ALGOS  # loads neither CuPy nor cuDNN

    p.add_argument("--algo", choices=ALGOS,
                   default=None, help="the cuDNN engine's algorithm choice (FASTGRU_CUDNN_ALGO;"
                   " default: the environment's, else auto); a forced persistent kernel runs "
                   "wherever cuDNN takes it, to measure the engine's rules")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.shapes = [parse_shape(s) for s in args.shapes.split(",") if s.strip()]
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    bad = set(args.peers) - set(PEERS)
    if bad:
        p.error(f"--peers: unknown {sorted(bad)}; choose from {PEERS}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - {"forward", "train"}:
        p.error("--modes: choose from forward, train")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def parse_shape(text):
    parts = text.strip().lower().split("x")
    if len(parts) != 4 or not all(q.isdigit() and int(q) > 0 for q in parts):
        raise SystemExit(f"--shapes: expected BxTxDxH with positive integers, got {text!r}")
    return tuple(int(q) for q in parts)


def require_gpu():
    try:
        import cupy
    except ImportError:
        raise SystemExit("bench/gpu.py needs CuPy and an NVIDIA GPU: CuPy is not installed "
                         "(pip install cupy-cuda12x or cupy-cuda13x). Nothing was timed."
                         ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver
        n, why = 0, f" ({e})"
    else:
        why = ""
    if n == 0:
        raise SystemExit(f"bench/gpu.py needs an NVIDIA GPU; CuPy sees none{why}. "
                         "Nothing was timed.")
    return cupy


def cuda_time(cupy, fn, repeats, warmup):
    """Median milliseconds of ``fn()`` between CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def torch_time(torch, fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fastgru_runner(cupy, engine, K, R, b, x, key):
    from fastgru import activations
    from fastgru.engines.base import GRUSpec, Weights

    u = R.shape[0]
    spec = GRUSpec(u, activations.get("tanh"), activations.get("sigmoid"),
                   return_sequences=True)
    w = Weights(*(cupy.asarray(a) for a in (K, R, b)))
    xd = cupy.asarray(x)
    h0 = cupy.zeros((x.shape[0], u), np.float32)
    dy = cupy.ones((x.shape[0], x.shape[1], u), np.float32)
    kw = {"weights_key": key} if engine.NAME == "cudnn" else {}

    def forward():
        return engine.forward(xd, w, h0, spec, **kw)[0]

    def train():
        out, _, tape = engine.forward(xd, w, h0, spec, training=True)
        return engine.backward(tape, dy)

    return forward, train


def torch_runner(torch, K, R, b, x, tf32):
    torch.backends.cudnn.allow_tf32 = tf32
    try:  # PyTorch >= 2.9 precision API; the default for cuDNN RNNs is "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32" if tf32 else "ieee"
    except AttributeError:
        pass
    D, u = K.shape[0], R.shape[0]
    perm = [1, 0, 2]  # Keras (z, r, h) -> PyTorch (r, z, n)

    def p(a):
        return a.reshape(*a.shape[:-1], 3, u)[..., perm, :].reshape(*a.shape[:-1], 3 * u)

    gru = torch.nn.GRU(D, u, batch_first=True).cuda()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(p(K).T.copy()))
        gru.weight_hh_l0.copy_(torch.from_numpy(p(R).T.copy()))
        gru.bias_ih_l0.copy_(torch.from_numpy(p(b[0])))
        gru.bias_hh_l0.copy_(torch.from_numpy(p(b[1])))
    xt = torch.from_numpy(x).cuda()
    xg = xt.clone().requires_grad_(True)
    dy = None

    def forward():
        with torch.no_grad():
            return gru(xt)[0]

    def train():
        nonlocal dy
        out = gru(xg)[0]
        if dy is None:
            dy = torch.ones_like(out)
        out.backward(dy)
        return out

    return forward, train


def cudnn_algorithm(cudnn_engine, B, T, D, u, training):
    """The variant(s) the cuDNN engine ran for this shape."""
    names = cudnn_engine.backend().plan(np.float32, D, u).ran(B, T, training)
    return "/".join(sorted(names)) or "-"


def main(argv=None):
    args = parse_args(argv)
    cupy = require_gpu()
    from fastgru.engines import cudnn as cudnn_engine
    from fastgru.engines import xp as xp_engine

    cudnn_engine.ALLOW_TF32 = args.tf32
    if args.algo is not None:
        cudnn_engine.ALGO = args.algo
    torch = None
    if "torch" in args.peers:
        try:
            import torch
            if not torch.cuda.is_available():
                print("# PyTorch has no CUDA here: torch row skipped", file=sys.stderr)
                torch = None
        except ImportError:
            print("# PyTorch not installed: torch row skipped", file=sys.stderr)
    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    print(f"# device: {dev['name'].decode()}; cuDNN via fastgru; TF32 "
          f"{'on' if args.tf32 else 'off'}; medians of {args.repeats} runs, milliseconds")
    cols = [p for p in args.peers if p != "torch" or torch is not None]
    head = ["shape (BxTxDxH)", "mode"] + [f"fastgru-{p}" if p != "torch" else "torch" for p in
                                          cols]
    if torch is not None:
        head += [f"torch/{p}" for p in cols if p != "torch"]
    if "cudnn" in cols:
        head.append("cuDNN algorithm")
    head.append("max rel diff vs cudnn")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rng = np.random.default_rng(args.seed)
    for (B, T, D, u) in args.shapes:
        x = rng.normal(size=(B, T, D)).astype(np.float32)
        K = (rng.normal(size=(D, 3 * u)) / np.sqrt(D)).astype(np.float32)
        R = (rng.normal(size=(u, 3 * u)) / np.sqrt(u)).astype(np.float32)
        b = (rng.normal(size=(2, 3 * u)) * 0.1).astype(np.float32)
        runners = {}
        for peer in cols:
            if peer == "torch":
                runners[peer] = torch_runner(torch, K, R, b, x, args.tf32)
            else:
                eng = cudnn_engine if peer == "cudnn" else xp_engine
                runners[peer] = fastgru_runner(cupy, eng, K, R, b, x, ("bench", B, T, D, u))
        # agreement check on the forward outputs
        outs = {}
        for peer, (fwd, _) in runners.items():
            o = fwd()
            outs[peer] = o.detach().cpu().numpy() if peer == "torch" else cupy.asnumpy(o)
        ref = outs.get("cudnn", next(iter(outs.values())))
        scale = max(float(np.abs(ref).max()), 1e-30)
        diffs = ", ".join(f"{p} {np.abs(o - ref).max() / scale:.1e}" for p, o in outs.items()
                          if o is not ref)
        for mode in args.modes:
            ms = {}
            for peer, (fwd, train) in runners.items():
                fn = fwd if mode == "forward" else train
                try:
                    if peer == "torch":
                        ms[peer] = torch_time(torch, fn, args.repeats, args.warmup)
                    else:
                        ms[peer] = cuda_time(cupy, fn, args.repeats, args.warmup)
                except Exception as e:  # e.g. out of memory on a small GPU: report, go on
                    print(f"# {peer} {mode} {B}x{T}x{D}x{u} failed: {e}", file=sys.stderr)
                    ms[peer] = float("nan")
            row = [f"{B}x{T}x{D}x{u}", mode] + [f"{ms[p]:.3f}" for p in cols]
            if torch is not None:
                row += [f"{ms['torch'] / ms[p]:.2f}" for p in cols if p != "torch"]
            if "cudnn" in cols:
                row.append(cudnn_algorithm(cudnn_engine, B, T, D, u, mode == "train"))
            row.append(diffs or "-")
            print("| " + " | ".join(row) + " |", flush=True)
        del runners, outs
        cupy.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
