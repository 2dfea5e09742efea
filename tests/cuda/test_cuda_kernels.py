"""CUDA kernels against the NumPy reference. The same file runs on a real GPU
(``NORMKIT_CUDA_TESTS=1 python -m pytest tests/cuda``) and under Numba's simulator (CI:
tests/test_cuda_simulator.py runs it with NUMBA_ENABLE_CUDASIM=1). Shapes are small and odd so that
blocks are partly filled and the simulator (one OS thread per CUDA thread) stays quick."""

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")

import normkit as nk  # noqa: E402
from normkit import functional as F  # noqa: E402
from normkit import reference as R  # noqa: E402
from normkit._backend import cuda_available  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no GPU and no simulator")

TOL = {np.float32: 2e-5, np.float64: 1e-10}


def _close(a, b, dtype, scale=1.0):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((7, 5), 1), ((3, 4, 37), 1), ((2, 3, 3, 5), -1), ((5, 9), 0),
                                        ((4, 3, 5), 1), ((2, 33), 1),
                                        # inner runs of several segments; rows beyond the grid
                                        ((2, 3, 300), 1), ((40, 6), 1),
                                        # wide rows of a multiple of 4 values (16-byte accesses),
                                        # four neighbours of one channel or of two
                                        ((6, 8), 1), ((2, 3, 3, 8), -1), ((5, 2, 2), 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_reference(shape, axis, dtype, training):
    rng = np.random.default_rng(abs(hash((shape, axis, training))) % 2**32)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    state_g, state_r = (rm.copy(), rv.copy()), (rm.copy(), rv.copy())
    y, saved = F.batch_norm(x, *state_g, w, b, training=training, axis=axis, backend="cuda")
    yr, sr = R.batch_norm(x, *state_r, w, b, training=training, axis=axis)
    assert isinstance(y, np.ndarray) and y.dtype == x.dtype  # host in, host out
    _close(y, yr, dtype)
    for got, want in zip(state_g, state_r):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    dy = rng.standard_normal(shape).astype(dtype)
    n = x.size // c
    for got, want, scale in zip(F.batch_norm_backward(dy, saved), R.batch_norm_backward(dy, sr),
                                (1, np.sqrt(n), np.sqrt(n))):
        _close(got, want, dtype, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", [((6, 5), 5), ((3, 4, 37), (4, 37)), ((2, 70), 70), ((3, 1), 1),
                                      ((7, 3), 3), ((40, 5), 5),  # a half-filled last block; rows beyond the grid
                                      ((2, 600), 600),  # ten values per thread
                                      ((2, 16), 16)])  # lanes past the row's end (few rows)
