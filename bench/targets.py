"""Check saved benchmark runs against the CPU performance targets (issue #10).

    python bench/cpu_inference.py --rounds 2 --json inf.json
    python bench/cpu_inference.py --rounds 2 --no-return-sequences --json inf_last.json
    python bench/cpu_training.py --rounds 2 --json train.json
    python bench/targets.py inf.json inf_last.json train.json

Each target is printed with its margin and PASS / FAIL (exit status 1 if any fails):
- inference, per run (return_sequences True / False), shape and thread count: fastgru faster
  than every float32 peer (PyTorch, ONNX Runtime, OpenVINO, Keras tf.function and XLA), each of
  which must have run and agreed with the reference;
- at the two largest shapes: also at least 85% of the FMA peak measured in the same run;
- training: faster than PyTorch and Keras (both paths) at every point, and at least 65% of the
  FMA peak at 256x50x256x512;
- batch 1 at 1x100x64x128: under 1.2 us per step with some thread count (the per-step floor
  that reading U from cache sets is what `cpu_inference.py` prints below its table; with two
  threads the margin quotes the run's core-to-core round trips, which a split-units step
  pays on top: on a VM they change with the vCPUs' placement).
fastgru's time is its frozen layer's row ("fastgru.frozen", GRU.freeze(): an inference snapshot,
as the ONNX Runtime session and the OpenVINO compiled model are) where it ran (inference), else
the engine row ("fastgru"), else the live layer's ("fastgru.GRU"). Timings
are the runs' own statistic (median per call, best of the rounds). Not a test: it judges
numbers, and numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import OURS_ORDER, STAT_KEY, ours_time, parse_shapes, peak_for

# the peers: a target is met only against all of them (a peer that failed to run or
# disagreed with the reference leaves it unmet)
PEERS = {"inference": ("torch", "onnxruntime", "openvino", "keras-tf", "keras-xla"),
         "training": ("torch", "keras-tf", "keras-xla")}
PEAK_SHARE = {"inference": 0.85, "training": 0.65}
TRAINING_PEAK_SHAPE = "256x50x256x512"
BATCH1_SHAPE, BATCH1_US = "1x100x64x128", 1.2


def _runs(d: dict):
    """(thread count, shape label) -> {peer: seconds} of the verified results of a saved run."""
    key = STAT_KEY["median"]
    out = {}
    for peer, by_n in d["results"].items():
        for n, entry in by_n.items():
            for label, r in entry.get("results", {}).items():
                if "error" not in r and r.get("ok"):
                    out.setdefault((int(n), label), {})[peer] = r[key]
    return out


def check(d: dict, name: str):
    """[(target, margin text, passed)] for one saved run."""
    training = d["kind"] == "cpu_training"
    mode = "training" if training else (
        "inference rs=" + ("True" if d.get("return_sequences", True) else "False"))
    shapes = parse_shapes(",".join(d["shapes"]))
    by_label = {s.label: s for s in shapes}
    runs = _runs(d)
    largest = {s.label for s in sorted(shapes, key=lambda s: s.flops)[-2:]}
    flops = {s.label: s.flops * (3.0 if training else 1.0) for s in shapes}
    rows = []
    order = {s.label: i for i, s in enumerate(shapes)}
    for (n, label), times in sorted(runs.items(), key=lambda kv: (order[kv[0][1]], kv[0][0])):
        mine = ours_time(times)
        if mine is None:
            rows.append((f"{mode} {label} {n}t: fastgru ran", "no verified fastgru result",
                         False))
            continue
        want = PEERS["training" if training else "inference"]
        peers = {p: t for p, t in times.items() if p in want}
        missing = [p for p in want if p not in peers]
        if peers:
            best = min(peers, key=peers.get)
            ratio = peers[best] / mine
            rows.append((f"{mode} {label} {n}t: faster than every peer",
                         f"{ratio:.2f}x {best}" + (f"; no result from {', '.join(missing)}"
                                                   if missing else ""),
                         ratio > 1.0 and not missing))
        else:
            rows.append((f"{mode} {label} {n}t: faster than every peer", "no peer ran", False))
        peak = peak_for(d["machine"], n)
        if peak and (label in largest if not training else label == TRAINING_PEAK_SHAPE):
            share = flops[label] / mine / 1e9 / peak
            need = PEAK_SHARE["training" if training else "inference"]
            rows.append((f"{mode} {label} {n}t: >= {100 * need:.0f}% of the FMA peak",
                         f"{100 * share:.1f}% of {peak:.0f} GFLOP/s", share >= need))
    if not training:
        b1 = [(ours_time(t) / by_label[label].T * 1e6, n) for (n, label), t in runs.items()
              if label == BATCH1_SHAPE and any(p in t for p in OURS_ORDER)]
        if b1:
            us, n = min(b1)
            trips = d["machine"].get("core_round_trip_ns")
            rows.append((f"{mode} {BATCH1_SHAPE}: under {BATCH1_US} us per step",
                         f"{us:.2f} us ({n}t)" + (
                             "; core-to-core round trip in this run "
                             + "/".join(f"{v:.0f}" for v in trips) + " ns"
                             if trips and n > 1 else ""), us < BATCH1_US))
    return [(f"[{name}] {t}", m, ok) for t, m, ok in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="JSON files written by cpu_inference.py / "
                                            "cpu_training.py --json")
    args = ap.parse_args(argv)
    rows = []
    for path in args.runs:
        d = json.loads(Path(path).read_text())
        if d.get("kind") not in ("cpu_inference", "cpu_training"):
            raise SystemExit(f"{path}: not a cpu_inference / cpu_training run "
                             f"(kind {d.get('kind')!r})")
        rows += check(d, Path(path).name)
    width = max(len(t) for t, _, _ in rows)
    for t, margin, ok in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {t:<{width}}  {margin}")
    failed = sum(not ok for _, _, ok in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
