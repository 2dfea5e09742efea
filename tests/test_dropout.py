"""Dropout's counter-based masks (normkit/kernels/cpu/dropout.py) and the layer that uses them."""

import numpy as np
import pytest

import normkit as nk
from normkit import config
from normkit.kernels.cpu import dropout as dropout_cpu

MASK64 = (1 << 64) - 1


def splitmix64(key, i):
    """Output i + 1 of SplitMix64 seeded with ``key``, in Python integers (Steele et al. 2014)."""
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@pytest.mark.parametrize("parallel", [False, True])
def test_masks_are_splitmix64_draws_across_tasks(rng, monkeypatch, parallel):
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0 if parallel else 1 << 62)
    n = 2 * dropout_cpu.TASK_VALUES + 37  # three tasks, the last one short
    key, p = int(rng.integers(0, 2 ** 64, dtype=np.uint64)), 0.4
    x = np.ones(n, np.float32)
    kept = dropout_cpu.dropout(x, key, p, np.empty_like(x)) != 0
    threshold = round(p * 2 ** 32)
    for i in [0, 1, 2, 65534, 65535, 65536, 65537, 131071, 131072, n - 1,
              *rng.integers(0, n, 200)]:
        assert kept[i] == (splitmix64(key, int(i)) >> 32 >= threshold), i


def test_masks_do_not_depend_on_the_thread_count(rng, monkeypatch):
    x = rng.standard_normal(3 * dropout_cpu.TASK_VALUES + 5)
    results = []
    for parallel_min in (1 << 62, 0):
        monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", parallel_min)
        results.append(dropout_cpu.dropout(x, 12345, 0.3, np.empty_like(x)))
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_values_are_scaled_and_counted_right(rng, dtype, p):
    n = 1 << 20
    x = rng.standard_normal(n).astype(dtype)
    key = int(rng.integers(0, 2 ** 64, dtype=np.uint64))
    y = dropout_cpu.dropout(x, key, p, np.empty_like(x))
    kept = y != 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 5 * sigma
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[kept], x[kept] * dtype(1 / (1 - p)))
    # neighbours and the masks of a neighbouring key are independent (correlation ~ 0)
    k = kept.astype(np.float64)
    assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 5 / np.sqrt(n)
    other = dropout_cpu.dropout(x, (key + 1) % 2 ** 64, p, np.empty_like(x)) != 0
    assert abs(np.corrcoef(k, other)[0, 1]) < 5 / np.sqrt(n)


def test_dropped_nan_stays_nan_and_p_one_drops_everything():
    x = np.array([np.nan, 1.0, np.inf, -2.0] * 64)
    y = dropout_cpu.dropout(x, 7, 1.0, np.empty_like(x))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, x * 0.0)  # NaN and inf times zero: NaN, as in PyTorch
    assert np.isnan(y[0]) and np.isnan(y[2]) and (y[1::4] == 0).all()


def test_layer_masks_follow_the_seed_and_the_backward_reuses_them(rng):
    x = rng.standard_normal((64, 300)).astype(np.float32)
    outputs = [nk.Dropout(0.25, rng=np.random.default_rng(5))(x) for _ in range(2)]
    np.testing.assert_array_equal(*outputs)  # same seed, same mask
    drop = nk.Dropout(0.25, rng=np.random.default_rng(5))
    y = drop(x)
    drop.p = 0.9  # a change after the forward does not change its mask
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = drop.backward(dy)
    np.testing.assert_array_equal(dx, np.where(y != 0, dy * np.float32(1 / 0.75), 0))
    assert not np.array_equal(drop(x) != 0, y != 0)  # the next call draws a new mask


def test_layer_masks_follow_the_logical_order_of_any_layout(rng):
    x = rng.standard_normal((200, 300))
    strided = np.asfortranarray(x)[:, ::-1]
    expected = nk.Dropout(0.5, rng=np.random.default_rng(1))(np.ascontiguousarray(strided))
    got = nk.Dropout(0.5, rng=np.random.default_rng(1))(strided)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous
