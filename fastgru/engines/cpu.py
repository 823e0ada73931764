"""The compiled CPU engine: validation and allocation in Python, the time loop in C.

Same contract as ``engines/base.py`` (see reference.py for the maths). Everything is checked
and made C-contiguous here, then ``fastgru._cpu._gru`` runs the whole layer without the GIL:

- input projection ``x @ kernel`` over chunks of time steps (bounded workspace) by the same
  packed-panel FMA kernel as the per-step product (kernel packed once per weight version), or
  as BLAS GEMMs (scipy.linalg.cython_blas, pinned to one thread per call) with the generic
  kernel or ``FASTGRU_CPU_PROJ=blas`` (the portable path and a cross-check);
- per step, the recurrent product by a fixed-order FMA kernel over packed column panels
  (AVX-512 / AVX2 / generic chosen at run time; every variant gives the same bits), then one
  fused C pass for the gates, mask select and output write; a one-row AVX-512 step also
  projects the inputs of later steps (a block of eight ahead) in the FMA slots its L2-bound
  product leaves idle (src_c/gru.c, fg_fuse_projection);
- threads: batch rows split across OpenMP threads, each running its rows' whole time loop; a
  batch smaller than the thread count splits the units instead (one barrier per step; teams of
  one or two rows on AVX-512 exchange h inside the next step's product instead, see
  fg_overlap in src_c/gemm.c); every time loop visits its product's panels in the opposite
  order at every other step (fg_zigzag).

Determinism: on the AVX2 and AVX-512 kernels with the default settings, a row's result depends
neither on the thread count nor on the other rows of the batch (every product is a fixed-order
FMA kernel over packed panels, row-independent by construction). The BLAS paths (the generic
kernel's input projection and gradients, FASTGRU_CPU_PROJ=blas, FASTGRU_CPU_WGRAD=blas) do not
promise it: BLAS rounds a row by its place in the blocks it tiles (~1e-7 relative in float32);
``describe_kernel`` (``explain``) says when a call takes them.

Kernel selection for tests and diagnosis: ``kernel=`` argument or the ``FASTGRU_CPU_KERNEL``
environment variable, one of "auto", "avx512", "avx2", "generic".
``FASTGRU_CPU_FUSED=0`` runs the separate gate passes instead of the fused one (same bits;
for tests), ``FASTGRU_CPU_FUSED_PROJ=0`` projects whole chunks up front even where one-row
steps would project later steps inside their recurrent product (same bits),
``FASTGRU_CPU_WGRAD=blas`` the backward's GEMMs on BLAS instead of the AVX2/AVX-512
packed kernel, ``FASTGRU_CPU_BWD_SPLIT=0`` a backward by rows where the forward split the units
(same bits). ``FASTGRU_CPU_L1_PREFETCH`` and ``FASTGRU_CPU_GATE_PREFETCH`` (0 / 1, read once
per process) override two software-prefetch defaults that were measured per CPU (src_c/gemm.c);
prefetches never change a result. ``FASTGRU_CPU_ZIGZAG=0`` keeps the per-step products'
panels in one order at every step (by default the order alternates, so that each step starts
on the panels still in cache; the same bits); ``FASTGRU_CPU_OVERLAP=0`` puts back the barrier
after every step of a one-/two-row split-units team (by default a thread waits for its partners'
units of h inside the next step's product; the same bits). ``FASTGRU_CPU_STRIPS=0 / 1`` turns off
/ on the AVX-512 products' repacking of their left operand (h, or the projection's inputs) in
groups of four k per row, rows side by side, where a product has four or more rows and eight or
more panels (on by default on Intel CPUs, where it was measured; the same bits).

Packed weights (kernel and recurrent kernel) are cached across calls when the caller names
their version with ``weights_key`` (the kernel's threads compare a hit bitwise with the weights
before they use it). ``Snapshot`` (behind ``RNN.freeze``) copies and packs them once instead
and trusts its own copies: the per-call check and lookups go. Threads: ``n_threads`` per
call, default ``fastgru._threads.get_num_threads()``, capped by the work; a process fork()ed
from a parent that ran OpenMP threads runs on one thread (GNU OpenMP would hang it).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import threading
import time
import weakref
from collections import OrderedDict

import numpy as np

from .. import _threads, activations
from .base import DropoutMasks, Gradients, GRUSpec, Tape, Weights

NAME = "cpu"

# GNU OpenMP's idle workers spin GOMP_SPINCOUNT pause iterations after each parallel region
# before they sleep: by default 300,000, ~5-8 ms here on Zen 4 (longer where pause is slower),
# during which a NumPy / OpenBLAS call in the same process fights them for the cores. 2 cores: a
# 2-thread 3200x128x64 matmul right after a 2-thread fastgru call took 1.5-1.7 ms instead of
# 0.29. 10,000 (~0.2 ms) still finds them awake for back-to-back calls (1-step call 19 us
# either way) and gave 0.43 ms. Applied only to the libgomp that loading the extension
# initialises (one already loaded keeps its setting; a wheel's bundled libgomp is private to
# it, a system one is shared with the process's other OpenMP code loaded later), never over a
# user's GOMP_SPINCOUNT or OMP_WAIT_POLICY (in os.environ or set in C by an embedding host),
# and the environment is restored right after.
_SPIN_DEFAULT = "10000"
_SPIN_KEYS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def _user_set_spin() -> bool:
    if any(k in os.environ for k in _SPIN_KEYS):
        return True
    try:  # the C environment too (os.environ does not see setenv calls made after startup)
        import ctypes

        getenv = ctypes.CDLL(None).getenv
        getenv.restype, getenv.argtypes = ctypes.c_char_p, [ctypes.c_char_p]
        return any(getenv(k.encode()) is not None for k in _SPIN_KEYS)
    except Exception:  # no C library to ask: os.environ only
        return False


def _import_extension():
    mine = not _user_set_spin()
    if mine:
        os.environ["GOMP_SPINCOUNT"] = _SPIN_DEFAULT
    try:
        from .._cpu import _gru as ext
    finally:
        if mine:
            del os.environ["GOMP_SPINCOUNT"]
    return ext


try:
    _gru = _import_extension()
    _IMPORT_ERROR = None
    _gru.ptr_prefetch()  # FASTGRU_CPU_L1_PREFETCH read now, before any thread team
    _gru.gate_prefetch()  # FASTGRU_CPU_GATE_PREFETCH (and the CPU's vendor) likewise
    _gru.zigzag()  # FASTGRU_CPU_ZIGZAG likewise
    _gru.overlap()  # FASTGRU_CPU_OVERLAP likewise
    _gru.strips()  # FASTGRU_CPU_STRIPS (and the CPU's vendor) likewise
    _gru.kb_own()  # FASTGRU_CPU_KB_OWN likewise
    _OMP_THREAD_LIMIT = _gru.omp_thread_limit()  # fixed for the process
except ImportError as exc:  # source tree without a build: everything else still works
    _gru = None
    _IMPORT_ERROR = exc
    _OMP_THREAD_LIMIT = 1

_ISA = {"generic": 0, "avx2": 1, "avx512": 2}
_ISA_NAME = {v: k for k, v in _ISA.items()}
# Input-projection GEMMs aim at this many rows, and their output chunk at most this many bytes.
# 512 rather than 1024: a smaller chunk of projected inputs is still in cache when the time loop
# reads it. Sapphire Rapids, one-process A/B over two runs, 512 against 1024: 64x200x128x256
# +2-3% (1 thread) / +6-10% (2), 16x500x512x1024 0 to +11% / level, 256x50x256x512, 32x100x64x128
# and 1x1000x128x256 level; 256 was no better than 512 and lost 3% at 256x50x256x512 once.
_PROJ_ROWS = 512
_CHUNK_BYTES = 8 << 20
# Recurrent kernels bigger than this (bytes) do not stay in a core's L2: then threads split the
# units even for large batches, so that each streams only its share of U every step.
_U_L2_BYTES = 1 << 20
# The least recurrent work (multiply-adds of the steps' products over the call) for which a
# backward splits the units (_split_backward).
_BWD_SPLIT_MIN_WORK = 8 << 20
_SPLIT_MAX_ROWS = 32
# Below this much per-step work (B * u * 3u multiply-adds) a barrier per step costs more than
# splitting the units gains, so a small batch stays on fewer threads (split or not, the rows'
# bits are the same). Measured at
# (1,1000,128,256), 2 threads (196608 per step): split 7.2-7.8 ms against 11.4 ms unsplit with
# the other core lightly loaded; but 54-100 ms when other work kept both cores busy (a barrier
# then waits for a descheduled partner). 2^20 was tried and reverted: it loses the common case.
# With the grouped per-thread product and the spinning barrier (~190 ns), 2^15 pays off:
# (1,100,64,128) 49152 per step, 2 threads split 0.198 ms against 0.243 on one. 2^14 on Zen 5:
# (1,100,64,96) (27648 per step) split 0.85 us per step against 1.20 on one thread.
_SPLIT_MIN_WORK = 1 << 14
# A split team meets at a barrier every step: when another process takes a core from one of its
# threads the others wait (spin, then yield) and the call runs far slower than on one thread
# (Zen 4, 1x100x64x128 with a busy loop on one of the two cores: 2 threads split 0.52 ms mean,
# p99 11.7 ms, against 0.26 / 0.32 on one thread; idle 0.18 / 0.29). The kernel counts the
# barrier waits that outlast the spin: a call with _LATE_WAITS of them, and at least
# _LATE_SHARE of its steps, puts what would split on one thread for _CONTENDED_SECONDS.
# Measured there: with the busy loop, 6% of the calls had late waits, 37 on average; idle,
# ~0.1% had some (this VM's hiccups), mostly one. The share: long steps (16x500x512x1024, U
# streaming from L3, ~0.7 ms a step) outlast the spin (~0.1 ms) on mere imbalance or a hiccup:
# 2-24 of 500 waits per call when idle, and with the count alone every other call then ran on
# one thread (0.69 s against 0.35; a benchmark median of 0.53); with the busy loop 193-271 of
# 500 (1x1000x128x256: all of them, 114 ms against 9.5 on one thread).
_LATE_WAITS = 4
_LATE_SHARE = 1 / 8
_CONTENDED_SECONDS = 0.5
_contended_until = 0.0  # time.perf_counter() until which nothing splits the units
# A call uses one more thread only per this many multiply-adds of work (B*T*3u*(D+u) forward;
# the backward and the weight-gradient GEMMs each do about as much). 2^23 is ~0.1-0.3 ms of one
# core. Starting a second thread costs a few microseconds on an idle machine, but on a busy one
# the woken thread may wait a whole scheduler time slice (milliseconds) for a core, and the
# call waits with it: a tiny problem (B=2, u=3) took 5-12 ms on 2 threads against 0.02-0.2 ms
# on one. Below the threshold the loss from a delayed thread exceeds the best-case gain.
# Not applied to a split of the units (see _plan), whose gain is per step. Tried and reverted
# (a1f0ea6): lifting the cap for a call within 0.1 ms of the previous one, while GNU OpenMP's
# workers still spin. On an idle Zen 4 back-to-back calls gained (32x1x64x128 2 threads 68 ->
# 44 us median), but with another process holding one core the mean tripled (4x4x64x64: 22 ->
# 72 us, p99 40 us -> 1.06 ms; 32x1x64x128: 70 -> 217 us): a spinning worker that loses its
# core makes every call wait for it.
_MIN_THREAD_WORK = 1 << 22


# GNU OpenMP cannot run a multi-threaded region in a fork()ed child once the parent has run one
# (the child hangs): such children run the kernels on one thread.
_omp_team_used = False
_forked_child = False


def _after_fork_in_child():
    global _forked_child
    _forked_child = _forked_child or _omp_team_used


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Threads beyond a few per CPU only cost (a call's count is capped by its work, which at large
# shapes allows thousands: n_threads=10**6 started 603 OS threads on 2 cores, and aborted the
# process where an address-space limit stopped the thread stacks); the cap leaves room for
# tests that check bits across more threads than a small machine has
_THREAD_CAP = 4 * max(1, os.cpu_count() or 1)  # (os.cpu_count() costs ~2 us: once)


def _max_threads(n: int) -> int:
    global _omp_team_used
    if _forked_child or not _gru.openmp():
        return 1
    n = min(n, _THREAD_CAP)
    if n > 1:
        _omp_team_used = True
    return n


#: forward() takes h0=None as a zero initial state (beyond the engine contract's (B, u)).
H0_NONE_IS_ZEROS = True


def release_memory() -> int:
    """Free what the engine keeps for later calls: packed kernels, the record pool (training
    records, outputs and gradients released by their users), this thread's scratch arrays and
    the C kernels' kept workspaces. Returns the bytes of pooled buffers, scratch and
    workspaces released (arrays under 1 MB are not pooled and not counted). Calls afterwards
    work as before; the first ones allocate (and page-fault) afresh."""
    freed = 0
    with _pack_lock:  # pooled arrays: they go to the pool, drained next
        _PACK_CACHE.clear()
    while _pool:
        try:
            freed += _pool.pop().raw.nbytes
        except IndexError:  # emptied meanwhile by another thread
            break
    for name, buf in list(vars(_scratch_local).items()):
        freed += buf.nbytes
        delattr(_scratch_local, name)
    if _gru is not None:
        freed += _gru.workspace("trim")
    return freed


def available() -> bool:
    """True when the compiled extension is importable."""
    return _gru is not None


_KNOWN_CODES = frozenset(activations.CODES.values())


def supports(spec: GRUSpec) -> tuple[bool, str]:
    """Whether this engine runs ``spec``, and why not."""
    if _gru is None:
        return False, f"the compiled CPU extension is not built ({_IMPORT_ERROR})"
    for what, act in (("activation", spec.activation),
                      ("recurrent_activation", spec.recurrent_activation)):
        code = getattr(act, "code", None)
        if code is None:
            return False, (f"{what} {act!r} is a Python callable; compiled kernels know only "
                           "the built-in Keras activations")
        if code not in _KNOWN_CODES:  # a hand-made Activation: the kernels would skip it
            return False, (f"{what} {act!r} has code {code!r}, which is not one of the "
                           "compiled kernels' activation codes")
    return True, "all activations are built-in"


def _env(name: str, default: str) -> str:
    """An environment setting, read on every call (tests and users may change it at any
    time) through the C environment where the extension is built."""
    return os.environ.get(name, default) if _gru is None else _gru.env(name, default)


def _fused_gates() -> bool:
    """Whether the per-step gate pass may take the fused loop (``FASTGRU_CPU_FUSED=0``: never;
    the same bits either way)."""
    return _env("FASTGRU_CPU_FUSED", "1") != "0"


def _fused_projection() -> bool:
    """Whether batch-1/2 steps may compute the input projection of later steps inside their
    recurrent product (AVX-512; ``FASTGRU_CPU_FUSED_PROJ=0``: never; the same bits either way)."""
    return _env("FASTGRU_CPU_FUSED_PROJ", "1") != "0"


def _split_backward(B: int, T: int, u: int, itemsize: int, nthr: int, split: bool) -> bool:
    """Whether the per-step backward of a call whose forward plan is (nthr, split) splits the
    units too: where the rows cannot keep every thread busy, or U^T exceeds a core's L2, and
    the steps' products are worth a team (``FASTGRU_CPU_BWD_SPLIT=0``: by rows always; the
    same bits either way). One-process A/B, Intel Xeon with 2 MB L2, training step on 2
    threads, split / rows: 1x1000x128x256 +15%, 6x100x256x512 +11%, 1x300x64x128 +11%,
    1x200x64x192 +8%, 4x200x128x256 level; 2x300x128x256 -1-2% (one row per thread is no
    worse there), hence not with as many rows as threads and U^T within L2; 1x100x64x128 level
    (the backward alone ~10% slower: a fixed cost of the team against 0.2-0.6 us gained per
    step), hence _BWD_SPLIT_MIN_WORK."""
    return (split and nthr > 1 and (B < nthr or 3 * u * u * itemsize > _U_L2_BYTES)
            and not _little_recurrent_work(B, T, u)
            and _env("FASTGRU_CPU_BWD_SPLIT", "1") != "0")


def _little_recurrent_work(B: int, T: int, u: int) -> bool:
    """Whether the steps' recurrent products of a call (B T 3u u multiply-adds) are below
    _BWD_SPLIT_MIN_WORK: too little for a backward team."""
    return B * T * 3 * u * u < _BWD_SPLIT_MIN_WORK


def _training_forward_alone(B: int, T: int, u: int, nthr: int, split: bool) -> bool:
    """Whether a training forward that would split the units runs on one thread instead:
    fewer rows than threads and too little work for the backward to split (_split_backward),
    so its time loop runs on the rows' threads and would read the record the team's other
    cores wrote from their caches. Intel Xeon, training step at 1x100x64x128: 0.70 ms with a
    two-thread forward team (0.71 with its backward on one thread too), 0.65 with both the
    forward and the backward on one thread."""
    return split and nthr > B and _little_recurrent_work(B, T, u)


def _kernel_request(kernel):
    """The kernel asked for: ``kernel=``, else FASTGRU_CPU_KERNEL; None for "auto"."""
    name = kernel if kernel is not None else _env("FASTGRU_CPU_KERNEL", "auto")
    return None if name in (None, "", "auto") else name


def _isa(kernel) -> int:
    best = _gru.isa_best()
    name = _kernel_request(kernel)
    if name is None:
        return best
    if name not in _ISA:
        raise ValueError(f"kernel must be one of 'auto', 'avx512', 'avx2', 'generic'; got {name!r}")
    isa = _ISA[name]
    if isa > best:
        raise ValueError(f"kernel {name!r} is not supported by this CPU (best: {_ISA_NAME[best]})")
    return isa


def _work_threads(work: int, n_threads: int) -> int:
    """Threads worth starting for ``work`` multiply-adds: at most one per _MIN_THREAD_WORK."""
    return max(1, min(n_threads, work // _MIN_THREAD_WORK)) if _MIN_THREAD_WORK else n_threads


def _packed_projection(isa: int) -> bool:
    """Whether the input projection runs on the packed-panel kernel (else BLAS):
    ``FASTGRU_CPU_PROJ`` = "panels" / "blas", or "auto": panels with AVX2 or AVX-512 (as fast as
    the wheels' OpenBLAS at large chunks, ~10-60% faster at small D or few rows, and no BLAS
    call per chunk); BLAS for the generic kernel, which has no vector FMA."""
    name = _env("FASTGRU_CPU_PROJ", "auto")
    if name not in ("auto", "panels", "blas", ""):
        raise ValueError(f"FASTGRU_CPU_PROJ must be 'auto', 'panels' or 'blas'; got {name!r}")
    return name == "panels" or (name in ("auto", "") and isa != _ISA["generic"])


_NO_PIN = contextlib.nullcontext()


def _plan(B: int, T: int, D: int, u: int, itemsize: int, n_threads: int):
    """(threads, split_units, chunk steps, reason). The result never changes any number: rows
    are bit-identical on every plan. Cached (with the tunables in the key, which tests patch)."""
    contended = time.perf_counter() < _contended_until
    # never a team larger than OpenMP grants (OMP_THREAD_LIMIT): the kernels would run a split
    # team's work on one thread, and a backward's rows on fewer
    n_threads = max(1, min(n_threads, _OMP_THREAD_LIMIT))
    return _plan_cached(B, T, D, u, itemsize, n_threads, contended, _MIN_THREAD_WORK,
                        _SPLIT_MIN_WORK, _U_L2_BYTES, _SPLIT_MAX_ROWS, _PROJ_ROWS, _CHUNK_BYTES)


def _note_late_waits(late: int, steps: int) -> None:
    """After a call of ``steps`` time steps: _LATE_WAITS late barrier waits, and at least
    _LATE_SHARE of its steps, stop the unit split for a while."""
    global _contended_until
    if late >= _LATE_WAITS and late >= _LATE_SHARE * steps:
        _contended_until = time.perf_counter() + _CONTENDED_SECONDS


@functools.lru_cache(maxsize=256)
def _plan_cached(B, T, D, u, itemsize, n_threads, contended, *_tunables):
    panel = 256 // itemsize
    npu = -(-u // panel)
    per_step = B * u * 3 * u
    big_u = u * 3 * u * itemsize > _U_L2_BYTES and B / n_threads < _SPLIT_MAX_ROWS
    # At most three rows per thread: each thread would stream all of U every step for tiles of
    # one to three rows (bound by L2 bandwidth, ~35-40% of the FMA peak); split, each streams
    # its share with all B rows in one tile. Measured on Zen 5, 2 threads, T=100, u=128: batch
    # 1 split 1.00 us/step against 1.48 on one thread (rows cannot split further); batch 2 1.43
    # against 1.75 by rows; batch 4 level; batch 5 2.73 / 3.03, batch 6 2.98 / 3.29 (u=256:
    # 9.4 / 10.7); batch 7 5.7 / 3.4 and batch 8 4.3 / 3.5 (rows of 4 + 3 / 4 per thread are
    # efficient tiles, and a 7-row split takes a 6-row and a 1-row pass over the panels).
    few_rows = B <= 3 * n_threads
    capped = ""
    splits = n_threads > 1 and npu >= 2 and per_step >= _SPLIT_MIN_WORK and (big_u or few_rows)
    if splits and contended:
        # so few rows in row groups would wait for a descheduled thread at the end instead
        nthr, split = 1, False
        why = (f"1 thread: for {_CONTENDED_SECONDS:g} s after a split team kept waiting at its "
               "barriers for threads that had lost their cores (another process is using them)")
    elif splits:
        # No cap by the total work here: the split pays from the first step (1x1x64x128: 16
        # against 22 us on one thread).
        nthr, split = min(n_threads, npu), True
        why = (f"{nthr} threads split the {u} units ("
               + ("the recurrent kernel exceeds a core's L2 and the batch is small"
                  if big_u else f"batch {B}: at most three rows per thread")
               + ": each thread streams only its share of U; one barrier per step)")
    else:
        work = B * T * 3 * u * (D + u)
        if _work_threads(work, n_threads) < n_threads:
            n_threads = _work_threads(work, n_threads)
            capped += (f"capped at {n_threads} by the work ({work} multiply-adds; one thread "
                       f"per {_MIN_THREAD_WORK}): ")
        nthr, split = min(n_threads, max(B, 1)), False
        if nthr == n_threads:
            why = (f"{nthr} thread(s), each running the whole time loop for its share of the "
                   f"{B} batch rows (no synchronisation between steps)")
        else:
            why = (f"batch {B} and {u} units are too small to split across {n_threads} threads"
                   f": {nthr} thread(s)")
    why = capped + why
    groups = 1 if split else nthr
    rows = -(-max(B, 1) // groups)
    chunk = -(-_PROJ_ROWS // rows)
    chunk = max(1, min(T, chunk, _CHUNK_BYTES // max(1, rows * 3 * u * itemsize)))
    return nthr, split, chunk, why


def _shape3(shape, name):
    """``shape`` as (B, T, D), three integers >= 0; else a ValueError naming it."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:  # not iterable, or a dimension that is no integer (float, None)
        dims = None
    if dims is None or len(dims) != 3 or min(dims) < 0:
        raise ValueError(f"{name} must be (batch, timesteps, features), three integers >= 0; "
                         f"got {shape!r}")
    return dims