def test_layer_norm_matches_reference(shape, ns, dtype):
    rng = np.random.default_rng(abs(hash((shape, ns))) % 2**32)
    nsh = (ns,) if isinstance(ns, int) else ns
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w, b = rng.standard_normal(nsh).astype(dtype), rng.standard_normal(nsh).astype(dtype)
    y, saved = F.layer_norm(x, ns, w, b, backend="cuda")
    yr, sr = R.layer_norm(x, ns, w, b)
    _close(y, yr, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rows = x.size // int(np.prod(nsh))
    for got, want, scale in zip(F.layer_norm_backward(dy, saved), R.layer_norm_backward(dy, sr),
                                (1, np.sqrt(rows), np.sqrt(rows))):
        _close(got, want, dtype, scale)


def _arrival_counters():
    """This thread's block counters of the sums kernels (see _reduce.last_to_arrive)."""
    from normkit.kernels.cuda import _pool
    return [a.copy_to_host() for a in getattr(_pool._threads, "arrivals", {}).values()]


@pytest.mark.parametrize("op,shape", [("bn", (20, 6)), ("bn", (12, 40)), ("bn", (4, 2, 40)),
                                      ("bn", (9, 3, 5)),  # several columns a channel
                                      ("ln", (12, 40))])
def test_sums_over_many_blocks_are_finished_by_the_last_one(op, shape, monkeypatch):
    """Many blocks for each channel (or column) of the sums kernels, whose last block to finish
    merges the others' partials, with a grid sized for more SMs than the simulator's. Each
    launch must leave the block counters at zero for the next (or no block of the next would
    find itself last)."""
    from normkit.kernels.cuda import launch
    threads, block2d, _ = launch._geometry()
    monkeypatch.setattr(launch, "_geometry", lambda: (threads, block2d, 40))
    rng = np.random.default_rng(abs(hash((op, shape))) % 2**32)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    if op == "bn":  # running statistics on the device: updated by the last block of all
        rm, rv = np.zeros(c), np.ones(c)
        rmd, rvd = cuda.to_device(rm), cuda.to_device(rv)
        y, saved = F.batch_norm(x, rmd, rvd, w, b, training=True, backend="cuda")
        yr, sr = R.batch_norm(x, rm, rv, w, b, training=True)
        np.testing.assert_allclose(np.stack((rmd.copy_to_host(), rvd.copy_to_host())),
                                   np.stack((rm, rv)), rtol=1e-12)
        got, want = F.batch_norm_backward(dy, saved), R.batch_norm_backward(dy, sr)
    else:
        y, saved = F.layer_norm(x, c, w, b, backend="cuda")
        yr, sr = R.layer_norm(x, c, w, b)
        got, want = F.layer_norm_backward(dy, saved), R.layer_norm_backward(dy, sr)
    _close(y, yr, np.float64)
    for g, r in zip(got, want):
        _close(g, r, np.float64, np.sqrt(x.size))
    counters = _arrival_counters()
    assert counters and all((a == 0).all() for a in counters)


@pytest.mark.parametrize("x_dtype,dy_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("on_device", [False, True])
def test_dy_of_the_other_float_dtype(x_dtype, dy_dtype, on_device):
    """dx, dweight and dbias come back in x's dtype, as from the CPU kernels and the reference."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 8)) * 2 + 3).astype(x_dtype)
    w, b = rng.standard_normal(8).astype(x_dtype), rng.standard_normal(8).astype(x_dtype)
    dy = rng.standard_normal(x.shape).astype(dy_dtype)
    put = cuda.to_device if on_device else np.asarray
    runs = [(F.batch_norm(put(x), None, None, w, b, training=True, backend="cuda")[1],
             R.batch_norm(x, None, None, w, b, training=True)[1], F.batch_norm_backward,
             R.batch_norm_backward),
            (F.layer_norm(put(x), 8, w, b, backend="cuda")[1], R.layer_norm(x, 8, w, b)[1],
             F.layer_norm_backward, R.layer_norm_backward)]
    for saved, saved_r, backward, backward_r in runs:
        got = [_host(g) for g in backward(put(dy), saved)]
        assert [g.dtype for g in got] == [np.dtype(x_dtype)] * 3
        for g, want in zip(got, backward_r(dy, saved_r)):
            _close(g, want, np.float32, np.sqrt(6))


@pytest.mark.parametrize("shift", [1e4, 1e6])
def test_large_mean_float32_is_exact(shift):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 6)) + shift).astype(np.float32)
    y, _ = F.batch_norm(x, None, None, training=True, backend="cuda")
    exact, _ = R.batch_norm(x.astype(np.float64), None, None, training=True)
    assert np.abs(y - exact).max() < 1e-5
    y, _ = F.layer_norm(x.T.copy(), 64, backend="cuda")
    exact, _ = R.layer_norm(x.T.astype(np.float64), 64)
    assert np.abs(y - exact).max() < 1e-5


def test_device_arrays_stay_on_the_device_and_auto_picks_cuda():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    xd = cuda.to_device(x)
    y, saved = F.batch_norm(xd, None, None, training=True)  # backend="auto"
    assert saved.backend == "cuda" and hasattr(y, "copy_to_host")
    _close(y.copy_to_host(), R.batch_norm(x, None, None, training=True)[0], np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = F.batch_norm_backward(cuda.to_device(dy), saved)
    assert hasattr(dx, "copy_to_host")
    _close(dx.copy_to_host(), R.batch_norm_backward(dy, R.batch_norm(x, None, None, training=True)[1])[0], np.float32)
    yl, _ = F.layer_norm(xd, 4)
    assert hasattr(yl, "copy_to_host")
    with pytest.raises(TypeError, match="CUDA device array but backend='numba'"):
        F.layer_norm(xd, 4, backend="numba")


def test_layers_work_with_device_arrays_end_to_end():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    bn, bn_ref = nk.BatchNorm(3, backend="cuda"), nk.BatchNorm(3, backend="numpy")
    ln, ln_ref = nk.LayerNorm(3), nk.LayerNorm(3, backend="numpy")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for layer, ref, inp in ((bn, bn_ref, x), (ln, ln_ref, cuda.to_device(x))):
        y = layer(inp)
        _close(_host(y), ref(x), np.float32)
        dx = layer.backward(dy if isinstance(inp, np.ndarray) else cuda.to_device(dy))
        _close(_host(dx), ref.backward(dy), np.float32)
        _close(layer.weight.grad, ref.weight.grad, np.float32, 10)
    np.testing.assert_allclose(bn.running_var, bn_ref.running_var, rtol=1e-6)
    assert bn.num_batches_tracked == 1


# Device views that are not C-contiguous: (full shape, the view, how the forward reads it).
# numba device arrays transpose in 2-D only on a GPU, so the other layouts are slices.
STRIDED_VIEWS = [
    ((6, 10), lambda a: a[:, 1::2], 1),                   # every other channel
    ((7, 5), lambda a: a.T, 0),                           # (features, batch) seen transposed
    ((3, 4, 5, 6), lambda a: a[:, 1:, :, ::3], 1),        # NCHW, a channel and columns dropped
    ((3, 4, 5, 6), lambda a: a[1:, :, 1:4, :5], -1),      # channels-last, a window
    ((2, 1, 3, 4), lambda a: a[:, :, ::2, :], 1),         # a size-1 axis
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("full,view,axis", STRIDED_VIEWS)
def test_strided_device_inputs_match_the_reference(full, view, axis, dtype):
    rng = np.random.default_rng(11)
    x_full = (rng.standard_normal(full) * 2 + 3).astype(dtype)
    dy_full = rng.standard_normal(full).astype(dtype)
    x, dy = view(x_full), view(dy_full)
    xd, dyd = view(cuda.to_device(x_full)), view(cuda.to_device(dy_full))
    assert not xd.is_c_contiguous()
    w = rng.standard_normal(x.shape[axis]).astype(dtype)
    y_ref, saved_ref = R.batch_norm(x, None, None, w, None, training=True, axis=axis)
    dx_ref, dw_ref, _ = R.batch_norm_backward(dy, saved_ref)
    # BatchNorm's results come back in the input's memory order, as from the CPU kernels
    y_cpu, _ = F.batch_norm(x, None, None, w, None, training=True, axis=axis, backend="numba")
    for x_in, dy_in in ((xd, dyd), (x, dy)):  # device views, and the same views on the host
        y, saved = F.batch_norm(x_in, None, None, w, None, training=True, axis=axis,
                                backend="cuda")
        dx, dw, _ = F.batch_norm_backward(dy_in, saved)
        assert y.shape == dx.shape == x.shape
        assert tuple(y.strides) == tuple(dx.strides) == y_cpu.strides
        _close(_host(y), y_ref, dtype)
        _close(_host(dx), dx_ref, dtype, 10)
        _close(dw, dw_ref, dtype, 10)
    # LayerNorm over the last axis of the same views; dy in C order, a layout unlike x's
    y, saved = F.layer_norm(xd, x.shape[-1])
    y_ref, saved_ref = R.layer_norm(x, x.shape[-1])
    _close(y.copy_to_host(), y_ref, dtype)
    dx, _, _ = F.layer_norm_backward(cuda.to_device(np.ascontiguousarray(dy)), saved)
    _close(dx.copy_to_host(), R.layer_norm_backward(dy, saved_ref)[0], dtype, 10)


@pytest.mark.parametrize("nchw,axis", [((3, 5, 4, 6), 1), ((2, 7, 9), 1), ((6, 300), 0)])
def test_batch_norm_reads_dense_permutations_in_place(nchw, axis, monkeypatch):
    """A channels-last (N, C, H, W) array, a channels-last (N, C, L) one, a transposed (C, N)
    one: each is a C-contiguous array with its axes permuted, read without a copy."""
    from normkit.kernels.cuda import _strided
    gathered, gather = [], _strided.gather
    monkeypatch.setattr(_strided, "gather",
                        lambda d, *args: gathered.append(args[-1]) or gather(d, *args))
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(nchw) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal(nchw).astype(np.float32)
    axes = tuple(a for a in range(x.ndim) if a != axis) + (axis,)  # the channel axis last in memory
    back = tuple(int(i) for i in np.argsort(axes))
    xd = _strided.permuted(cuda.to_device(np.ascontiguousarray(x.transpose(axes))), back)
    assert xd.shape == x.shape and not xd.is_c_contiguous()
    y, saved = F.batch_norm(xd, None, None, training=True, axis=axis)
    y_ref, saved_ref = R.batch_norm(x, None, None, training=True, axis=axis)
    assert gathered == [] and tuple(y.strides) == tuple(xd.strides)
    _close(y.copy_to_host(), y_ref, np.float32)
    dy_same = _strided.permuted(cuda.to_device(np.ascontiguousarray(dy.transpose(axes))), back)
    dx_ref = R.batch_norm_backward(dy, saved_ref)[0]
    dx = F.batch_norm_backward(dy_same, saved)[0]
    assert gathered == [] and tuple(dx.strides) == tuple(xd.strides)
    _close(dx.copy_to_host(), dx_ref, np.float32, 10)
    dx = F.batch_norm_backward(cuda.to_device(dy), saved)[0]  # dy in C order: copied once
    assert gathered == ["dy"] and tuple(dx.strides) == tuple(xd.strides)
    _close(dx.copy_to_host(), dx_ref, np.float32, 10)
    x_host = np.ascontiguousarray(x.transpose(axes)).transpose(back)  # on the host: the same
    y, saved = F.batch_norm(x_host, None, None, training=True, axis=axis, backend="cuda")
    assert y.strides == x_host.strides
    _close(y, y_ref, np.float32)
    dx = F.batch_norm_backward(dy, saved)[0]
    assert dx.strides == x_host.strides
    _close(dx, dx_ref, np.float32, 10)


@pytest.mark.parametrize("full,view,axes", [
    ((6, 10), lambda a: a[:, ::2], 1),                 # one run of every other value
    ((3, 4, 5, 6), lambda a: a[:, 1:], 2),             # whole (H, W) planes: (N, C*H*W) rows
    ((3, 4, 5, 6), lambda a: a[:, :, :, ::3], 1),      # every third value (6 columns)
    ((3, 4, 5, 6), lambda a: a[:, :, :, ::4], 2),      # every fourth column: (N*C*H, 2)
    ((3, 4, 5, 6), lambda a: a[1:, :, 1:4, :5], 3),
    ((2, 1, 3, 4), lambda a: a[:, :, ::2, :], 3),      # a size-1 axis dropped
    ((7, 5), lambda a: a.T, 2),                        # nothing to merge
    ((1, 1, 5), lambda a: a[:, :, 2:3], 1),            # a single value
])
def test_gather_merges_axes_that_step_over_each_other(full, view, axes):
    from normkit.kernels.cuda._strided import merged_axes
    base = np.arange(np.prod(full), dtype=np.float32).reshape(full)
    v = view(base)
    shape, strides = merged_axes(v.shape, tuple(s // v.itemsize for s in v.strides))
    assert len(shape) == axes and np.prod(shape) == v.size
    same = np.lib.stride_tricks.as_strided(v, shape, tuple(s * v.itemsize for s in strides))
    np.testing.assert_array_equal(same.reshape(-1), v.reshape(-1))  # same values, same order


def test_strided_device_inputs_leave_the_input_unchanged_and_refuse_negative_strides():
    x_full = np.arange(48, dtype=np.float32).reshape(6, 8)
    xd_full = cuda.to_device(x_full)
    F.layer_norm(xd_full[:, ::2], 4)
    np.testing.assert_array_equal(xd_full.copy_to_host(), x_full)
    with pytest.raises(ValueError, match="negative"):
        F.layer_norm(xd_full[::-1], 8)


def test_errors_are_the_cpu_ones():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3), np.float32), None, None, training=True, backend="cuda")
    with pytest.raises(TypeError, match="int64"):
        F.batch_norm(cuda.to_device(np.ones((4, 3), np.int64)), None, None, training=True)
    with pytest.raises(ValueError, match="trailing dimensions"):
        F.layer_norm(np.ones((4, 3), np.float32), 4, backend="cuda")


def test_parameters_changed_in_place_are_sent_again():
    """The device copies of weights are cached by content: an optimizer's in-place update must
    reach the next call."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    for _ in range(2):
        y, _ = F.layer_norm(x, 8, w, b, backend="cuda")
        _close(y, R.layer_norm(x, 8, w, b)[0], np.float32)
        yb, _ = F.batch_norm(x, None, None, w, b, training=True, backend="cuda")
        _close(yb, R.batch_norm(x, None, None, w, b, training=True)[0], np.float32)
        w *= 1.5
        b += 0.25


# ------------------------------------------------------------------------------------------------
# Weights, biases and running statistics on the device: used in place, updated on the device,
# gradients returned there.
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((9, 5), 1), ((2, 3, 40), 1),  # wide and runs layouts
                                        ((4, 3, 5), 1)])  # wide, several columns a channel
