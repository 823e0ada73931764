import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgru
from fastgru import initializers as I

NAMES = ["zeros", "ones", "constant", "glorot_uniform", "glorot_normal", "he_uniform",
         "he_normal", "lecun_uniform", "lecun_normal", "orthogonal", "random_uniform",
         "random_normal", "truncated_normal", "identity", "variance_scaling"]


@pytest.mark.parametrize("name", NAMES)
def test_get_by_name_shape_dtype_and_config_round_trip(name):
    init = I.get(name)
    for dtype in ("float32", "float64"):
        v = init((6, 6), dtype=dtype)
        assert v.shape == (6, 6) and v.dtype == dtype
    ser = I.serialize(init)
    assert ser["module"] == "keras.initializers" and ser["registered_name"] is None
    assert I.get(ser) == init


def test_keras_config_forms():
    assert I.serialize("glorot_uniform") == {
        "module": "keras.initializers", "class_name": "GlorotUniform",
        "config": {"seed": None, "input_axes": None, "output_axes": None},
        "registered_name": None}
    assert I.serialize("orthogonal")["config"] == {"seed": None, "gain": 1.0}
    assert I.serialize("zeros")["config"] == {}
    assert I.serialize(I.RandomUniform())["config"] == {"minval": -0.05, "maxval": 0.05,
                                                        "seed": None}


def test_seeded_same_values_unseeded_differs():
    a = I.GlorotUniform(seed=3)((5, 7))
    b = I.GlorotUniform(seed=3)((5, 7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(I.GlorotUniform(seed=3)((5, 7)), I.GlorotUniform(seed=3)((5, 7)))
    u = I.GlorotUniform()
    assert not np.array_equal(u((5, 7)), u((5, 7)))


def test_global_stream_reproducible():
    fastgru.set_seed(7)
    a = I.HeNormal()((4, 4))
    fastgru.set_seed(7)
    b = I.HeNormal()((4, 4))
    np.testing.assert_array_equal(a, b)


def test_glorot_uniform_limit_uses_whole_matrix_fans():
    D, u = 8, 4
    v = I.GlorotUniform(seed=0)((D, 3 * u), dtype="float64")
    limit = np.sqrt(6 / (D + 3 * u))
    assert np.abs(v).max() <= limit
    assert np.abs(v).max() > 0.9 * limit
    w = I.GlorotUniform(seed=0)((400, 600), dtype="float64")
    np.testing.assert_allclose(w.var(), limit_var(400, 600), rtol=0.02)


def limit_var(fi, fo):
    lim = np.sqrt(6 / (fi + fo))
    return lim ** 2 / 3


@pytest.mark.parametrize("name,scale,mode", [
    ("he_normal", 2.0, "in"), ("lecun_normal", 1.0, "in"), ("glorot_normal", 1.0, "avg")])
def test_truncated_normal_family_variance(name, scale, mode):
    fi, fo = 300, 500
    v = I.get(name)((fi, fo), dtype="float64")
    fan = fi if mode == "in" else (fi + fo) / 2
    # the truncation constant makes the variance of the truncated draw scale / fan
    np.testing.assert_allclose(v.var(), scale / fan, rtol=0.03)
    std = np.sqrt(scale / fan) / 0.87962566103423978
    assert np.abs(v).max() <= 2 * std + 1e-12


@settings(max_examples=25, deadline=None)
@given(u=st.integers(1, 12), mult=st.integers(1, 4), seed=st.integers(0, 1000))
def test_orthogonal_rows_orthonormal_for_wide(u, mult, seed):
    q = I.Orthogonal(seed=seed)((u, mult * u), dtype="float64")
    np.testing.assert_allclose(q @ q.T, np.eye(u), atol=1e-10)
    t = I.Orthogonal(seed=seed, gain=2.0)((mult * u, u), dtype="float64")
    np.testing.assert_allclose(t.T @ t, 4 * np.eye(u), atol=1e-9)


def test_orthogonal_and_identity_reject_bad_rank():
    with pytest.raises(ValueError, match="at least two-dimensional"):
        I.Orthogonal()((3,))
    with pytest.raises(ValueError, match="2D"):
        I.Identity()((2, 2, 2))
    np.testing.assert_array_equal(I.Identity(gain=2.0)((2, 3)), 2 * np.eye(2, 3))


def test_constant_random_uniform_and_bounds():
    np.testing.assert_array_equal(I.Constant(0.5)((2,)), [0.5, 0.5])
    v = I.RandomUniform(-1, 2, seed=1)((1000,))
    assert v.min() >= -1 and v.max() <= 2
    t = I.TruncatedNormal(0.0, 1.0, seed=1)((10000,))
    assert np.abs(t).max() <= 2


def test_variance_scaling_validation_and_fans():
    with pytest.raises(ValueError, match="scale"):
        I.VarianceScaling(scale=0)
    with pytest.raises(ValueError, match="mode"):
        I.VarianceScaling(mode="bad")
    with pytest.raises(ValueError, match="distribution"):
        I.VarianceScaling(distribution="bad")
    assert I.compute_fans((3, 4, 5)) == (12.0, 15.0)
    assert I.compute_fans((7,)) == (7.0, 7.0)
    # Keras's input_axes / output_axes name the fans' axes (both given)
    assert I.compute_fans((60, 5, 6), [0], [1, 2]) == (60.0, 30.0)
    w = I.VarianceScaling(mode="fan_in", distribution="uniform", seed=1, input_axes=[0],
                          output_axes=[1, 2])((60, 5, 6))
    limit = np.sqrt(3 / 60)  # not sqrt(3 / (5 * 60)), the receptive-field rule
    assert 0.95 * limit < np.abs(w).max() <= limit
    assert I.VarianceScaling(scale=np.float32(2.0)).scale == 2.0  # NumPy scalars are reals
    with pytest.raises(ValueError, match="scale"):
        I.VarianceScaling(scale=True)


def test_constant_config_is_plain_json():
    import json

    for v in (np.float32(0.5), np.int64(3), np.array([1.0, 2.0]), 0.25):
        cfg = I.Constant(v).get_config()
        assert json.loads(json.dumps(cfg)) == cfg


def test_get_errors_and_callables():
    with pytest.raises(ValueError, match="Could not interpret initializer identifier"):
        I.get("nope")
    f = I.get(lambda shape, dtype=None: np.full(shape, 3.0))
    np.testing.assert_array_equal(f((2,)), [3.0, 3.0])
    assert I.get(None) is None
    assert isinstance(I.get({"class_name": "GlorotUniform", "config": {"seed": 4}}),
                      I.GlorotUniform)
    assert isinstance(I.get("GlorotUniform"), I.GlorotUniform)


def test_invalid_seed():
    with pytest.raises(ValueError, match="seed"):
        I.GlorotUniform(seed="x")