def describe_kernel(spec: GRUSpec, x_shape, n_threads=None, kernel=None,
                    dtype=np.float32, training=True) -> str:
    """Which kernels and threading a call with input shape ``x_shape`` would use, and why
    (``training``: also the backward's)."""
    B, T, D = _shape3(x_shape, "x_shape")
    ok, why = supports(spec)
    if not ok:
        return f"cpu engine unavailable: {why}"
    n = _threads.resolve(n_threads)
    nthr, split, chunk, how = _plan(B, T, D, spec.units, np.dtype(dtype).itemsize, n)
    if _forked_child and nthr > 1:
        how = ("1 thread: this process was fork()ed after its parent ran OpenMP threads, and "
               "GNU OpenMP cannot start a thread team in such a child")
    elif not _gru.openmp() and nthr > 1:
        how = "1 thread: the extension was built without OpenMP (FASTGRU_NO_OPENMP)"
    nbwd = _work_threads(B * T * 3 * spec.units * (D + spec.units), n)
    if _forked_child or not _gru.openmp():
        nbwd = 1
    isa_code = _isa(kernel)
    isa = _ISA_NAME[isa_code]
    packed_proj = _packed_projection(isa_code)
    isa_why = (f"forced by {'kernel=' if kernel is not None else 'FASTGRU_CPU_KERNEL'}"
               if _kernel_request(kernel) is not None else
               "the best this CPU runs; order avx512, avx2, generic; CPUID at load")
    gemms = "one GEMM" if spec.reset_after else "two GEMMs (z|r, then (r*h)@Uh)"
    fused = (spec.reset_after and spec.activation.code == 1
             and spec.recurrent_activation.code == 2
             and _fused_gates())
    gate = ("one fused gate/mask/output loop per row (tanh/sigmoid, reset_after)" if fused
            else "separate gate passes (activation loops by code)")
    proj = (f"the {isa} packed-panel FMA kernel (kernel packed once per weight version)"
            if packed_proj else "BLAS GEMMs")
    rows = max(B, 1) if split else -(-max(B, 1) // max(nthr, 1))  # rows per time loop
    if rows > 1:
        gate += (", " + ("with" if _gru.gate_prefetch() else "without")
                 + " an L2 prefetch of the next row's gate inputs (off on Intel CPUs, whose"
                   " own prefetchers keep up; FASTGRU_CPU_GATE_PREFETCH=0/1 overrides)")
    infused = ""
    if isa == "avx512" and rows <= 2:
        panel = 256 // np.dtype(dtype).itemsize
        npu = -(-spec.units // panel)
        npt = -(-npu // (nthr if split else 1))  # panels per gate of the busiest thread
        share = 3 * npt * spec.units * 256  # bytes per thread
        gemms += (" (one-/two-row pointer tiles over the thread's panels of all gates, "
                  + ("with" if _gru.ptr_prefetch(share) else "without")
                  + " software L1 prefetches: off while a thread's panels fit in 1 MB,"
                    " FASTGRU_CPU_L1_PREFETCH=1 turns them on)")
        # batch-split time loops take floor or ceil(B / threads) rows: those of one row fuse
        one_row = max(B, 1) if split else max(B, 1) // max(nthr, 1)
        if (one_row == 1 and packed_proj and _fused_projection()
                and _gru.fuse_projection(isa_code, np.dtype(dtype).itemsize == 8, 1, npt,
                                         spec.units, D)):
            infused = (" (" + ("" if rows == 1 else "in the time loops of one row: ")
                       + f"all but each chunk's first {_gru.PROJ_JOB_ROWS} steps projected"
                         " inside earlier steps' recurrent products, in the FMA slots a one-row"
                         " product leaves idle while U streams from L2; not with input or"
                         " recurrent dropout)")
    text = (f"cpu engine (compiled Cython/OpenMP), {isa} kernels ({isa_why}): input "
            f"projection by {proj} over chunks of {chunk} steps{infused}; per step {gemms} by "
            f"the {isa} packed-panel FMA kernel"
            + (", its panels in the opposite order at every other step (each step starts on"
               " those the last one left in cache; FASTGRU_CPU_ZIGZAG=0 turns it off)"
               if _gru.zigzag() else "")
            + (", reading their rows of h (and the projection its rows of x) repacked in groups"
               " of four k side by side where a product has 4+ rows and 12+ panels (one line"
               " holds several k's broadcasts; FASTGRU_CPU_STRIPS=0/1 overrides, on by default"
               " on Intel CPUs)" if isa == "avx512" and _gru.strips() else "")
            + f", then {gate}; threads: {how}")
    if (split and nthr > 1 and rows <= 2 and isa == "avx512" and spec.reset_after
            and packed_proj and _gru.overlap()):
        text = text.replace("; one barrier per step)", ")")
        text += ("; the cores exchange h without a barrier per step: each waits for its"
                 " partners inside the next step's product, the first after the part that reads"
                 " only its own units (FASTGRU_CPU_OVERLAP=0 turns it off)")
    blas_wgrad = training and _packed_wgrad(isa_code) is None
    caveat = ("" if packed_proj and not blas_wgrad else
              "; with BLAS on this path a row's bits may depend on the other rows of its batch"
              " and on the thread count (~1e-7 relative; the packed-panel kernels of AVX2 and"
              " AVX-512 guarantee them)")
    if not training:
        return text + caveat + "."
    bsplit = (_split_backward(B, T, spec.units, np.dtype(dtype).itemsize, nthr, split)
              and not _forked_child and _gru.openmp() and spec.reset_after
              and spec.activation.code == 1 and spec.recurrent_activation.code == 2
              and _fused_gates())
    steps = (f"{nthr} threads splitting the units as the forward's (by rows instead with"
             " recurrent dropout)" if bsplit else f"{min(nbwd, max(B, 1))} thread(s)")
    if _training_forward_alone(B, T, spec.units, nthr, split):
        steps = ("1 thread, and its forward too (fewer rows than threads and too little work"
                 " for the backward to split the units: one thread would read the record the"
                 " team wrote from the other cores' caches)")
    return (text + f"; training: per-step backward on {steps}, "
            f"weight-gradient GEMMs on {nbwd} by "
            + (f"the K-blocked {isa} packed-panel kernel"
               + (" (each thread packing its own panels where they share out evenly)"
                  if _gru.kb_own() and nbwd > 1 else "") if not blas_wgrad
               else "BLAS (one thread per block)") + caveat + ".")


# ----------------------------------------------------------------------------------------------
# validation helpers

def _array(a, name, dtype, shape):
    if type(a) is np.ndarray and a.dtype == dtype and a.shape == shape \
            and a.flags.c_contiguous:
        return a  # the common case, without the checks below
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"{name}: the cpu engine takes NumPy arrays, got {type(a).__module__}."
                        f"{type(a).__name__} (use the GPU engines for device arrays)")
    a = np.asarray(a)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name} (the dtype of x), "
                        f"got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return np.ascontiguousarray(a)


_NO_STEPS = "x has 0 timesteps; a GRU needs at least one"
_MAX_DIM = 2**31 - 2**20  # the kernels' int indices, with room for a chunk past the end


def _check_size(shape):
    B, T, D = shape
    if B * T > _MAX_DIM or D > _MAX_DIM:  # (B * T >= B, T)
        raise ValueError(f"x has shape {shape}: the cpu engine takes at most {_MAX_DIM} rows, "
                         "steps and features, and rows x steps (its kernels index in 32 bits)")


def _input(x, dtype=None):
    """x as a NumPy array of 3 dimensions and a float dtype (``dtype`` where given)."""
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError("x: the cpu engine takes NumPy arrays (use the GPU engines for device "
                        "arrays)")
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (batch, timesteps, features), got {x.shape}")
    _check_size(x.shape)
    if dtype is None and x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"x must have dtype {np.dtype(dtype).name} (the weights' dtype), got "
                        f"{x.dtype}")
    return x


