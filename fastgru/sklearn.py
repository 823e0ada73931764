"""scikit-learn estimators over fastgru layers: :class:`GRUClassifier` and :class:`GRURegressor`.

A stack of :class:`fastgru.GRU` layers (``units``: an int or a tuple, one entry per layer) reads
each sequence, a :class:`~fastgru.layers.dense.Dense` head maps the last state to the outputs,
and :class:`fastgru.optim.Adam` trains it with the layers' own forward/backward passes.

Input contract
--------------
- **3-D** ``X`` of shape ``(n_samples, n_timesteps, n_features)``, batch-major as in Keras.
  ``n_features_in_ = X.shape[-1]`` is the *feature* axis, not the time axis (scikeras reports
  the time axis here); later calls may use another number of time steps.
- **2-D** ``X`` of shape ``(n_samples, n_timesteps)`` holds *univariate* series: it is read as
  ``X[:, :, None]``. As for every scikit-learn estimator, ``n_features_in_ = X.shape[1]`` and
  later 2-D input must have that many columns (the series length); to predict on series of
  another length, pass them as 3-D ``(n, T, 1)`` arrays. pandas DataFrames are accepted here
  (their columns are the time steps; ``feature_names_in_`` is recorded). A model fitted on
  3-D or list input with one feature reads 2-D input as univariate series of any length.
- A **list** of arrays of different lengths, each ``(T_i, n_features)`` (or ``(T_i,)`` for
  univariate series), is right-padded with zeros and masked, so padding never changes a
  result.
- CuPy arrays are accepted and validated on the host; results are NumPy arrays.

Training is minibatch Adam on the mean (sample- and class-weighted) loss: softmax
cross-entropy (multiclass), sigmoid binary cross-entropy (binary and multilabel; the sum over
labels, as in ``MLPClassifier``) or half the mean squared error of the standardised targets
(regression), plus ``0.5 * alpha * ||W||^2`` on the kernels, all divided by the batch's
weight sum (its size when unweighted), as in ``MLPClassifier``. Rows with
``sample_weight == 0`` are dropped before anything else, so they are exactly as if absent.
Stopping follows ``MLPClassifier``: ``tol`` and ``n_iter_no_change`` on the training loss,
or on a held-out score with ``early_stopping`` (then the best weights of that ``fit`` are
restored: a warm start draws a new validation split, whose scores do not compare with earlier
ones).

Determinism: one ``random_state`` seeds the initial weights, the dropout masks, the shuffling
and the validation split, so two fits with the same integer seed give the same model bit for
bit on the CPU, and predictions of a row do not depend on the other rows of the batch.

Scale-out (no extra code needed): the estimators pickle as NumPy weights plus configuration
(never device arrays), so they work under joblib's Dask backend::

    import joblib
    from dask.distributed import Client
    from sklearn.model_selection import GridSearchCV
    client = Client(processes=False)                      # or a real cluster
    with joblib.parallel_config(backend="dask"):          # X: (n, T, D) floats, y: labels
        GridSearchCV(GRUClassifier(), {"units": [8, 16]}, n_jobs=-1).fit(X, y)

and ``predict`` is row-wise, so a 3-D Dask array chunked along axis 0 only is predicted with
``map_blocks`` (``est``: a fitted estimator)::

    import dask.array
    Xd = dask.array.from_array(X, chunks=(1000, -1, -1))
    labels = Xd.map_blocks(est.predict, drop_axis=[1, 2], dtype=est.classes_.dtype)
    proba = Xd.map_blocks(est.predict_proba, drop_axis=[1, 2], new_axis=1,
                          chunks=(Xd.chunks[0], (len(est.classes_),)), dtype="float64")

Pin ``n_threads`` (or ``OMP_NUM_THREADS``) per worker so workers x threads <= cores.

Requires scikit-learn >= 1.6 (its ``__sklearn_tags__`` API); tqdm for ``verbose``.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, compute_sample_weight, gen_batches
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
from sklearn.utils.validation import validate_data as _validate_data  # scikit-learn >= 1.6

__all__ = ["GRUClassifier", "GRURegressor"]

_DTYPE = np.float32  # compute dtype of the network
_PREDICT_CHUNK = 4096  # rows per inference call (results do not depend on it)
_ROW_BLOCK = 16  # inference batches are padded to a multiple of this many rows
_STATE_VERSION = 1
_RATES = ("dropout", "recurrent_dropout")  # configuration that leaves the weights' shapes


# --------------------------------------------------------------------------- devices
@functools.lru_cache(maxsize=1)
def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or a CUDA runtime without a device
        return False


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "gpu":
        if not _gpu_available():
            raise RuntimeError(
                "device='gpu' needs CuPy and a CUDA device, and none is usable here "
                "(pip install cupy-cuda12x on a machine with an NVIDIA GPU); "
                "use device='cpu' or device='auto'."
            )
        return "gpu"
    return "gpu" if _gpu_available() else "cpu"


def _xp(device: str):
    if device == "gpu":
        import cupy

        return cupy
    return np


def _host(a) -> np.ndarray:
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else np.asarray(a)


class _threads:
    """Cap BLAS/OpenMP threads for a fit/predict call (None: leave them alone)."""

    def __init__(self, n):
        self.n, self.ctx = n, None

    def __enter__(self):
        if self.n is not None:
            from threadpoolctl import threadpool_limits

            self.ctx = threadpool_limits(limits=int(self.n))
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.restore_original_limits()


# --------------------------------------------------------------------------- sequences
class _Seqs:
    """Validated sequences: ``x`` (n, T, F) in the compute dtype, ``mask`` (n, T) bool or None
    (right padding), ``lengths`` (n,) int or None."""

    def __init__(self, x, mask=None, lengths=None):
        self.x, self.mask, self.lengths = x, mask, lengths

    def __len__(self):
        return self.x.shape[0]

    def take(self, idx):
        if self.mask is None:
            return _Seqs(self.x[idx])
        return _Seqs(self.x[idx], self.mask[idx], self.lengths[idx])

    def batch(self, idx):
        """(x, mask) for rows ``idx``, padding trimmed to the batch's longest sequence."""
        if self.mask is None:
            return self.x[idx], None
        t = int(self.lengths[idx].max())
        m = self.mask[idx, :t]
        return self.x[idx, :t], (None if m.all() else m)