@pytest.mark.parametrize("momentum", [0.3, None])
def test_batch_norm_with_device_parameters_and_running_stats(shape, axis, dtype, momentum):
    rng = np.random.default_rng(abs(hash((shape, momentum))) % 2**32)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    wd, bd, rmd, rvd = (cuda.to_device(a) for a in (w, b, rm, rv))
    nbt = 4 if momentum is None else None
    y, saved = F.batch_norm(cuda.to_device(x), rmd, rvd, wd, bd, training=True, momentum=momentum,
                            axis=axis, num_batches_tracked=nbt)
    yr, sr = R.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, axis=axis,
                          num_batches_tracked=nbt)
    _close(y.copy_to_host(), yr, dtype)
    assert saved.running_stats_updated is None  # not known without waiting for the GPU
    np.testing.assert_allclose(rmd.copy_to_host(), rm, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(rvd.copy_to_host(), rv, rtol=TOL[dtype], atol=TOL[dtype])
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.batch_norm_backward(cuda.to_device(dy), saved)
    assert hasattr(dw, "copy_to_host") and hasattr(db, "copy_to_host")  # stay on the device
    assert dw.dtype == db.dtype == dtype and dw.shape == db.shape == (c,)
    n = x.size // c
    for got, want, scale in zip((dx, dw, db), R.batch_norm_backward(dy, sr), (1, np.sqrt(n), np.sqrt(n))):
        _close(_host(got), want, dtype, scale)
    # eval mode with the (updated) running statistics on the device
    y, saved = F.batch_norm(cuda.to_device(x), rmd, rvd, wd, bd, training=False, axis=axis)
    yr, sr = R.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    _close(y.copy_to_host(), yr, dtype)
    for got, want in zip(F.batch_norm_backward(cuda.to_device(dy), saved), R.batch_norm_backward(dy, sr)):
        _close(_host(got), want, dtype, np.sqrt(n))


def test_cumulative_momentum_without_running_stats():
    """momentum=None needs num_batches_tracked only to update running statistics: none here."""
    x = np.random.default_rng(3).standard_normal((6, 3))
    y, _ = F.batch_norm(x, None, None, training=True, momentum=None, backend="cuda")
    _close(y, R.batch_norm(x, None, None, training=True, momentum=None)[0], np.float64)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 40), (2, 3, 5)])  # each way of updating
