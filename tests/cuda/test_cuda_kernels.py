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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((7, 5), 1), ((3, 4, 37), 1), ((2, 3, 3, 5), -1), ((5, 9), 0),
                                        ((4, 3, 5), 1), ((2, 33), 1)])
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
@pytest.mark.parametrize("shape,ns", [((6, 5), 5), ((3, 4, 37), (4, 37)), ((2, 70), 70), ((3, 1), 1)])
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
        y = y.copy_to_host() if hasattr(y, "copy_to_host") else y
        _close(y, ref(x), np.float32)
        dx = layer.backward(dy if isinstance(inp, np.ndarray) else cuda.to_device(dy))
        dx = dx.copy_to_host() if hasattr(dx, "copy_to_host") else dx
        _close(dx, ref.backward(dy), np.float32)
        _close(layer.weight.grad, ref.weight.grad, np.float32, 10)
    np.testing.assert_allclose(bn.running_var, bn_ref.running_var, rtol=1e-6)
    assert bn.num_batches_tracked == 1


def test_errors_are_the_cpu_ones():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.ones((1, 3), np.float32), None, None, training=True, backend="cuda")
    with pytest.raises(TypeError, match="int64"):
        F.batch_norm(cuda.to_device(np.ones((4, 3), np.int64)), None, None, training=True)
    with pytest.raises(ValueError, match="trailing dimensions"):
        F.layer_norm(np.ones((4, 3), np.float32), 4, backend="cuda")
