"""Shared pieces of the CPU benchmarks: shapes, problems, timing, machine peaks, tables.

The benchmarks are scripts, not part of the package. Every peer runs in its own child process
(see ``_peers.py``) on the same problems, which the parent writes to a temporary directory
together with the float64 reference results used to verify each peer before it is timed.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

TOLERANCE = 1e-4  # max |peer - ref| / max |ref| above which a peer is flagged as disagreeing


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    I: int
    H: int

    @property
    def label(self) -> str:
        return f"{self.B}x{self.T}x{self.I}x{self.H}"

    @property
    def flops(self) -> float:
        """Multiply-adds of one forward pass counted as 2 flops: 2*B*T*3H*(I+H)."""
        return 2.0 * self.B * self.T * 3 * self.H * (self.I + self.H)


SHAPES = [Shape(1, 100, 64, 128), Shape(1, 1000, 128, 256), Shape(32, 100, 64, 128),
          Shape(64, 200, 128, 256), Shape(256, 50, 256, 512), Shape(16, 500, 512, 1024)]


def parse_shapes(text: str) -> list[Shape]:
    """'1x100x64x128,32x100x64x128' (B x T x I x H) -> [Shape, ...]."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--shapes: expected BxTxIxH with positive integers, got {item!r}")
        shapes.append(Shape(*map(int, parts)))
    return shapes


def parse_ints(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"{name}: expected positive integers, got {text!r}")
    return vals


def add_common_args(ap, peers, default_peers=None):
    """The options both benchmark scripts take."""
    ap.add_argument("--shapes", help="comma-separated BxTxIxH (batch x steps x input x units)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--peers", default=",".join(default_peers or peers),
                    help="comma-separated subset of: " + ", ".join(peers))
    ap.add_argument("--quick", action="store_true",
                    help="short time boxes (0.3 s, 1 timed call minimum) instead of 1.5 s / 3")
    ap.add_argument("--budget", type=float, help="seconds of timed calls per measurement")
    ap.add_argument("--stat", choices=("median", "min", "cpu"), default="median",
                    help="what the table shows per call: median wall time (default), min wall "
                         "time, or cpu = median process CPU time (all threads), which other "
                         "work on a shared machine disturbs least")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each peer process, wait up to this long for other work on "
                         "the machine to drop below 15%% of the CPUs (default 0)")
    ap.add_argument("--retry-busy", type=int, metavar="N",
                    help="run a peer process again (up to N times, default 1; --quick: 0) when "
                         "other work used more than 25%% of the CPUs while it ran; the run with "
                         "the least other work is kept")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="run all (peer, thread count) processes N times in turn and keep, "
                         "per (peer, threads, shape), the round with the best --stat (default "
                         "1): every peer gets the same chances at a machine that alternates "
                         "between fast and slow phases")
    ap.add_argument("--json", help="also write all results to this JSON file")
    ap.add_argument("--from-json", metavar="FILE",
                    help="print the table of a run saved with --json (e.g. with --stat min), "
                         "run nothing")


def time_box(args) -> tuple[float, int, float]:
    """(seconds of timed calls, minimum timed calls, child timeout) for the run mode; also
    settles --retry-busy."""
    if args.retry_busy is None:
        args.retry_busy = 0 if args.quick else 1
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 1.5)
    return budget, (1 if args.quick else 3), (200 if args.quick else 400)


def check_args(ap, args, default_shapes, allowed_peers):
    """Parse --shapes, --threads and --peers in place (argparse errors on bad values)."""
    try:
        args.shapes = parse_shapes(args.shapes) if args.shapes else list(default_shapes)
        args.threads = parse_ints(args.threads, "--threads")
    except ValueError as e:
        ap.error(str(e))
    if args.rounds < 1:
        ap.error(f"--rounds: expected a positive integer, got {args.rounds}")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in allowed_peers]
    if unknown:
        ap.error(f"--peers: unknown {unknown}; choose from {', '.join(allowed_peers)}")
    return args


# ----------------------------------------------------------------------------- problems