def _as_compute(a, name: str) -> np.ndarray:
    """a in the network's dtype; values finite in float64 but beyond float32's range (which
    check_array lets through) would train a NaN model without a word, so they are refused."""
    x = np.asarray(a, dtype=_DTYPE)
    if not np.isfinite(x).all():
        raise ValueError(f"Input {name} contains infinity or a value too large for "
                         f"dtype({np.dtype(_DTYPE).name!r}).")
    return x


def _is_ragged(X) -> bool:
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return False
    shapes = {np.shape(x) for x in X}
    return len(shapes) > 1


def _ragged(X, name: str) -> _Seqs:
    seqs = []
    for i, s in enumerate(X):
        # ensure_min_samples=0: an empty sequence gets the message below, not check_array's
        # "Found array with 0 sample(s)", which reads as if X itself were empty
        a = check_array(s, ensure_2d=False, dtype=[np.float64, np.float32], input_name=name,
                        ensure_min_samples=0)
        if a.ndim not in (1, 2):  # before the length: a 0-d sequence has no shape[0]
            raise ValueError(
                f"Each sequence of a list {name} must be 2-D (n_timesteps, n_features) or 1-D "
                f"(n_timesteps,); sequence {i} has shape {a.shape}."
            )
        if a.shape[0] == 0:
            raise ValueError(f"Sequence {i} of {name} has length 0 (shape {a.shape}); every "
                             "sequence needs >= 1 step.")
        if a.ndim == 1:
            a = a[:, None]
        seqs.append(_as_compute(a, name))
    widths = {a.shape[1] for a in seqs}
    if len(widths) != 1:
        raise ValueError(
            f"All sequences of {name} must have the same number of features; got {sorted(widths)}."
        )
    lengths = np.array([a.shape[0] for a in seqs], dtype=np.intp)
    n, t, f = len(seqs), int(lengths.max()), widths.pop()
    x = np.zeros((n, t, f), dtype=_DTYPE)
    for i, a in enumerate(seqs):
        x[i, : a.shape[0]] = a
    mask = np.arange(t)[None, :] < lengths[:, None]
    return _Seqs(x, mask, lengths)


