"""Numba BatchNorm kernels against the NumPy reference, every layout, both builds."""

import numpy as np
import pytest

from normkit import config
from normkit import functional as F
from normkit import reference as R
from normkit.kernels.cpu import batchnorm as bn_cpu

from .conftest import assert_close, at_line_offset
from .gradcheck import check_batch_norm_gradients

DTYPES = [np.float32, np.float64]

# (shape, axis): (N,C), (N,C,L), NCHW with short and long inner runs, channels-last,
# (features, batch), one column, prime sizes, N=2, inner runs longer than one segment.
LAYOUTS = [
    ((64, 10), 1), ((2, 3), 1), ((37, 1), 1), ((5, 7, 3), 1), ((4, 6, 41), 1),
    ((3, 5, 7, 11), 1), ((2, 3, 9, 9), 1), ((3, 5, 4, 7), -1), ((2, 8, 8, 3), 3),
    ((13, 29), 0), ((7, 257), 0), ((300, 517), 1), ((2, 2, 17000), 1), ((1, 3, 40), 1),
    ((3, 9, 40), 1), ((2, 16, 5, 7), 1),  # runs with channels enough for the one-pass kernels
    ((40, 6, 3, 3), 1), ((32, 400, 3), 1),  # a channel over 9 or 3 columns in the wide one-pass
                                            # kernels (one band; three bands of 528, 528, 144)
    ((37, 2100), 1),  # rows of 8 KiB and more: statistics summed eight rows per sweep, 5 left
]


def _stream_every_output(monkeypatch, on=True, row_bytes=256):
    """Streaming stores for every output (normally for >= 8 MiB), or for none. Rows and runs of at
    least ``row_bytes`` (normally 1 KiB) stream row by row, wherever x starts (normally rows up to
    FLAT_MAX_ROW_BYTES of an x off a line boundary stream flat); shorter rows and runs as one flat
    run (``flat_*`` kernels) where the arrays are C-contiguous."""
    monkeypatch.setattr(config, "STREAM_MIN_BYTES", 1 if on else 0)
    monkeypatch.setattr(bn_cpu, "STREAM_MIN_ROW_BYTES", row_bytes)
    monkeypatch.setattr(bn_cpu, "FLAT_MAX_ROW_BYTES", 0)


@pytest.fixture(params=["one-pass", "two-pass", "one-pass streamed", "two-pass streamed"])
def bn_passes(request, monkeypatch):
    """Run the test with the one-pass training kernels wherever their shape rules allow (any
    cache budget) and with the two-pass kernels only; each with ordinary stores and with
    streaming stores for every output (see kernels/cpu/_streaming.py)."""
    one_pass = request.param.startswith("one-pass")
    monkeypatch.setattr(config, "ONE_PASS_BYTES", 1 << 62 if one_pass else 0)
    _stream_every_output(monkeypatch, on=request.param.endswith("streamed"))
    return request.param


def _run_both(x, rng, axis, training, affine=True, dtype=np.float64):
    c = x.shape[axis]
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    rm = rng.standard_normal(c)
    rv = rng.uniform(0.5, 2.0, c)
    state_k, state_r = (rm.copy(), rv.copy()), (rm.copy(), rv.copy())
    yk, sk = F.batch_norm(x, *state_k, w, b, training=training, axis=axis, backend="numba")
    yr, sr = R.batch_norm(x, *state_r, w, b, training=training, axis=axis)
    return (yk, sk, state_k), (yr, sr, state_r)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_backward_match_reference(rng, kernel_build, bn_passes, shape, axis, dtype, training):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    (yk, sk, state_k), (yr, sr, state_r) = _run_both(x, rng, axis, training, dtype=dtype)
    assert yk.dtype == x.dtype and yk.shape == x.shape
    assert_close(yk, yr, dtype, what="y")
    for got, want in zip(state_k, state_r):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(shape).astype(dtype)
    dk, dr = F.batch_norm_backward(dy, sk), R.batch_norm_backward(dy, sr)
    assert dk[0].dtype == x.dtype and dk[1].dtype == dtype
    n = x.size // x.shape[axis]
    for name, got, want, scale in zip(("dx", "dweight", "dbias"), dk, dr, (1, np.sqrt(n), np.sqrt(n))):
        assert_close(got, want, dtype, scale=scale, what=name)