def make_problem(shape: Shape, seed: int = 0) -> dict:
    """Keras-layout float32 weights (reset_after=True, gates z, r, h) and inputs.

    Kernel glorot-uniform, recurrent kernel with orthonormal rows (as Keras initialises them),
    small non-zero biases in both rows and a non-zero initial state, so that every part of
    each peer's weight mapping shows up in its result.
    """
    B, T, I, H = shape.B, shape.T, shape.I, shape.H
    rng = np.random.default_rng(seed)
    lim = np.sqrt(6.0 / (I + 3 * H))
    kernel = rng.uniform(-lim, lim, (I, 3 * H))
    q, _ = np.linalg.qr(rng.standard_normal((3 * H, H)))
    recurrent = q.T  # (H, 3H), orthonormal rows
    bias = rng.uniform(-0.1, 0.1, (2, 3 * H))
    x = rng.standard_normal((B, T, I))
    h0 = rng.uniform(-0.5, 0.5, (B, H))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return {"x": f32(x), "kernel": f32(kernel), "recurrent_kernel": f32(recurrent),
            "bias": f32(bias), "h0": f32(h0)}


def gru_spec(units: int, return_sequences: bool):
    from fastgru import activations
    from fastgru.engines.base import GRUSpec
    return GRUSpec(units=units, activation=activations.get("tanh"),
                   recurrent_activation=activations.get("sigmoid"), reset_after=True,
                   return_sequences=return_sequences)


def weights_of(p: dict, dtype=None):
    from fastgru.engines.base import Weights
    c = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
    return Weights(c(p["kernel"]), c(p["recurrent_kernel"]), c(p["bias"]))