def _as_weights(weights) -> Weights:
    if isinstance(weights, Weights):
        return weights
    if isinstance(weights, (tuple, list)) and len(weights) in (2, 3):
        return Weights(*weights)
    raise TypeError("weights must be a Weights(kernel, recurrent_kernel, bias)")


def _mask(mask, B, T):
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != (B, T):
        raise ValueError(f"mask must have shape (batch, timesteps) = {(B, T)}, got {m.shape}")
    if m.dtype != np.bool_:
        if not (np.issubdtype(m.dtype, np.number)):
            raise TypeError(f"mask must be boolean (or numeric, nonzero = keep), got {m.dtype}")
        m = m != 0
    return np.ascontiguousarray(m).view(np.uint8)


def _check_spec(spec):
    if not isinstance(spec, GRUSpec):
        raise TypeError(f"spec must be a GRUSpec, got {type(spec).__name__}")
    if type(spec.units) is int and spec.units >= 1 and _gru is not None \
            and getattr(spec.activation, "code", None) in _KNOWN_CODES \
            and getattr(spec.recurrent_activation, "code", None) in _KNOWN_CODES:
        return  # the common case, without building supports()' messages
    ok, why = supports(spec)
    if not ok:
        raise ValueError(f"cpu engine cannot run this layer: {why}")
    if isinstance(spec.units, bool) or not isinstance(spec.units, int) or spec.units < 1:
        raise ValueError(f"spec.units must be a positive int, got {spec.units!r}")


