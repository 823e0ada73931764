"""``python -m fastgru``: run a GRU on a built-in workload, print the engine and its throughput.

The default workload is float32 inference, (batch, steps, features, units) = (64, 200, 128, 256),
return_sequences=True: a mid-sized shape of the benchmark suite. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fastgru", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: every core this process may use)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls after one warm-up call")
    p.add_argument("--reset-after", choices=("true", "false"), default="true")
    p.add_argument("--last-only", action="store_true", help="return_sequences=False")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true",
                      help="time a training step (forward + backward) instead of inference")
    mode.add_argument("--frozen", action="store_true",
                      help="time the layer's inference snapshot (layer.freeze()): the same "
                           "kernels without the live layer's per-call checks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import fastgru

    args = _parse(argv)
    if args.threads is not None:
        fastgru.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.steps, args.features)).astype(args.dtype)
    layer = fastgru.GRU(args.units, return_sequences=not args.last_only,
                        reset_after=args.reset_after == "true", dtype=args.dtype, seed=0)
    layer.build(x.shape)

    timed = layer.freeze() if args.frozen else layer  # --frozen excludes --train
    if args.train:
        def run():
            y, tape = layer.forward(x, training=True)
            layer.backward(tape, np.ones_like(y))
    else:
        def run():
            timed(x)

    run()  # warm-up: first-call packing and thread start-up are not throughput
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)

    flops = 2.0 * args.batch * args.steps * 3 * args.units * (args.features + args.units)
    if args.train:
        flops *= 3
    print(f"fastgru {fastgru.__version__}")
    print(timed.explain(x))
    from .engines import cpu
    if cpu._gru is None:  # e.g. "pip install ." then run inside the source checkout
        print(f"note: the compiled CPU engine was not importable from {cpu.__file__}: in a "
              "source checkout install with 'pip install -e .' (builds it in place) or run from "
              "another directory")
    what = "training step" if args.train else "inference (frozen)" if args.frozen else "inference"
    print(f"workload: {what}, batch={args.batch} "
          f"steps={args.steps} features={args.features} units={args.units} {args.dtype}, "
          f"threads={fastgru.get_num_threads()}")
    print(f"median of {len(times)}: {med * 1e3:.3f} ms per call, "
          f"{args.batch * args.steps / med:,.0f} steps/s (sequence rows x timesteps), "
          f"{flops / med / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