def reference_results(p: dict, return_sequences: bool, training: bool) -> dict:
    """The float64 reference engine on the float32 problem's values: the oracle for all peers.

    Inference: {'y'}; training (loss = sum of the sequence outputs): also {'dx', 'dkernel',
    'drecurrent_kernel', 'dbias'}.
    """
    from fastgru.engines import reference
    from fastgru.engines.base import Weights
    f64 = np.float64
    spec = gru_spec(p["kernel"].shape[1] // 3, return_sequences)
    # Fortran order: the engine slices gate columns, which are then contiguous for BLAS.
    w = Weights(*(np.asarray(p[k], f64, order="F") for k in ("kernel", "recurrent_kernel", "bias")))
    y, _, tape = reference.forward(p["x"].astype(f64), w, p["h0"].astype(f64), spec,
                                   training=training)
    out = {"y": y}
    if training:
        g = reference.backward(tape, np.ones_like(y), None)
        out.update(dx=g.x, dkernel=g.kernel, drecurrent_kernel=g.recurrent_kernel,
                   dbias=g.bias)
    return out


GRAD_KEYS = ("dx", "dkernel", "drecurrent_kernel", "dbias")


def rel_err(a, ref) -> float:
    """max |a - ref| / max |ref| (normwise, so near-zero entries do not blow it up)."""
    a = np.asarray(a, np.float64)
    if a.shape != ref.shape:
        raise ValueError(f"result shape {a.shape} != reference shape {ref.shape}")
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _cache_key(shape: Shape, seed: int, return_sequences: bool, training: bool) -> str:
    """Names a reference result by everything it depends on, the oracle's source included."""
    import hashlib

    import fastgru
    h = hashlib.sha256()
    pkg = Path(fastgru.__file__).parent
    for src in (pkg / "engines" / "reference.py", pkg / "activations.py"):
        h.update(src.read_bytes())
    for fn in (make_problem, reference_results, gru_spec):  # not the whole of this file
        h.update(inspect.getsource(fn).encode())
    h.update(f"{shape.label}|{seed}|{return_sequences}|{training}|{np.__version__}".encode())
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    """Where float64 reference results are kept between runs (they take minutes at the
    largest shapes); FASTGRU_BENCH_CACHE overrides, an empty value disables."""
    return Path(os.environ.get("FASTGRU_BENCH_CACHE",
                               Path.home() / ".cache" / "fastgru-bench")).expanduser()


def write_problems(shapes, return_sequences: bool, training: bool, seed: int = 0,
                   log=print) -> tuple[tempfile.TemporaryDirectory, list[str]]:
    """Problem + reference files, one .npz per shape, in a temporary directory."""
    tmp = tempfile.TemporaryDirectory(prefix="fastgru_bench_")
    use_cache = os.environ.get("FASTGRU_BENCH_CACHE", None) != ""
    paths = []
    for s in shapes:
        t0 = time.perf_counter()
        p = make_problem(s, seed)
        cached = cache_dir() / f"ref-{_cache_key(s, seed, return_sequences, training)}.npz"
        if use_cache and cached.exists():
            with np.load(cached) as f:
                ref = {k: f[k] for k in f.files}
            how = "cached"
        else:
            ref = reference_results(p, return_sequences, training)
            if use_cache:
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    part = cached.with_suffix(f".{os.getpid()}.npz")
                    np.savez(part, **ref)
                    part.replace(cached)
                except OSError as e:
                    log(f"  note: reference cache not written ({e})")
            how = "computed"
        path = os.path.join(tmp.name, f"{s.label}.npz")
        np.savez(path, **p, **{"ref_" + k: v for k, v in ref.items()},
                 return_sequences=return_sequences)
        paths.append(path)
        log(f"  reference (float64) for {s.label}: {how}, {time.perf_counter() - t0:.1f} s")
    return tmp, paths


# ----------------------------------------------------------------------------- timing

def measure(fn, budget_s: float, min_reps: int, max_reps: int = 1000, warmup: int = 1) -> dict:
    """Time ``fn()`` after ``warmup`` calls, repeating until ``budget_s`` is spent (at least
    ``min_reps``, at most ``max_reps`` timed calls).

    Returns wall-clock median_s and min_s, the process CPU time per call cpu_median_s (all
    threads; with one thread about the wall time the call needs when nothing else runs), reps,
    and cpu_per_wall over all timed calls (about the threads really kept busy).
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    w_start, c_start = time.perf_counter(), time.process_time()
    while len(walls) < max_reps:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if len(walls) >= min_reps and time.perf_counter() - w_start >= budget_s:
            break
    ratio = (time.process_time() - c_start) / max(time.perf_counter() - w_start, 1e-9)
    return {"median_s": statistics.median(walls), "min_s": min(walls),
            "cpu_median_s": statistics.median(cpus), "reps": len(walls), "cpu_per_wall": ratio}


# ----------------------------------------------------------------------------- machine

def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl), with their kernel choice."""
    try:
        import scipy.linalg  # noqa: F401  (load SciPy's BLAS too, the one fastgru links)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "prefix", "version", "architecture", "threading_layer",
            "num_threads")
    out = []
    for d in threadpool_info():
        if d.get("user_api") == "blas":
            rec = {k: d.get(k) for k in keep}
            path = Path(d.get("filepath", ""))
            # e.g. numpy.libs/... vs scipy.libs/...
            rec["library"] = f"{path.parent.name}/{path.name}"
            out.append(rec)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _fma_lib():
    """bench/_fma_peak.c compiled once per process (FMA peak, cache read rates, round trip,
    each measured at the start and end of a run), in a directory removed at exit; raises
    OSError / CalledProcessError without a compiler (not cached: the next call tries again)."""
    tmpdir = tempfile.mkdtemp(prefix="fastgru_fma_")
    atexit.register(shutil.rmtree, tmpdir, True)
    src = BENCH_DIR / "_fma_peak.c"
    lib = os.path.join(tmpdir, "fma_peak.so")
    cmd = [os.environ.get("CC", "gcc"), "-O2", "-fopenmp", "-shared", "-fPIC", str(src), "-o", lib]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    so = ctypes.CDLL(lib)
    so.fma_peak_run.restype = ctypes.c_double
    so.fma_peak_run.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_double)]
    so.cache_read_run.restype = ctypes.c_double
    so.cache_read_run.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_int]
    so.core_round_trip_ns.restype = ctypes.c_double
    so.core_round_trip_ns.argtypes = [ctypes.c_long]
    return so


def core_round_trip(iters: int = 200_000) -> float | None:
    """Nanoseconds for a cache line to go from one core to another and back (best of 3);
    None without a compiler or a second core. On a VM it changes with where the hypervisor
    places the vCPUs (the Zen 4 VM of 2026-12-05: ~55 ns in some phases, ~330 in others), and
    it is what a split-units team (batch 1-6 on several threads) pays at every step."""
    if (os.cpu_count() or 1) < 2:
        return None
    try:
        so = _fma_lib()
    except (OSError, subprocess.CalledProcessError):
        return None
    vals = [so.core_round_trip_ns(iters) for _ in range(3)]
    vals = [v for v in vals if v > 0]
    return min(vals) if vals else None


