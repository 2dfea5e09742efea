"""Host side of the CUDA backend: input checks, device transfers, launch geometry, and the
per-channel arithmetic (merging block partials, running statistics) done on the host in float64.

Inputs may be NumPy arrays (copied to the device, results copied back) or device arrays: numba
device arrays or anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), used in
place, with results left on the device as numba device arrays. Device inputs must be
C-contiguous (a host input of any layout is made contiguous on its way to the device).
"""

import hashlib
import math

import numpy as np
from numba import cuda

from ... import _checks
from ..._backend import is_device_array, is_numba_device_array
from ..._running import update_running_stats
from ..._saved import BatchNormSaved, LayerNormSaved, param_dtype
from ..cpu.batchnorm import RUN_MIN, combine_moments, moments_from_partials
from . import batchnorm as bn
from . import layernorm as ln
from ._reduce import BLOCK


def _simulator():
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def _geometry():
    """(threads per 1-D block, (x, y) of 2-D blocks, target number of blocks)."""
    if _simulator():  # one OS thread per CUDA thread: keep blocks tiny
        return 32, (32, 2), 4
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    return BLOCK, (bn.WIDE_X, bn.WIDE_Y), sms * 8


def to_device(x, op, name="x"):
    """(device array, came_from_host) for a float32/float64 input; clear errors otherwise."""
    if is_device_array(x):
        d = x if is_numba_device_array(x) else cuda.as_cuda_array(x)  # zero-copy view
        if np.dtype(d.dtype) not in _checks.FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a float32 or float64 array, got dtype {d.dtype}")
        if d.size == 0:
            raise ValueError(f"{op}: {name} is empty (shape {d.shape})")
        if not d.is_c_contiguous():
            raise ValueError(f"{op}: device array {name} must be C-contiguous (copy it first)")
        return d, False
    host = _checks.float_array(x, op, name)
    return cuda.to_device(np.ascontiguousarray(host)), True


def _result(d, on_host):
    return d.copy_to_host() if on_host else d


# Every host<->device copy and every allocation costs ~0.1-0.2 ms of host time with numba-cuda
# (measured on an H100), more than the kernels themselves below ~100 MB. So per-channel vectors
# travel stacked in one array, and stacks already sent (the same weights, call after call in
# inference) are reused from a small cache keyed by their bytes.
_vector_cache = {}
_VECTOR_CACHE_SIZE = 32


def vectors_to_device(*vectors):
    """One (k, n) float64 device array holding the k host vectors, sent once and cached."""
    stacked = np.ascontiguousarray(np.stack(vectors), dtype=np.float64)
    key = (stacked.shape, hashlib.blake2b(stacked.tobytes(), digest_size=16).digest())
    d = _vector_cache.get(key)
    if d is None:
        if len(_vector_cache) >= _VECTOR_CACHE_SIZE:
            _vector_cache.pop(next(iter(_vector_cache)))  # oldest first
        d = _vector_cache[key] = cuda.to_device(stacked)
    return d


def _grid_1d(n, threads, target):
    return max(1, min(math.ceil(n / threads), target * 4))


# ------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------

