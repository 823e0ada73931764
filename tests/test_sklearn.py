"""GRUClassifier / GRURegressor: learning, input contract, determinism, persistence, errors,
and scikit-learn tooling (Pipeline, GridSearchCV, cross_val_score)."""

import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fastgru.sklearn import GRUClassifier, GRURegressor, _half_mse, _sigmoid_bce

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def marker_task(n, T=8, seed=0):
    """Channel 1 marks one step; the label is the sign of channel 0 at that step. Linear
    models on the flattened input cannot read it (it is a product of two inputs)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, T, 2), np.float32)
    X[:, :, 0] = rng.normal(size=(n, T))
    pos = rng.integers(0, T, n)
    X[np.arange(n), pos, 1] = 1.0
    return X, (X[np.arange(n), pos, 0] > 0).astype(int)


def small(n=60, T=5, F=3, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    s = X[:, :, 0].sum(1)
    if not classes:
        return X, s
    return X, np.searchsorted(np.quantile(s, np.linspace(0, 1, classes + 1)[1:-1]), s)


# n_threads=1: these problems are tiny, and extra threads only wait on each other (badly so
# on a loaded machine)
ONE = dict(n_threads=1)
FAST = dict(max_iter=3, units=4, random_state=0, **ONE)


# ---------------------------------------------------------------------------------- learning
def test_classifier_beats_majority_and_logistic_regression():
    X, y = marker_task(400)
    Xt, yt = marker_task(300, seed=1)
    clf = GRUClassifier(random_state=0, max_iter=25, batch_size=32, **ONE).fit(X, y)
    acc = clf.score(Xt, yt)
    majority = max(yt.mean(), 1 - yt.mean())
    logreg = LogisticRegression(max_iter=1000).fit(X.reshape(len(X), -1), y)
    lr_acc = logreg.score(Xt.reshape(len(Xt), -1), yt)
    assert acc > 0.9, acc
    assert acc > majority + 0.3 and acc > lr_acc + 0.2, (acc, majority, lr_acc)


def test_regressor_reaches_r2_on_a_memory_task():
    # y = value of channel 0 at the marked step, times 10, plus 3: needs the recurrence
    X, lab = marker_task(400)
    pos = X[:, :, 1].argmax(1)
    y = 10 * X[np.arange(len(X)), pos, 0] + 3
    Xt, _ = marker_task(300, seed=1)
    yt = 10 * Xt[np.arange(len(Xt)), Xt[:, :, 1].argmax(1), 0] + 3
    reg = GRURegressor(random_state=0, max_iter=25, batch_size=32, **ONE).fit(X, y)
    r2 = reg.score(Xt, yt)
    lin = LinearRegression().fit(X.reshape(len(X), -1), y).score(Xt.reshape(len(Xt), -1), yt)
    assert r2 > 0.8 and r2 > lin + 0.5, (r2, lin)
    assert reg.predict(Xt).shape == (300,) and reg.predict(Xt).dtype == np.float64


def test_multioutput_regression_shapes_and_fit():
    X, _ = small(80)
    Y = np.stack([X[:, :, 0].sum(1), X[:, -1, 1] * 5], axis=1)
    reg = GRURegressor(random_state=0, max_iter=40, **ONE).fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (80, 2)
    assert reg.score(X, Y) > 0.6
    col = GRURegressor(**FAST).fit(X, Y[:, :1])
    assert col.predict(X).shape == (80, 1)


def test_multilabel():
    X, _ = small(80)
    Y = np.stack([X[:, :, 0].sum(1) > 0, X[:, :, 1].sum(1) > 0, X[:, 0, 2] > 0], 1).astype(int)
    clf = GRUClassifier(random_state=0, max_iter=40, **ONE).fit(X, Y)
    assert clf.predict(X).shape == (80, 3) and set(np.unique(clf.predict(X))) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == (80, 3) and ((proba >= 0) & (proba <= 1)).all()
    assert np.array_equal(clf.classes_, [0, 1, 2])
    assert (clf.predict(X) == Y).mean() > 0.8


def test_binary_multiclass_proba_and_string_labels():
    X, y = small(60, classes=3)
    labels = np.array(["a", "b", "c"])[y]
    clf = GRUClassifier(**FAST).fit(X, labels)
    assert list(clf.classes_) == ["a", "b", "c"]
    p = clf.predict_proba(X)
    assert p.shape == (60, 3) and np.allclose(p.sum(1), 1)
    assert set(clf.predict(X)) <= set("abc")
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[p.argmax(1)])
    yb = np.where(y == 0, "no", "yes")
    pb = GRUClassifier(**FAST).fit(X, yb).predict_proba(X)
    assert pb.shape == (60, 2) and np.allclose(pb.sum(1), 1)


# ---------------------------------------------------------------------------------- inputs
def test_n_features_in_is_the_feature_axis():
    X, y = small(30, T=7, F=3)
    clf = GRUClassifier(**FAST).fit(X, y)
    assert clf.n_features_in_ == 3
    assert clf.predict(X[:, :4]).shape == (30,)  # another number of time steps is fine
    with pytest.raises(ValueError, match="X has 2 features, but GRUClassifier is expecting 3"):
        clf.predict(X[:, :, :2])
    with pytest.raises(ValueError, match="fitted on 3-D sequences"):
        clf.predict(X[:, :, 0])


def test_2d_input_is_a_univariate_series():
    X, y = small(30, T=6, F=1)
    clf2 = GRUClassifier(**FAST).fit(X[:, :, 0], y)
    clf3 = GRUClassifier(**FAST).fit(X, y)
    assert clf2.n_features_in_ == 6 and clf3.n_features_in_ == 1
    np.testing.assert_array_equal(clf2.predict_proba(X[:, :, 0]), clf3.predict_proba(X))
    # a 2-D fit predicts on 3-D univariate series of any length
    np.testing.assert_array_equal(clf2.predict_proba(X), clf3.predict_proba(X))
    assert clf2.predict(X[:, :3]).shape == (30,)
    with pytest.raises(ValueError, match="X has 5 features"):
        clf2.predict(X[:, :5, 0])
    with pytest.raises(ValueError, match="must have 1 feature"):
        clf2.predict(np.repeat(X, 2, axis=2))


def test_ragged_lists_are_padded_and_masked():
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(int(t), 2)) for t in rng.integers(1, 9, 40)]
    y = np.array([int(s[:, 0].sum() > 0) for s in seqs])
    clf = GRUClassifier(**FAST).fit(seqs, y)
    assert clf.n_features_in_ == 2
    p = clf.predict_proba(seqs)
    for i in (0, 7, 21):  # alone, unpadded, gives the same answer as inside the padded batch
        np.testing.assert_allclose(clf.predict_proba(seqs[i][None]), p[i:i + 1], rtol=1e-6)
    uni = [s[:, 0] for s in seqs]  # 1-D items are univariate series
    u = GRUClassifier(**FAST).fit(uni, y)
    assert u.n_features_in_ == 1
    # ... and such a model takes one series, equal-length lists and 2-D (n, T) arrays too
    # (np.asarray makes those 2-D), of any length, as the (n, T, 1) sequences they are
    pu = u.predict_proba(uni)
    np.testing.assert_allclose(u.predict_proba([uni[7]]), pu[7:8], rtol=1e-6)
    five = np.stack([np.resize(v, 5) for v in uni[:6]])
    np.testing.assert_array_equal(u.predict_proba(list(five)), u.predict_proba(five[:, :, None]))
    np.testing.assert_array_equal(u.predict_proba(five), u.predict_proba(five[:, :, None]))
    with pytest.raises(ValueError, match="X is 2-D but GRUClassifier was fitted on 3-D"):
        clf.predict(five)  # two features: 2-D input is ambiguous
    with pytest.raises(ValueError, match="same number of features"):
        clf.predict([seqs[0], np.zeros((3, 3))])
    # an empty sequence is named as such (it read "Found array with 0 sample(s)")
    for empty in (np.zeros((0, 2)), np.zeros(0)):
        with pytest.raises(ValueError, match="Sequence 1 of X has length 0"):
            GRUClassifier(**FAST).fit([seqs[0], empty, seqs[2]], y[:3])
        with pytest.raises(ValueError, match="Sequence 1 of X has length 0"):
            clf.predict([seqs[0], empty])
    # a scalar sequence is named by its shape (after 34962ed it was 'IndexError: tuple index
    # out of range', the length read before the rank)
    with pytest.raises(ValueError, match=r"sequence 1 has shape \(\)"):
        GRUClassifier(**FAST).fit([seqs[0], np.float64(1.0), seqs[2]], y[:3])
    with pytest.raises(ValueError, match=r"sequence 1 has shape \(\)"):
        clf.predict([seqs[0], 1.0])
    scores = cross_val_score(GRUClassifier(**FAST), seqs, y, cv=2)  # lists split like arrays
    assert scores.shape == (2,)


def test_pandas_input():
    pd = pytest.importorskip("pandas")
    X, y = small(40, T=5, F=1)
    df = pd.DataFrame(X[:, :, 0], columns=[f"t{i}" for i in range(5)])
    clf = GRUClassifier(**FAST).fit(df, pd.Series(y))
    assert list(clf.feature_names_in_) == list(df.columns)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(clf.predict(df), clf.predict(X[:, :, 0]))
    reg = GRURegressor(**FAST).fit(df, pd.Series(X[:, :, 0].sum(1)))
    assert reg.predict(df).shape == (40,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_dtypes_accepted(dtype):
    X, y = small(30)
    X = (X * 3).astype(dtype)
    assert GRUClassifier(**FAST).fit(X, y).predict(X).shape == (30,)


# ---------------------------------------------------------------------------------- 3-D mirror of
# the data checks of sklearn's estimator_checks (which only ever feed 2-D X)
@pytest.mark.parametrize("Est", [GRUClassifier, GRURegressor])
def test_3d_determinism_subset_order_and_pickle(Est):
    X, y = small(40, T=6, F=3, classes=3 if Est is GRUClassifier else 0)
    a = Est(**FAST, dropout=0.2, recurrent_dropout=0.1).fit(X, y)
    b = Est(**FAST, dropout=0.2, recurrent_dropout=0.1).fit(X, y)
    method = "predict_proba" if Est is GRUClassifier else "predict"
    full = getattr(a, method)(X)
    np.testing.assert_array_equal(full, getattr(b, method)(X))  # same seed: bit for bit
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    # a row's prediction does not depend on the other rows (sklearn's tolerance; exact with
    # OpenBLAS since predict pads its batches to whole BLAS blocks)
    one_by_one = np.concatenate([getattr(a, method)(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(one_by_one, full, rtol=1e-7, atol=1e-7)
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(getattr(a, method)(X[perm]), full[perm], rtol=1e-7, atol=1e-7)
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(getattr(c, method)(X), full)
    other = Est(**{**FAST, "random_state": 1}).fit(X, y)
    assert not np.array_equal(getattr(other, method)(X), full)


def test_random_state_none_and_instances():
    X, y = small(30)
    p1 = GRUClassifier(max_iter=2, units=4, **ONE).fit(X, y).predict_proba(X)
    p2 = GRUClassifier(max_iter=2, units=4, **ONE).fit(X, y).predict_proba(X)
    assert not np.array_equal(p1, p2)
    r1 = GRUClassifier(max_iter=2, units=4, random_state=np.random.RandomState(3), **ONE)
    r1.fit(X, y)
    r2 = GRUClassifier(max_iter=2, units=4, random_state=3, **ONE).fit(X, y)
    np.testing.assert_array_equal(r1.predict_proba(X), r2.predict_proba(X))


# ---------------------------------------------------------------------------------- persistence
def test_pickle_and_joblib_round_trip_and_resume(tmp_path):
    X, y = small(50)
    a = GRUClassifier(**FAST).fit(X, y)
    buf = io.BytesIO()
    joblib.dump(a, buf)
    buf.seek(0)
    b = joblib.load(buf)
    joblib.dump(a, tmp_path / "m.joblib")
    c = joblib.load(tmp_path / "m.joblib")
    for other in (b, c):
        np.testing.assert_array_equal(other.predict_proba(X), a.predict_proba(X))
        assert other.get_params() == a.get_params()
    # the optimizer state and the shuffling stream travel too: training resumes identically
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # the pickle holds host NumPy weights and configuration, no layer objects
    state = a.__getstate__()["_net"].__getstate__()
    assert set(state) == {"version", "config", "weights", "optimizer", "dropout_rngs"}
    assert all(isinstance(w, np.ndarray) for ws in state["weights"] for w in ws)


@pytest.mark.parametrize("rates", [dict(dropout=0.3), dict(recurrent_dropout=0.3)])
def test_pickle_round_trip_resumes_the_dropout_masks(rates):
    # dask-ml's Incremental ships the model between blocks: training after a round trip
    # draws the masks it would have drawn next, not the first ones again
    X, y = small(40)
    a = GRUClassifier(**FAST, **rates).fit(X, y)
    b = pickle.loads(pickle.dumps(a))
    for _ in range(2):
        a.partial_fit(X, y)
        b = pickle.loads(pickle.dumps(b))
        b.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    fresh = GRUClassifier(**FAST, **rates).fit(X, y)  # (the masks do matter here)
    fresh._net.__setstate__({**fresh._net.__getstate__(), "dropout_rngs": None})
    fresh.partial_fit(X, y)
    a2 = GRUClassifier(**FAST, **rates).fit(X, y).partial_fit(X, y)
    assert not np.array_equal(fresh.predict_proba(X), a2.predict_proba(X))


def test_clone_get_set_params():
    est = GRURegressor(units=(8, 4), learning_rate=0.05)
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est
    c.set_params(units=3, alpha=0.0)
    assert c.units == 3 and est.units == (8, 4)


# ---------------------------------------------------------------------------------- training API
def test_partial_fit():
    X, y = small(60)
    clf = GRUClassifier(units=4, random_state=0, **ONE)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:30], y[:30], classes=[0, 1, 2])
    for _ in range(4):
        clf.partial_fit(X, y)
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5
    assert clf.loss_curve_[-1] < clf.loss_curve_[1]
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        clf.partial_fit(X, y + 5)
    with pytest.raises(ValueError, match="X has 2 features"):
        clf.partial_fit(X[:, :, :2], y)
    with pytest.raises(ValueError, match="not in `classes`"):
        GRUClassifier().partial_fit(X, y, classes=[0, 1])
    reg = GRURegressor(units=4, random_state=0, **ONE)
    reg.partial_fit(X, X[:, :, 0].sum(1))
    reg.partial_fit(X, X[:, :, 0].sum(1))
    assert reg.n_iter_ == 2


def test_partial_fit_classes_must_stay_the_same():
    X, y = small(40)
    clf = GRUClassifier(**FAST).partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y, classes=[2, 1, 0])  # the same set
    with pytest.raises(ValueError, match=r"`classes=\[0, 1, 2, 3\]` is not the same as on last"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 classes"):
        GRUClassifier(**FAST).partial_fit(X, np.full(40, 5), classes=[5])


def test_warm_start_continues():
    X, y = small(60)
    cold = GRUClassifier(**FAST).fit(X, y)
    warm = GRUClassifier(**FAST, warm_start=True).fit(X, y)
    w0 = [w.copy() for w in warm._net.get_weights()]
    warm.fit(X, y)
    assert warm.n_iter_ == 6 and warm.loss_curve_[3] < cold.loss_curve_[0]
    assert any(not np.array_equal(a, b) for a, b in zip(w0, warm._net.get_weights(), strict=True))
    with pytest.raises(ValueError, match="warm_start can only be used"):
        warm.fit(X, y + 1)
    warm.set_params(units=5).fit(X, y)  # a new architecture starts over
    assert warm._net.config["units"] == (5,) and warm.n_iter_ == 3
    clf = GRUClassifier(**FAST).partial_fit(X, y, classes=[0, 1, 2, 3])
    clf.set_params(units=2).partial_fit(X, y)
    assert clf._net.config["units"] == (2,) and list(clf.classes_) == [0, 1, 2, 3]


def test_warm_start_early_stopping_keeps_its_own_best(monkeypatch):
    X, y = marker_task(120)
    seen = []  # (score, weights) of every epoch, as the early-stopping loop evaluates them
    score = GRUClassifier._validation_score

    def spy(self, *val):
        s = score(self, *val)
        seen.append((s, self._net.get_weights()))
        return s

    monkeypatch.setattr(GRUClassifier, "_validation_score", spy)
    clf = GRUClassifier(units=4, max_iter=8, random_state=0, warm_start=True,
                        early_stopping=True, n_iter_no_change=2, learning_rate=0.05, **ONE)
    clf.fit(X, y)
    n1 = len(seen)
    clf.set_params(learning_rate=0.5, max_iter=4).fit(X, y)  # a worse continuation
    second = seen[n1:]
    best = max(range(len(second)), key=lambda i: (second[i][0], -i))  # the first best epoch
    assert clf.best_validation_score_ == second[best][0]
    assert [s for s, _ in seen] == clf.validation_scores_  # every fit's scores, in order
    for a, b in zip(clf._net.get_weights(), second[best][1], strict=True):
        np.testing.assert_array_equal(a, b)
    before = clf.n_iter_
    clf.set_params(early_stopping=False).fit(X, y)  # after a fit that stopped early
    assert clf.best_loss_ == min(clf.loss_curve_[before:])


def test_early_stopping_and_convergence():
    X, y = marker_task(200)
    clf = GRUClassifier(random_state=0, max_iter=40, early_stopping=True, n_iter_no_change=2,
                        batch_size=32, **ONE).fit(X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.n_iter_ < 40
    reg = GRURegressor(random_state=0, max_iter=500, tol=1.0, n_iter_no_change=1, **ONE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.fit(*small(30, classes=0))  # stops on tol well before max_iter: no warning
    assert reg.n_iter_ == 3  # as MLPRegressor: more than n_iter_no_change epochs w/o progress
    with pytest.warns(Warning, match="Maximum iterations"):
        GRURegressor(random_state=0, max_iter=2, tol=0, **ONE).fit(*small(30, classes=0))


def test_sample_and_class_weight():
    X, y = small(60, classes=2)
    base = GRUClassifier(**FAST).fit(X, y).predict_proba(X)
    ones = GRUClassifier(**FAST).fit(X, y, sample_weight=np.ones(60)).predict_proba(X)
    np.testing.assert_array_equal(base, ones)
    sw = np.r_[np.ones(50), np.zeros(10)]
    np.testing.assert_array_equal(
        GRUClassifier(**FAST).fit(X, y, sample_weight=sw).predict_proba(X),
        GRUClassifier(**FAST).fit(X[:50], y[:50]).predict_proba(X))
    yr = X[:, :, 0].sum(1) + np.r_[np.zeros(50), 100 * np.ones(10)]  # outliers weigh 0
    np.testing.assert_array_equal(
        GRURegressor(**FAST).fit(X, yr, sample_weight=sw).predict(X),
        GRURegressor(**FAST).fit(X[:50], yr[:50]).predict(X))
    heavy = GRUClassifier(**FAST, class_weight={0: 1.0, 1: 20.0}).fit(X, y).predict_proba(X)
    assert heavy[:, 1].mean() > base[:, 1].mean()
    bal = GRUClassifier(**FAST, class_weight="balanced").fit(X, y)
    assert bal.predict(X).shape == (60,)
    with pytest.raises(ValueError, match="Negative"):
        GRUClassifier(**FAST).fit(X, y, sample_weight=-np.ones(60))
    with pytest.raises(ValueError, match="only one class"):
        GRUClassifier(**FAST).fit(X, y, sample_weight=(y == 1).astype(float))


def test_zero_weight_rows_are_absent_under_balanced_class_weight():
    # "balanced" counts the classes of the rows that remain, so a 0-weight row is no row
    X, y = small(60, classes=2)
    sw = np.r_[np.ones(40), np.zeros(20)]
    sw[np.flatnonzero(y[:40] == 0)[:5]] = 0  # the remaining class balance changes too
    keep = sw > 0
    est = dict(**FAST, class_weight="balanced")
    np.testing.assert_array_equal(
        GRUClassifier(**est).fit(X, y, sample_weight=sw).predict_proba(X),
        GRUClassifier(**est).fit(X[keep], y[keep]).predict_proba(X))
    # a class weight of 0 drops its rows the same way (its column stays, at probability ~0)
    X3, y3 = small(60)
    zero1 = GRUClassifier(**FAST, class_weight={0: 1.0, 1: 0.0, 2: 1.0}).fit(X3, y3)
    assert list(zero1.classes_) == [0, 1, 2]
    assert zero1.predict_proba(X3).shape == (60, 3)


def test_verbose_progress_bar(capsys):
    X, y = small(30)
    GRUClassifier(**FAST, verbose=True).fit(X, y)
    err = capsys.readouterr().err
    assert "epoch" in err and "loss=" in err


# ---------------------------------------------------------------------------------- errors
def test_bad_input_errors():
    X, y = small(30)
    clf = GRUClassifier(**FAST)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    Xn = X.copy()
    Xn[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(Xn, y)
    with pytest.raises(ValueError, match="NaN"):
        clf.fit([X[0], X[1, :3] * np.nan], y[:2])
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        clf.fit(X[:, 0, 0], y)
    with pytest.raises(ValueError, match="2-D .* 3-D"):
        clf.fit(X[..., None], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(X, y[:-1])
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X, y + 0.5)
    with pytest.raises(ValueError, match="requires y to be passed"):
        clf.fit(X, None)
    with pytest.raises(ValueError, match="at least 1 time step"):
        clf.fit(X[:, :0], y)
    clf.fit(X, y)
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(Xn)
    # finite in float64, infinite in the network's float32: refused, not a NaN model
    big = X.copy()
    big[0, 0, 0] = 1e39
    for bad in (big, big[:, :, 0], [big[0], big[1, :2]]):
        with pytest.raises(ValueError, match=r"too large for dtype\('float32'\)"):
            GRUClassifier(**FAST).fit(bad, y[:len(bad)])
    with pytest.raises(ValueError, match="too large"):
        clf.predict(big)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow being tested
def test_diverging_training_raises_and_gives_the_model_back():
    X, y = small(30, classes=0)
    fresh = GRURegressor(**{**FAST, "max_iter": 50}, learning_rate=1e30)
    with pytest.raises(ValueError, match="non-finite loss"):
        fresh.fit(X * 1e18, y)
    with pytest.raises(NotFittedError):  # not a NaN model
        fresh.predict(X)
    warm = GRURegressor(**FAST, warm_start=True).fit(X, y)
    p, curve, it = warm.predict(X), list(warm.loss_curve_), warm.n_iter_
    with pytest.raises(ValueError, match="non-finite loss"):
        warm.set_params(learning_rate=1e30, max_iter=50).fit(X * 1e18, y)
    assert warm.loss_curve_ == curve and warm.n_iter_ == it  # as it was, weights included
    np.testing.assert_array_equal(warm.predict(X), p)
    warm.set_params(learning_rate=0.01, max_iter=3).fit(X, y)  # and it trains on
    assert warm.n_iter_ == it + 3


def test_a_failed_fit_leaves_the_estimator_as_it_was():
    X, y = small(30)
    clf = GRUClassifier(**FAST).fit(X, y)
    p, attrs = clf.predict_proba(X), dict(clf.__dict__)
    X5 = np.repeat(X, 2, axis=2)[:, :, :5]
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(X5, y[:-1])  # a new model's X, the wrong y
    assert clf.n_features_in_ == 3 and clf.__dict__ == attrs
    np.testing.assert_array_equal(clf.predict_proba(X), p)
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        clf.partial_fit(X, y + 7)
    assert clf.__dict__ == attrs
    from fastgru.sklearn import _gpu_available

    # the early-stopping split is part of the set-up: one that fails changes nothing either
    clf.set_params(early_stopping=True, validation_fraction=0.1)
    attrs = dict(clf.__dict__)
    with pytest.raises(ValueError, match="test_size"):
        clf.fit(X5[:8], y[:8])
    assert clf.n_features_in_ == 3 and clf.__dict__ == attrs
    clf.set_params(early_stopping=False)
    if not _gpu_available():  # an unusable device fails before anything is set
        fresh = GRUClassifier(**{**FAST, "device": "gpu"})
        with pytest.raises(RuntimeError, match="device='gpu'"):
            fresh.fit(X, y)
        with pytest.raises(NotFittedError):
            fresh.predict(X)


@pytest.mark.parametrize("params,match", [
    ({"units": 0}, "units"), ({"units": (4, 0)}, "units"), ({"units": "8"}, "units"),
    ({"dropout": 1.0}, "dropout"), ({"max_iter": 0}, "max_iter"),
    ({"batch_size": "big"}, "batch_size"), ({"learning_rate": 0}, "learning_rate"),
    ({"device": "tpu"}, "device"), ({"n_threads": 0}, "n_threads"),
    ({"validation_fraction": 1.0}, "validation_fraction"), ({"shuffle": "yes"}, "shuffle"),
])
def test_bad_hyperparameters(params, match):
    X, y = small(20)
    with pytest.raises(ValueError, match=match):
        GRUClassifier(**{**ONE, **params}).fit(X, y)


# ---------------------------------------------------------------------------------- devices
def test_device_auto_and_gpu():
    from fastgru.sklearn import _gpu_available

    X, y = small(20)
    clf = GRUClassifier(**FAST, device="auto").fit(X, y)
    assert clf.device_ == ("gpu" if _gpu_available() else "cpu")
    if not _gpu_available():
        with pytest.raises(RuntimeError, match="device='gpu' needs CuPy"):
            GRUClassifier(**FAST, device="gpu").fit(X, y)
        return
    g = GRUClassifier(**FAST, device="gpu").fit(X, y)
    c = GRUClassifier(**FAST, device="cpu").fit(X, y)
    assert isinstance(g.predict_proba(X), np.ndarray)
    np.testing.assert_allclose(g.predict_proba(X), c.predict_proba(X), atol=1e-4)
    h = pickle.loads(pickle.dumps(g))  # pickles host weights, moves back on use
    np.testing.assert_allclose(h.predict_proba(X), g.predict_proba(X), atol=1e-6)


def test_explain_names_the_engines():
    X, y = small(20)
    clf = GRUClassifier(**{**FAST, "units": (3, 2)}).fit(X, y)
    text = clf.explain(X)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("gru_0") and lines[1].startswith("gru_1")
    assert all("engine '" in line for line in lines)


def test_n_threads_is_applied():
    X, y = small(30)
    one = GRUClassifier(**FAST).fit(X, y)
    two = GRUClassifier(**{**FAST, "n_threads": 2}).fit(X, y)
    assert all(layer.n_threads == 1 for layer in one._net.layers)
    assert all(layer.n_threads == 2 for layer in two._net.layers)
    np.testing.assert_allclose(one.predict_proba(X), two.predict_proba(X), rtol=1e-5)


# ---------------------------------------------------------------------------------- tooling
def test_pipeline_cross_val_and_grid_search_n_jobs():
    X, y = marker_task(120)
    X2 = X[:, :, 0] * X[:, :, 1]  # 2-D series, so StandardScaler can sit in front
    pipe = make_pipeline(StandardScaler(), GRUClassifier(**FAST))
    scores = cross_val_score(pipe, X2, y, cv=3)
    assert scores.shape == (3,)
    gs = GridSearchCV(GRUClassifier(max_iter=3, random_state=0, **ONE),
                      {"units": [2, 4], "learning_rate": [0.01, 0.05]}, cv=2, n_jobs=2)
    gs.fit(X, y)
    assert len(gs.cv_results_["params"]) == 4 and hasattr(gs.best_estimator_, "classes_")
    assert gs.predict(X).shape == (120,)


def test_bidirectional_stacked_reset_before_with_dropout():
    X, y = small(40)
    clf = GRUClassifier(units=(4, 3), bidirectional=True, max_iter=2, random_state=0,
                        reset_after=False, dropout=0.1, recurrent_dropout=0.1, **ONE)
    clf.fit(X, y)
    assert clf._net.params[2].shape == (4 * 3,)  # reset_after=False: one bias row
    assert len(clf._net.params) == 2 * 2 * 3 + 2
    np.testing.assert_array_equal(clf.predict_proba(X), clone(clf).fit(X, y).predict_proba(X))


def test_weights_scaled_by_one_factor_change_nothing():
    """The loss is divided by the batch's weight sum (MLPClassifier's convention): weights all
    4 train exactly as weights all 1 (with alpha=0: the penalty, divided by it too, would weigh
    alpha / 4)."""
    X, y = small(40)
    est = dict(**FAST, alpha=0.0)
    a = GRUClassifier(**est).fit(X, y)
    b = GRUClassifier(**est).fit(X, y, sample_weight=np.full(40, 4.0))
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_continued_fits_keep_their_model():
    X, y = small(40)
    # a failing early-stopping split leaves the optimizer as it was (it is made last)
    clf = GRUClassifier(**FAST, warm_start=True).fit(X, y)
    steps = clf._net.optimizer.iterations
    with pytest.raises(ValueError, match="too few|test_size"):  # (the split's own words)
        clf.set_params(early_stopping=True).fit(X[:4], y[:4])
    assert clf._net.optimizer.iterations == steps
    # another dropout rate is not another architecture: the weights carry on
    clf.set_params(early_stopping=False, dropout=0.2, max_iter=1)
    w = clf._net.get_weights()
    clf.fit(X, y)
    assert clf.n_iter_ == 4 and clf._net.config["dropout"] == 0.2
    assert max(np.abs(a - b).max() for a, b in zip(w, clf._net.get_weights())) < 0.1
    # partial_fit keeps best_loss_ (the least loss reached), as MLPClassifier
    pf = GRUClassifier(**FAST)
    for _ in range(3):
        pf.partial_fit(X, y, classes=[0, 1, 2])
    assert pf.best_loss_ == min(pf.loss_curve_)


def test_explain_describes_the_padded_batch_predict_runs():
    X, y = small(20)
    clf = GRUClassifier(**{**FAST, "n_threads": 2}).fit(X, y)
    assert "16 batch rows" in clf.explain(X[:1])  # predict pads to _ROW_BLOCK rows


def test_partial_fit_stream_updates_the_target_scaling():
    """A stream's first block of one row has no spread; later blocks update the mean / std,
    and the head moves with them, so the predictions do not jump."""
    X, y = small(60, classes=0)
    y = 1000 + 50 * y
    reg = GRURegressor(**FAST)
    reg.partial_fit(X[:1], y[:1])
    assert reg._y_scale == 1.0
    reg.set_params(learning_rate=1e-30)  # a negligible step: only the move changes the head
    before = reg.predict(X)
    reg.partial_fit(X[1:], y[1:])
    np.testing.assert_allclose(reg._y_mean, y.mean(), rtol=1e-12)
    np.testing.assert_allclose(reg._y_scale, y.std(), rtol=1e-12)
    np.testing.assert_allclose(reg.predict(X), before, rtol=1e-5)


def test_half_mse_is_half_the_mean_over_samples_and_outputs():
    rng = np.random.default_rng(2)
    z, Y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    sw = rng.uniform(0.5, 2.0, 7)
    loss, dz = _half_mse(z, Y, sw, sw.sum())
    expect = 0.5 * np.average(((z - Y) ** 2).mean(axis=1), weights=sw)
    np.testing.assert_allclose(loss, expect, rtol=1e-12)
    np.testing.assert_allclose(dz, (z - Y) * sw[:, None] / (sw.sum() * 3), rtol=1e-12)


def test_regressor_multi_output_loss_curve_is_the_standardised_half_mse():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 5, 2))
    y = np.stack([X[:, :, 0].sum(1), 10 * X[:, :, 1].mean(1) + 3], axis=1)
    reg = GRURegressor(units=4, max_iter=1, learning_rate=1e-12, alpha=0.0, shuffle=False,
                       random_state=0, n_threads=1).fit(X, y)
    z = (reg.predict(X) - reg._y_mean) / reg._y_scale
    target = (y - reg._y_mean) / reg._y_scale
    np.testing.assert_allclose(reg.loss_curve_[0], 0.5 * np.mean((z - target) ** 2), rtol=1e-4)


def test_sigmoid_bce_matches_log_loss():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(9, 2)) * 3
    Y = (rng.random((9, 2)) < 0.5).astype(float)
    loss, _ = _sigmoid_bce(z, Y, np.ones(9), 9.0)
    p = 1 / (1 + np.exp(-z))
    expect = sum(log_loss(Y[:, j], p[:, j], labels=[0, 1]) for j in range(2))
    np.testing.assert_allclose(loss, expect, rtol=1e-10)


def test_binary_classifier_loss_curve_is_the_log_loss():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 5, 2))
    y = (X[:, :, 0].sum(1) > 0).astype(int)
    clf = GRUClassifier(units=4, max_iter=1, learning_rate=1e-12, alpha=0.0, shuffle=False,
                        random_state=0, n_threads=1).fit(X, y)
    np.testing.assert_allclose(clf.loss_curve_[0], log_loss(y, clf.predict_proba(X)), rtol=1e-4)




def test_softmax_loss_matches_log_loss():
    """The reported loss (and with it the tol rule) is the formula's, not just consistent with
    its gradient."""
    from fastgru.sklearn import _softmax_ce

    rng = np.random.default_rng(6)
    z = rng.normal(size=(9, 3)) * 3
    labels = rng.integers(0, 3, 9)
    Y = np.eye(3)[labels]
    sw = rng.uniform(0.5, 2.0, 9)
    loss, dz = _softmax_ce(z, Y, sw, sw.sum())
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(loss, log_loss(labels, p, sample_weight=sw, labels=[0, 1, 2]),
                               rtol=1e-10)
    np.testing.assert_allclose(dz, (p - Y) * sw[:, None] / sw.sum(), rtol=1e-10)