def cache_read_rates(cases, seconds: float = 0.05) -> dict:
    """{(bytes, n_threads): bytes per second one core reads from a private working set of
    ``bytes`` while n_threads cores do the same} (bench/_fma_peak.c; best of 5 runs of at least
    ``seconds``); {} without a compiler or vector loads."""
    out = {}
    try:
        so = _fma_lib()
    except (OSError, subprocess.CalledProcessError):
        return out
    for nbytes, n in cases:
        reps, dt = 16, 0.0
        while True:
            dt = so.cache_read_run(nbytes, reps, n)
            if dt < 0 or dt >= seconds:
                break
            reps = int(reps * min(16.0, max(2.0, 1.2 * seconds / max(dt, 1e-6))))
        if dt < 0:
            return out
        block = -(-nbytes // 1024) * 1024  # as cache_read_run rounds it
        out[(nbytes, n)] = max(block * reps / so.cache_read_run(nbytes, reps, n)
                               for _ in range(5))
    return out


def batch1_floor_report(shapes, threads, results, stat: str,
                        round_trips: list | None = None) -> list[str]:
    """Lines on the batch-1 shapes: the time n cores need to read the recurrent kernel
    (u x 3u float32) once from their caches, each its 1/n share as fastgru's split-units plan
    does, measured on this machine, against fastgru's time per step; and the run's core-to-core
    round trips (machine_report), which the two-thread steps pay on top."""
    key = STAT_KEY[stat]
    cases = {}
    for sh in shapes:
        if sh.B == 1:
            for n in threads:
                cases[(sh, n)] = -(-sh.H * 3 * sh.H * 4 // n)
    if not cases:
        return []
    rates = cache_read_rates(sorted(set((b, n) for (_, n), b in cases.items())))
    if not rates:
        return ["batch-1 floor: not measured (no compiler or no vector loads)"]
    rows = []
    for (sh, n), share in cases.items():
        floor = share / rates[(share, n)]
        t = ours_time({p: r[key] for p in OURS_ORDER
                       if (r := results.get(p, {}).get(n, {}).get("results", {})
                           .get(sh.label, {})) and r.get("ok") and key in r})
        step = f"{t / sh.T * 1e6:.3f}" if t else "-"
        ratio = f"{t / sh.T / floor:.2f}x" if t else "-"
        rows.append([sh.label, str(n), f"{share:,}", f"{rates[(share, n)] / 1e9:.0f}",
                     f"{floor * 1e6:.3f}", step, ratio])
    trips = ""
    if round_trips and any(n > 1 for n in threads):
        trips = (" Core-to-core round trip of a cache line in this run (start, end): "
                 + ", ".join(f"{v:.0f}" for v in round_trips) + " ns; a two-thread step's "
                 "exchange costs about two of them (the partner's flag, then its lines of h), "
                 "which the first thread overlaps with its part of the product.")
    return ["\nbatch 1: the floor that cache bandwidth sets on a step (each of n cores reads its "
            "1/n share of the recurrent kernel once, at the rate measured here for a working "
            "set of that size) and fastgru's time per step." + trips, "",
            markdown_table(["B x T x I x H", "thr", "bytes per core", "GB/s per core",
                            "floor us/step", "fastgru us/step", "x floor"], rows)]


def fma_peak(threads, seconds: float = 0.3) -> dict:
    """{(width, n_threads): (wall GFLOP/s, CPU-time GFLOP/s)} measured by bench/_fma_peak.c;
    {} without a compiler. Best of 3 runs each."""
    out = {}
    try:
        so = _fma_lib()
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"note: FMA peak not measured (compiling _fma_peak.c failed: {detail.strip()})")
        return out
    for width, lanes, nacc in ((512, 16, so.fma_peak_acc512()), (256, 8, so.fma_peak_acc256())):
        for n in threads:
            cpu = (ctypes.c_double * n)()
            iters = 1 << 20
            while True:  # grow until one run lasts long enough to time
                dt = so.fma_peak_run(width, iters, n, cpu)
                if dt < 0 or dt >= seconds:
                    break
                iters = int(iters * min(16.0, max(2.0, 1.2 * seconds / max(dt, 1e-6))))
            if dt == -2:
                print(f"note: FMA peak for {n} threads not measured: OpenMP ran fewer threads "
                      "(OMP_THREAD_LIMIT?)")
                continue
            if dt < 0:
                break  # the CPU lacks this instruction set
            per_thread = iters * nacc * lanes * 2 / 1e9
            wall, by_cpu = 0.0, 0.0
            for _ in range(3):
                dt = so.fma_peak_run(width, iters, n, cpu)
                wall = max(wall, n * per_thread / dt)
                by_cpu = max(by_cpu, sum(per_thread / max(c, 1e-9) for c in cpu))
            out[(width, n)] = (wall, by_cpu)
    return out


def sgemm_rate(threads, n: int = 2048, seconds: float = 0.5) -> dict:
    """{n_threads: (wall GFLOP/s, GFLOP per CPU second per thread x threads)} of a float32
    n x n x n matmul by NumPy's BLAS; each the best call (a peak, not a median)."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    out = {}
    for t in threads:
        walls, cpus = [], []
        with threadpool_limits(limits=t, user_api="blas"):
            np.matmul(a, b, out=c)
            start = time.perf_counter()
            while len(walls) < 3 or time.perf_counter() - start < seconds:
                t0, c0 = time.perf_counter(), time.process_time()
                np.matmul(a, b, out=c)
                walls.append(time.perf_counter() - t0)
                cpus.append((time.process_time() - c0) / t)
        out[t] = (2.0 * n ** 3 / min(walls) / 1e9, 2.0 * n ** 3 / max(min(cpus), 1e-9) / 1e9)
    return out


def machine_report(threads, quick: bool) -> dict:
    """CPU, BLAS and the measured FMA / SGEMM rates, printed and returned."""
    fma = fma_peak(threads, seconds=0.15 if quick else 0.3)
    gemm = sgemm_rate(threads, n=1536 if quick else 2048, seconds=0.3 if quick else 1.0)
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas_info(),
            "fma_gflops": {f"avx{w}_{n}t": v[1] for (w, n), v in fma.items()},
            "fma_wall_gflops": {f"avx{w}_{n}t": v[0] for (w, n), v in fma.items()},
            "sgemm_gflops": {f"{n}t": v[1] for n, v in gemm.items()},
            "sgemm_wall_gflops": {f"{n}t": v[0] for n, v in gemm.items()}}
    print(f"CPU: {info['cpu']} ({info['cores']} logical cores), Python {info['python']}, "
          f"NumPy {info['numpy']}")
    for b in info["blas"]:
        print(f"BLAS: {b['internal_api']} {b['version']} ({b['library']}), kernel "
              f"{b['architecture']}, {b['threading_layer']}, {b['num_threads']} threads")
    envs = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
    if envs:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in sorted(envs.items())))
    load = os.getloadavg()[0]
    info["load_1min"] = load
    print(f"load average (1 min) at start: {load:.2f}" + (
        "  WARNING: other work is running; timings and peaks are disturbed" if load > 0.5 else ""))
    for (w, n), (wall, by_cpu) in sorted(fma.items()):
        print(f"FMA peak avx{w} float32, {n} thread(s): {by_cpu:8.1f} GFLOP/s per CPU second "
              f"({wall:.1f} per wall second)")
    for n, (wall, by_cpu) in sorted(gemm.items()):
        print(f"SGEMM NumPy float32 {2048 if not quick else 1536}^3, {n} thread(s): "
              f"{by_cpu:8.1f} GFLOP/s per CPU second ({wall:.1f} per wall second)")
    if max(threads) > 1:
        info["core_round_trip_ns"] = [rt] if (rt := core_round_trip()) else []
        if rt:
            print(f"core-to-core round trip of a cache line: {rt:.0f} ns (paid at every step of a "
                  "split-units team: batch 1-6 on several threads)")
    return info


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over ``interval`` s (while this process sleeps, i.e. the
    share taken by other work); None where /proc/stat is missing."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


class OtherWork:
    """Share of all CPUs that work other than this process and its children used between
    ``start()`` and ``stop()`` (from /proc/stat and getrusage); None where unavailable."""

    def _sample(self):
        import resource
        total, idle = _cpu_times()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        return total, idle, ch.ru_utime + ch.ru_stime + time.process_time()

    def start(self):
        try:
            self._s0 = self._sample()
        except (OSError, ValueError, IndexError, ImportError):
            self._s0 = None
        return self

    def stop(self) -> float | None:
        if self._s0 is None:
            return None
        t1, i1, m1 = self._sample()
        t0, i0, m0 = self._s0
        hz = os.sysconf("SC_CLK_TCK")
        total_s = (t1 - t0) / hz
        if total_s <= 0:
            return None
        busy_s = ((t1 - t0) - (i1 - i0)) / hz
        return min(1.0, max(0.0, (busy_s - (m1 - m0)) / total_s))


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float | None:
    """Wait up to ``max_wait`` s for other work to drop below ``threshold`` of the CPUs;
    returns the last busy fraction seen."""
    deadline = time.perf_counter() + max_wait
    busy = busy_fraction()
    while busy is not None and busy > threshold and time.perf_counter() < deadline:
        busy = busy_fraction(1.0)
    return busy


def remeasure_peaks(info: dict, threads, quick: bool) -> None:
    """Measure FMA peak and SGEMM again and keep the better of the two runs: other work on a
    shared machine lowers a peak measured once, which would inflate the '% of peak' columns."""
    fma = fma_peak(threads, seconds=0.15 if quick else 0.3)
    gemm = sgemm_rate(threads, n=1536 if quick else 2048, seconds=0.3 if quick else 1.0)
    for key, new in (("fma_gflops", {f"avx{w}_{n}t": v[1] for (w, n), v in fma.items()}),
                     ("fma_wall_gflops", {f"avx{w}_{n}t": v[0] for (w, n), v in fma.items()}),
                     ("sgemm_gflops", {f"{n}t": v[1] for n, v in gemm.items()}),
                     ("sgemm_wall_gflops", {f"{n}t": v[0] for n, v in gemm.items()})):
        for k, v in new.items():
            info[key][k] = max(v, info[key].get(k, 0.0))
    if "core_round_trip_ns" in info and (rt := core_round_trip()):
        info["core_round_trip_ns"].append(rt)
    print("\npeaks per CPU second, best of start and end of the run: FMA " + ", ".join(
        f"{k} {v:.0f}" for k, v in info["fma_gflops"].items()) + "; SGEMM " + ", ".join(
        f"{k} {v:.0f}" for k, v in info["sgemm_gflops"].items()) + " GFLOP/s")
    if rts := info.get("core_round_trip_ns"):
        print("core-to-core round trip at start and end of the run: "
              + ", ".join(f"{v:.0f}" for v in rts) + " ns")


def peak_for(info: dict, n: int) -> float | None:
    """The best measured FMA rate for n threads (AVX-512 where available)."""
    vals = [v for k, v in info.get("fma_gflops", {}).items() if k.endswith(f"_{n}t")]
    return max(vals) if vals else None


# ----------------------------------------------------------------------------- tables

def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + [fmt(r) for r in rows])


def fmt_ms(t: float | None) -> str:
    if t is None:
        return "-"
    ms = t * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def build_identity() -> dict:
    """What code a run measured: the checkout's commit (and whether it had uncommitted
    changes) and the SHA-256 of the compiled extension, so that targets.py can tell runs of
    different builds apart."""
    import hashlib

    out = {"commit": None, "dirty": None, "extension_sha256": None}
    try:
        git = ["git", "-C", str(REPO)]
        out["commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=True).stdout.strip()
        status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
        out["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        from fastgru._cpu import _gru
        out["extension_sha256"] = hashlib.sha256(Path(_gru.__file__).read_bytes()).hexdigest()
    except (ImportError, OSError):
        pass
    return out


def save_json(path: str | None, payload: dict) -> None:
    if path:
        clean = {k: v for k, v in payload.items() if not k.startswith("_")}
        Path(path).write_text(json.dumps(clean, indent=1, default=str))
        print(f"results written to {path}")


STAT_TEXT = {"median": "median wall time of the timed calls",
             "min": "best wall time of the timed calls",
             "cpu": "median process CPU time per call, all threads together"}
STAT_KEY = {"median": "median_s", "min": "min_s", "cpu": "cpu_median_s"}  # in each record


def results_table(shapes, threads, peers, results, machine, flops_factor: float = 1.0,
                  stat: str = "median") -> str:
    """Markdown table: one row per (shape, threads), times in ms per peer, fastgru's speed-up
    over the fastest *verified* peer, and achieved GFLOP/s against the measured peaks.
    fastgru's time: ours_time (its frozen layer's row where that ran).

    ``results[peer][n]`` is what ``_peers.run_peer`` returned; ``stat``: "median" or "min"
    wall time, or "cpu" (median CPU time per call, all threads). A '!' after a time marks a
    result that disagreed with the reference (excluded from the baseline); 'err' a failure.
    """
    shown = [p for p in peers if any(results.get(p, {}).get(n, {}).get("results")
                                     for n in threads)]
    header = ["B x T x I x H", "thr"] + [f"{p} ms" for p in shown] + [
        "best peer", "speed-up", "fastgru GFLOP/s", "peer GFLOP/s", "% FMA peak", "% SGEMM"]
    key = STAT_KEY[stat]
    rows = []
    for s in shapes:
        for n in threads:
            recs = {p: results.get(p, {}).get(n, {}).get("results", {}).get(s.label)
                    for p in shown}
            cells = []
            for p in shown:
                r = recs[p]
                if r is None:
                    cells.append("-")
                elif "error" in r:
                    cells.append("err")
                else:
                    cells.append(fmt_ms(r[key]) + ("" if r["ok"] else "!"))
            good = lambda r: r is not None and "error" not in r and r["ok"]  # noqa: E731
            peer_t = {p: recs[p][key] for p in shown if p not in OURS and good(recs[p])}
            best = min(peer_t, key=peer_t.get) if peer_t else None
            flops = s.flops * flops_factor
            mine = ours_time({p: recs[p][key] for p in shown if good(recs[p])})
            gf = flops / mine / 1e9 if mine else None
            peak, gemm = peak_for(machine, n), machine.get("sgemm_gflops", {}).get(f"{n}t")
            if stat == "cpu":  # GFLOP per CPU second: against one thread's share of the peaks
                peak, gemm = (None if v is None else v / n for v in (peak, gemm))
            rows.append([s.label, n] + cells + [
                best or "-",
                f"{peer_t[best] / mine:.2f}x" if best and mine else "-",
                f"{gf:.1f}" if gf else "-",
                f"{flops / peer_t[best] / 1e9:.1f}" if best else "-",
                f"{100 * gf / peak:.1f}" if gf and peak else "-",
                f"{100 * gf / gemm:.1f}" if gf and gemm else "-"])
    return markdown_table(header, rows)


# The fastgru row that stands for it against the peers, the first that ran of: the frozen layer
# (GRU.freeze(): an inference snapshot, as an ONNX Runtime session or an OpenVINO compiled model
# is one), the engine call, the live layer. One row, not the best of several: every
# implementation gets the same number of chances on this noisy machine.
OURS_ORDER = ("fastgru.frozen", "fastgru", "fastgru.GRU")
OURS = OURS_ORDER + ("reference",)  # fastgru's rows: never the peers' baseline


def ours_time(times: dict):
    """fastgru's time among ``times`` ({row: seconds}, verified results only), or None."""
    for p in OURS_ORDER:
        if p in times:
            return times[p]
    return None


