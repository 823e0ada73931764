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
    ap.add_argument("--shapes", help="comma-separated BxTxIxH (batch x steps x input x units)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                    help="comma-separated subset of: " + ", ".join(TRAIN_PEERS))
    ap.add_argument("--quick", action="store_true",
                    help="short time boxes (0.3 s, 1 timed call minimum) instead of 1.5 s / 3")
    ap.add_argument("--budget", type=float, help="seconds of timed calls per measurement")
    ap.add_argument("--json", help="also write all results to this JSON file")
    return C.check_args(ap, ap.parse_args(argv), C.SHAPES[:-1], TRAIN_PEERS)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 1.5)
    min_reps = 1 if args.quick else 3
    timeout = 200 if args.quick else 400
    t_start = time.perf_counter()
    print("# fastgru CPU training-step benchmark (float32, forward + BPTT + Adam)\n")
    machine = C.machine_report(args.threads, args.quick)
    print("\nproblems and float64 reference gradients:")
    tmp, files = C.write_problems(args.shapes, True, training=True)
    by_label = dict(zip((s.label for s in args.shapes), files))

    def files_for(peer):
        if peer == "reference":
            return [by_label[s.label] for s in args.shapes if s.flops / 1e9 <= REF_MAX_GFLOP]
        return files

    print("\npeers:")
    with tmp:
        results, versions, notes = P.run_matrix(args.peers, args.threads, files_for,
                                                "training", budget, min_reps, timeout)
    engines = {r.get("engine") for n in args.threads
               for r in results.get("fastgru", {}).get(n, {}).get("results", {}).values()}
    print("\nversions: " + "; ".join(f"{p} {v}" for p, v in versions.items()))
    if "reference" in engines:
        print("\nNOTE: the fastgru row below ran the REFERENCE engine (the CPU engine has no "
              "backward yet); its ratio is not the CPU engine's.")
    print("\n" + C.results_table(args.shapes, args.threads, args.peers, results, machine,
                                 flops_factor=3.0))
    print("\nverification of the gradients (max over dx, dkernel, drecurrent_kernel, dbias of "
          "max |peer - ref| / max |ref|):")
    print("\n".join(C.error_summary(args.peers, args.threads, results)))
    print(f"\ntimes in ms (median); '!' = disagrees with the reference by > {C.TOLERANCE:g} "
          "(not used as baseline); '-' = not run. "
          f"total {time.perf_counter() - t_start:.0f} s")
    C.save_json(args.json, {"kind": "cpu_training", "machine": machine, "versions": versions,
                            "notes": notes, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
