import numpy as np
import pytest

from fastgru import constraints as C
from fastgru import regularizers as R


def test_defaults_values_and_gradients(rng, fd):
    w = rng.normal(size=(4, 5))
    for reg, value in ((R.get("l1"), 0.01 * np.abs(w).sum()),
                       (R.get("l2"), 0.01 * (w * w).sum()),
                       (R.L1L2(0.3, 0.2), 0.3 * np.abs(w).sum() + 0.2 * (w * w).sum())):
        assert reg(w) == pytest.approx(value)
        np.testing.assert_allclose(reg.gradient(w), fd(lambda reg=reg: reg(w), w), rtol=1e-6,
                                   atol=1e-8)
    assert R.L1L2().get_config() == {"l1": 0.0, "l2": 0.0}
    assert R.get("l1_l2").get_config() == {"l1": 0.0, "l2": 0.0}


def test_serialization_forms():
    assert R.serialize("l2") == {"module": "keras.regularizers", "class_name": "L2",
                                 "config": {"l2": 0.01}, "registered_name": None}
    assert R.get(R.serialize(R.L1(0.5))) == R.L1(0.5)
    assert R.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}) == R.L1L2(0.1, 0.2)
    assert R.get(None) is None


def test_keras_regularizer_names():
    assert isinstance(R.get("l1l2"), R.L1L2)  # Keras's name
    assert R.get("l1l2").get_config() == {"l1": 0.0, "l2": 0.0}


def test_regularizer_validation():
    with pytest.raises(ValueError, match="non-negative"):
        R.L2(-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        R.L1(float("nan"))
    with pytest.raises(ValueError, match="Could not interpret regularizer"):
        R.get("l3")


def test_max_norm_and_unit_norm_axis0(rng):
    w = rng.normal(size=(6, 3)) * 3
    out = C.get("max_norm")(w)
    norms = np.sqrt((out ** 2).sum(axis=0))
    assert np.all(norms <= 2 + 1e-6)
    small = w / 100
    np.testing.assert_allclose(C.MaxNorm(2)(small), small, rtol=1e-5)
    u = C.get("unit_norm")(w)
    np.testing.assert_allclose(np.sqrt((u ** 2).sum(axis=0)), 1, rtol=1e-6)
    u1 = C.UnitNorm(axis=1)(w)
    np.testing.assert_allclose(np.sqrt((u1 ** 2).sum(axis=1)), 1, rtol=1e-6)


def test_min_max_norm_and_non_neg(rng):
    w = rng.normal(size=(5, 4))
    out = C.MinMaxNorm(0.5, 0.8)(w)
    n = np.sqrt((out ** 2).sum(axis=0))
    assert np.all((n >= 0.5 - 1e-6) & (n <= 0.8 + 1e-6))
    np.testing.assert_array_equal(C.get("non_neg")(w), np.where(w >= 0, w, 0))
    assert C.get("non_neg")(w.astype(np.float32)).dtype == np.float32
    out = C.NonNeg()(np.array([-np.inf, -2.0, -0.0, 3.0]))  # max(w, 0), as Keras
    assert out.tolist() == [0, 0, 0, 3] and not np.signbit(out).any()


def test_norm_constraints_take_axis_lists(rng):
    """Keras documents axis=[0, 1, 2] for conv kernels, and JSON configs always hold lists."""
    w = rng.normal(size=(3, 4, 5))
    for cls, kw in ((C.MaxNorm, {"max_value": 0.5}), (C.UnitNorm, {}),
                    (C.MinMaxNorm, {"min_value": 0.2, "max_value": 0.6})):
        np.testing.assert_array_equal(cls(axis=[0, 1], **kw)(w), cls(axis=(0, 1), **kw)(w))
        from_json = C.get({"class_name": cls.__name__, "config": {"axis": [0, 1], **kw}})
        np.testing.assert_array_equal(from_json(w), cls(axis=(0, 1), **kw)(w))
    n = np.sqrt((C.UnitNorm(axis=[0, 1])(w) ** 2).sum(axis=(0, 1)))
    np.testing.assert_allclose(n, 1, rtol=1e-6)


def test_constraint_serialization():
    assert C.serialize("max_norm") == {"module": "keras.constraints", "class_name": "MaxNorm",
                                       "config": {"max_value": 2, "axis": 0},
                                       "registered_name": None}
    assert C.get(C.serialize(C.MinMaxNorm(0.1, 2.0, 0.5, 1))) == C.MinMaxNorm(0.1, 2.0, 0.5, 1)
    with pytest.raises(ValueError, match="Could not interpret constraint"):
        C.get("nope")
    assert C.get(lambda w: w * 0)(np.ones(2)).sum() == 0