def rounds_line(results, rounds: int) -> str | None:
    """The line under the table of a run with --rounds N > 1: how its timings were chosen and
    how far apart the rounds were (worst / best round of the statistic they were chosen by)."""
    if rounds <= 1:
        return None
    recs = [(r["rounds"], f"{p} {n}t {r['shape']}") for p, v in results.items()
            for n, e in v.items() for r in e["results"].values() if r.get("rounds")]
    spreads = sorted((d["worst_s"] / d["best_s"], d["stat"], where) for d, where in recs
                     if d.get("best_s"))
    line = f"best of {rounds} interleaved rounds per (peer, threads, shape)"
    if spreads:
        ratio, stat, where = spreads[-1]
        line += (f"; spread of the {stat} across rounds (worst / best): median "
                 f"{spreads[len(spreads) // 2][0]:.2f}x, largest {ratio:.2f}x ({where})")
    return line


def error_summary(peers, threads, results) -> list[str]:
    """One line per peer: its largest verification error and any failures."""
    lines = []
    for p in peers:
        recs = [r for n in threads
                for r in results.get(p, {}).get(n, {}).get("results", {}).values()]
        if not recs:
            continue
        errs = [r["err"] for r in recs if "err" in r]
        fails = sorted({r["error"] for r in recs if "error" in r})
        bad = [r["shape"] for r in recs if "err" in r and r["err"] > TOLERANCE]
        used = {n: [r["cpu_per_wall"] for r in results[p][n]["results"].values()
                    if "cpu_per_wall" in r] for n in threads if n in results.get(p, {})}
        line = f"- {p}: max rel. error vs float64 reference {max(errs):.2e}" if errs else f"- {p}:"
        used = {n: sorted(v)[len(v) // 2] for n, v in used.items() if v}
        other = {n: results[p][n].get("other_busy_during") for n in threads
                 if n in results.get(p, {})}
        if used:
            line += "; CPU s per wall s (median over shapes): " + ", ".join(
                f"{v:.2f} at {n}t" for n, v in used.items())
        if any(v is not None for v in other.values()):
            line += "; other work during: " + ", ".join(
                f"{100 * v:.0f}% at {n}t" for n, v in other.items() if v is not None)
        if bad:
            line += f"  DISAGREES (> {TOLERANCE:g}) at {', '.join(sorted(set(bad)))}"
        for f in fails:
            line += f"; failed: {f}"
        lines.append(line)
    return lines


def print_report(args, kind: str, machine: dict, results: dict, versions: dict, notes: list,
                 t_start: float, flops_factor: float = 1.0, extra: dict | None = None) -> None:
    """Versions, the table, the verification summary and the footer; JSON when asked."""
    remeasure_peaks(machine, args.threads, args.quick)
    print("\nversions: " + "; ".join(f"{p} {v}" for p, v in versions.items()))
    print("\n" + results_table(args.shapes, args.threads, args.peers, results, machine,
                               flops_factor=flops_factor, stat=args.stat))
    if rounds_line(results, args.rounds):
        print(rounds_line(results, args.rounds))
    what = "the gradients (max over dx, dkernel, drecurrent_kernel, dbias) of " \
        if kind == "cpu_training" else ""
    print(f"\nverification of {what}each peer: max |peer - ref| / max |ref| against the "
          "float64 reference engine")
    print("\n".join(error_summary(args.peers, args.threads, results)))
    load = os.getloadavg()[0]
    print(f"\ntimes in ms ({STAT_TEXT[args.stat]}); '!' = disagrees with the reference "
          f"by > {TOLERANCE:g} (not used as baseline); 'err' = failed; '-' = not run. "
          f"Load average {machine['load_1min']:.2f} at start, {load:.2f} at end; "
          f"total {time.perf_counter() - t_start:.0f} s")
    save_json(args.json, {"kind": kind, "machine": machine, "versions": versions,
                          "build": build_identity(), "stat": args.stat,
                          "notes": notes, "results": results, "load_end": load,
                          "shapes": [s.label for s in args.shapes], "threads": args.threads,
                          "peers": args.peers, "rounds": args.rounds, **(extra or {})})


def render_saved(path: str, stat: str = "median") -> None:
    """Print the table and verification summary of a run saved with --json."""
    d = json.loads(Path(path).read_text())
    results = {p: {int(n): r for n, r in v.items()} for p, v in d["results"].items()}
    threads = d.get("threads") or sorted({n for v in results.values() for n in v})
    labels = d.get("shapes") or list(dict.fromkeys(
        lab for v in results.values() for r in v.values() for lab in r["results"]))
    peers = d.get("peers") or list(results)
    m = d["machine"]
    print(f"{d['kind']} run saved in {path}: {m.get('cpu')}, load {m.get('load_1min', 0):.2f} "
          f"at start, {d.get('load_end', 0):.2f} at end")
    print("\n" + results_table(parse_shapes(",".join(labels)), threads, peers, results, m,
                               flops_factor=3.0 if d["kind"] == "cpu_training" else 1.0,
                               stat=stat))
    if rounds_line(results, d.get("rounds", 1)):
        print(rounds_line(results, d.get("rounds", 1)))
    print("\n".join(error_summary(peers, threads, results)))
    print(f"\ntimes in ms ({STAT_TEXT[stat]})")