# --------------------------------------------------------------------------- the network
def _padded_rows(start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) padded to a multiple of _ROW_BLOCK by repeating the last: BLAS
    computes leftover rows (past a multiple of its block size, and any single row) with other
    kernels, whose rounding differs, so padding keeps each row's result independent of the
    other rows of the call."""
    idx = np.arange(start, stop)
    return np.concatenate([idx, np.full(-idx.size % _ROW_BLOCK, idx[-1])])


class _Net:
    """GRU stack + Dense head with an Adam optimizer; pickles as host weights + config."""

    def __init__(self, n_in: int, n_out: int, units: tuple, reset_after: bool, dropout: float,
                 recurrent_dropout: float, bidirectional: bool, seeds: list):
        self.config = dict(n_in=n_in, n_out=n_out, units=tuple(units), reset_after=reset_after,
                           dropout=dropout, recurrent_dropout=recurrent_dropout,
                           bidirectional=bidirectional, seeds=list(seeds))
        self._build()
        self.optimizer = None
        self.device = "cpu"

    def _build(self):
        from . import initializers as init
        from .layers.dense import Dense

        c = self.config
        gru_cls = _gru_class()
        seeds = iter(c["seeds"])
        self.layers, d = [], c["n_in"]

        def gru(i, u, name, go_backwards=False):
            return gru_cls(u, name=name, return_sequences=i < len(c["units"]) - 1,
                           go_backwards=go_backwards, reset_after=c["reset_after"],
                           dropout=c["dropout"], recurrent_dropout=c["recurrent_dropout"],
                           kernel_initializer=init.GlorotUniform(seed=next(seeds)),
                           recurrent_initializer=init.Orthogonal(seed=next(seeds)),
                           seed=next(seeds), dtype=np.dtype(_DTYPE).name)

        for i, u in enumerate(c["units"]):
            layer = gru(i, u, f"gru_{i}")
            if c["bidirectional"]:  # own seeds for the backward direction
                layer = _bidirectional_class()(
                    layer, backward_layer=gru(i, u, f"backward_gru_{i}", go_backwards=True),
                    name=f"bidirectional_{i}")
            layer.build((None, None, d))
            d = u * (2 if c["bidirectional"] else 1)
            self.layers.append(layer)
        self.head = Dense(c["n_out"], kernel_initializer=init.GlorotUniform(seed=next(seeds)),
                          dtype=np.dtype(_DTYPE).name, name="head")
        self.head.build((None, d))
        self.params = [w for layer in self.layers + [self.head] for w in layer.trainable_weights]
        self._is_kernel = [w.name.endswith("kernel") for w in self.params]

    @staticmethod
    def n_seeds(n_layers: int, bidirectional: bool) -> int:
        return 3 * n_layers * (2 if bidirectional else 1) + 1

    def architecture(self) -> dict:
        """The hyper-parameters that shape the network's weights (not the data sizes, seeds,
        or dropout rates: a continued fit may change those and keep the weights)."""
        return {k: v for k, v in self.config.items()
                if k not in ("n_in", "n_out", "seeds") + _RATES}

    def move_head(self, mean0, scale0, mean1, scale1) -> None:
        """Re-express the head for targets standardised with (mean1, scale1) instead of
        (mean0, scale0): z * scale0 + mean0 == z' * scale1 + mean1 for every input."""
        if np.array_equal(mean0, mean1) and np.array_equal(scale0, scale1):
            return
        k = np.asarray(scale0 / scale1)
        kernel, bias = (self.head.kernel, self.head.bias)
        xp = _xp(self.device)
        kernel.assign(kernel.value * xp.asarray(k, dtype=kernel.dtype))
        bias.assign(xp.asarray((_host(bias.value) * scale0 + mean0 - mean1) / scale1,
                               dtype=bias.dtype))

    def with_rates(self, **rates) -> _Net:
        """This network (weights, optimizer, dropout streams) with other dropout rates: a new
        object, so that a failed fit can keep the old one."""
        state = self.__getstate__()
        state["config"] = {**state["config"], **rates}
        net = _Net.__new__(_Net)
        net.__setstate__(state)
        net.to(self.device)
        return net

    # ---------------------------------------------------------------- device / optimizer
    def set_threads(self, n_threads) -> None:
        """Thread count for the GRU layers' CPU engine (None: its default)."""
        for layer in self.layers:
            if hasattr(layer, "n_threads"):
                layer.n_threads = n_threads

    def to(self, device: str) -> _Net:
        if device != self.device:
            for layer in self.layers + [self.head]:
                layer.to(device)
            self.device = device
        return self

    def new_optimizer(self, learning_rate: float):
        from .optim import Adam

        self.optimizer = Adam(self.params, learning_rate=learning_rate)

    # ---------------------------------------------------------------- passes
    def forward(self, x, mask, training: bool):
        tapes, h = [], x
        for layer in self.layers:
            if training:
                h, tape = layer.forward(h, mask=mask, training=True)
                tapes.append(tape)
            else:
                h = layer(h, mask=mask, training=False)
        if training:
            z, tape = self.head.forward(h, training=True)
            return z, tapes + [tape]
        return self.head(h), None

    def backward(self, tapes, dz) -> list:
        grads = []
        g = self.head.backward(tapes[-1], dz)
        grads.append(list(g.weights))
        d = g.inputs
        for layer, tape in zip(reversed(self.layers), reversed(tapes[:-1]), strict=True):
            g = layer.backward(tape, d)
            grads.append(list(g.weights))
            d = g.inputs
        return [w for gs in reversed(grads) for w in gs]

    def train_step(self, x, mask, Y, sw, norm: float, loss_fn, alpha: float) -> float:
        """One Adam step on the batch's loss: sums weighted by sw, and the L2 penalty, divided
        by ``norm``, the batch's weight sum, as MLPClassifier (integer weights then weigh as
        repeated rows; scaling every weight by c leaves the data term as it is and weighs the
        penalty as alpha / c)."""
        z, tapes = self.forward(x, mask, training=True)
        loss, dz = loss_fn(z, Y, sw, norm)
        grads = self.backward(tapes, dz)
        if alpha:
            xp = _xp(self.device)
            for i, p in enumerate(self.params):
                if self._is_kernel[i]:
                    w = p.value
                    loss += 0.5 * alpha * float(xp.sum(w * w)) / norm
                    grads[i] = grads[i] + w * _DTYPE(alpha / norm)
        self.optimizer.step(grads)
        return loss

    def predict_raw(self, seqs: _Seqs) -> np.ndarray:
        """Head outputs (n, n_out) as float64 host arrays, computed in fixed-size chunks."""
        xp = _xp(self.device)
        out = []
        for sl in gen_batches(len(seqs), _PREDICT_CHUNK):
            x, m = seqs.batch(_padded_rows(sl.start, sl.stop))
            if xp is not np:
                x, m = xp.asarray(x), (None if m is None else xp.asarray(m))
            z, _ = self.forward(x, m, training=False)
            out.append(_host(z)[: sl.stop - sl.start].astype(np.float64))
        return np.concatenate(out, axis=0)

    def explain(self, x, mask) -> str:
        """One line per GRU layer: the engine it runs on this input, and why."""
        lines, h = [], x
        for layer in self.layers:
            lines.append(layer.explain(h, mask))
            h = layer(h, mask=mask, training=False)
        return "\n".join(lines)

    # ---------------------------------------------------------------- weights / pickling
    def get_weights(self) -> list:
        return [_host(p.value).copy() for p in self.params]

    def set_weights(self, weights) -> None:
        xp = _xp(self.device)
        for p, w in zip(self.params, weights, strict=True):
            p.assign(xp.asarray(w, dtype=p.dtype))

    def _cells(self) -> list:
        """The GRU cells, in a fixed order (each holds its own dropout-mask generator)."""
        subs = [s for layer in self.layers
                for s in ((layer.forward_layer, layer.backward_layer)
                          if hasattr(layer, "forward_layer") else (layer,))]
        return [s.cell for s in subs]

    def __getstate__(self):
        weights = [layer.get_weights() for layer in self.layers] + [self.head.get_weights()]
        return {
            "version": _STATE_VERSION,
            "config": self.config,
            "weights": weights,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            # where each cell's dropout masks have got to, so that training resumes after a
            # round trip (dask-ml's Incremental ships the model between blocks) with the masks
            # it would have drawn next, not the first ones again
            "dropout_rngs": [None if c._rng is None else c._rng.bit_generator.state
                             for c in self._cells()],
        }

    def __setstate__(self, state):
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Unknown fastgru estimator state version {state.get('version')}")
        self.config = state["config"]
        self.device = "cpu"
        self._build()
        for layer, w in zip(self.layers + [self.head], state["weights"], strict=True):
            layer.set_weights(w)
        self.optimizer = None
        if state["optimizer"] is not None:
            self.new_optimizer(state["optimizer"]["config"]["learning_rate"])
            self.optimizer.load_state_dict(state["optimizer"])
        for cell, rng in zip(self._cells(), state.get("dropout_rngs") or (), strict=False):
            if rng is not None:
                cell._rng = np.random.Generator(getattr(np.random, rng["bit_generator"])())
                cell._rng.bit_generator.state = rng


def _gru_class():
    import fastgru

    return fastgru.GRU


def _bidirectional_class():
    try:
        from .layers.bidirectional import Bidirectional
    except ImportError as e:
        raise ValueError(
            "bidirectional=True needs fastgru's Bidirectional layer, which this installation "
            f"lacks ({e}). Use bidirectional=False."
        ) from None
    return Bidirectional