def _aligned_empty(n, dtype):
    """A 1-D array of n elements whose data starts on a 64-byte boundary (NumPy guarantees only
    16): the kernels' 64-byte panel rows must not straddle cache lines, or every load of the
    recurrent kernel touches two lines (measured: 1x1000x64x128 ran 1.5x slower). From the
    record pool from 1 MB on (a training step repacks its changed weights every call)."""
    dtype = np.dtype(dtype)
    if n * dtype.itemsize >= _POOL_MIN_BYTES:
        return _record_array((n,), dtype)
    return _aligned_bytes(n * dtype.itemsize).view(dtype)


def _aligned_bytes(nbytes):
    """nbytes of uninitialised memory (uint8) starting on a 64-byte boundary."""
    raw = np.empty(nbytes + 64, np.uint8)
    off = -raw.ctypes.data % 64
    return raw[off:off + nbytes]


def _pack(mat, col0, ncols, itemsize, dst=None, scratch=None):
    """Panels of columns [col0, col0 + ncols) of mat: into dst, else this thread's scratch
    array named ``scratch``, else a fresh aligned array."""
    panel = 256 // itemsize
    n = (-(-ncols // panel)) * mat.shape[0] * panel
    if dst is None:
        dst = _aligned_empty(n, mat.dtype) if scratch is None else _scratch(scratch, (n,),
                                                                              mat.dtype)
    _gru.pack(mat, col0, ncols, dst)
    return dst


def _pack_recurrent(U, u):
    """Per gate g the panels of columns [g*u, (g+1)*u): the layout fg_forward reads."""
    panel = 256 // U.itemsize
    per = (-(-u // panel)) * U.shape[0] * panel
    out = _aligned_empty(3 * per, U.dtype)
    for g in range(3):
        _pack(U, g * u, u, U.itemsize, out[g * per:(g + 1) * per])
    return out


_PACK_CACHE: OrderedDict = OrderedDict()
_PACK_CACHE_SIZE = 16
_pack_lock = threading.Lock()


def _cache_key(U, key):
    return key, U.dtype.str, U.shape


def _packed(U, u, key):
    """Packed (recurrent) kernel, cached under the caller's ``key`` (e.g. the Variables'
    ``(uid, version)`` plus which matrix): ``(packed, hit)``. A hit is not to be trusted before
    it is found to hold exactly U's values: forward's kernel compares it bitwise with U on all
    its threads, each the panels it is about to stream (exact, no kept copy, one pass over
    each) and computes nothing on a difference, which forward then repacks (_repack). So
    in-place edits that skip a version bump (finite-difference checks, direct writes into
    ``Variable.value``) never reuse stale weights. Without a key it is packed on every call."""
    if key is None:
        return _pack_recurrent(U, u), False
    full = _cache_key(U, key)
    with _pack_lock:
        try:
            hit = _PACK_CACHE.get(full)
        except TypeError:
            raise TypeError(f"weights_key must be hashable (e.g. a tuple), got {key[0]!r}"
                            ) from None
        if hit is not None:
            _PACK_CACHE.move_to_end(full)
            return hit[0], True
    return _repack(U, u, key), False


def _repack(U, u, key):
    """Pack U and cache it under ``key`` (see _packed). The new entry evicts those packed from
    the same memory (older versions of weights updated in place: a training loop would
    otherwise keep 16 of them), whose buffers the record pool then reuses."""
    packed = _pack_recurrent(U, u)
    full = _cache_key(U, key)
    src = U.ctypes.data
    with _pack_lock:
        for k in [k for k, e in _PACK_CACHE.items()
                  if e[1] == src and k[0][1] == key[1] and k[1:] == full[1:]]:
            del _PACK_CACHE[k]
        _PACK_CACHE[full] = (packed, src)
        while len(_PACK_CACHE) > _PACK_CACHE_SIZE:
            _PACK_CACHE.popitem(last=False)
    return packed


def _biases(weights, spec, dtype, u):
    u3 = 3 * u
    b = weights.bias
    if not spec.use_bias or b is None:
        return np.zeros(u3, dtype), (np.zeros(u3, dtype) if spec.reset_after else None)
    if spec.reset_after:
        b = _array(b, "bias", dtype, (2, u3))
        return b[0], b[1]  # C-contiguous rows of a C-contiguous array
    return _array(b, "bias", dtype, (u3,)), None


def forward(x, weights: Weights, h0, spec: GRUSpec, mask=None, dropout: DropoutMasks = None,
            training: bool = False, *, n_threads: int | None = None, kernel: str | None = None,
            weights_key=None):
    """One GRU layer: ``(outputs, h_last, tape | None)``; see engines/base.py.

    x (B, T, D) float32 or float64 (any strides); weights in Keras layout of x's dtype;
    h0 (B, u) or None (zeros); mask (B, T) bool or None; dropout per DropoutMasks.
    ``n_threads``: None = fastgru's default (``fastgru._threads.set_num_threads``).
    ``weights_key``: optional hashable naming this version of the recurrent kernel (e.g.
    ``(variable.uid, variable.version)``): its packed form is then cached across calls.
    """
    _check_spec(spec)
    if _gru is None:
        raise RuntimeError(f"the compiled CPU extension is not built: {_IMPORT_ERROR}")
    x = _input(x)
    dtype = x.dtype
    B, T, D = x.shape
    u = spec.units
    if T == 0:
        raise ValueError(_NO_STEPS)
    weights = _as_weights(weights)
    W = _array(weights.kernel, "kernel", dtype, (D, 3 * u))
    U = _array(weights.recurrent_kernel, "recurrent_kernel", dtype, (u, 3 * u))
    b_in, b_rec = _biases(weights, spec, dtype, u)
    h0 = np.zeros((B, u), dtype) if h0 is None else _array(h0, "h0", dtype, (B, u))
    m8 = _mask(mask, B, T)
    mx = mh = None
    if dropout is not None and not isinstance(dropout, DropoutMasks):
        raise TypeError(f"dropout must be a DropoutMasks (fastgru.engines.base) or None, got "
                        f"{type(dropout).__name__}")
    if dropout is not None and not dropout.empty:
        if dropout.inputs is not None:
            mi = np.asarray(dropout.inputs)
            shape = (B, D) if mi.ndim == 2 else (3, B, D)
            mx = _array(mi, "dropout.inputs", dtype, shape)
        if dropout.recurrent is not None:
            mh = _array(dropout.recurrent, "dropout.recurrent", dtype, (3, B, u))
    xc = np.ascontiguousarray(x)

    # outputs from the record pool too: a fresh multi-MB array page-faults on every call
    out = _record_array((B, T, u) if spec.return_sequences else (B, u), dtype)
    h_last = np.empty((B, u), dtype)
    pre = hprev = rp = None
    if training:
        pre = _record_array((B, T, 3 * u), dtype)
        hprev = _record_array((B, T, u), dtype)
        rp = _record_array((B, T, u), dtype)
    if B > 0:
        n = _threads.resolve(n_threads)
        nthr, split, chunk, _ = _plan(B, T, D, u, dtype.itemsize, n)
        if training and _training_forward_alone(B, T, u, nthr, split):
            nthr, split = 1, False
        nthr = _max_threads(nthr)
        ukey = wkey = None
        if weights_key is not None:
            ukey, wkey = (weights_key, "U"), (weights_key, "W")
        # cache hits are compared with the weights by the kernel's threads (see _packed)
        upk, check_u = _packed(U, u, ukey)
        isa = _isa(kernel)
        wpk, check_w = None, False
        if _packed_projection(isa):
            wpk, check_w = _packed(W, u, wkey)
        fused, fuse_proj = _fused_gates(), _fused_projection()

        def run(wpk, upk, check_u, check_w):
            return _kernel_forward(spec, xc, W, wpk, upk, b_in, b_rec, h0, m8, out, h_last,
                                   nthr, isa, chunk, split, fused, fuse_proj, mx=mx, mh=mh,
                                   record=(pre, hprev, rp), check_u=U if check_u else None,
                                   check_w=check_w)

        # BLAS runs only for the projection's generic path: pinning it costs ~5 us per call
        with _threads.blas_threads(1) if wpk is None else _NO_PIN:
            late = run(wpk, upk, check_u, check_w)
            if late < 0:
                # an in-place edit under the same key: repack the hits, compute unverified
                upk = _repack(U, u, ukey) if check_u else upk
                wpk = _repack(W, u, wkey) if check_w else wpk
                late = run(wpk, upk, False, False)
        _note_late_waits(late, T)
    tape = None
    if training:
        saved = dict(x=xc, kernel=W, recurrent_kernel=U, has_bias=weights.bias is not None,
                     mask=m8, mx=mx, mh=mh, pre=pre, hprev=hprev, rp=rp)
        tape = Tape(NAME, spec, saved, batch=B, steps=T, dtype=dtype)
    return out, h_last, tape


def _kernel_forward(spec, x, W, wpk, upk, b_in, b_rec, h0, m8, out, h_last, nthr, isa, chunk,
                    split, fused, fuse_proj, *, mx=None, mh=None, record=(None, None, None),
                    check_u=None, check_w=False):
    """The compiled forward on checked, C-contiguous arrays (forward and Snapshot.forward):
    the late barrier waits, or -1 when a checked cached pack differs from the weights."""
    pre, hprev, rp = record
    return _gru.forward(x, W, wpk, upk, b_in, b_rec, h0, m8, mx,
                        mx is not None and mx.ndim == 3, mh, out, h_last, pre, hprev, rp,
                        spec.units, spec.reset_after, spec.go_backwards, spec.return_sequences,
                        spec.zero_output_for_mask, spec.activation.code,
                        spec.recurrent_activation.code, nthr, isa, chunk, split, fused,
                        fuse_proj, check_u, check_w)


class Snapshot:
    """Inference on a frozen copy of one layer's weights, with the least work per call: the
    engine's counterpart of an ONNX Runtime session (``RNN.freeze`` builds them).

    ``forward`` (cached packed weights under ``weights_key``) compares a cached pack with the
    caller's weights on every call, since those may be edited in place; at a streaming call
    (one step, batch 1) that check and the per-call lookups cost about as much as the step.
    A snapshot copies and packs the weights once, here, and reads the kernel settings
    (``kernel=`` or FASTGRU_CPU_KERNEL, FASTGRU_CPU_PROJ, FASTGRU_CPU_FUSED,
    FASTGRU_CPU_FUSED_PROJ) once: later edits of the weights it was made from, or of those
    settings, do not reach it. Same kernels, plans and bits as ``forward``; ``n_threads``:
    fixed, or None for fastgru's default at each call.
    """

    __slots__ = ("spec", "dtype", "D", "_weights", "_wpk", "_upk", "_b_in", "_b_rec", "_n",
                 "_isa", "_kernel", "_fused", "_fuse_proj", "__weakref__")

    def __init__(self, weights, spec: GRUSpec, *, n_threads: int | None = None,
                 kernel: str | None = None):
        _check_spec(spec)
        if _gru is None:
            raise RuntimeError(f"the compiled CPU extension is not built: {_IMPORT_ERROR}")
        weights = _as_weights(weights)
        K = np.asarray(weights.kernel)
        if K.dtype not in (np.float32, np.float64):
            raise TypeError(f"kernel must be float32 or float64, got {K.dtype}")
        u = spec.units
        if K.ndim != 2 or K.shape[1] != 3 * u:
            raise ValueError(f"kernel must have shape (features, {3 * u}), got {K.shape}")
        dtype = K.dtype
        self.spec, self.dtype, self.D = spec, dtype, K.shape[0]
        self._n = None if n_threads is None else _threads.check_n_threads(n_threads)
        # private copies: nothing the caller holds can change them (kept whole for pickling)
        W = _array(K, "kernel", dtype, K.shape).copy()
        U = _array(weights.recurrent_kernel, "recurrent_kernel", dtype, (u, 3 * u)).copy()
        bias = None if weights.bias is None else np.array(weights.bias, copy=True)
        self._weights = Weights(W, U, bias)
        self._b_in, self._b_rec = _biases(self._weights, spec, dtype, u)
        self._upk = _pack_recurrent(U, u)
        self._isa, self._kernel = _isa(kernel), _kernel_request(kernel)
        self._wpk = _pack_recurrent(W, u) if _packed_projection(self._isa) else None
        self._fused, self._fuse_proj = _fused_gates(), _fused_projection()

    def forward(self, x, h0=None, mask=None):
        """``(outputs, h_last)`` as the engine's ``forward(x, weights, h0, spec, mask)`` in
        inference: x (B, T, D) of the snapshot's dtype, h0 (B, u) or None (zeros), mask (B, T)
        or None."""
        if type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim != 3:
            x = _input(x, self.dtype)
        else:
            _check_size(x.shape)
        B, T, D = x.shape
        if D != self.D:
            raise ValueError(f"x must have {self.D} features (the kernel's rows), got shape "
                             f"{x.shape}")
        if T == 0:
            raise ValueError(_NO_STEPS)
        spec, dtype = self.spec, self.dtype
        u = spec.units
        h0 = np.zeros((B, u), dtype) if h0 is None else _array(h0, "h0", dtype, (B, u))
        m8 = None if mask is None else _mask(mask, B, T)
        out = _record_array((B, T, u) if spec.return_sequences else (B, u), dtype)
        h_last = np.empty((B, u), dtype)
        if B > 0:
            n = self._n if self._n is not None else _threads.get_num_threads()
            nthr, split, chunk, _ = _plan(B, T, D, u, dtype.itemsize, n)
            with _threads.blas_threads(1) if self._wpk is None else _NO_PIN:
                late = _kernel_forward(spec, np.ascontiguousarray(x), self._weights.kernel,
                                       self._wpk, self._upk, self._b_in, self._b_rec, h0, m8,
                                       out, h_last, _max_threads(nthr), self._isa, chunk, split,
                                       self._fused, self._fuse_proj)
            _note_late_waits(late, T)
        return out, h_last

    def __reduce__(self):  # packed again where it is loaded (alignment, that CPU's kernels)
        return _snapshot, (self._weights, self.spec, self._n, self._kernel)

    def describe(self, x_shape) -> str:
        """describe_kernel for this snapshot's settings (its kernel read at creation), for
        inference."""
        return describe_kernel(self.spec, x_shape, n_threads=self._n, kernel=self._kernel,
                               dtype=self.dtype, training=False)


def _snapshot(weights, spec, n_threads, kernel):
    return Snapshot(weights, spec, n_threads=n_threads, kernel=kernel)


# A training forward's record (pre, hprev, rp) is tens of MB at the benchmark shapes: fresh
# such arrays come from mmap, and the kernel's zero-filling page faults took 10-17% of a
# training step in perf (and serialise the threads of a 2-thread forward: 64x200x128x256
# training forwards took 35-95 ms against 31 for inference). A record's memory is owned by a
# _RecordBuffer that every view of it keeps alive (it is the arrays' base); only once the last
# view is gone does its finalizer hand the memory to this pool for the next training forward.
# The layer outputs, the input and weight gradients and the packed kernels come from the pool
# too (with the C kernels' kept scratch, src_c/ws.c, a training step at 256x50x256x512 stopped
# page-faulting after its first call; before, the second and third calls still took 500-2,000
# faults each, and a 1-thread step measured on its second call was 1059 ms against 942).
# Lock-free (list append / remove are atomic), so a finalizer run by the garbage collector in
# the middle of _record_array cannot deadlock.
_POOL_MAX_BYTES = 1 << 30
_POOL_MIN_BYTES = 1 << 20
_pool: list = []  # _Pooled raw uint8 arrays, most recently released last


class _Pooled:
    """A released record buffer in the pool. Compared by identity: list.remove(bare array)
    compares the arrays elementwise, which raises for any other buffer ahead of it in the list,
    and that was taken for "removed meanwhile" (so the pool was never reused past its first
    entry: every training forward page-faulted its record afresh)."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw


class _RecordBuffer:
    """Owner of one pooled raw buffer; NumPy arrays made from it reference it as their base."""

    __slots__ = ("__array_interface__", "__weakref__")


def _record_array(shape, dtype):
    """An uninitialised C-contiguous array, reusing a released record buffer when one fits (the
    smallest that does). From _POOL_MIN_BYTES on it lies on 64-byte aligned memory; smaller
    ones are plain np.empty (16-byte aligned: use _aligned_empty where alignment matters)."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    if n < _POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    raw = None
    for p in sorted((p for p in list(_pool) if n <= p.raw.nbytes - 64 <= 2 * n),
                    key=lambda p: p.raw.nbytes):
        try:
            _pool.remove(p)
        except ValueError:  # taken meanwhile by another thread
            continue
        raw = p.raw
        break
    if raw is None:
        raw = np.empty(n + 64, np.uint8)
    owner = _RecordBuffer()
    addr = raw.ctypes.data + (-raw.ctypes.data % 64)
    owner.__array_interface__ = {"data": (addr, False), "shape": tuple(shape),
                                 "typestr": dtype.str, "version": 3}
    weakref.finalize(owner, _release_record, raw).atexit = False
    return np.asarray(owner)


def _release_record(raw):
    _pool.append(_Pooled(raw))
    while sum(p.raw.nbytes for p in list(_pool)) > _POOL_MAX_BYTES:
        try:
            _pool.pop(0)
        except IndexError:
            break


# The backward's pre-activation gradients dA/dR (B*T*3u each) never leave the call: each thread
# keeps its last ones for the next call up to this many bytes, since a fresh multi-MB array
# costs a page fault and kernel zeroing per 4 KiB on every call (~7% of a training step at
# 64x200x128x256 in perf).
_SCRATCH_MAX_BYTES = 256 << 20
_scratch_local = threading.local()


def _scratch(name: str, shape, dtype):
    """This thread's scratch array ``name`` (64-byte aligned, contents undefined)."""
    n = math.prod(shape) * np.dtype(dtype).itemsize
    if n > _SCRATCH_MAX_BYTES:
        return _aligned_empty(math.prod(shape), dtype).reshape(shape)
    buf = getattr(_scratch_local, name, None)  # kept aligned: no address read per call
    if buf is None or buf.nbytes < n:
        buf = _aligned_bytes(n)
        setattr(_scratch_local, name, buf)
    return buf[:n].view(dtype).reshape(shape)


def backward(tape: Tape, d_outputs=None, d_h_last=None, *, n_threads: int | None = None,
             kernel: str | None = None) -> Gradients:
    """Gradients (Keras layout) of one layer call recorded by ``forward(..., training=True)``."""
    if not isinstance(tape, Tape) or tape.engine != NAME:
        raise ValueError(f"tape must come from the cpu engine's forward(training=True); got "
                         f"{getattr(tape, 'engine', type(tape).__name__)!r}")
    spec, s = tape.spec, tape.saved
    dtype = np.dtype(tape.dtype)
    x, W, U = s["x"], s["kernel"], s["recurrent_kernel"]
    B, T, D = x.shape
    u = spec.units
    u3 = 3 * u
    out_shape = (B, T, u) if spec.return_sequences else (B, u)
    dout = None if d_outputs is None else _array(d_outputs, "d_outputs", dtype, out_shape)
    dhl = None if d_h_last is None else _array(d_h_last, "d_h_last", dtype, (B, u))
    mask, mx, mh = s["mask"], s["mx"], s["mh"]

    dA = _scratch("dA", (B, T, u3), dtype)
    dR = _scratch("dR", (B, T, u3), dtype) if spec.reset_after else None
    dh0 = np.empty((B, u), dtype)
    # the per-step backward and the weight-gradient GEMMs each do about the forward's work
    n = _work_threads(B * T * u3 * (D + u), _threads.resolve(n_threads))
    isa = _isa(kernel)
    # a batch the forward splits by units splits so in the backward too (the C side takes
    # it where it can: reset_after with tanh / sigmoid, no recurrent dropout; else rows)
    nsplit, split, _, _ = _plan(B, T, D, u, dtype.itemsize, _threads.resolve(n_threads))
    split = _split_backward(B, T, u, dtype.itemsize, nsplit, split)
    if B > 0:
        # U^T and its panels: per-thread scratch (fresh 3 MB arrays fault on every call)
        ut = _scratch("ut", (3 * u, u), dtype)
        np.copyto(ut, U.T)
        utpk = _pack(ut, 0, u, dtype.itemsize, scratch="utpk")
        late = _gru.backward(s["pre"], s["hprev"], s["rp"], mask, mh, utpk, dout, dhl, dA, dR,
                             dh0, u, spec.reset_after, spec.go_backwards,
                             spec.return_sequences, spec.zero_output_for_mask,
                             spec.activation.code, spec.recurrent_activation.code,
                             _max_threads(nsplit if split else min(n, B)), isa, _fused_gates(),
                             split)
        _note_late_waits(late, T)  # a split team kept waiting: rows for a while, as forward

    # The GEMMs over all steps: on the AVX2/AVX-512 packed-panel kernel (K-blocked; row-exact
    # dx, thread-count-independent weight gradients), else BLAS pinned to one thread per block
    # of this engine's own OpenMP threads.
    packed = _packed_wgrad(isa)
    with _threads.blas_threads(1) if packed is None else _NO_PIN:
        return _weight_grads(spec, s, x, W, dA, dR, dh0, mask, mx, mh, dtype, _max_threads(n),
                             packed=packed)


def _packed_wgrad(isa: int):
    """The ISA of the backward's K-blocked packed GEMMs, or None for BLAS: every vector ISA
    unless ``FASTGRU_CPU_WGRAD=blas``."""
    name = _env("FASTGRU_CPU_WGRAD", "auto")
    if name not in ("auto", "blas", "packed", ""):
        raise ValueError(f"FASTGRU_CPU_WGRAD must be 'auto', 'packed' or 'blas'; got {name!r}")
    return isa if isa != _ISA["generic"] and name != "blas" else None


def _mm(a, b, out=None, n=1, ta=False, tb=False, packed=None, bsum=None):
    """op(a) @ op(b) (op = transpose where ta / tb) into out (fresh when None): fg_gemm_par over
    n OpenMP threads, each running a single-threaded BLAS call on a block. a, b and out are 2-D
    with contiguous rows (column slices allowed). Not BLAS's own threads: OpenBLAS's workers
    busy-wait ~0.1 s after a call and then slow the next forward's OpenMP threads. ``bsum``
    (packed only, b not transposed): also b's column sums (_column_sums' bits) into it."""
    if out is None:
        out = np.empty((a.shape[1] if ta else a.shape[0], b.shape[0] if tb else b.shape[1]),
                       a.dtype)
    _gru.gemm(a, ta, b, tb, out, n, packed is not None, -1 if packed is None else packed, bsum)
    return out


def adam_update(w, g, m, v, vh, c1, c2, alpha, eps) -> bool:
    """One Adam step in place on the compiled kernel (fg_adam: one pass, on fastgru's
    threads) where it applies: NumPy arrays, C-contiguous, one float dtype, the gradient apart
    from the weights (the kernel takes its operands as not overlapping). True when it ran;
    False leaves everything untouched for the caller's NumPy expression (the same bits)."""
    arrays = (w, g, m, v) if vh is None else (w, g, m, v, vh)
    if (_gru is None or w.dtype not in (np.float32, np.float64)
            or any(type(a) is not np.ndarray or a.dtype != w.dtype or a.shape != w.shape
                   or not a.flags.c_contiguous for a in arrays)
            or np.may_share_memory(g, w)):
        return False
    _gru.adam(w, g, m, v, vh, c1, c2, alpha, eps, _max_threads(_threads.get_num_threads()))
    return True


def _column_sums(a, n_threads=1):
    """Column sums of a (rows, cols) in two levels (fg_colsum): NumPy sums an outer axis row by
    row, i.e. one running sum of B*T terms (float32 error ~10x BLAS's); blocks of 256 rows in
    a's dtype, then their sums in float64 (as accurate as a float64 sum, at float32 speed).
    Compiled and threaded over column chunks (the NumPy form of the same sums was the one
    serial part of a 2-thread backward: 18 ms of ~500 at 256x50x256x512); the bits do not
    depend on the thread count."""
    out = np.empty(a.shape[1], a.dtype)
    _gru.colsum(a, out, n_threads)
    return out


def _weight_grads(spec, s, x, W, dA, dR, dh0, mask, mx, mh, dtype, n=1, packed=None):
    """The GEMMs over all steps: kernel, recurrent kernel, bias and input gradients."""
    B, T, D = x.shape
    u = spec.units
    mm = functools.partial(_mm, n=n, packed=packed)
    BT = B * T
    gates = [slice(g * u, (g + 1) * u) for g in range(3)]
    # Inputs in processing order, exact zeros at masked steps (NaN there must not leak).
    xp = x[:, ::-1] if spec.go_backwards else x
    if mask is not None:
        mp = mask.view(bool)[:, ::-1] if spec.go_backwards else mask.view(bool)
        xp = np.where(mp[:, :, None], xp, 0).astype(dtype, copy=False)
    dA2 = dA.reshape(BT, 3 * u)
    # The bias gradients are column sums of dA / dR: the packed GEMMs that read them as B take
    # the sums on the way (the same bits as _column_sums, one pass over 2 * B*T*3u fewer)
    want_bias = spec.use_bias and s["has_bias"]
    fuse = want_bias and packed is not None
    db_in = np.empty(3 * u, dtype) if fuse and (mx is None or mx.ndim == 2) else None
    db_rec = np.empty(3 * u, dtype) if fuse and spec.reset_after and mh is None else None

    if mx is None:
        dkernel = mm(np.ascontiguousarray(xp).reshape(BT, D), dA2, _record_array(W.shape, dtype),
                     ta=True, bsum=db_in)
        dxp = mm(dA2, W, out=_record_array((BT, D), dtype), tb=True).reshape(B, T, D)
    elif mx.ndim == 2:
        dkernel = mm((xp * mx[:, None, :]).reshape(BT, D), dA2, ta=True, bsum=db_in)
        dxp = mm(dA2, W, tb=True).reshape(B, T, D) * mx[:, None, :]
    else:
        dkernel = np.empty_like(W)
        dxp = np.zeros((B, T, D), dtype)
        for g, sl in enumerate(gates):
            mm((xp * mx[g][:, None, :]).reshape(BT, D), dA2[:, sl], dkernel[:, sl], ta=True)
            dxp += mm(dA2[:, sl], W[:, sl], tb=True).reshape(B, T, D) * mx[g][:, None, :]
    dx = dxp[:, ::-1] if spec.go_backwards else dxp
    dx = np.ascontiguousarray(dx)

    H = s["hprev"].reshape(BT, u)
    dRec = (dR if spec.reset_after else dA).reshape(BT, 3 * u)
    drec = _record_array((u, 3 * u), dtype)
    n_state_gates = 3 if spec.reset_after else 2
    if mh is None:
        mm(H, dRec[:, : n_state_gates * u], drec[:, : n_state_gates * u], ta=True,
           bsum=db_rec)
    else:
        for g in range(n_state_gates):
            hg = (s["hprev"] * mh[g][:, None, :]).reshape(BT, u)
            mm(hg, dRec[:, gates[g]], drec[:, gates[g]], ta=True)
    if not spec.reset_after:  # the candidate's recurrent input is r * h_g (0 at masked steps)
        mm(s["rp"].reshape(BT, u), dA2[:, gates[2]], drec[:, gates[2]], ta=True)

    bias = None
    if want_bias:
        db_in = _column_sums(dA2, n) if db_in is None else db_in
        if spec.reset_after:
            db_rec = _column_sums(dRec, n) if db_rec is None else db_rec
        bias = np.stack([db_in, db_rec]) if spec.reset_after else db_in
    return Gradients(dx, dh0, dkernel, drec, bias)