@pytest.mark.parametrize("x_dtype,dy_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("shape,axis", [((64, 10), 1), ((3, 5, 7, 11), 1), ((3, 5, 4, 7), -1), ((7, 257), 0)])
@pytest.mark.parametrize("training", [True, False])
def test_dy_of_the_other_float_dtype(rng, bn_passes, shape, axis, x_dtype, dy_dtype, training):
    """An upstream gradient in float64 for a float32 forward (or the reverse) gives x's dtype
    back, as the reference does (it used to fail to compile: the kernels take one dtype)."""
    x = (rng.standard_normal(shape) * 3 + 2).astype(x_dtype)
    (_, sk, _), (_, sr, _) = _run_both(x, rng, axis, training, dtype=x_dtype)
    dy = rng.standard_normal(shape).astype(dy_dtype)
    dk, dr = F.batch_norm_backward(dy, sk), R.batch_norm_backward(dy, sr)
    assert [g.dtype for g in dk] == [np.dtype(x_dtype)] * 3
    n = x.size // x.shape[axis]
    for name, got, want, scale in zip(("dx", "dweight", "dbias"), dk, dr, (1, np.sqrt(n), np.sqrt(n))):
        assert_close(got, want, np.float32, scale=scale, what=name)


@pytest.mark.parametrize("affine", [True, False])
def test_without_affine_and_running_stats(rng, kernel_build, bn_passes, affine):
    x = rng.standard_normal((20, 6, 5))
    c = 6
    w = rng.standard_normal(c) if affine else None
    yk, sk = F.batch_norm(x, None, None, w, None, training=True)
    yr, sr = R.batch_norm(x, None, None, w, None, training=True)
    np.testing.assert_allclose(yk, yr, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    dk, dr = F.batch_norm_backward(dy, sk), R.batch_norm_backward(dy, sr)
    np.testing.assert_allclose(dk[0], dr[0], rtol=1e-10, atol=1e-10)
    assert dk[2] is None and dr[2] is None
    assert (dk[1] is None) == (not affine)


@pytest.mark.parametrize("weight,bias", [(False, False), (True, False), (False, True)])
def test_eval_mode_without_some_affine_parameters(rng, kernel_build, bn_passes, weight, bias):
    # eval mode without weight and bias is dx = dy * rstd, a backward that takes no sums
    x = rng.standard_normal((20, 6, 5)) * 2 + 1
    c = 6
    w = rng.standard_normal(c) if weight else None
    b = rng.standard_normal(c) if bias else None
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    yk, sk = F.batch_norm(x, rm.copy(), rv.copy(), w, b)
    yr, sr = R.batch_norm(x, rm.copy(), rv.copy(), w, b)
    np.testing.assert_allclose(yk, yr, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    for got, want in zip(F.batch_norm_backward(dy, sk), R.batch_norm_backward(dy, sr)):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


_FOLD = bn_cpu.fold  # the real one, for the spy in test_narrow_wide_arrays_are_folded


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,axis,k", [
    ((60, 10), 1, 60),         # (N, C): every row into one
    ((74, 20), 1, 37),         # the largest divisor of the rows within FOLD_COLS columns
    ((42, 4, 3), 1, 42),       # a channel over 3 columns (inner runs of 3)
    ((3, 8, 4, 6), -1, 96),    # channels-last
    ((4100, 16), 1, 50),       # big enough to be folded without lowering FOLD_MIN_ROWS
])
def test_narrow_wide_arrays_are_folded(rng, monkeypatch, kernel_build, bn_passes, shape, axis, k,
                                       dtype, training):
    """Wide arrays of few columns are viewed as k rows in one (see bn_cpu.FOLD_MAX_COLS): the
    statistics, running statistics and gradients still match the reference."""
    from normkit._layout import batch_norm_layout
    if shape[0] < bn_cpu.FOLD_MIN_ROWS:
        monkeypatch.setattr(bn_cpu, "FOLD_MIN_ROWS", 1)
    folds = []
    monkeypatch.setattr(bn_cpu, "fold", lambda k, *arrays: folds.append(k) or _FOLD(k, *arrays))
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    assert bn_cpu.fold_factor(*batch_norm_layout(x, axis % x.ndim).kernel_shape) == k
    (yk, sk, state_k), (yr, sr, state_r) = _run_both(x, rng, axis, training, dtype=dtype)
    assert_close(yk, yr, dtype, what="y")
    for got, want in zip(state_k, state_r):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(shape).astype(dtype)
    n = x.size // x.shape[axis]
    for name, got, want, scale in zip(("dx", "dweight", "dbias"), F.batch_norm_backward(dy, sk),
                                      R.batch_norm_backward(dy, sr), (1, np.sqrt(n), np.sqrt(n))):
        assert_close(got, want, dtype, scale=scale, what=name)
    assert set(folds) <= {k}
    if bn_passes.startswith("two-pass"):  # (the one-pass kernels take a narrow array whole)
        assert folds


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,axis", [((6, 4), 1), ((3, 4, 40), 1), ((2, 3, 3, 5), -1), ((5, 9), 0),
                                        ((2, 8, 33), 1)])