def _partials_shape(x3, block2d, target, threads):
    """(layout, P, columns): how many blocks along the reduction and how many columns."""
    n_outer, n_ch, n_inner = x3.shape
    if n_inner >= RUN_MIN:
        return "runs", max(1, min(target // n_ch + 1, math.ceil(n_outer * n_inner / (threads * 8)))), n_ch
    n_cols = n_ch * n_inner
    col_blocks = math.ceil(n_cols / block2d[0])
    return "wide", max(1, min(math.ceil(n_outer / block2d[1]), target // col_blocks + 1)), n_cols


def _bn_stats(x3, threads, block2d, target):
    """Per-channel mean and biased variance (float64, host) of a device (O, C, I) array."""
    n_outer, n_ch, n_inner = x3.shape
    layout, parts, _ = _partials_shape(x3, block2d, target, threads)
    partials = cuda.device_array((2 * parts + 1, n_ch if layout == "runs" else n_ch * n_inner))
    if layout == "runs":
        bn.runs_shifted_sums_kernel[(n_ch, parts), threads](x3, partials)
        count = n_outer * n_inner
    else:
        x2 = x3.reshape(n_outer, n_ch * n_inner)
        bn.wide_shifted_sums_kernel[(math.ceil(x2.shape[1] / block2d[0]), parts), block2d](x2, partials)
        count = n_outer
    p = partials.copy_to_host()
    mean, var = moments_from_partials(p[2 * parts], p[:parts], p[parts:2 * parts], float(count))
    if layout == "wide" and n_inner > 1:  # the columns of one channel are equal-sized parts of it
        mean, var = combine_moments(np.full(n_inner, float(n_outer)), mean.reshape(-1, n_inner).T,
                                    var.reshape(-1, n_inner).T)
    return mean, var


def _bn_grad_sums(dy3, x3, mean, threads, block2d, target):
    """Per channel: sum(dy) and sum(dy * (x - mean)), float64 on the host."""
    n_outer, n_ch, n_inner = x3.shape
    layout, parts, n_cols = _partials_shape(x3, block2d, target, threads)
    partials = cuda.device_array((2 * parts, n_cols))
    if layout == "runs":
        bn.runs_grad_sums_kernel[(n_ch, parts), threads](dy3, x3, vectors_to_device(mean)[0], partials)
    else:
        x2, dy2 = x3.reshape(n_outer, n_cols), dy3.reshape(n_outer, n_cols)
        bn.wide_grad_sums_kernel[(math.ceil(n_cols / block2d[0]), parts), block2d](
            dy2, x2, vectors_to_device(np.repeat(mean, n_inner))[0], partials)
    p = partials.copy_to_host()
    s1, s2 = p[:parts].sum(axis=0), p[parts:].sum(axis=0)
    if layout == "wide" and n_inner > 1:
        s1, s2 = s1.reshape(n_ch, n_inner).sum(axis=1), s2.reshape(n_ch, n_inner).sum(axis=1)
    return s1, s2


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *, axis,
               num_batches_tracked=None):
    """The CUDA twin of :func:`normkit.functional.batch_norm` (same checks, same results)."""
    op = "batch_norm"
    xd, on_host = to_device(x, op)
    args = _checks.BatchNormArgs(tuple(xd.shape), axis, weight, bias, running_mean, running_var,
                                 training, momentum, eps, num_batches_tracked)
    axis, n_ch, count, w, b = args.axis, args.channels, args.count, args.weight, args.bias
    running_mean, running_var = args.running_mean, args.running_var

    threads, block2d, target = _geometry()
    n_outer = math.prod(xd.shape[:axis])
    n_inner = math.prod(xd.shape[axis + 1:])
    x3 = xd.reshape(n_outer, n_ch, n_inner)
    updated = False
    if training:
        mean, var = _bn_stats(x3, threads, block2d, target)
        if running_mean is not None:
            updated = update_running_stats(running_mean, running_var, mean, var, count,
                                           args.momentum, num_batches_tracked, op)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    rstd, scale, shift = args.coefficients(var)
    yd = cuda.device_array(xd.shape, xd.dtype)
    flat_x, flat_y = xd.reshape(xd.size), yd.reshape(xd.size)
    bn.affine_kernel[_grid_1d(xd.size, threads, target), threads](
        flat_x, vectors_to_device(mean, scale, shift), flat_y, n_inner)
    saved = BatchNormSaved(
        backend="cuda", x=x3, x_shape=tuple(xd.shape), axis=axis, mean=mean, rstd=rstd, weight=w,
        has_bias=b is not None, param_dtype=param_dtype(weight, bias), batch_stats=bool(training),
        count=count, running_stats_updated=updated, host_io=on_host)
    return _result(yd, on_host), saved


def batch_norm_backward(dy, saved):
    """The CUDA twin of :func:`normkit.functional.batch_norm_backward`."""
    op = "batch_norm_backward"
    dyd, _ = to_device(dy, op, "dy")
    if tuple(dyd.shape) != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {tuple(dyd.shape)} but the forward's input had shape {saved.x_shape}")
    threads, block2d, target = _geometry()
    x3, mean, rstd = saved.x, saved.mean, saved.rstd
    dy3 = dyd.reshape(x3.shape)
    n_ch = mean.shape[0]
    if saved.batch_stats or saved.weight is not None or saved.has_bias:
        sum_dy, sum_dy_xc = _bn_grad_sums(dy3, x3, mean, threads, block2d, target)
    scale = rstd if saved.weight is None else rstd * saved.weight
    if saved.batch_stats:
        a = sum_dy / saved.count
        b = sum_dy_xc * (rstd * rstd / saved.count)
    else:
        a = b = np.zeros(n_ch)
    dxd = cuda.device_array(saved.x_shape, x3.dtype)
    n = dxd.size
    bn.grad_input_kernel[_grid_1d(n, threads, target), threads](
        dyd.reshape(n), x3.reshape(n), vectors_to_device(mean, scale, a, b), dxd.reshape(n), x3.shape[2])
    dweight = None if saved.weight is None else (sum_dy_xc * rstd).astype(saved.param_dtype)
    dbias = sum_dy.astype(saved.param_dtype) if saved.has_bias else None
    return _result(dxd, saved.host_io), dweight, dbias


# ------------------------------------------------------------------------------------------------
# LayerNorm
# ------------------------------------------------------------------------------------------------

def _row_threads(n_cols, threads):
    """Threads per row: about eight values each, a power of two, from a warp to 128 (128 measured
    faster than 256 for 1024-wide rows on an H100)."""
    want = 1 << max(5, math.ceil(math.log2(max(1, n_cols // 8))))
    return min(threads, want, 128)


def layer_norm(x, normalized_shape, weight, bias, eps):
    """The CUDA twin of :func:`normkit.functional.layer_norm`."""
    op = "layer_norm"
    xd, on_host = to_device(x, op)
    args = _checks.LayerNormArgs(tuple(xd.shape), normalized_shape, weight, bias, eps)
    shape, eps, w, b, n_cols = args.normalized_shape, args.eps, args.weight, args.bias, args.cols
    x2 = xd.reshape(xd.size // n_cols, n_cols)
    threads, _, target = _geometry()
    yd = cuda.device_array(xd.shape, xd.dtype)
    stats = cuda.device_array((2, x2.shape[0]))  # rows: mean, rstd
    params = vectors_to_device(np.ones(n_cols) if w is None else w, np.zeros(n_cols) if b is None else b)
    ln.forward_kernel[min(x2.shape[0], target * 8), _row_threads(n_cols, threads)](
        x2, params, eps, yd.reshape(x2.shape), stats)
    saved = LayerNormSaved(
        backend="cuda", x=x2, x_shape=tuple(xd.shape), normalized_shape=shape, mean=stats, rstd=None,
        weight=w, has_bias=b is not None, param_dtype=param_dtype(weight, bias), host_io=on_host)
    return _result(yd, on_host), saved


def layer_norm_backward(dy, saved):
    """The CUDA twin of :func:`normkit.functional.layer_norm_backward`."""
    op = "layer_norm_backward"
    dyd, _ = to_device(dy, op, "dy")
    if tuple(dyd.shape) != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {tuple(dyd.shape)} but the forward's input had shape {saved.x_shape}")
    x2 = saved.x
    n_rows, n_cols = x2.shape
    dy2 = dyd.reshape(x2.shape)
    threads, block2d, target = _geometry()
    stats = saved.mean  # the device (2, rows) array of mean and rstd
    params = vectors_to_device(np.ones(n_cols) if saved.weight is None else saved.weight)
    dxd = cuda.device_array(saved.x_shape, x2.dtype)
    ln.backward_dx_kernel[min(n_rows, target * 8), _row_threads(n_cols, threads)](
        dy2, x2, stats, params, dxd.reshape(x2.shape))
    dweight = dbias = None
    if saved.weight is not None or saved.has_bias:
        col_blocks = math.ceil(n_cols / block2d[0])
        row_blocks = max(1, min(math.ceil(n_rows / block2d[1]), target // col_blocks + 1))
        partials = cuda.device_array((2 * row_blocks, n_cols))
        ln.param_grad_kernel[(col_blocks, row_blocks), block2d](dy2, x2, stats, partials)
        p = partials.copy_to_host()
        if saved.weight is not None:
            dweight = p[:row_blocks].sum(axis=0).reshape(saved.normalized_shape).astype(saved.param_dtype)
        if saved.has_bias:
            dbias = p[row_blocks:].sum(axis=0).reshape(saved.normalized_shape).astype(saved.param_dtype)
    return _result(dxd, saved.host_io), dweight, dbias
