"""One float32 GRU training step on the CPU: fastgru against PyTorch and Keras 3.

    python bench/cpu_training.py                  # full run (about 5 min on 2 cores)
    python bench/cpu_training.py --quick
    python bench/cpu_training.py --shapes 32x100x64x128 --threads 1,2 --peers fastgru,torch

A step is forward (return_sequences=True) + backpropagation through time with gradients for
the inputs and all weights of loss = sum(outputs), then an Adam update (fastgru.optim.Adam,
torch.optim.Adam, keras.optimizers.Adam; epsilon 1e-7). Each peer's gradients are checked
against fastgru's float64 reference engine before timing ('!' marks > 1e-4 relative).
Until fastgru's CPU engine has a backward, the fastgru row runs the reference engine (a note
says so). GFLOP/s counts 3 x 2*B*T*3H*(I+H) flops per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _peers as P  # noqa: E402

TRAIN_PEERS = ("fastgru", "fastgru.GRU", "reference", "torch", "keras-tf", "keras-xla")
DEFAULT_PEERS = ("fastgru", "fastgru.GRU", "torch", "keras-tf", "keras-xla")
REF_MAX_GFLOP = 3.0  # forward GFLOP up to which the (slow) reference row is timed


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Shapes default to " +
                                 ",".join(s.label for s in C.SHAPES[:-1]))
    C.add_common_args(ap, list(TRAIN_PEERS), DEFAULT_PEERS)
    return C.check_args(ap, ap.parse_args(argv), C.SHAPES[:-1], TRAIN_PEERS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        C.render_saved(args.from_json, args.stat)
        return 0
    budget, min_reps, timeout = C.time_box(args)
    t_start = time.perf_counter()
    print("# fastgru CPU training-step benchmark (float32, forward + BPTT + Adam)\n")
    machine = C.machine_report(args.threads, args.quick)
    print("\nproblems and float64 reference gradients:")
    results, versions, notes = P.run_problems(args, "training", True, REF_MAX_GFLOP,
                                              budget, min_reps, timeout)
    engines = {r.get("engine") for n in args.threads
               for r in results.get("fastgru", {}).get(n, {}).get("results", {}).values()}
    if "reference" in engines:
        print("\nNOTE: the fastgru row below ran the REFERENCE engine (the compiled CPU engine "
              "is not built); its ratio is not the CPU engine's.")
    C.print_report(args, "cpu_training", machine, results, versions, notes, t_start,
                   flops_factor=3.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
