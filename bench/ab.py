"""One-process A/B of fastgru variants: builds of the compiled extension, or environment settings.

On a machine whose speed drifts (shared or virtual CPUs: 20-40% between phases of minutes)
separate processes compare phases, not code. Here every variant runs in the same process, in
alternating order (A B B A ...), on the same inputs; the table gives each variant's median per
call, the ratio of the first variant to each other one (> 1: that one is faster), and whether
all variants return the same bits (they should: no switch may change a result).

    python bench/ab.py --so old.so,new.so 1x100x64x128,64x200x128x256 --threads 1,2
    python bench/ab.py --l1-prefetch 1,0 1x1000x128x256 --threads 1,2
    python bench/ab.py --env FASTGRU_CPU_PROJ=panels,blas 32x100x64x128 --mode training
    python bench/ab.py --env FASTGRU_CPU_FUSED_PROJ=0,1 1x200x128x128 --stat min --rounds 30 \\
        --seconds 0.08

--so: paths of built extensions (fastgru/_cpu/_gru*.so copied aside after each build); --env:
NAME=v1,v2,... (settings the engine reads on every call); --l1-prefetch 1,0: the setting
FASTGRU_CPU_L1_PREFETCH gives the batch-1/2 grouped products (otherwise read once per process;
a thread's panels beyond 1 MB keep their prefetches either way); --gate-prefetch 1,0: the
forward gate pass's prefetch of the next row's inputs (FASTGRU_CPU_GATE_PREFETCH); --zigzag
1,0: the time loops' alternating panel order (FASTGRU_CPU_ZIGZAG); --overlap 1,0: split-units
teams overlapping the exchange of h with the product (FASTGRU_CPU_OVERLAP); --strips 1,0: the
AVX-512 products of 4+ rows reading their left operand repacked (FASTGRU_CPU_STRIPS); --kb-own
1,0: the threads of the backward's K-blocked GEMMs packing their own panels
(FASTGRU_CPU_KB_OWN). --mode inference (the engine forward, return_sequences=True) or training
(forward + backward); --stat median (default) or min of the rounds. Timings only; not a test.
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import importlib.util
import os
import time

import numpy as np
from _common import make_problem, parse_shapes

import fastgru
import fastgru.engines.cpu as cpu
from fastgru import activations
from fastgru.engines.base import GRUSpec, Weights


def _load_build(path):
    loader = importlib.machinery.ExtensionFileLoader("fastgru._cpu._gru", path)
    spec = importlib.util.spec_from_file_location("fastgru._cpu._gru", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _variants(args):
    """[(label, activate)]: calling activate() makes the engine run that variant."""
    if args.so:
        out = []
        for path in args.so.split(","):
            mod = _load_build(path)
            out.append((os.path.basename(path), lambda m=mod: setattr(cpu, "_gru", m)))
        return out
    from fastgru._cpu import _gru
    for flag, values, switch in (("l1-prefetch", args.l1_prefetch, _gru.set_ptr_prefetch),
                                 ("gate-prefetch", args.gate_prefetch, _gru.set_gate_prefetch),
                                 ("zigzag", args.zigzag, _gru.set_zigzag),
                                 ("overlap", args.overlap, _gru.set_overlap),
                                 ("strips", args.strips, _gru.set_strips),
                                 ("kb-own", args.kb_own, _gru.set_kb_own)):
        if values:
            return [(f"{flag}={v}", lambda v=v, s=switch: s(v == "1")) for v in values.split(",")]
    name, _, values = args.env.partition("=")
    if not name or not values:
        raise SystemExit("--env: expected NAME=v1,v2,...")
    return [(f"{name}={v}", lambda v=v: os.environ.__setitem__(name, v))
            for v in values.split(",")]


def _problem(shape):
    """The benchmarks' problem (bench/_common.make_problem) in the engine contract's terms."""
    p = make_problem(shape)
    spec = GRUSpec(shape.H, activations.get("tanh"), activations.get("sigmoid"),
                   return_sequences=True)
    w = Weights(p["kernel"], p["recurrent_kernel"], p["bias"])
    return p["x"], w, p["h0"], spec, np.ones((shape.B, shape.T, shape.H), np.float32)


def _step(x, w, h0, spec, dout, n, training):
    out, _, tape = cpu.forward(x, w, h0, spec, training=training, n_threads=n,
                               weights_key=("ab", 0))
    return [out] if tape is None else [out, *cpu.backward(tape, dout, n_threads=n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", help="comma-separated BxTxIxH")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--so", help="comma-separated paths of extension builds")
    group.add_argument("--env", help="NAME=v1,v2,...")
    group.add_argument("--l1-prefetch", help="1,0: as FASTGRU_CPU_L1_PREFETCH=1 / 0")
    group.add_argument("--gate-prefetch", help="1,0: as FASTGRU_CPU_GATE_PREFETCH=1 / 0")
    group.add_argument("--zigzag", help="1,0: as FASTGRU_CPU_ZIGZAG=1 / 0")
    group.add_argument("--overlap", help="1,0: as FASTGRU_CPU_OVERLAP=1 / 0")
    group.add_argument("--strips", help="1,0: as FASTGRU_CPU_STRIPS=1 / 0")
    group.add_argument("--kb-own", help="1,0: as FASTGRU_CPU_KB_OWN=1 / 0")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts")
    ap.add_argument("--mode", choices=["inference", "training"], default="inference")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8)")
    ap.add_argument("--seconds", type=float, default=0.3, help="per variant and round")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="of the rounds' times per call (min: least disturbed by other work on "
                         "a noisy machine; use many short rounds, e.g. --rounds 30 --seconds "
                         "0.08)")
    args = ap.parse_args(argv)
    variants = _variants(args)
    passes = 1 if args.mode == "inference" else 3  # a training step counts 3x the forward
    for n in map(int, args.threads.split(",")):
        fastgru.set_num_threads(n)
        for shape in parse_shapes(args.shapes):
            x, w, h0, spec, dout = _problem(shape)
            call = functools.partial(_step, x, w, h0, spec, dout, n, args.mode == "training")

            results, per_call = [], []
            for _, activate in variants:
                activate()
                t = time.perf_counter()
                results.append(call())
                per_call.append(time.perf_counter() - t)
            reps = max(1, int(args.seconds / max(min(per_call), 1e-6)))
            times = [[] for _ in variants]
            for r in range(args.rounds):
                order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
                for j in order:
                    variants[j][1]()
                    t = time.perf_counter()
                    for _ in range(reps):
                        call()
                    times[j].append((time.perf_counter() - t) / reps)
            med = [float(np.median(t) if args.stat == "median" else np.min(t)) for t in times]
            same = all(all(a is None and b is None or np.array_equal(a, b)
                           for a, b in zip(results[0], res)) for res in results)
            gflop = shape.flops * passes / 1e9
            cells = "  ".join(f"{label}: {1e3 * m:.3f} ms {gflop / m:.1f} GFLOP/s"
                              for (label, _), m in zip(variants, med))
            ratios = " ".join(f"{med[0] / m:.3f}" for m in med[1:])
            print(f"{n}t {shape.label}  {cells}  first/other {ratios}  "
                  f"{'same bits' if same else 'BITS DIFFER'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
