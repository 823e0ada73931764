"""Scale-out on one machine: GridSearchCV through joblib's Dask backend, and predict on a Dask
array with map_blocks (the recipes in fastgru.sklearn's docstring)."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")

from sklearn.model_selection import GridSearchCV  # noqa: E402

from fastgru.sklearn import GRUClassifier, GRURegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def data(n=80, T=6, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F)).astype(np.float32)
    return X, (X[:, :, 0].sum(1) > 0).astype(int)


@pytest.fixture(scope="module")
def client():
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as c:
        yield c


def test_grid_search_on_dask_backend(client):
    X, y = data()
    grid = {"units": [3, 5], "learning_rate": [0.01, 0.05]}
    est = GRUClassifier(max_iter=3, random_state=0, n_threads=1)
    with joblib.parallel_config(backend="dask"):
        gs = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
    local = GridSearchCV(est, grid, cv=2, n_jobs=1).fit(X, y)
    # same seeds, deterministic kernels: the cluster finds exactly what a local run finds
    np.testing.assert_array_equal(gs.cv_results_["mean_test_score"],
                                  local.cv_results_["mean_test_score"])
    assert gs.best_params_ == local.best_params_
    assert any(t for t in client.run(lambda: True).values())  # the cluster was up


def test_predict_on_dask_array_with_map_blocks(client):
    X, y = data(100)
    clf = GRUClassifier(max_iter=3, random_state=0, n_threads=1).fit(X, y)
    Xd = da.from_array(X, chunks=(30, -1, -1))
    labels = Xd.map_blocks(clf.predict, drop_axis=[1, 2], dtype=clf.classes_.dtype)
    proba = Xd.map_blocks(clf.predict_proba, drop_axis=[1, 2], new_axis=1,
                          chunks=(Xd.chunks[0], (len(clf.classes_),)), dtype="float64")
    lab, pr = client.compute([labels, proba], sync=True)
    np.testing.assert_array_equal(lab, clf.predict(X))
    np.testing.assert_allclose(pr, clf.predict_proba(X), rtol=1e-7, atol=1e-7)

    reg = GRURegressor(max_iter=3, random_state=0, n_threads=1).fit(X, X[:, :, 0].sum(1))
    out = Xd.map_blocks(reg.predict, drop_axis=[1, 2], dtype="float64").compute()
    np.testing.assert_allclose(out, reg.predict(X), rtol=1e-6)