# --------------------------------------------------------------------------- losses
def _softmax_ce(z, Y, sw, b):
    """Weighted softmax cross-entropy over the batch / b (its weight sum), and d/dz."""
    xp = _xp("gpu" if type(z).__module__.startswith("cupy") else "cpu")
    s = z - z.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(s).sum(axis=1, keepdims=True))
    logp = s - lse
    loss = -float(xp.sum(sw[:, None] * Y * logp)) / b
    dz = (xp.exp(logp) - Y) * (sw[:, None] / b)
    return loss, dz.astype(z.dtype, copy=False)


def _sigmoid_bce(z, Y, sw, b):
    """The summed per-label binary cross-entropy, weighted, over the batch / b, and d/dz."""
    xp = _xp("gpu" if type(z).__module__.startswith("cupy") else "cpu")
    # log(1 + exp(z)) - y z, stably
    softplus = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
    loss = float(xp.sum(sw[:, None] * (softplus - Y * z))) / b
    p = 1.0 / (1.0 + xp.exp(-z))
    dz = (p - Y) * (sw[:, None] / b)
    return loss, dz.astype(z.dtype, copy=False)


def _half_mse(z, Y, sw, b):
    """Half the weighted squared error over samples (/ b, their weight sum) and outputs
    (mean), and d/dz."""
    xp = _xp("gpu" if type(z).__module__.startswith("cupy") else "cpu")
    r = z - Y
    scale = 1.0 / (b * z.shape[1])
    loss = 0.5 * float(xp.sum(sw[:, None] * r * r)) * scale
    dz = r * (sw[:, None] * scale)
    return loss, dz.astype(z.dtype, copy=False)


_LOSSES = {"softmax": _softmax_ce, "logistic": _sigmoid_bce, "identity": _half_mse}


def _stable_sigmoid(z):
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))),
                    np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


