"""The NumPy reference: its gradients by finite differences and its defining properties."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from normkit import reference as R

from .gradcheck import check_batch_norm_gradients, check_layer_norm_gradients

BN_CASES = [((6, 4), 1), ((3, 2, 5), 1), ((2, 3, 3, 2), -1), ((4, 7), 0)]


@pytest.mark.parametrize("shape,axis", BN_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(rng, shape, axis, training):
    check_batch_norm_gradients(R, rng, shape, axis, training)


@pytest.mark.parametrize("shape,ns", [((5, 6), 6), ((2, 3, 4), (3, 4)), ((4, 1, 3), 3)])
def test_layer_norm_gradients_match_finite_differences(rng, shape, ns):
    check_layer_norm_gradients(R, rng, shape, ns)


def _data(seed, shape, scale, shift):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


shapes = st.tuples(st.integers(2, 9), st.integers(1, 6), st.integers(1, 5))
EPS = 1e-12  # tiny, so the invariances below hold to float64 rounding


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), scale=st.floats(0.1, 100), shift=st.floats(-1e3, 1e3))
def test_batch_norm_xhat_has_zero_mean_unit_variance(shape, seed, scale, shift):
    x = _data(seed, shape, scale, shift)
    assume(x.var(axis=(0, 2)).min() > 1e-4)  # keep eps / var negligible
    y, _ = R.batch_norm(x, None, None, training=True, eps=EPS)
    axes = (0, 2)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=axes), 1, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), a=st.floats(0.01, 100), c=st.floats(-1e3, 1e3))
def test_batch_norm_is_invariant_to_shift_and_positive_scale(shape, seed, a, c):
    x = _data(seed, shape, 1.0, 0.0)
    # y(a*x + c; eps * a^2) == y(x; eps) exactly in real arithmetic.
    y1, _ = R.batch_norm(x, None, None, training=True, eps=1e-5)
    y2, _ = R.batch_norm(a * x + c, None, None, training=True, eps=1e-5 * a * a)
    np.testing.assert_allclose(y1, y2, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), a=st.floats(0.01, 100), c=st.floats(-1e3, 1e3))
def test_layer_norm_row_stats_and_invariance(shape, seed, a, c):
    x = _data(seed, shape, 1.0, 0.0)
    ns = shape[1:]
    y1, _ = R.layer_norm(x, ns, eps=1e-5)
    y2, _ = R.layer_norm(a * x + c, ns, eps=1e-5 * a * a)
    np.testing.assert_allclose(y1, y2, atol=1e-7)
    y1, _ = R.layer_norm(x, ns, eps=EPS)
    if np.prod(ns) > 1 and x.reshape(shape[0], -1).var(axis=1).min() > 1e-4:
        np.testing.assert_allclose(y1.mean(axis=(1, 2)), 0, atol=1e-9)
        np.testing.assert_allclose(y1.var(axis=(1, 2)), 1, atol=1e-6)