def test_kernel_gradients_by_finite_differences(rng, kernel_build, bn_passes, shape, axis, training):
    check_batch_norm_gradients(F, rng, shape, axis, training)


def test_running_stats_over_steps_and_cumulative_average(rng, kernel_build):
    c = 5
    rm_k, rv_k = np.zeros(c, np.float32), np.ones(c, np.float32)
    rm_r, rv_r = rm_k.copy(), rv_k.copy()
    cum_k, cum_r = (np.zeros(c), np.ones(c)), (np.zeros(c), np.ones(c))
    batches = [rng.standard_normal((16, c, 3)) * rng.uniform(0.5, 3) + rng.uniform(-5, 5) for _ in range(4)]
    for step, xb in enumerate(batches):
        F.batch_norm(xb, rm_k, rv_k, training=True, momentum=0.3)
        R.batch_norm(xb, rm_r, rv_r, training=True, momentum=0.3)
        F.batch_norm(xb, *cum_k, training=True, momentum=None, num_batches_tracked=step)
        R.batch_norm(xb, *cum_r, training=True, momentum=None, num_batches_tracked=step)
    # float32 running stats: an entry near 0 is a difference of terms of the batch statistics'
    # size, so a last-bit difference in those terms needs an absolute tolerance at that scale.
    scale = max(np.abs(xb.mean(axis=(0, 2))).max() for xb in batches)
    np.testing.assert_allclose(rm_k, rm_r, rtol=1e-6, atol=4 * np.finfo(np.float32).eps * scale)
    np.testing.assert_allclose(rv_k, rv_r, rtol=1e-6)
    # The cumulative average is the plain mean of the batch statistics (the initial values drop out).
    np.testing.assert_allclose(cum_k[0], np.mean([xb.mean(axis=(0, 2)) for xb in batches], axis=0), rtol=1e-10)
    n = 16 * 3
    np.testing.assert_allclose(cum_k[1], np.mean([xb.var(axis=(0, 2)) * n / (n - 1) for xb in batches], axis=0),
                               rtol=1e-10)
    np.testing.assert_allclose(cum_k[1], cum_r[1], rtol=1e-12)