# --------------------------------------------------------------------------- the base
class _BaseGRU(BaseEstimator):
    """Shared machinery; see the module docstring for the input contract."""

    def __init__(self, units=16, reset_after=True, dropout=0.0, recurrent_dropout=0.0,
                 bidirectional=False, max_iter=200, batch_size="auto", learning_rate=0.01,
                 alpha=0.0001, shuffle=True, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, warm_start=False, random_state=None,
                 device="cpu", n_threads=None, verbose=False):
        self.units = units
        self.reset_after = reset_after
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.bidirectional = bidirectional
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.shuffle = shuffle
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose

    # ---------------------------------------------------------------- tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        tags.non_deterministic = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_net")

    # ---------------------------------------------------------------- hyper-parameters
    def _units(self) -> tuple:
        u = self.units
        seq = (u,) if isinstance(u, numbers.Integral) and not isinstance(u, bool) else u
        try:
            seq = tuple(seq)
        except TypeError:
            seq = ()
        if not seq or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0
                          for v in seq):
            raise ValueError(
                "The 'units' parameter must be a positive int or a non-empty tuple of positive "
                f"ints (one per GRU layer). Got {u!r} instead."
            )
        return tuple(int(v) for v in seq)

    def _check_params(self) -> None:
        def bad(name, expected):
            raise ValueError(
                f"The '{name}' parameter of {type(self).__name__} must be {expected}. "
                f"Got {getattr(self, name)!r} instead."
            )

        def real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        def integer(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        self._units()
        for name in ("dropout", "recurrent_dropout"):
            v = getattr(self, name)
            if not real(v) or not 0 <= v < 1:
                bad(name, "a float in the range [0, 1)")
        if not integer(self.max_iter) or self.max_iter < 1:
            bad("max_iter", "an int in the range [1, inf)")
        if not (self.batch_size == "auto" or (integer(self.batch_size) and self.batch_size >= 1)):
            bad("batch_size", "'auto' or an int in the range [1, inf)")
        if not real(self.learning_rate) or not self.learning_rate > 0:
            bad("learning_rate", "a float in the range (0, inf)")
        if not real(self.alpha) or not self.alpha >= 0:
            bad("alpha", "a float in the range [0, inf)")
        if not real(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            bad("validation_fraction", "a float in the range (0, 1)")
        if not integer(self.n_iter_no_change) or self.n_iter_no_change < 1:
            bad("n_iter_no_change", "an int in the range [1, inf)")
        if not real(self.tol) or not self.tol >= 0:
            bad("tol", "a float in the range [0, inf)")
        if self.device not in ("cpu", "gpu", "auto"):
            bad("device", "a str among {'cpu', 'gpu', 'auto'}")
        if self.n_threads is not None and (not integer(self.n_threads) or self.n_threads < 1):
            bad("n_threads", "None or an int in the range [1, inf)")
        for name in ("reset_after", "bidirectional", "shuffle", "early_stopping", "warm_start"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(name, "a bool")
        if self.bidirectional:
            _bidirectional_class()

    # ---------------------------------------------------------------- X validation
    def _validate_X(self, X, reset: bool) -> _Seqs:
        """X -> _Seqs; sets (reset) or checks n_features_in_ and the input layout."""
        if type(X).__module__.split(".")[0] == "cupy":  # validated (and batched) on the host
            X = X.get()
        if _is_ragged(X):
            seqs = _ragged(X, "X")
            layout = "seq"
            n_features = seqs.x.shape[2]
        else:
            if hasattr(X, "columns") or sparse.issparse(X):
                nd = 2  # let validate_data accept frames and word sparse input's rejection
            else:
                nd = np.asarray(X).ndim
            if nd == 2:
                seq_model = not reset and self._layout == "seq"
                if seq_model and self.n_features_in_ != 1:
                    raise ValueError(
                        f"X is 2-D but {type(self).__name__} was fitted on 3-D sequences with "
                        f"{self.n_features_in_} features; pass an array of shape "
                        f"(n_samples, n_timesteps, {self.n_features_in_})."
                    )
                if seq_model:  # univariate (n, T) series for a one-feature model, any T
                    x = check_array(X, dtype=[np.float64, np.float32], input_name="X")
                else:
                    x = _validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
                seqs = _Seqs(_as_compute(x, "X")[:, :, None])
                layout, n_features = ("seq", 1) if seq_model else ("2d", None)
            else:
                x = check_array(X, allow_nd=True, dtype=[np.float64, np.float32], input_name="X")
                if x.ndim != 3:
                    raise ValueError(
                        "X must be 2-D (n_samples, n_timesteps), 3-D (n_samples, n_timesteps, "
                        f"n_features) or a list of sequences; got an array of shape {x.shape}."
                    )
                if x.shape[1] < 1 or x.shape[2] < 1:
                    raise ValueError(
                        f"Found array with shape {x.shape}: at least 1 time step and 1 feature "
                        "are required."
                    )
                seqs, layout, n_features = _Seqs(_as_compute(x, "X")), "seq", x.shape[2]
        if layout == "seq":
            if reset:
                self.n_features_in_ = n_features
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif self._layout == "2d":
                if n_features != 1:
                    raise ValueError(
                        f"{type(self).__name__} was fitted on 2-D univariate series; 3-D input "
                        f"must have 1 feature, got {n_features}."
                    )
            elif n_features != self.n_features_in_:
                raise ValueError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
        if reset:
            self._layout = layout
        return seqs

    @staticmethod
    def _sample_weight(sample_weight, n: int):
        if sample_weight is None:
            return np.ones(n, dtype=np.float64)
        sw = check_array(sample_weight, ensure_2d=False, dtype=np.float64,
                         input_name="sample_weight")
        if sw.ndim != 1 or sw.shape[0] != n:
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}!")
        if (sw < 0).any():
            raise ValueError("Negative values in data passed to `sample_weight`")
        return sw.copy()

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                          "It is going to be clipped", stacklevel=2)
        return max(1, min(self.batch_size, n))

    # ---------------------------------------------------------------- fitting
    def _fit(self, X, y, sample_weight, incremental: bool, classes=None):
        self._check_params()
        device = _resolve_device(self.device)  # a usable device, before anything changes
        # Validation and set-up rebind attributes as they go; a failure among them must leave
        # the estimator as it was (a refit with bad y keeping the old model and its
        # n_features_in_, an unfitted one unfitted), so they run on a snapshot.
        # Training that diverges raises too, and a model that a fit continues (warm start,
        # partial_fit) changes in place (its weights, optimizer, dropout and shuffling
        # streams, curves): its state is kept on the host to be given back then.
        before = dict(self.__dict__)
        net0 = before.get("_net") if incremental or self.warm_start else None
        kept = None if net0 is None else (
            net0.__getstate__(), self._rng.get_state(),
            {k: list(v) for k, v in before.items() if isinstance(v, list)})
        try:
            seqs, Y, sw, val = self._setup(X, y, sample_weight, incremental, classes)
            self.device_ = device
            self._net.to(device)
            self._net.set_threads(self.n_threads)
        except BaseException:
            self._restore(before, net0, kept)
            raise
        try:
            with _threads(self.n_threads):
                self._run_epochs(seqs, Y, sw, val, incremental)
        except _Diverged:
            self._restore(before, net0, kept)
            raise
        return self

    def _restore(self, before: dict, net0, kept) -> None:
        """The estimator as it was before a fit that failed (see _fit)."""
        self.__dict__.clear()
        self.__dict__.update(before)
        if kept is not None:
            net_state, rng_state, lists = kept
            net0.__setstate__(net_state)
            net0.to(before.get("device_", "cpu"))
            self._rng.set_state(rng_state)
            self.__dict__.update(lists)

    def _setup(self, X, y, sample_weight, incremental: bool, classes):
        """Validate the data, encode the targets and (re)build the network if needed."""
        units = self._units()
        # Start over unless continuing (partial_fit / warm_start) the same architecture.
        arch = self._architecture(units)
        shape = {k: v for k, v in arch.items() if k not in _RATES}
        fresh = (not hasattr(self, "_net") or not (incremental or self.warm_start)
                 or self._net.architecture() != shape)
        if not fresh and any(self._net.config[k] != arch[k] for k in _RATES):
            self._net = self._net.with_rates(**{k: arch[k] for k in _RATES})
        seqs = self._validate_X(X, reset=fresh)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        Y, y_raw = self._encode_y(y, len(seqs), fresh, classes)
        sw = self._sample_weight(sample_weight, len(seqs))
        # weight 0 == row absent: such rows go before the class weights are computed (they
        # would count in "balanced"'s class frequencies), and again if a class weight is 0
        for weights in (None, self._class_weights):
            if weights is not None:
                sw = sw * weights(y_raw)
            keep = np.flatnonzero(sw > 0)
            if keep.size == 0:
                raise ValueError("All sample weights are zero: there is nothing to fit.")
            if keep.size < len(seqs):
                seqs, Y, sw, y_raw = seqs.take(keep), Y[keep], sw[keep], y_raw[keep]
        if not incremental:
            self._check_enough_classes(y_raw)
        Y = self._scale_targets(Y, fresh, incremental)

        if fresh:
            self._rng = check_random_state(self.random_state)
            n_seeds = _Net.n_seeds(len(units), bool(self.bidirectional))
            seeds = self._rng.randint(0, 2**31 - 1, size=n_seeds).tolist()
            self._net = _Net(seqs.x.shape[2], Y.shape[1], seeds=seeds,
                             **self._architecture(units))
            self.n_iter_, self.t_ = 0, 0
            self.loss_curve_ = []
            self.best_loss_ = np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        val = None
        if self.early_stopping and not incremental:  # the split can fail on the data too
            stratify = y_raw if (self._stratify() and y_raw.ndim == 1) else None
            tr, va = train_test_split(np.arange(len(seqs)), test_size=self.validation_fraction,
                                      random_state=self._rng, stratify=stratify)
            val = (seqs.take(va), y_raw[va], sw[va])
            seqs, Y, sw = seqs.take(tr), Y[tr], sw[tr]
        # last: the network's optimizer changes in place, and nothing may fail after it
        if self._net.optimizer is None or not incremental:
            self._net.new_optimizer(float(self.learning_rate))
        else:
            self._net.optimizer.learning_rate = float(self.learning_rate)
        return seqs, Y, sw, val

    def _architecture(self, units) -> dict:
        return dict(units=units, reset_after=bool(self.reset_after), dropout=float(self.dropout),
                    recurrent_dropout=float(self.recurrent_dropout),
                    bidirectional=bool(self.bidirectional))

    def _run_epochs(self, seqs: _Seqs, Y, sw, val, incremental: bool):
        net, rng = self._net, self._rng
        early = val is not None
        if early:
            # A warm start draws a new validation split, so earlier scores do not compare
            # with this fit's: it keeps the best weights of its own epochs (the scores of all
            # fits stay in validation_scores_, as the losses do in loss_curve_).
            if self.validation_scores_ is None:
                self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
        elif self.best_loss_ is None:  # the previous fit stopped early
            self.best_loss_ = np.inf
        n = len(seqs)
        bs = self._batch_size(n)
        xp = _xp(net.device)
        dev = (lambda a: a) if xp is np else xp.asarray
        x_all = _Seqs(dev(seqs.x), None if seqs.mask is None else dev(seqs.mask), seqs.lengths)
        Y_all, sw_all = dev(Y.astype(_DTYPE)), dev(sw.astype(_DTYPE))
        sw_total = float(sw.sum())
        loss_fn = _LOSSES[self._out_activation]
        epochs = 1 if incremental else self.max_iter
        bar = _progress(epochs, self.verbose)
        self._no_improvement_count = 0
        best_weights = None
        converged = False
        for _ in range(epochs):
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            total = 0.0
            for sl in gen_batches(n, bs):
                idx = order[sl]
                if seqs.mask is not None:  # trim padding with host lengths, index on device
                    t = int(seqs.lengths[idx].max())
                    m = seqs.mask[idx, :t]
                    d_idx = dev(idx)
                    xb = x_all.x[d_idx, :t]
                    mb = None if m.all() else x_all.mask[d_idx, :t]
                else:
                    d_idx = dev(idx)
                    xb, mb = x_all.x[d_idx], None
                norm = float(sw[idx].sum())  # host float64: len(idx) exactly when unweighted
                total += net.train_step(xb, mb, Y_all[d_idx], sw_all[d_idx], norm, loss_fn,
                                        float(self.alpha)) * norm
            self.n_iter_ += 1
            self.t_ += n
            loss = total / sw_total
            if not np.isfinite(loss):
                raise _Diverged(
                    "Training produced a non-finite loss (the weights are no longer finite); "
                    "the input data may contain very large values and need to be scaled, or "
                    "the learning_rate is too high."
                )
            self.loss_curve_.append(loss)
            self.loss_ = loss
            if incremental:
                self.best_loss_ = loss if self.best_loss_ is None else min(self.best_loss_, loss)
                bar.update(loss)
                break
            if early:
                score = self._validation_score(*val)
                self.validation_scores_.append(score)
                improved = score >= self.best_validation_score_ + self.tol
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_weights = net.get_weights()
                bar.update(loss, score)
            else:
                improved = loss <= self.best_loss_ - self.tol
                self.best_loss_ = min(self.best_loss_, loss)
                bar.update(loss)
            self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
            if self._no_improvement_count > self.n_iter_no_change:
                converged = True
                if self.verbose:
                    what = "Validation score" if early else "Training loss"
                    bar.write(f"{what} did not improve more than tol={self.tol} for "
                              f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
        bar.close()
        if early:
            self.best_loss_ = None
            if best_weights is not None:
                net.set_weights(best_weights)
        if not incremental and not converged:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=2)

    # ---------------------------------------------------------------- predicting
    def _ready(self, X) -> _Seqs:
        check_is_fitted(self)
        seqs = self._validate_X(X, reset=False)
        self._net.to(_resolve_device(self.device))
        self._net.set_threads(self.n_threads)
        return seqs

    def _raw(self, X) -> np.ndarray:
        seqs = self._ready(X)
        with _threads(self.n_threads):
            return self._net.predict_raw(seqs)

    def explain(self, X) -> str:
        """Which engine each GRU layer runs for ``X`` at predict time (its first chunk of
        rows), and why, as text: fastgru never falls back to a slower path silently."""
        seqs = self._ready(X)
        x, m = seqs.batch(_padded_rows(0, min(len(seqs), _PREDICT_CHUNK)))  # as predict runs
        if self._net.device == "gpu":
            xp = _xp("gpu")
            x, m = xp.asarray(x), (None if m is None else xp.asarray(m))
        with _threads(self.n_threads):
            return self._net.explain(x, m)


class _Diverged(ValueError):
    """Training produced a non-finite loss (fit gives the model back as it was)."""


class _progress:
    """tqdm bar over epochs showing the loss (a plain print per epoch without tqdm)."""

    def __init__(self, total: int, verbose):
        self.verbose, self.bar = bool(verbose), None
        if self.verbose:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="epochs", unit="epoch", leave=True)
            except ImportError:
                self.bar = None
        self.epoch = 0

    def update(self, loss, score=None):
        self.epoch += 1
        if not self.verbose:
            return
        info = {"loss": f"{loss:.6g}"}
        if score is not None:
            info["val_score"] = f"{score:.4g}"
        if self.bar is not None:
            self.bar.set_postfix(info)
            self.bar.update(1)
        else:
            print(f"Iteration {self.epoch}, " + ", ".join(f"{k} = {v}" for k, v in info.items()))

    def write(self, msg):
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- classifier
class GRUClassifier(ClassifierMixin, _BaseGRU):
    """GRU sequence classifier: binary, multiclass and multilabel.

    Parameters
    ----------
    units : int or tuple of int, default=16
        Units of the GRU layer, or of each stacked GRU layer (all but the last return
        sequences).
    reset_after : bool, default=True
        Keras's ``reset_after`` (True is the cuDNN-compatible variant).
    dropout, recurrent_dropout : float in [0, 1), default=0.0
        Keras dropout rates of the GRU inputs and recurrent state, active in training only.
    bidirectional : bool, default=False
        Wrap each GRU layer in ``fastgru.Bidirectional`` (a ValueError until that layer exists).
    max_iter : int, default=200
        Maximum number of epochs per ``fit``.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is ``min(200, n_samples)``.
    learning_rate : float, default=0.01
        Adam's learning rate.
    alpha : float, default=1e-4
        L2 penalty on the kernels, scaled as in ``MLPClassifier``.
    shuffle : bool, default=True
        Shuffle the samples every epoch.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified) and stop when its accuracy
        has not improved by ``tol`` for ``n_iter_no_change`` epochs; keeps the best weights of the
        ``fit`` (``best_validation_score_`` is this fit's best).
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
        Without early stopping, training stops when the epoch loss has not improved by ``tol``
        for ``n_iter_no_change`` consecutive epochs.
    class_weight : dict, "balanced" or None, default=None
        Multiplies each sample's weight by its class's weight (``compute_sample_weight``).
    warm_start : bool, default=False
        Let ``fit`` continue from the current weights (with a new optimizer).
    random_state : int, RandomState or None, default=None
        Seeds weights, dropout, shuffling and the validation split.
    device : {"cpu", "gpu", "auto"}, default="cpu"
        "gpu" runs the layers on CuPy arrays (a RuntimeError without CuPy and a GPU);
        "auto" picks the GPU when one is usable.
    n_threads : int or None, default=None
        Cap on BLAS/OpenMP threads during fit/predict (None: the process default).
    verbose : bool, default=False
        Show a tqdm progress bar with the loss of each epoch.

    Attributes
    ----------
    classes_ : ndarray (n_classes,) (for multilabel: ``arange(n_labels)``)
    n_features_in_ : int
        ``X.shape[-1]``: the number of features per time step for 3-D input (the series
        length for 2-D univariate input, as scikit-learn defines it).
    feature_names_in_ : ndarray, only for a 2-D DataFrame with string column names.
    n_outputs_ : int, loss_ : float, loss_curve_ : list of float, best_loss_ : float,
    validation_scores_ : list or None, best_validation_score_ : float or None,
    n_iter_ : int (epochs run), t_ : int (samples seen), device_ : str.
    """

    def __init__(self, units=16, reset_after=True, dropout=0.0, recurrent_dropout=0.0,
                 bidirectional=False, max_iter=200, batch_size="auto", learning_rate=0.01,
                 alpha=0.0001, shuffle=True, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, class_weight=None, warm_start=False,
                 random_state=None, device="cpu", n_threads=None, verbose=False):
        super().__init__(units=units, reset_after=reset_after, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, bidirectional=bidirectional,
                         max_iter=max_iter, batch_size=batch_size, learning_rate=learning_rate,
                         alpha=alpha, shuffle=shuffle, early_stopping=early_stopping,
                         validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, tol=tol, warm_start=warm_start,
                         random_state=random_state, device=device, n_threads=n_threads,
                         verbose=verbose)
        self.class_weight = class_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def fit(self, X, y, sample_weight=None) -> GRUClassifier:
        """Fit on ``X`` (see the module docstring for shapes) and labels ``y``: (n,) for
        binary/multiclass, an (n, n_labels) indicator matrix for multilabel."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None) -> GRUClassifier:
        """One epoch over ``X, y``, keeping weights and optimizer state. ``classes`` (all the
        labels of the stream) is required on the first call for binary/multiclass y."""
        if classes is None and not self._is_multilabel(y):
            if not hasattr(self, "_net"):
                raise ValueError("classes must be passed on the first call to partial_fit.")
            classes = self.classes_  # kept if an architecture change restarts the model
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    @staticmethod
    def _is_multilabel(y) -> bool:
        return np.ndim(y) == 2 and np.shape(y)[1] > 1 and \
            type_of_target(y) == "multilabel-indicator"

    def _stratify(self) -> bool:
        return True

    def _encode_y(self, y, n: int, fresh: bool, classes):
        y = np.asarray(y) if not hasattr(y, "iloc") else y.to_numpy()
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim == 2:
            y = check_array(y, dtype=None, input_name="y")
        else:
            y = column_or_1d(y)
        if y.shape[0] != n:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: [{n}, {y.shape[0]}]"
            )
        check_classification_targets(y)
        if fresh:
            lb = LabelBinarizer()
            lb.fit(y if classes is None or y.ndim == 2 else np.asarray(classes))
            if classes is not None and y.ndim == 1:
                if len(lb.classes_) < 2:  # as fit's _check_enough_classes
                    raise ValueError(
                        f"`classes` must hold at least 2 classes; got {lb.classes_.tolist()}."
                    )
                unseen = np.setdiff1d(np.unique(y), lb.classes_)
                if unseen.size:
                    raise ValueError(
                        f"`y` has classes not in `classes`: {unseen.tolist()}; "
                        f"`classes` is {lb.classes_.tolist()}."
                    )
            self._label_binarizer = lb
            self.classes_ = lb.classes_
            self._multilabel = lb.y_type_ == "multilabel-indicator"
            self.n_outputs_ = 1 if not self._multilabel else y.shape[1]
            self._out_activation = "softmax" if lb.y_type_ == "multiclass" else "logistic"
        else:
            lb = self._label_binarizer
            if self._multilabel != (y.ndim == 2):
                raise ValueError(
                    "The type of target (multilabel or not) differs from the previous fit."
                )
            if self._multilabel:
                if y.shape[1] != len(self.classes_):
                    raise ValueError(
                        f"y has {y.shape[1]} labels, but {type(self).__name__} was fitted "
                        f"with {len(self.classes_)}."
                    )
            else:
                if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                    raise ValueError(  # scikit-learn's wording (_check_partial_fit_first_call)
                        f"`classes={np.unique(classes).tolist()}` is not the same as on last "
                        f"call to partial_fit, was: {self.classes_!r}"
                    )
                unseen = np.setdiff1d(np.unique(y), self.classes_)
                if unseen.size:
                    if self.warm_start and classes is None:
                        raise ValueError(
                            "warm_start can only be used where `y` has the same classes as in "
                            f"the previous call to fit. Previously got {self.classes_}, `y` "
                            f"has {np.unique(y)}"
                        )
                    raise ValueError(
                        f"`y` has classes not in `self.classes_`. `self.classes_` has "
                        f"{self.classes_}. 'y' has {np.unique(y)}."
                    )
        Y = lb.transform(y).astype(np.float64)
        if len(lb.classes_) == 1:  # one class: LabelBinarizer gives a zero column
            Y = np.ones((n, 1))
        return Y, y

    def _scale_targets(self, Y, fresh: bool, incremental: bool):
        return Y

    def _class_weights(self, y):
        if self.class_weight is None:
            return 1.0
        if self._multilabel:
            raise ValueError("class_weight is not supported for multilabel y.")
        return compute_sample_weight(self.class_weight, y)

    def _check_enough_classes(self, y):
        if not self._multilabel and np.unique(y).size < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data (with "
                f"positive sample_weight), but the data contains only one class: {np.unique(y)[0]}"
            )

    def _validation_score(self, seqs, y, sw) -> float:
        pred = self._predict_from_proba(self._proba_from_raw(self._net.predict_raw(seqs)))
        if self._multilabel:
            hit = np.all(pred == y, axis=1)
        else:
            hit = pred == y
        return float(np.average(hit, weights=sw))

    def _proba_from_raw(self, z):
        if self._out_activation == "softmax":
            s = z - z.max(axis=1, keepdims=True)
            e = np.exp(s)
            return e / e.sum(axis=1, keepdims=True)
        return _stable_sigmoid(z)

    def _predict_from_proba(self, p):
        return self._label_binarizer.inverse_transform(p, threshold=0.5)

    def predict(self, X) -> np.ndarray:
        """Labels (n,), or the (n, n_labels) indicator matrix for multilabel."""
        return self._predict_from_proba(self._proba_from_raw(self._raw(X)))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes) (binary: two columns); multilabel: (n, n_labels)
        independent probabilities of each label."""
        p = self._proba_from_raw(self._raw(X))
        if self._out_activation == "logistic" and not self._multilabel:
            return np.hstack([1.0 - p, p])
        return p

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))


