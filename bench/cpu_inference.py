"""float32 GRU inference on the CPU: fastgru against PyTorch, ONNX Runtime, OpenVINO, Keras 3.

    python bench/cpu_inference.py                 # full run (about 10 min on 2 cores)
    python bench/cpu_inference.py --quick         # short time boxes, for a first look
    python bench/cpu_inference.py --shapes 32x100x64x128 --threads 1 --peers fastgru,torch

Every peer gets the same Keras-layout weights (reset_after=True) and inputs, is checked
against fastgru's float64 reference engine before it is timed (a '!' in the table marks a peer
off by more than 1e-4 relative), and is timed in a child process of its own at each thread
count. Times are medians after a warm-up call. Speed-up = fastest verified peer / fastgru.
GFLOP/s counts 2*B*T*3H*(I+H) flops per forward pass.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _peers as P  # noqa: E402

REF_MAX_GFLOP = 10.0  # the reference engine is timed only up to this size (it is slow)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Shapes default to " +
                                 ",".join(s.label for s in C.SHAPES))
    C.add_common_args(ap, list(P.PEERS))
    ap.add_argument("--return-sequences", action=argparse.BooleanOptionalAction, default=True,
                    help="time return_sequences=True (default) or False (last output only)")
    ap.add_argument("--ref-max-gflop", type=float, default=REF_MAX_GFLOP,
                    help="largest problem (GFLOP) the slow reference engine is timed on")
    return C.check_args(ap, ap.parse_args(argv), C.SHAPES, list(P.PEERS))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        C.render_saved(args.from_json, args.stat)
        return 0
    budget, min_reps, timeout = C.time_box(args)
    t_start = time.perf_counter()
    print("# fastgru CPU inference benchmark (float32, return_sequences="
          f"{args.return_sequences})\n")
    machine = C.machine_report(args.threads, args.quick)
    print("\nproblems and float64 reference results:")
    results, versions, notes = P.run_problems(args, "inference", args.return_sequences,
                                              args.ref_max_gflop, budget, min_reps, timeout)
    C.print_report(args, "cpu_inference", machine, results, versions, notes, t_start,
                   extra={"return_sequences": args.return_sequences})
    for line in C.batch1_floor_report(args.shapes, args.threads, results, args.stat,
                                       machine.get("core_round_trip_ns")):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