def test_device_running_stats_skip_a_non_finite_batch(shape):
    x = np.ones(shape, np.float32)
    x[(1, 1) + (2,) * (len(shape) - 2)] = np.nan
    rm, rv = np.array([0.5, 1.0, 2.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    rmd, rvd = cuda.to_device(rm), cuda.to_device(rv)
    y, _ = F.batch_norm(cuda.to_device(x), rmd, rvd, training=True)
    np.testing.assert_array_equal(rmd.copy_to_host(), rm)  # every channel kept, as on the host
    np.testing.assert_array_equal(rvd.copy_to_host(), rv)
    assert np.isnan(y.copy_to_host()[:, 1]).all()


def test_device_vectors_are_checked_before_anything_changes():
    x = cuda.to_device(np.ones((4, 3), np.float32))
    rm, rv = cuda.to_device(np.zeros(3)), cuda.to_device(np.ones(3))
    with pytest.raises(ValueError, match="must both be device arrays or both host arrays"):
        F.batch_norm(x, rm, np.ones(3), training=True)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        F.batch_norm(x, rm, cuda.to_device(np.ones(4)), training=True)
    with pytest.raises(TypeError, match="weight must be a float32 or float64 array"):
        F.batch_norm(x, rm, rv, cuda.to_device(np.ones(3, np.int32)), training=True)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.layer_norm(x, 3, None, cuda.to_device(np.ones(2, np.float32)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(cuda.to_device(np.ones((1, 3), np.float32)), rm, rv, training=True)
    np.testing.assert_array_equal(rm.copy_to_host(), np.zeros(3))
    np.testing.assert_array_equal(rv.copy_to_host(), np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_with_device_parameters(dtype):
    rng = np.random.default_rng(11)
    shape, ns = (5, 3, 7), (3, 7)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    w, b = rng.standard_normal(ns).astype(dtype), rng.standard_normal(ns).astype(dtype)
    y, saved = F.layer_norm(cuda.to_device(x), ns, cuda.to_device(w), cuda.to_device(b))
    yr, sr = R.layer_norm(x, ns, w, b)
    _close(y.copy_to_host(), yr, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = F.layer_norm_backward(cuda.to_device(dy), saved)
    assert hasattr(dw, "copy_to_host") and dw.shape == db.shape == ns and dw.dtype == dtype
    for got, want, scale in zip((dx, dw, db), R.layer_norm_backward(dy, sr), (1, 3, 3)):
        _close(_host(got), want, dtype, scale)
    # only a bias, on the device: no weight gradient, the bias's on the device
    _, saved = F.layer_norm(cuda.to_device(x), ns, None, cuda.to_device(b))
    dx, dw, db = F.layer_norm_backward(cuda.to_device(dy), saved)
    assert dw is None and hasattr(db, "copy_to_host")
    _close(db.copy_to_host(), R.layer_norm_backward(dy, R.layer_norm(x, ns, None, b)[1])[2], dtype, 3)


def test_a_direct_launch_that_cannot_be_set_up_is_logged_once(caplog, monkeypatch):
    from normkit.kernels.cuda import _launcher
    monkeypatch.setattr(_launcher, "_fallbacks_logged", set())

    class UnknownInternals:  # a dispatcher of another numba-cuda: no overload to look up
        overloads = {}

    with caplog.at_level("WARNING", logger=_launcher.__name__):
        assert _launcher._core_kernel(UnknownInternals(), (1, 2.0)) is None
        assert _launcher._core_kernel(UnknownInternals(), (3, 4.0)) is None
    records = [r for r in caplog.records if r.name == _launcher.__name__]
    assert len(records) == 1 and "dispatcher" in records[0].getMessage()
    assert "KeyError" in records[0].getMessage()


# ------------------------------------------------------------------------------------------------
# Real GPU only: the simulator has no device memory to pool and no cuda.core launch path, and
# realistic sizes (full 256-thread blocks, many grid-stride iterations) are too slow for it.
# ------------------------------------------------------------------------------------------------

def _simulator():
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def gpu_only(test):
    """Needs a real GPU: marked ``gpu`` (tests/test_cuda_simulator.py deselects those), and
    skipped if run under the simulator by hand."""
    return pytest.mark.gpu(pytest.mark.skipif(_simulator(), reason="needs a real GPU")(test))


@gpu_only
@pytest.mark.parametrize("shape,axis", [((4096, 96), 1), ((8, 64, 56, 56), 1), ((8, 28, 28, 64), -1),
                                        ((3, 5, 4, 8), 1),
                                        ((8200, 132), 1)])  # the affine pass with 16-byte accesses
def test_realistic_batch_norm_shapes_on_a_gpu(shape, axis):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 3 + 100).astype(np.float32)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c), np.ones(c)
    rm_r, rv_r = rm.copy(), rv.copy()
    y, saved = F.batch_norm(cuda.to_device(x), rm, rv, w, b, training=True, axis=axis)
    yr, sr = R.batch_norm(x, rm_r, rv_r, w, b, training=True, axis=axis)
    _close(y.copy_to_host(), yr, np.float32)
    np.testing.assert_allclose(rm, rm_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rv, rv_r, rtol=1e-10)
    dy = rng.standard_normal(shape).astype(np.float32)
    n = x.size // c
    got = F.batch_norm_backward(cuda.to_device(dy), saved)
    for g, want, scale in zip(got, R.batch_norm_backward(dy, sr), (1, np.sqrt(n), np.sqrt(n))):
        _close(g.copy_to_host() if hasattr(g, "copy_to_host") else g, want, np.float32, scale)
    y_eval, _ = F.batch_norm(cuda.to_device(x), rm, rv, w, b, training=False, axis=axis)
    _close(y_eval.copy_to_host(), R.batch_norm(x, rm, rv, w, b, training=False, axis=axis)[0], np.float32)


@gpu_only
@pytest.mark.parametrize("shape", [(4099, 1024), (33, 8192), (20000, 64), (5, 3)])
def test_realistic_layer_norm_shapes_on_a_gpu(shape):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 100).astype(np.float32)
    c = shape[-1]
    w, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    y, saved = F.layer_norm(cuda.to_device(x), c, w, b)
    yr, sr = R.layer_norm(x, c, w, b)
    _close(y.copy_to_host(), yr, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    got = F.layer_norm_backward(cuda.to_device(dy), saved)
    for g, want, scale in zip(got, R.layer_norm_backward(dy, sr), (1, np.sqrt(shape[0]), np.sqrt(shape[0]))):
        _close(g.copy_to_host() if hasattr(g, "copy_to_host") else g, want, np.float32, scale)


@gpu_only
def test_pooled_outputs_are_never_handed_out_twice():
    """An output shares its buffer with the statistics its ``saved`` keeps: the buffer comes
    back to the pool only when neither, nor any view, is left."""
    from normkit.kernels.cuda import _pool
    rng = np.random.default_rng(8)
    a, b = (rng.standard_normal((64, 32)).astype(np.float32) for _ in range(2))
    ya, saved_a = F.layer_norm(cuda.to_device(a), 32)
    view = ya[3:10]                      # only a view of the first output stays alive
    del ya, saved_a
    yb, saved_b = F.layer_norm(cuda.to_device(b), 32)  # must not reuse the buffer the view is in
    _close(view.copy_to_host(), R.layer_norm(a, 32)[0][3:10], np.float32)
    _close(yb.copy_to_host(), R.layer_norm(b, 32)[0], np.float32)
    pointer = int(yb.device_ctypes_pointer.value)
    del yb
    yc, saved_c = F.layer_norm(cuda.to_device(a), 32)  # saved_b still holds the buffer
    assert int(yc.device_ctypes_pointer.value) != pointer
    _close(F.layer_norm_backward(cuda.to_device(b), saved_b)[0].copy_to_host(),
           R.layer_norm_backward(b, R.layer_norm(b, 32)[1])[0], np.float32)
    del saved_b
    yd, _ = F.layer_norm(cuda.to_device(a), 32)  # now the buffer is free: reused
    assert int(yd.device_ctypes_pointer.value) == pointer
    assert _pool.cached_bytes() >= 0
    nk.empty_cache()
    assert _pool.cached_bytes() == 0


@gpu_only
def test_device_cache_of_zero_bytes_keeps_nothing(monkeypatch):
    from normkit import config
    from normkit.kernels.cuda import _pool
    nk.empty_cache()
    monkeypatch.setattr(config, "DEVICE_CACHE_BYTES", 0)
    y, saved = F.layer_norm(cuda.to_device(np.ones((16, 8), np.float32)), 8)
    del y, saved
    assert _pool.cached_bytes() == 0
    monkeypatch.setattr(config, "DEVICE_CACHE_BYTES", 1 << 20)
    y, saved = F.layer_norm(cuda.to_device(np.ones((16, 8), np.float32)), 8)
    del y, saved
    assert _pool.cached_bytes() > 0  # the output and the statistics came back


@gpu_only
def test_launches_bypass_the_dispatcher_after_the_first():
    from normkit.kernels.cuda import _launcher
    from normkit.kernels.cuda import layernorm as ln
    x = cuda.to_device(np.arange(4 * 8, dtype=np.float32).reshape(4, 8))
    _, saved = F.layer_norm(x, 8)
    F.layer_norm_backward(x, saved)  # takes the forward's statistics, a DeviceSpan
    for kernel in (ln.forward_kernel, ln.backward_dx_kernel):
        assert any(k[0] is kernel and v is not None for k, v in _launcher._fast.items())


def _torch_with_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@gpu_only
def test_torch_cuda_tensors_are_used_in_place():
    torch = _torch_with_cuda()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    xt = torch.as_tensor(x, device="cuda")
    y, saved = F.batch_norm(xt, None, None, training=True)
    _close(y.copy_to_host(), R.batch_norm(x, None, None, training=True)[0], np.float32)
    yt = torch.as_tensor(y, device="cuda")  # numba device arrays expose __cuda_array_interface__
    torch.testing.assert_close(yt, torch.nn.functional.batch_norm(xt, None, None, training=True),
                               rtol=1e-5, atol=1e-5)


@gpu_only
def test_torch_channels_last_tensors_are_read_in_place():
    torch = _torch_with_cuda()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 6, 5, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.as_tensor(x, device="cuda").to(memory_format=torch.channels_last)
    dyt = torch.as_tensor(dy, device="cuda").to(memory_format=torch.channels_last)
    assert not xt.is_contiguous()
    y, saved = F.batch_norm(xt, None, None, training=True)
    y_ref, saved_ref = R.batch_norm(x, None, None, training=True)
    _close(y.copy_to_host(), y_ref, np.float32)
    yt = torch.as_tensor(y, device="cuda")
    assert yt.is_contiguous(memory_format=torch.channels_last)  # PyTorch's memory format kept
    dx = F.batch_norm_backward(dyt, saved)[0]
    assert tuple(dx.strides) == tuple(4 * s for s in xt.stride())
    _close(dx.copy_to_host(), R.batch_norm_backward(dy, saved_ref)[0], np.float32, 10)