# --------------------------------------------------------------------------- regressor
class GRURegressor(RegressorMixin, _BaseGRU):
    """GRU sequence regressor, single or multi-output.

    Parameters are those of :class:`GRUClassifier` without ``class_weight``. The targets are
    standardised internally (mean and standard deviation of the first fit, per output; a
    ``partial_fit`` stream updates them with every block) and predictions are mapped back, so
    the default learning rate suits targets of any scale.

    Attributes: ``n_features_in_`` (``X.shape[-1]``), ``n_outputs_``, ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``validation_scores_`` (R^2), ``best_validation_score_``,
    ``n_iter_``, ``t_``, ``device_``.
    """

    _out_activation = "identity"

    def fit(self, X, y, sample_weight=None) -> GRURegressor:
        """Fit on ``X`` (see the module docstring for shapes) and targets ``y`` (n,) or (n, k)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None) -> GRURegressor:
        """One epoch over ``X, y``, keeping weights and optimizer state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _stratify(self) -> bool:
        return False

    def _encode_y(self, y, n: int, fresh: bool, classes):
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D; got shape {y.shape}.")
        if y.shape[0] != n:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: [{n}, {y.shape[0]}]"
            )
        Y = y.reshape(n, -1)
        if fresh:
            self._y_1d = y.ndim == 1
            self.n_outputs_ = Y.shape[1]
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {Y.shape[1]} outputs, but {type(self).__name__} was fitted with "
                f"{self.n_outputs_}."
            )
        return Y, y

    def _scale_targets(self, Y, fresh: bool, incremental: bool):
        """Standardise with the mean / std of the first fit's rows (positive weight only); a
        partial_fit stream updates them with each block (a first block of one row has no
        spread: its scale 1 would stay for good), moving the head so that the network's
        predictions are unchanged by the move."""
        n1, m1, M1 = len(Y), Y.mean(axis=0), Y.var(axis=0) * len(Y)
        if fresh:
            n, m, M = n1, m1, M1
        elif incremental and hasattr(self, "_y_stats"):  # (not in older pickles)
            n0, m0, M0 = self._y_stats  # Chan et al.'s pairwise update of the moments
            n, d = n0 + n1, m1 - m0
            m, M = m0 + d * (n1 / n), M0 + M1 + d * d * (n0 * n1 / n)
        else:  # a warm-started fit keeps the first fit's
            return (Y - self._y_mean) / self._y_scale
        std = np.sqrt(M / n)
        mean, scale = m, np.where(std > 0, std, 1.0)
        if not fresh:
            self._net.move_head(self._y_mean, self._y_scale, mean, scale)
        self._y_stats, self._y_mean, self._y_scale = (n, m, M), mean, scale
        return (Y - self._y_mean) / self._y_scale

    def _class_weights(self, y):
        return 1.0

    def _check_enough_classes(self, y):
        pass

    def _validation_score(self, seqs, y, sw) -> float:
        from sklearn.metrics import r2_score

        return float(r2_score(y, self._output(self._net.predict_raw(seqs)), sample_weight=sw))

    def _output(self, z):
        out = z * self._y_scale + self._y_mean
        return out.ravel() if self._y_1d else out

    def predict(self, X) -> np.ndarray:
        """Predictions (n,) for 1-D training targets, else (n, n_outputs), as float64."""
        return self._output(self._raw(X))

