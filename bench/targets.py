"""Check saved benchmark runs against the CPU performance targets (issue #10).

    python bench/cpu_inference.py --rounds 2 --json inf.json
    python bench/cpu_inference.py --rounds 2 --no-return-sequences --json inf_last.json
    python bench/cpu_training.py --rounds 2 --json train.json
    python bench/targets.py inf.json inf_last.json train.json

Each target is printed with its margin and PASS / FAIL (exit status 1 if any fails). The
targets are the issue's fixed points; one that a run did not measure FAILs as "not measured":
- three runs: inference with return_sequences True and False, and training (a missing one
  FAILs);
- inference, per run, at each of the issue's six shapes (and any other the run measured) on 1
  and 2 threads: fastgru faster than every float32 peer (PyTorch, ONNX Runtime, OpenVINO, Keras
  tf.function and XLA), each of which must have run and agreed with the reference;
- at the issue's two largest shapes (256x50x256x512, 16x500x512x1024): also at least 85% of the
  FMA peak measured in the same run for that thread count;
- training, at the issue's five training shapes on 1 and 2 threads: faster than PyTorch and
  Keras (both paths), and at least 65% of the FMA peak at 256x50x256x512;
- batch 1 at 1x100x64x128: under 1.2 us per step with some thread count (the per-step floor
  that reading U from cache sets is what `cpu_inference.py` prints below its table; with two
  threads the margin quotes the run's core-to-core round trips, which a split-units step
  pays on top: on a VM they change with the vCPUs' placement);
- the runs measured one build (the commit and extension hash each run records).
fastgru's time is its frozen layer's row ("fastgru.frozen", GRU.freeze(): an inference snapshot,
as the ONNX Runtime session and the OpenVINO compiled model are) where it ran (inference), else
the engine row ("fastgru"), else the live layer's ("fastgru.GRU"); a fastgru row that failed or
disagreed with the reference FAILs its point rather than yielding to the next, and so does a
training row that ran the reference engine. Timings are the runs' own statistic (``--stat``,
best of the rounds). Not a test: it judges numbers, and numbers depend on the machine and its
load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import OURS_ORDER, SHAPES, STAT_KEY, parse_shapes, peak_for

# the peers: a target is met only against all of them (a peer that failed to run or
# disagreed with the reference leaves it unmet)
PEERS = {"inference": ("torch", "onnxruntime", "openvino", "keras-tf", "keras-xla"),
         "training": ("torch", "keras-tf", "keras-xla")}
PEAK_SHARE = {"inference": 0.85, "training": 0.65}
THREADS = (1, 2)
POINTS = {"inference": [s.label for s in SHAPES], "training": [s.label for s in SHAPES[:-1]]}
PEAK_SHAPES = {"inference": [s.label for s in sorted(SHAPES, key=lambda s: s.flops)[-2:]],
               "training": ["256x50x256x512"]}
BATCH1_SHAPE, BATCH1_US = "1x100x64x128", 1.2
KINDS = ("inference rs=True", "inference rs=False", "training")


def _mode(d: dict) -> str:
    if d["kind"] == "cpu_training":
        return "training"
    return "inference rs=" + ("True" if d.get("return_sequences", True) else "False")


def _points(d: dict):
    """(thread count, shape label) -> {row: record} of everything a saved run measured."""
    out = {}
    for peer, by_n in d["results"].items():
        for n, entry in by_n.items():
            for label, r in entry.get("results", {}).items():
                out.setdefault((int(n), label), {})[peer] = r
    return out


def _ours(recs: dict, training: bool):
    """(fastgru's row, its record, why it does not count or None) at one point."""
    for p in OURS_ORDER:
        r = recs.get(p)
        if r is None:
            continue
        if "error" in r:
            return p, r, f"{p} failed: {str(r['error'])[:80]}"
        if not r.get("ok"):
            return p, r, f"{p} disagreed with the reference (err {r.get('err', float('nan')):.1e})"
        if training and r.get("engine") == "reference":
            return p, r, f"{p} ran the reference engine, not the compiled one"
        return p, r, None
    return None, None, "no fastgru result"


def check(d: dict, name: str):
    """[(target, margin text, passed)] for one saved run."""
    mode = _mode(d)
    training = mode == "training"
    group = "training" if training else "inference"
    key = STAT_KEY[d.get("stat", "median")]
    shapes = {s.label: s for s in parse_shapes(",".join(d["shapes"]))} if d.get("shapes") else {}
    points = _points(d)
    for label in POINTS[group]:  # the points, measured or not
        shapes.setdefault(label, parse_shapes(label)[0])
        for n in THREADS:
            points.setdefault((n, label), {})
    order = {label: i for i, label in enumerate(shapes)}
    rows = []
    for (n, label), recs in sorted(points.items(), key=lambda kv: (order[kv[0][1]], kv[0][0])):
        what = f"{mode} {label} {n}t"
        peak_point = label in PEAK_SHAPES[group] and n in THREADS
        need = PEAK_SHARE[group]
        _, mine_rec, why = _ours(recs, training) if recs else (None, None, "not measured")
        if why:
            rows.append((f"{what}: faster than every peer", why, False))
            if peak_point:
                rows.append((f"{what}: >= {100 * need:.0f}% of the FMA peak", why, False))
            continue
        mine = mine_rec[key]
        peers = {p: r[key] for p, r in recs.items()
                 if p in PEERS[group] and "error" not in r and r.get("ok")}
        missing = [p for p in PEERS[group] if p not in peers]
        if peers:
            best = min(peers, key=peers.get)
            ratio = peers[best] / mine
            rows.append((f"{what}: faster than every peer",
                         f"{ratio:.2f}x {best}" + (f"; no verified result from "
                                                   f"{', '.join(missing)}" if missing else ""),
                         ratio > 1.0 and not missing))
        else:
            rows.append((f"{what}: faster than every peer", "no peer ran", False))
        if peak_point:
            peak = peak_for(d["machine"], n)
            if d.get("stat") == "cpu" and peak:
                peak /= n  # CPU seconds: one thread's share
            flops = shapes[label].flops * (3.0 if training else 1.0)
            if not peak:
                rows.append((f"{what}: >= {100 * need:.0f}% of the FMA peak",
                             "no FMA peak measured in this run", False))
            else:
                share = flops / mine / 1e9 / peak
                rows.append((f"{what}: >= {100 * need:.0f}% of the FMA peak",
                             f"{100 * share:.1f}% of {peak:.0f} GFLOP/s", share >= need))
    if not training:
        rows.append(_batch1(d, points, mode, key))
    return [(f"[{name}] {t}", m, ok) for t, m, ok in rows]


def _batch1(d, points, mode, key):
    steps = parse_shapes(BATCH1_SHAPE)[0].T
    b1 = []
    for (n, label), recs in points.items():
        if label == BATCH1_SHAPE:
            _, r, why = _ours(recs, False)
            if r is not None and why is None:
                b1.append((r[key] / steps * 1e6, n))
    target = f"{mode} {BATCH1_SHAPE}: under {BATCH1_US} us per step"
    if not b1:
        return target, "not measured", False
    us, n = min(b1)
    trips = d["machine"].get("core_round_trip_ns")
    return target, f"{us:.2f} us ({n}t)" + (
        "; core-to-core round trip in this run " + "/".join(f"{v:.0f}" for v in trips) + " ns"
        if trips and n > 1 else ""), us < BATCH1_US


def _one_build(runs):
    """The row that says whether all runs measured the same build (None: nothing recorded)."""
    builds = {name: d.get("build") or {} for name, d in runs}
    known = {name: (b.get("commit"), b.get("extension_sha256")) for name, b in builds.items()
             if b.get("commit") or b.get("extension_sha256")}
    if not known:
        return None
    dirty = [name for name, b in builds.items() if b.get("dirty")]
    unknown = [name for name in builds if name not in known]
    distinct = set(known.values())
    margin = ", ".join(f"{name}: {(c or '?')[:10]}" for name, (c, _) in known.items())
    if unknown:
        margin += f"; no build recorded in {', '.join(unknown)}"
    if dirty:
        margin += f"; uncommitted changes in {', '.join(dirty)}"
    return "[all] the runs measured one build", margin, len(distinct) == 1 and not unknown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="JSON files written by cpu_inference.py / "
                                            "cpu_training.py --json")
    args = ap.parse_args(argv)
    rows, runs = [], []
    for path in args.runs:
        d = json.loads(Path(path).read_text())
        if d.get("kind") not in ("cpu_inference", "cpu_training"):
            raise SystemExit(f"{path}: not a cpu_inference / cpu_training run "
                             f"(kind {d.get('kind')!r})")
        runs.append((Path(path).name, d))
        rows += check(d, Path(path).name)
    given = {_mode(d) for _, d in runs}
    rows += [(f"[missing] {kind}", "no run given", False) for kind in KINDS if kind not in given]
    build = _one_build(runs)
    if build:
        rows.append(build)
    width = max(len(t) for t, _, _ in rows)
    for t, margin, ok in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {t:<{width}}  {margin}")
    failed = sum(not ok for _, _, ok in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
