"""Numba LayerNorm kernels against the NumPy reference."""

import numpy as np
import pytest

from normkit import functional as F
from normkit import reference as R

from .conftest import assert_close, at_line_offset
from .gradcheck import check_layer_norm_gradients

DTYPES = [np.float32, np.float64]
CASES = [((64, 10), 10), ((2, 3), 3), ((37, 1), 1), ((5, 7, 3), 3), ((4, 6, 41), (6, 41)),
         ((3, 5, 7, 11), (7, 11)), ((2, 3, 4, 5), (3, 4, 5)), ((11,), 11), ((300, 517), 517),
         ((17, 2), 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", CASES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_forward_backward_match_reference(rng, kernel_build, shape, ns, dtype, affine):
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    nshape = (ns,) if isinstance(ns, int) else ns
    w = rng.standard_normal(nshape).astype(dtype) if affine != "none" else None
    b = rng.standard_normal(nshape).astype(dtype) if affine == "both" else None
    yk, sk = F.layer_norm(x, ns, w, b, backend="numba")
    yr, sr = R.layer_norm(x, ns, w, b)
    assert yk.dtype == x.dtype and yk.shape == x.shape
    assert_close(yk, yr, dtype, what="y")
    dy = rng.standard_normal(shape).astype(dtype)
    dk, dr = F.layer_norm_backward(dy, sk), R.layer_norm_backward(dy, sr)
    rows = x.size // int(np.prod(nshape))
    for name, got, want, scale in zip(("dx", "dweight", "dbias"), dk, dr, (1, np.sqrt(rows), np.sqrt(rows))):
        if want is None:
            assert got is None, name
        else:
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert_close(got, want, dtype, scale=scale, what=name)


@pytest.mark.parametrize("x_dtype,dy_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("shape,ns", [((64, 10), 10), ((4, 6, 41), (6, 41)), ((300, 517), 517)])
def test_dy_of_the_other_float_dtype(rng, kernel_build, shape, ns, x_dtype, dy_dtype):
    """A float64 upstream gradient for a float32 forward (or the reverse) gives x's dtype back."""
    x = (rng.standard_normal(shape) * 3 + 2).astype(x_dtype)
    nshape = (ns,) if isinstance(ns, int) else ns
    w, b = (rng.standard_normal(nshape).astype(x_dtype) for _ in range(2))
    (_, sk), (_, sr) = F.layer_norm(x, ns, w, b), R.layer_norm(x, ns, w, b)
    dy = rng.standard_normal(shape).astype(dy_dtype)
    dk, dr = F.layer_norm_backward(dy, sk), R.layer_norm_backward(dy, sr)
    assert [g.dtype for g in dk] == [np.dtype(x_dtype)] * 3
    rows = x.size // int(np.prod(nshape))
    for name, got, want, scale in zip(("dx", "dweight", "dbias"), dk, dr, (1, np.sqrt(rows), np.sqrt(rows))):
        assert_close(got, want, np.float32, scale=scale, what=name)


@pytest.mark.parametrize("shape,ns", [((5, 6), 6), ((2, 3, 4), (3, 4)), ((4, 1), 1)])
def test_kernel_gradients_by_finite_differences(rng, kernel_build, shape, ns):
    check_layer_norm_gradients(F, rng, shape, ns)


@pytest.mark.parametrize("make_view", [lambda a: a.T, lambda a: a[:, 5:30], lambda a: a[::3], lambda a: a[::-1, ::-1]])
def test_non_contiguous_and_read_only_inputs(rng, kernel_build, make_view):
    x = make_view(rng.standard_normal((40, 40)).astype(np.float32) + 3)
    x.flags.writeable = False
    d = x.shape[-1]
    yk, sk = F.layer_norm(x, d)
    yr, sr = R.layer_norm(x, d)
    assert_close(yk, yr, np.float32)
    dy = make_view(rng.standard_normal((40, 40)).astype(np.float32))
    assert_close(F.layer_norm_backward(dy, sk)[0], R.layer_norm_backward(dy, sr)[0], np.float32)


def test_row_slices_are_read_in_place(rng):
    base = rng.standard_normal((50, 64))
    _, saved = F.layer_norm(base[::2, :32], 32)
    assert np.shares_memory(saved.x, base)


@pytest.mark.parametrize("shift", [1e4, 1e6])
def test_large_mean_float32_is_exact(rng, kernel_build, shift):
    x = (rng.standard_normal((512, 256)) + shift).astype(np.float32)
    y, saved = F.layer_norm(x, 256)
    exact, s64 = R.layer_norm(x.astype(np.float64), 256)
    assert np.abs(y - exact).max() < 1e-5
    # Tighter, the README's claim: within about one float32 ulp of the output, whatever the mean.
    assert np.abs(y - exact).max() <= 2.5 * np.spacing(np.float32(np.abs(exact).max()))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx_exact = R.layer_norm_backward(dy.astype(np.float64), s64)[0]
    assert np.abs(F.layer_norm_backward(dy, saved)[0] - dx_exact).max() < 1e-5 * np.abs(dx_exact).max()


def test_constant_rows_and_tiny_variance(rng, kernel_build):
    x = np.full((8, 16), -2.0, dtype=np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    y, saved = F.layer_norm(x, 16, None, b)
    np.testing.assert_allclose(y, np.broadcast_to(b, x.shape))
    grads = F.layer_norm_backward(rng.standard_normal(x.shape).astype(np.float32), saved)
    assert np.isfinite(grads[0]).all() and np.isfinite(grads[2]).all()
    tiny = (rng.standard_normal((64, 128)) * 1e-4 + 3).astype(np.float32)
    yk, _ = F.layer_norm(tiny, 128, eps=1e-12)
    yr, _ = R.layer_norm(tiny, 128, eps=1e-12)
    np.testing.assert_allclose(yk, yr, atol=2e-5)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data(),
       seed=st.integers(0, 2**32 - 1), transpose=st.booleans())
def test_any_shape_and_memory_order_matches_reference(shape, data, seed, transpose):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-100, 100)
    if transpose:
        x = x.T
    k = data.draw(st.integers(1, x.ndim))
    ns = x.shape[x.ndim - k:]
    w = rng.standard_normal(ns)
    y, saved = F.layer_norm(x, ns, w)
    yr, sr = R.layer_norm(x, ns, w)
    np.testing.assert_allclose(y, yr, atol=1e-9)
    dy = rng.standard_normal(x.shape)
    for got, want in zip(F.layer_norm_backward(dy, saved), R.layer_norm_backward(dy, sr)):
        if want is not None:
            np.testing.assert_allclose(got, want, atol=1e-8)


def test_results_do_not_depend_on_the_thread_count(rng, monkeypatch):
    """Rows are split into tasks by shape, not by thread count: bit-identical results."""
    import numba

    import normkit

    from normkit import config
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.fail("needs a machine with at least 2 cores (CI machines have 2)")
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    for shape in [(37, 300), (1000, 64), (8, 5000)]:
        x = (rng.standard_normal(shape) + 3).astype(np.float32)
        w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
        dy = rng.standard_normal(shape).astype(np.float32)
        results = []
        for threads in (1, 2):
            normkit.set_num_threads(threads)
            try:
                y, saved = F.layer_norm(x, shape[1], w, b)
                results.append((y, saved.mean, saved.rstd, *F.layer_norm_backward(dy, saved)))
            finally:
                normkit.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        for got, want in zip(*results):
            assert np.array_equal(got, want), shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_passes_read_weight_and_bias_placed_like_their_output(rng, monkeypatch, dtype):
    """From PLACED_VECTORS_MIN_BYTES, the kernels read weight and bias from copies that start
    where the output does in its line (_memory.line_placed); below, as given. Same results."""
    from normkit.kernels.cpu import layernorm as ln_cpu
    seen = []
    # where each kernel takes its output and the vectors read beside it
    positions = {"_forward": (4, (1, 2)), "_backward": (5, (4,))}
    for name, (out_at, vectors_at) in positions.items():
        def recorded(*args, _kernel=getattr(ln_cpu, name), _out=out_at, _vectors=vectors_at,
                     **kwargs):
            seen.append(([args[i].ctypes.data % 64 for i in _vectors], args[_out].ctypes.data % 64))
            return _kernel(*args, **kwargs)
        monkeypatch.setattr(ln_cpu, name, recorded)
    x = rng.standard_normal((64, 100)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = (at_line_offset(rng.standard_normal(100), 16) for _ in range(2))
    results = []
    for min_bytes in (1 << 40, 0):
        monkeypatch.setattr(ln_cpu, "PLACED_VECTORS_MIN_BYTES", min_bytes)
        y, dx = (at_line_offset(np.empty_like(x), 32) for _ in range(2))
        mean, rstd = ln_cpu.forward(x, w, b, 1e-5, y)
        results.append((y, dx, *ln_cpu.backward(dy, x, mean, rstd, w, dx)))
    if dtype == np.float64:  # (float32 copies of the forward's vectors go where NumPy puts them)
        assert seen[0] == ([16, 16], 32)
    assert seen[1:] == [([16], 32), ([32, 32], 32), ([32], 32)]
    for plain, placed in zip(*results):
        np.testing.assert_array_equal(placed, plain)