@pytest.mark.parametrize("make_view", [
    lambda a: a.T,                      # transposed: (C, N) memory read as (N, C)
    lambda a: a[:, ::2],                # strided columns
    lambda a: a[3:40],                  # row slice
    lambda a: a[::-1],                  # negative stride
    lambda a: np.asfortranarray(a),     # Fortran order
])
def test_non_contiguous_and_read_only_inputs(rng, kernel_build, make_view):
    base = rng.standard_normal((48, 48)).astype(np.float32) + 4
    x = make_view(base)
    x.flags.writeable = False
    c = x.shape[1]
    yk, sk = F.batch_norm(x, None, None, training=True)
    yr, sr = R.batch_norm(x, None, None, training=True)
    assert_close(yk, yr, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert_close(F.batch_norm_backward(dy, sk)[0], R.batch_norm_backward(dy, sr)[0], np.float32)
    assert c == yk.shape[1]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("strided", ["x", "dy", "both"])
def test_strided_runs_match_reference(rng, kernel_build, bn_passes, training, strided):
    """NCHW batches taken with a step from a larger array are read in place as strided runs, by
    the runs kernels; contiguous ones go to the short-runs kernels (runs of 45 here). Both, for
    the input, the gradient, or each."""
    x_full = rng.standard_normal((10, 6, 5, 9)) * 3 + 2
    dy_full = rng.standard_normal((10, 6, 5, 9))
    x = x_full[::2] if strided in ("x", "both") else x_full[::2].copy()
    dy = dy_full[::2] if strided in ("dy", "both") else dy_full[::2].copy()
    (yk, sk, _), (yr, sr, _) = _run_both(x, rng, 1, training)
    if strided != "dy":  # read in place
        assert np.shares_memory(sk.x, x) and not sk.x.flags.c_contiguous
    assert_close(yk, yr, np.float64, what="y")
    for name, got, want in zip(("dx", "dweight", "dbias"), F.batch_norm_backward(dy, sk),
                               R.batch_norm_backward(dy, sr)):
        assert_close(got, want, np.float64, scale=np.sqrt(x.size / 6), what=name)


def test_short_runs_kernels_take_contiguous_unstreamed_runs_up_to_a_task():
    def both(shape, dtype=np.float32):
        return np.empty(shape, dtype), np.empty(shape, dtype)
    assert bn_cpu.short_runs(False, *both((8, 128, 49)))
    assert bn_cpu.short_runs(False, *both((2, 3, bn_cpu.SHORT_RUN_TASK_ELEMENTS)))
    assert not bn_cpu.short_runs(False, *both((2, 3, bn_cpu.SHORT_RUN_TASK_ELEMENTS + 1)))
    assert not bn_cpu.short_runs(True, *both((8, 128, 49)))  # streamed: the runs kernels
    x, out = both((16, 128, 49))
    assert not bn_cpu.short_runs(False, x[::2], out[:8])
    assert not bn_cpu.short_runs(False, x[:8], x[::2], out[:8])  # a strided dy


def test_views_are_not_copied_and_memory_order_is_kept(rng):
    # An NCHW tensor stored channels-last (a transposed NHWC array) is read in place and its
    # output comes back in the same memory order.
    nhwc = rng.standard_normal((2, 5, 6, 3))
    nchw = nhwc.transpose(0, 3, 1, 2)
    y, saved = F.batch_norm(nchw, None, None, training=True, axis=1)
    assert np.shares_memory(saved.x, nhwc)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    yr, _ = R.batch_norm(nchw, None, None, training=True, axis=1)
    np.testing.assert_allclose(y, yr, atol=1e-12)
    # A (features, batch) layout is read in place too.
    fb = rng.standard_normal((7, 100))
    _, saved = F.batch_norm(fb, None, None, training=True, axis=0)
    assert np.shares_memory(saved.x, fb)


@pytest.mark.parametrize("shift", [1e4, 1e6])
@pytest.mark.parametrize("shape,axis", [((4096, 64), 1), ((16, 8, 300), 1), ((512, 4, 49), 1),
                                        ((2000, 16), 0)])
def test_large_mean_float32_is_exact(rng, kernel_build, bn_passes, shift, shape, axis):
    """float32 input with a large mean: output within 1e-5 of float64 maths on the same values."""
    x = (rng.standard_normal(shape) + shift).astype(np.float32)
    y, saved = F.batch_norm(x, None, None, training=True, axis=axis)
    exact, _ = R.batch_norm(x.astype(np.float64), None, None, training=True, axis=axis)
    assert np.abs(y - exact).max() < 1e-5
    # Tighter, the README's claim: within about one float32 ulp of the output, whatever the mean.
    assert np.abs(y - exact).max() <= 2.5 * np.spacing(np.float32(np.abs(exact).max()))
    dy = rng.standard_normal(shape).astype(np.float32)
    _, s64 = R.batch_norm(x.astype(np.float64), None, None, training=True, axis=axis)
    dx_exact = R.batch_norm_backward(dy.astype(np.float64), s64)[0]
    assert np.abs(F.batch_norm_backward(dy, saved)[0] - dx_exact).max() < 1e-5 * np.abs(dx_exact).max()


def test_constant_and_tiny_variance_inputs(rng, kernel_build, bn_passes):
    x = np.full((32, 4), 3.5, dtype=np.float32)
    b = rng.standard_normal(4)
    y, saved = F.batch_norm(x, None, None, None, b, training=True)
    np.testing.assert_allclose(y, np.broadcast_to(b.astype(np.float32), x.shape))
    grads = F.batch_norm_backward(rng.standard_normal(x.shape).astype(np.float32), saved)
    assert all(np.isfinite(g).all() for g in grads if g is not None)
    tiny = (rng.standard_normal((512, 8)) * 1e-4 + 7).astype(np.float32)
    yk, _ = F.batch_norm(tiny, None, None, training=True, eps=1e-12)
    yr, _ = R.batch_norm(tiny, None, None, training=True, eps=1e-12)
    np.testing.assert_allclose(yk, yr, atol=2e-5)
    assert abs(yk.std() - 1) < 1e-3


@pytest.mark.parametrize("shape,group,n_inputs,expected", [
    ((32, 64, 3136), 1, 2, 1),      # NCHW (32, 64, 56, 56): 784 KiB of x and dy per channel
    ((32, 64, 12544), 1, 1, 0),     # (32, 64, 112, 112): 1.5 MiB of x per channel
    ((8, 3, 1024), 1, 1, 0),        # three channels: too few tasks
    ((256, 8192), 1, 1, 1024),      # small-batch (N, C): bands of 1 MiB, 8 of them
    ((256, 8192), 1, 2, 512),
    ((64, 10), 1, 1, 512),          # narrow: the whole array is one band
    ((8192, 16), 1, 1, 0),          # narrow enough to be folded: two passes
    ((4096, 64), 1, 1, 64),         # folded, but too wide for two passes to gain
    ((512, 4096), 1, 1, 512),
    ((512, 4096), 1, 2, 0),         # bands of 256 columns: too narrow
    ((1024, 1024), 1, 1, 0),
    ((65536, 256), 1, 1, 0),        # a band of 256 columns would be 64 MiB
    ((100352, 64), 1, 1, 0),        # channels-last (32, 56, 56, 64)
    ((64, 40), 8, 1, 512),          # a channel spread over 8 columns: one band
    ((64, 8192), 16, 2, 1024),      # NCHW (64, 512, 4, 4): bands of whole channels
    ((32, 1200), 3, 1, 528),        # bands of a multiple of 16 columns and of 3
    ((64, 1152), 9, 1, 576),        # of 144: at least 512 columns
    ((8, 8192), 16, 2, 1024),       # NCHW (8, 512, 4, 4)
])
def test_one_pass_kernels_apply_where_a_task_fits_in_cache(shape, group, n_inputs, expected):
    assert config.ONE_PASS_BYTES == 1 << 20
    x = np.empty(shape, np.float32)
    assert bn_cpu.one_pass_band(x, group, n_inputs) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("row_bytes", [0, 1 << 30])  # row by row / flat
def test_streamed_outputs_are_bit_identical(rng, monkeypatch, dtype, one_pass, row_bytes):
    """The line writers spell out the scalar loops' arithmetic: same bits, whatever the alignment
    of each row (rows of 517 and runs of 41 or 1000 values start at every offset in a line), and
    flat lines that cross rows (rows of 517, 256 and 64 x 5 values)."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(config, "ONE_PASS_BYTES", 1 << 62 if one_pass else 0)
    cases = [((300, 517), 1), ((4, 6, 41), 1), ((2, 9, 1000), 1), ((64, 256), 1), ((3, 5, 40, 32), -1)]
    for shape, axis in cases:
        x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        c = shape[axis]
        w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        results = []
        for streamed in (False, True):
            _stream_every_output(monkeypatch, on=streamed, row_bytes=row_bytes)
            rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
            y, saved = F.batch_norm(x, rm, rv, w, b, training=True, axis=axis)
            y_eval, saved_eval = F.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
            results.append((y, y_eval, *F.batch_norm_backward(dy, saved),
                            F.batch_norm_backward(dy, saved_eval)[0]))
        for plain, streamed in zip(*results):
            np.testing.assert_array_equal(streamed, plain, err_msg=str((shape, axis)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_flat_runs_start_where_their_input_does_and_match_unstreamed(rng, monkeypatch, dtype):
    """A flat pass's output starts as far into a line as x does (output_line_offset), so its
    kernels write values before the first line with scalar code: same bits as the unstreamed
    passes for x (and dy) at every offset, rows shorter than a line (5 and 3 values), fewer
    values than a line (2 x 3), channels of 9 columns and runs of 40 as wide rows."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(config, "ONE_PASS_BYTES", 0)  # (one-pass outputs stay line-aligned)
    itemsize = np.dtype(dtype).itemsize
    cases = [((517, 5), 1), ((300, 64), 1), ((2, 3), 1), ((7, 4, 3, 3), 1), ((3, 4, 40), 1),
             ((5, 3, 3, 40), -1)]
    for shape, axis in cases:
        c = shape[axis]
        w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
        x0 = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
        dy0 = rng.standard_normal(shape).astype(dtype)
        for offset in range(0, 64, itemsize):
            x = at_line_offset(x0, offset)
            dy = at_line_offset(dy0, (offset + 24) % 64)  # another offset than x's
            results = []
            for streamed in (False, True):
                _stream_every_output(monkeypatch, on=streamed, row_bytes=1 << 30)  # all flat
                rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
                y, saved = F.batch_norm(x, rm, rv, w, b, training=True, axis=axis)
                y_eval, saved_eval = F.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
                dx = F.batch_norm_backward(dy, saved)[0]
                if streamed:
                    for out in (y, y_eval, dx):
                        assert out.ctypes.data % 64 == offset, (shape, offset)
                results.append((y, y_eval, dx, F.batch_norm_backward(dy, saved_eval)[0]))
            for plain, streamed in zip(*results):
                np.testing.assert_array_equal(streamed, plain, err_msg=str((shape, axis, offset)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamed_passes_read_vectors_placed_like_their_output(rng, monkeypatch, dtype):
    """The per-column vectors a streamed pass reads line by line beside its output start where
    the output does in its line (line_placed), flat (x 16 or 48 bytes into a line, rows of 5)
    or row by row (rows of 517 and 64); unstreamed passes take them as they come."""
    monkeypatch.setattr(config, "ONE_PASS_BYTES", 0)
    calls = []
    for name in ("flat_affine", "flat_grad_input", "wide_affine", "wide_grad_input"):
        def recorded(*args, _kernel=getattr(bn_cpu, name), _name=name, **kwargs):
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            calls.append((_name, arrays[-1], [a for a in arrays[:-1] if a.ndim == 1]))
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(bn_cpu, name, recorded)
    for shape, offset, streamed in [((517, 5), 16, True), ((300, 517), 0, True),
                                    ((300, 64), 48, True), ((300, 517), 0, False)]:
        _stream_every_output(monkeypatch, on=streamed, row_bytes=256)
        c = shape[1]
        x = at_line_offset(rng.standard_normal(shape).astype(dtype), offset)
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        calls.clear()
        y, saved = F.batch_norm(x, rm, rv, rng.standard_normal(c).astype(dtype), None,
                                training=True)
        F.batch_norm_backward(rng.standard_normal(shape).astype(dtype), saved)
        assert [name.split("_")[0] for name, _, _ in calls] == ["flat" if c == 5 else "wide"] * 2
        for name, out, vectors in calls:
            assert len(vectors) == (3 if name.endswith("affine") else 4)
            if streamed:
                assert {v.ctypes.data % 64 for v in vectors} == {out.ctypes.data % 64}, name


def test_only_large_outputs_stream_and_short_rows_flat():
    from normkit import _memory
    assert config.STREAM_MIN_BYTES == 8 << 20

    def both(shape, dtype=np.float32, x_offset=0):  # x that far into a line
        return at_line_offset(np.empty(shape, dtype), x_offset), _memory.empty(shape, dtype)
    assert bn_cpu.streams(*both((32, 64, 3136)))
    assert bn_cpu.streams(*both((8192, 256), np.float64))  # 16 MiB, 2 KiB rows
    assert not bn_cpu.streams(*both((1024, 1024)))  # 4 MiB
    assert not bn_cpu.streams(*both((100352, 64)))  # channels-last: rows of 256 bytes...

    def plan(x, out, *more):
        p = bn_cpu.elementwise_plan(x, *more, out=out)
        return ("wide " if p.as_wide else "") + ("flat" if p.flat else "rows")
    assert plan(*both((100352, 64))) == "flat"  # ...so one flat run
    assert plan(*both((8192, 256), np.float64)) == "rows"
    # x off a line boundary: rows up to FLAT_MAX_ROW_BYTES stream flat too, longer ones not
    assert plan(*both((8192, 256), np.float64, x_offset=16)) == "flat"  # 2 KiB rows
    assert plan(*both((2048, 2048), x_offset=48)) == "flat"  # 8 KiB rows
    assert plan(*both((1024, 4096), x_offset=16)) == "rows"
    assert plan(*both((100352, 8))) == "rows"  # 3 MiB
    x, out = both((100352, 64))
    assert plan(x[:, ::2], out[:, ::2]) == "rows"
    assert plan(x, out, x[:, ::-1]) == "rows"  # a strided dy
    misplaced = np.frombuffer(np.zeros(out.nbytes + 1, np.uint8)[1:], np.float32)
    assert plan(x, misplaced.reshape(out.shape)) == "rows"  # an output not at a multiple of 4
    # Runs: short ones of a large output stream as wide rows of C * inner values, those rows
    # as one flat run where the wide layout would (x off a line: up to FLAT_MAX_ROW_BYTES).
    assert plan(*both((8192, 16, 49))) == "wide rows"  # 25 MiB, runs of 196 bytes
    assert plan(*both((8192, 16, 49), x_offset=16)) == "wide flat"  # rows of 3136 bytes
    assert plan(*both((65536, 4, 9))) == "wide flat"  # rows of 144 bytes
    assert plan(*both((32, 64, 3136))) == "rows"  # long runs: run by run
    assert plan(*both((64, 1024, 196))) == "rows"  # a period beyond FLAT_RUNS_MAX_PERIOD
    assert plan(*both((256, 16, 49))) == "rows"  # 0.8 MiB: nothing streams
    x, out = both((65536, 4, 9))
    assert plan(x, out, x[:, :, ::-1]) == "rows"  # a strided dy
    # Outputs of flat runs start where their input does in its line; others on a line.
    x = at_line_offset(np.zeros((100352, 64), np.float32), 16)  # as NumPy places large arrays
    assert bn_cpu.output_line_offset(x) == bn_cpu.output_line_offset(x, x) == 16
    assert bn_cpu.output_line_offset(x, x[:, ::-1]) == 0  # a strided dy: no flat run
    assert bn_cpu.output_line_offset(at_line_offset(np.zeros((32, 64, 3136), np.float32), 16)) == 0
    # runs as wide rows of 3136 bytes: row by row from a line, flat from elsewhere
    assert bn_cpu.output_line_offset(at_line_offset(np.zeros((8192, 16, 49), np.float32), 48)) == 48
    assert bn_cpu.output_line_offset(at_line_offset(np.zeros((65536, 4, 9), np.float32), 48)) == 48
    assert bn_cpu.output_line_offset(at_line_offset(np.zeros((8192, 16, 49), np.float32), 0)) == 0
    assert bn_cpu.output_line_offset(at_line_offset(np.zeros((32768, 512), np.float32), 32)) == 32
    unaligned = np.frombuffer(np.zeros(100352 * 64 * 4 + 1, np.uint8)[1:], np.float32)
    assert bn_cpu.output_line_offset(unaligned.reshape(100352, 64)) == 0


def test_results_do_not_depend_on_the_thread_count(rng, monkeypatch):
    """The parallel kernels split work by shape, not by thread count: bit-identical results."""
    import numba

    import normkit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.fail("needs a machine with at least 2 cores (CI machines have 2)")
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    cases = [((64, 24, 40), 1), ((3000, 40), 1), ((20, 5, 6, 24), -1), ((512, 700), 1),
             ((6000, 40), 1)]  # (the last one folded 25 rows into one)
    for one_pass_bytes in (0, 1 << 20):
        monkeypatch.setattr(config, "ONE_PASS_BYTES", one_pass_bytes)
        for shape, axis in cases:
            x = (rng.standard_normal(shape) + 3).astype(np.float32)
            dy = rng.standard_normal(shape).astype(np.float32)
            results = []
            for threads in (1, 2):
                normkit.set_num_threads(threads)
                try:
                    y, saved = F.batch_norm(x, None, None, training=True, axis=axis)
                    results.append((y, saved.mean, saved.rstd, *F.batch_norm_backward(dy, saved)))
                finally:
                    normkit.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            for a, b in zip(*results):
                assert a is None and b is None or np.array_equal(a, b), (shape, one_pass_bytes)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=5), data=st.data(),
       seed=st.integers(0, 2**32 - 1), transpose=st.booleans())
def test_any_shape_axis_and_memory_order_matches_reference(shape, data, seed, transpose):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-100, 100)
    if transpose:  # a non-contiguous view with reversed axes
        x = x.T
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    if x.size // x.shape[axis] < 2:
        return
    y, saved = F.batch_norm(x, None, None, training=True, axis=axis)
    yr, sr = R.batch_norm(x, None, None, training=True, axis=axis)
    np.testing.assert_allclose(y, yr, atol=1e-9)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(F.batch_norm_backward(dy, saved)[0], R.batch_norm_backward(dy, sr)[0], atol=1e-9)
