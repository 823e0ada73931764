"""scikit-learn's own estimator checks on GRUClassifier / GRURegressor.

2-D X is read as univariate series, so nearly every check runs against real GRU training;
the determinism checks (idempotent fit, subset/order invariance, pickle) pass rather than
being expected failures. The one expected failure, with its reason, is listed below.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastgru.sklearn import GRUClassifier, GRURegressor

_WEIGHT_EQUIVALENCE = (
    "an integer sample_weight k is the same loss as k duplicated rows (the loss and the L2 "
    "penalty are divided by the weight sum, as MLPClassifier's), but not the same float32 "
    "training trajectory: Adam runs on sums in another order, and the check's 1e-7 tolerance "
    "is below float32's rounding after a few hundred steps (zero weights are exact: those rows "
    "are dropped before training, see tests/test_sklearn.py::test_sample_and_class_weight)"
)

EXPECTED_FAILED = {
    "GRUClassifier": {"check_sample_weight_equivalence_on_dense_data": _WEIGHT_EQUIVALENCE},
    "GRURegressor": {"check_sample_weight_equivalence_on_dense_data": _WEIGHT_EQUIVALENCE},
}


@parametrize_with_checks(
    [GRUClassifier(n_threads=1), GRURegressor(n_threads=1)],
    expected_failed_checks=lambda est: EXPECTED_FAILED[type(est).__name__],
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
