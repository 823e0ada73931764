"""One adapter per implementation, each built from the same Keras-layout weights and inputs.

Every (peer, thread count) runs in a child process of its own (``python bench/_peers.py ...``,
started by :func:`run_peer`): thread pools of different libraries never meet, TensorFlow's
thread configuration happens before TensorFlow initialises, and a crashing or hanging peer
costs only its own row. The child verifies each peer's first result against the float64
reference stored with the problem, then times it, and prints one ``RESULT {json}`` line per
problem.

Weight mappings (KERAS_GRU_SPEC.md 4.3-4.4), Keras gates (z, r, h), reset_after=True:
- PyTorch nn.GRU: gates (r, z, n); weight_ih = P(kernel).T, weight_hh = P(recurrent).T,
  bias_ih = P(bias[0]), bias_hh = P(bias[1]), P swapping gate blocks 0 and 1.
- ONNX GRU: gates (z, r, h); W = kernel.T, R = recurrent.T, B = [bias[0], bias[1]],
  linear_before_reset=1; X (T, B, I), Y (T, 1, B, H).
- OpenVINO: the same ONNX model, compiled in float32 (its default on CPUs with AMX/bf16 is
  bf16 inference, which is not a float32 result).
- Keras 3 (TensorFlow backend): keras.layers.GRU + set_weights, in a tf.function, with and
  without XLA (jit_compile).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# name -> what it needs importable (checked in the parent, before starting a child)
PEERS = {
    "fastgru": ("fastgru",),
    "fastgru.GRU": ("fastgru",),
    "fastgru.frozen": ("fastgru",),
    "reference": ("fastgru",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "onnx"),
    "keras-tf": ("keras", "tensorflow"),
    "keras-xla": ("keras", "tensorflow"),
}


class Unavailable(RuntimeError):
    """The peer cannot run here (not installed, engine not built yet); the row is skipped."""


def availability(name: str, mode: str = "inference") -> str | None:
    """None when ``name`` can be tried here, else the reason it is skipped (no import of the
    peer itself: that happens in the child). Training falls back to the reference engine while
    the CPU engine is missing."""
    missing = [m for m in PEERS[name] if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    if (name == "fastgru" and mode == "inference"
            and importlib.util.find_spec("fastgru.engines.cpu") is None):
        return "fastgru.engines.cpu not built yet"
    if name in ("fastgru.GRU", "fastgru.frozen"):
        import fastgru
        if not hasattr(fastgru, "GRU"):
            return "fastgru.GRU not there yet"
        if name == "fastgru.frozen" and not hasattr(fastgru.GRU, "freeze"):
            return "GRU.freeze not there yet"
    if name == "fastgru.frozen" and mode == "training":
        return "inference only (a frozen snapshot)"
    return None


# ----------------------------------------------------------------------------- adapters
# Each adapter: setup(n_threads) once per process, then per problem
#   inference(p, rs) -> (fn, to_keras): fn() runs one call and returns the peer's native
#       output; to_keras(out) turns it into Keras layout (B, T, H) or (B, H) for checking.
#   training(p) -> (grads, step): grads() -> dict of Keras-layout gradients of sum(outputs)
#       (dx, dkernel, drecurrent_kernel, dbias); step() = forward + backward + Adam update.

def _ident(a):
    return a


class FastGRUEngine:
    """fastgru's compiled CPU engine through the engine contract (engines/base.py)."""

    def __init__(self, name="fastgru"):
        self.name, self.notes, self.mode = name, [], "inference"

    def setup(self, n):
        import fastgru
        self.n = n
        self.version = getattr(fastgru, "__version__", "dev")
        from fastgru.engines import reference
        try:
            from fastgru import _threads
            _threads.set_num_threads(n)
            has_threads = True
        except ImportError:
            has_threads = False
        self.kw = {}
        try:
            self.engine = self._engine()
        except Unavailable as e:
            if self.mode != "training":
                raise
            self.engine = reference
            self.notes.append(f"{e}; training runs the reference engine")
        if self.engine is reference or not has_threads:
            # NumPy-level engines (and everything while fastgru._threads is missing) get their
            # BLAS threads limited here, for the life of this process.
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(limits=n, user_api="blas")
            if not has_threads and self.engine is not reference:
                self.notes.append(f"{self.name}: fastgru._threads not there: BLAS threads "
                                  "limited with threadpoolctl")
        self.bkw = {}
        if self.engine is not None and self.engine is not reference:
            params = inspect.signature(self.engine.forward).parameters
            self.kw = {"n_threads": n} if "n_threads" in params else {}
            backward = getattr(self.engine, "backward", _ident)
            if "n_threads" in inspect.signature(backward).parameters:
                self.bkw = {"n_threads": n}
            # Name the weights' version so the engine may keep their packed form across calls,
            # as the layer does (a server calling the engine would do the same).
            self.keyed = "weights_key" in params
            if not self.kw:
                self.notes.append(f"{self.name}: engine forward takes no n_threads=; relying "
                                  "on fastgru._threads.set_num_threads")

    def _engine(self):
        try:
            from fastgru.engines import cpu
        except ImportError as e:
            raise Unavailable(f"fastgru.engines.cpu cannot be imported: {e}") from None
        return cpu

    def inference(self, p, rs):
        spec = C.gru_spec(p["kernel"].shape[1] // 3, rs)
        w, x, h0 = C.weights_of(p), p["x"], p["h0"]
        fwd = self.engine.forward
        kw = dict(self.kw)
        if getattr(self, "keyed", False):
            kw["weights_key"] = ("bench", id(w.recurrent_kernel))
        return (lambda: fwd(x, w, h0, spec, training=False, **kw)[0]), _ident

    def training(self, p):
        from fastgru.engines import reference
        from fastgru.engines.base import Weights
        from fastgru.variable import Variable
        spec = C.gru_spec(p["kernel"].shape[1] // 3, True)
        x, h0 = p["x"], p["h0"]
        params = [Variable(p[k].copy(), k) for k in ("kernel", "recurrent_kernel", "bias")]
        eng = self.engine
        if eng is not reference and not hasattr(eng, "backward"):
            eng = reference
            self.note_once(f"{self.name}: the CPU engine has no backward yet; training runs "
                           "the reference engine")
        ones = np.ones((x.shape[0], x.shape[1], spec.units), x.dtype)

        def run(engine):
            w = Weights(*(v.value for v in params))
            mine = engine is self.engine
            kw = dict(self.kw) if mine else {}
            if mine and getattr(self, "keyed", False):
                kw["weights_key"] = (params[1].uid, params[1].version)  # Adam bumps the version
            _, _, tape = engine.forward(x, w, h0, spec, training=True, **kw)
            return engine.backward(tape, ones, None, **(self.bkw if mine else {}))

        try:
            run(eng)
        except NotImplementedError:
            eng = reference
            self.note_once(f"{self.name}: the CPU engine's backward raises "
                           "NotImplementedError; training runs the reference engine")
        self.used_engine = getattr(eng, "NAME", eng.__name__.rsplit(".", 1)[-1])

        def grads():
            g = run(eng)
            return {"dx": g.x, "dkernel": g.kernel, "drecurrent_kernel": g.recurrent_kernel,
                    "dbias": g.bias}

        opt = _fastgru_adam(params, self)
        if opt is None:
            return grads, grads

        def step():
            g = run(eng)
            opt.step([g.kernel, g.recurrent_kernel, g.bias])
        return grads, step

    def note_once(self, text):
        if text not in self.notes:
            self.notes.append(text)


def _fastgru_adam(params, adapter):
    try:
        from fastgru import optim
        return optim.Adam(params, learning_rate=1e-3, epsilon=1e-7)
    except (ImportError, AttributeError):
        adapter.note_once("fastgru.optim.Adam not there yet: step = forward + backward only")
        return None


class FastGRUReference(FastGRUEngine):
    """The reference engine (NumPy, one step at a time) in float32; BLAS threads limited."""

    def _engine(self):
        from fastgru.engines import reference
        return reference


class FastGRULayer(FastGRUEngine):
    """fastgru.GRU (the layer: front end + dispatch + engine)."""

    def __init__(self):
        super().__init__("fastgru.GRU")

    def _engine(self):
        return None

    def _layer(self, p, rs):
        from threadpoolctl import threadpool_limits

        import fastgru
        B, T, I = p["x"].shape
        # one BLAS thread for the initializers (the orthogonal one's QR), whose woken OpenBLAS
        # workers would otherwise spin into the timed calls (CPU s per wall s ~2 at 1 thread)
        with threadpool_limits(limits=1, user_api="blas"):
            layer = fastgru.GRU(p["kernel"].shape[1] // 3, return_sequences=rs)
            layer.build((B, T, I))
        layer.set_weights([p["kernel"], p["recurrent_kernel"], p["bias"]])
        if hasattr(layer, "explain"):  # which engine and thread plan ran: kept in the record
            self.path = " ".join(str(layer.explain(p["x"])).split())
        return layer

    def inference(self, p, rs):
        layer, x, h0 = self._layer(p, rs), p["x"], p["h0"]
        return (lambda: layer(x, initial_state=h0)), _ident

    def training(self, p):
        layer, x, h0 = self._layer(p, True), p["x"], p["h0"]
        self.used_engine = "layer"
        ones = np.ones((x.shape[0], x.shape[1], p["kernel"].shape[1] // 3), x.dtype)

        def run():
            _, tape = layer.forward(x, initial_state=h0, training=True)
            return layer.backward(tape, ones)

        def grads():
            g = run()
            return {"dx": g.inputs, "dkernel": g.kernel, "drecurrent_kernel": g.recurrent_kernel,
                    "dbias": g.bias}

        opt = _fastgru_adam(layer.trainable_weights, self)
        if opt is None:
            return grads, grads
        return grads, (lambda: opt.step(run()))


class FastGRUFrozen(FastGRULayer):
    """``fastgru.GRU(...).freeze()``: the layer's inference snapshot (weights copied and packed
    once, as an ONNX Runtime session or an OpenVINO compiled model holds its own)."""

    def __init__(self):
        FastGRUEngine.__init__(self, "fastgru.frozen")

    def inference(self, p, rs):
        frozen, x, h0 = self._layer(p, rs).freeze(), p["x"], p["h0"]
        self.path = " ".join(str(frozen.explain(x)).split())
        return (lambda: frozen(x, initial_state=h0)), _ident


def _perm(H):
    """Column order taking Keras gate blocks (z, r, h) to PyTorch/cuDNN (r, z, h); its own
    inverse."""
    return np.concatenate([np.arange(H, 2 * H), np.arange(0, H), np.arange(2 * H, 3 * H)])


class Torch:
    name = "torch"

    def __init__(self):
        self.notes = []

    def setup(self, n):
        import torch
        self.torch = torch
        torch.set_num_threads(n)
        torch.set_num_interop_threads(1)
        self.version = torch.__version__

    def _gru(self, p):
        torch = self.torch
        I, H3 = p["kernel"].shape
        H = H3 // 3
        idx = _perm(H)
        gru = torch.nn.GRU(I, H, batch_first=True)
        with torch.no_grad():
            gru.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(p["kernel"][:, idx].T)))
            gru.weight_hh_l0.copy_(
                torch.from_numpy(np.ascontiguousarray(p["recurrent_kernel"][:, idx].T)))
            gru.bias_ih_l0.copy_(torch.from_numpy(p["bias"][0, idx].copy()))
            gru.bias_hh_l0.copy_(torch.from_numpy(p["bias"][1, idx].copy()))
        return gru, idx

    def inference(self, p, rs):
        torch = self.torch
        gru, _ = self._gru(p)
        x, h0 = torch.from_numpy(p["x"]), torch.from_numpy(p["h0"])[None]

        def fn():
            with torch.inference_mode():
                y, hn = gru(x, h0)
            return y.numpy() if rs else hn[0].numpy()
        return fn, _ident

    def training(self, p):
        torch = self.torch
        gru, idx = self._gru(p)
        x = torch.from_numpy(p["x"].copy()).requires_grad_()
        h0 = torch.from_numpy(p["h0"])[None]
        opt = torch.optim.Adam(gru.parameters(), lr=1e-3, eps=1e-7)

        def backprop():
            x.grad = None
            gru.zero_grad(set_to_none=True)
            y, _ = gru(x, h0)
            y.sum().backward()

        def grads():
            backprop()
            g = lambda t: t.grad.numpy()  # noqa: E731
            return {"dx": g(x), "dkernel": g(gru.weight_ih_l0).T[:, idx],
                    "drecurrent_kernel": g(gru.weight_hh_l0).T[:, idx],
                    "dbias": np.stack([g(gru.bias_ih_l0)[idx], g(gru.bias_hh_l0)[idx]])}

        def step():
            backprop()
            opt.step()
        return grads, step


def onnx_gru_model(p, rs: bool):
    """An ONNX GRU operator model (opset 17) holding the Keras weights as initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    B, T, I = p["x"].shape
    H = p["kernel"].shape[1] // 3
    inits = [numpy_helper.from_array(np.ascontiguousarray(p["kernel"].T)[None], "W"),
             numpy_helper.from_array(np.ascontiguousarray(p["recurrent_kernel"].T)[None], "R"),
             numpy_helper.from_array(p["bias"].reshape(1, 6 * H).copy(), "B")]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "initial_h"],
                            ["Y" if rs else "", "Y_h"], hidden_size=H, linear_before_reset=1)
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("X", f, [T, B, I]),
              helper.make_tensor_value_info("initial_h", f, [1, B, H])]
    outputs = ([helper.make_tensor_value_info("Y", f, [T, 1, B, H])] if rs else []) + \
        [helper.make_tensor_value_info("Y_h", f, [1, B, H])]
    graph = helper.make_graph([node], "keras_gru", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _onnx_feeds(p):
    """Inputs in ONNX layout, made outside the timed region (favours the peer)."""
    return np.ascontiguousarray(p["x"].transpose(1, 0, 2)), np.ascontiguousarray(p["h0"][None])


def _from_onnx(rs):
    # Y (T, 1, B, H) -> (B, T, H); Y_h (1, B, H) -> (B, H)
    return (lambda y: y[:, 0].transpose(1, 0, 2)) if rs else (lambda y: y[0])


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self):
        self.notes = []

    def setup(self, n):
        import onnxruntime as ort
        self.ort, self.n, self.version = ort, n, ort.__version__

    def inference(self, p, rs):
        ort = self.ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.n
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_gru_model(p, rs).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        x, h0 = _onnx_feeds(p)
        feeds = {"X": x, "initial_h": h0}
        out = ["Y" if rs else "Y_h"]
        return (lambda: sess.run(out, feeds)[0]), _from_onnx(rs)


class OpenVINO:
    name = "openvino"

    def __init__(self):
        self.notes = []

    def setup(self, n):
        import openvino as ov
        self.core, self.n, self.version = ov.Core(), n, ov.__version__

    def inference(self, p, rs):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "gru.onnx")
            Path(path).write_bytes(onnx_gru_model(p, rs).SerializeToString())
            model = self.core.read_model(path)
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.n,
               "PERFORMANCE_HINT": "LATENCY"}
        compiled = self.core.compile_model(model, "CPU", cfg)
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        if "32" not in str(got):
            raise RuntimeError(f"OpenVINO ignored the f32 precision hint (got {got})")
        req = compiled.create_infer_request()
        x, h0 = _onnx_feeds(p)
        feeds = {"X": x, "initial_h": h0}
        port = compiled.output("Y" if rs else "Y_h")

        def fn():
            req.infer(feeds, share_inputs=True, share_outputs=True)
            return req.get_tensor(port).data
        return fn, _from_onnx(rs)


class Keras:
    """Keras 3 on the TensorFlow backend, the layer called inside a tf.function."""

    def __init__(self, xla):
        self.xla, self.name, self.notes = xla, "keras-xla" if xla else "keras-tf", []

    def setup(self, n):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        # Before any op runs: TF reads its threading configuration once, at initialisation.
        # inter-op n as well: with 1, TF's executor left the n-thread intra-op pool idle for the
        # GRU's ops at mid-size shapes (the 2-thread row used 1.01 CPUs per wall second)
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
        import keras
        if keras.backend.backend() != "tensorflow":
            raise Unavailable(f"KERAS_BACKEND is {keras.backend.backend()!r}, not tensorflow")
        self.tf, self.keras = tf, keras
        self.version = f"keras {keras.__version__}, tf {tf.__version__}"

    def _layer(self, p, rs):
        B, T, I = p["x"].shape
        layer = self.keras.layers.GRU(p["kernel"].shape[1] // 3, return_sequences=rs,
                                      reset_after=True)
        layer.build((B, T, I))
        layer.set_weights([p["kernel"], p["recurrent_kernel"], p["bias"]])
        return layer

    def inference(self, p, rs):
        tf = self.tf
        layer = self._layer(p, rs)
        call = tf.function(lambda x, h: layer(x, initial_state=h), jit_compile=self.xla)
        x, h0 = tf.constant(p["x"]), tf.constant(p["h0"])
        return (lambda: call(x, h0).numpy()), _ident

    def training(self, p):
        tf = self.tf
        layer = self._layer(p, True)
        variables = layer.trainable_variables  # kernel, recurrent_kernel, bias
        opt = self.keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7)
        opt.build(variables)
        x, h0 = tf.constant(p["x"]), tf.constant(p["h0"])

        def backprop(x, h):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x, initial_state=h, training=True))
            return tape.gradient(loss, [x] + list(variables))

        grads_fn = tf.function(backprop, jit_compile=self.xla)

        @tf.function(jit_compile=self.xla)
        def step_fn(x, h):
            g = backprop(x, h)
            opt.apply_gradients(zip(g[1:], variables))
            return g[0]  # dx kept live: unused, tf.function and XLA pruned its computation

        def grads():
            g = [t.numpy() for t in grads_fn(x, h0)]
            return dict(zip(C.GRAD_KEYS, g))
        return grads, (lambda: step_fn(x, h0))


def make_adapter(name: str):
    return {"fastgru": FastGRUEngine, "fastgru.GRU": FastGRULayer,
            "fastgru.frozen": FastGRUFrozen,
            "reference": lambda: FastGRUReference("reference"), "torch": Torch,
            "onnxruntime": OnnxRuntime, "openvino": OpenVINO,
            "keras-tf": lambda: Keras(False), "keras-xla": lambda: Keras(True)}[name]()


# ----------------------------------------------------------------------------- child process

def _child(args) -> int:
    def emit(kind, payload):
        print(kind, json.dumps(payload), flush=True)

    adapter = make_adapter(args.peer)
    adapter.mode = args.mode
    try:
        adapter.setup(args.threads)
    except (Unavailable, ImportError) as e:
        emit("UNAVAILABLE", {"reason": str(e)})
        return 0
    emit("VERSION", {"version": getattr(adapter, "version", "?")})
    if args.mode == "training" and not hasattr(adapter, "training"):
        emit("UNAVAILABLE", {"reason": "no training adapter"})
        return 0
    seen_notes = 0
    for path in args.files:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
        p = {k: data[k] for k in ("x", "kernel", "recurrent_kernel", "bias", "h0")}
        rs = bool(data["return_sequences"])
        B, T, I = p["x"].shape
        label = f"{B}x{T}x{I}x{p['kernel'].shape[1] // 3}"
        rec = {"shape": label}
        try:
            t0 = time.perf_counter()
            if args.mode == "inference":
                fn, to_keras = adapter.inference(p, rs)
                rec["err"] = C.rel_err(to_keras(fn()), data["ref_y"])
            else:
                grads, fn = adapter.training(p)
                g = grads()
                errs = {k: C.rel_err(g[k], data["ref_" + k]) for k in C.GRAD_KEYS}
                rec["err"] = max(errs.values())
                rec["errs"] = errs
                rec["engine"] = getattr(adapter, "used_engine", None)
            if getattr(adapter, "path", None):
                rec["path"] = adapter.path
            rec["setup_s"] = time.perf_counter() - t0
            rec["ok"] = rec["err"] <= C.TOLERANCE
            rec.update(C.measure(fn, args.budget, args.min_reps))
        except Unavailable as e:
            emit("UNAVAILABLE", {"reason": str(e)})
            return 0
        except Exception as e:  # a peer failing on one shape must not lose the others
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        for n in adapter.notes[seen_notes:]:
            emit("NOTE", {"note": n})
        seen_notes = len(adapter.notes)
        emit("RESULT", rec)
    return 0


def run_peer(name: str, n_threads: int, mode: str, files, budget: float, min_reps: int,
             timeout: float) -> dict:
    """Run one peer at one thread count over the problem files in a child process.

    Returns {'results': {shape: record}, 'notes': [...], 'version': str, 'unavailable': str|None}.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--threads",
           str(n_threads), "--mode", mode, "--budget", str(budget), "--min-reps", str(min_reps),
           *files]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    if name in ("torch", "keras-tf", "keras-xla"):
        # their OpenMP / Eigen pools size themselves from this before our calls can run
        env["OMP_NUM_THREADS"] = str(n_threads)
    out = {"results": {}, "notes": [], "version": None, "unavailable": None}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr, rc = f"timed out after {timeout:.0f} s", "timeout"
        out["notes"].append(f"{name} ({n_threads}t): stopped after {timeout:.0f} s")
    for line in stdout.splitlines():
        kind, _, payload = line.partition(" ")
        if kind not in ("RESULT", "NOTE", "VERSION", "UNAVAILABLE"):
            continue
        d = json.loads(payload)
        if kind == "RESULT":
            out["results"][d["shape"]] = d
        elif kind == "NOTE":
            out["notes"].append(d["note"])
        elif kind == "VERSION":
            out["version"] = d["version"]
        else:
            out["unavailable"] = d["reason"]
    if rc not in (0, "timeout") and not out["unavailable"]:
        tail = " ".join(stderr.strip().splitlines()[-3:])[:400]
        out["notes"].append(f"{name} ({n_threads}t): child exited with {rc}: {tail}")
    return out


BUSY_RETRY = 0.25  # share of the CPUs taken by other work above which a run is repeated


def run_problems(args, kind: str, return_sequences: bool, ref_max_gflop: float,
                 budget, min_reps, timeout):
    """Write the problems of ``args.shapes`` with their float64 references, run every
    (peer, thread count) on them (the reference engine only up to ``ref_max_gflop``), and
    return ``run_matrix``'s (results, versions, notes)."""
    tmp, files = C.write_problems(args.shapes, return_sequences, training=kind == "training")
    by_label = dict(zip((s.label for s in args.shapes), files))

    def files_for(peer):
        if peer == "reference":
            return [by_label[s.label] for s in args.shapes if s.flops / 1e9 <= ref_max_gflop]
        return files

    print("\npeers:")
    with tmp:
        return run_matrix(args.peers, args.threads, files_for, kind, budget, min_reps,
                          timeout, wait_quiet=args.wait_quiet, retry_busy=args.retry_busy,
                          rounds=args.rounds, stat=args.stat)


def run_matrix(peers, threads, files_for, mode: str, budget: float, min_reps: int,
               timeout: float, wait_quiet: float = 0.0, retry_busy: int = 0, rounds: int = 1,
               stat: str = "median", log=print) -> tuple[dict, dict, list]:
    """Every available peer at every thread count. ``files_for(peer)`` lists its problems;
    before each child, up to ``wait_quiet`` s are spent waiting for other work to calm down,
    and a child during which other work took more than BUSY_RETRY of the CPUs is run again
    (up to ``retry_busy`` times; the run with the least other work is kept). With ``rounds``
    > 1 the whole (peer, thread count) loop runs that many times in turn, so that all peers
    meet the same phases of a machine whose speed drifts, and ``best_of_rounds`` keeps, per
    shape, the round with the lowest ``stat``.

    Returns (results[peer][n] as from run_peer, versions {peer: str}, notes [str])."""
    runs, versions, notes, dropped = {}, {}, [], set()
    for rnd in range(rounds):
        for peer in peers:
            why = availability(peer, mode) if rnd == 0 else None
            if why:
                notes.append(f"{peer} skipped: {why}")
                log(f"note: {notes[-1]}")
                dropped.add(peer)
            if peer in dropped or not (files := files_for(peer)):
                continue
            for n in threads:
                t0 = time.perf_counter()
                r = None
                for attempt in range(retry_busy + 1):
                    C.wait_quiet(wait_quiet)
                    probe = C.OtherWork().start()
                    got = run_peer(peer, n, mode, files, budget, min_reps, timeout)
                    got["other_busy_during"] = probe.stop()
                    got["attempts"] = attempt + 1
                    if r is None or ((got["other_busy_during"] or 0)
                                     < (r["other_busy_during"] or 0)):
                        r = got
                    if got["unavailable"] or (got["other_busy_during"] or 0) <= BUSY_RETRY:
                        break
                busy = r["other_busy_during"]
                if r["unavailable"]:
                    notes.append(f"{peer} skipped: {r['unavailable']}")
                    log(f"note: {notes[-1]}")
                    dropped.add(peer)
                    break
                runs.setdefault((peer, n), []).append(r)
                versions[peer] = r["version"]
                for note in r["notes"]:
                    if note not in notes:
                        notes.append(note)
                        log(f"note: {note}")
                errs = [f"{k} {v['error']}" for k, v in r["results"].items() if "error" in v]
                log(f"  {f'[{rnd + 1}/{rounds}] ' if rounds > 1 else ''}{peer:<12} {n} "
                    f"thread(s): {len(r['results'])}/{len(files)} shapes, "
                    f"{time.perf_counter() - t0:.0f} s"
                    + (f"; other work {100 * busy:.0f}% of CPUs during" if busy is not None
                       else "")
                    + (f" (best of {r['attempts']} runs)" if r["attempts"] > 1 else "")
                    + (f"; errors: {errs}" if errs else ""))
    results = {}
    for (peer, n), rs in runs.items():
        results.setdefault(peer, {})[n] = rs[0] if rounds == 1 else best_of_rounds(rs, stat)
    return results, versions, notes


def best_of_rounds(runs: list, stat: str) -> dict:
    """One run_peer result from the rounds of one (peer, thread count): per shape the record of
    the round with the lowest ``stat`` (a failed one only where no round succeeded), with
    ``rounds`` = that statistic in each round (None: failed), its best and worst, and the
    round kept (from 1); other_busy_during is the largest over the rounds."""
    key, busy = C.STAT_KEY[stat], [r["other_busy_during"] for r in runs]
    out = dict(runs[-1], results={}, other_busy_rounds=busy,
               other_busy_during=max((b for b in busy if b is not None), default=None))
    for label in dict.fromkeys(k for r in runs for k in r["results"]):
        recs = [(i + 1, r["results"][label]) for i, r in enumerate(runs) if label in r["results"]]
        kept, rec = min(recs, key=lambda ir: ("error" in ir[1], ir[1].get(key, 0.0)))
        times = [r.get(key) for _, r in recs]
        ok = [t for t in times if t is not None]
        out["results"][label] = dict(rec, rounds={
            "n": len(recs), "stat": stat, "kept": kept, "times_s": times,
            "best_s": min(ok, default=None), "worst_s": max(ok, default=None)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="child process of the CPU benchmarks (internal)")
    ap.add_argument("--peer", required=True, choices=sorted(PEERS))
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--mode", choices=("inference", "training"), required=True)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("files", nargs="+")
    return _child(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
