"""Host side of the CUDA backend: input checks, device transfers, launch geometry.

Inputs may be NumPy arrays (copied to the device, results copied back) or device arrays: numba
device arrays or anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), used in
place, with results left on the device as numba device arrays. Device inputs must be
C-contiguous (a host input of any layout is made contiguous on its way to the device).

Per call the host does as little as it can, because numba-cuda's host costs (tens of us per
launch, allocation and copy) rival a whole kernel: outputs and scratch arrays come from
:mod:`._pool`, launches go through :mod:`._launcher`, per-channel arithmetic (merging block
partials, coefficients) runs in small device kernels, and only what must reach the host (running
statistics, parameter gradients) is copied back, once, after the last launch.
"""

import functools
import math

import numpy as np
from numba import cuda

from ... import _checks
from ..._backend import is_device_array, is_numba_device_array
from ..._running import update_running_stats
from ..._saved import BatchNormSaved, LayerNormSaved, param_dtype
from ..cpu.batchnorm import RUN_MIN
from . import _pool
from . import simulator as _simulator
from . import batchnorm as bn
from . import layernorm as ln
from ._launcher import Shaped, launch
from ._reduce import BLOCK


def _min_row_log2():
    """log2 of the fewest threads along a row: a warp on a GPU (the shuffle reductions need
    whole warps in a row); 4 under the simulator, which has no warps and runs every CUDA thread
    as an OS thread, each barrier costing milliseconds."""
    return 2 if _simulator() else 5


@functools.lru_cache(maxsize=None)
def _geometry():
    """(threads per 1-D block, (x, y) of 2-D reduction blocks, target number of blocks).

    Read once: it only sizes grids (every kernel loops over what its grid does not cover), so
    another device in the same process is still computed correctly."""
    if _simulator():  # one OS thread per CUDA thread: keep blocks small, but of several rows
        return 64, (32, 2), 2
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


# A host-to-device copy costs ~130 us of host time with numba-cuda (measured on an H200), more
# than the kernels themselves below ~100 MB. So per-channel vectors travel stacked in one array,
# and stacks already sent (the same weights, call after call in inference) are reused: the last
# few are kept with their vectors' bytes, compared byte for byte (hashing 8192 channels' bytes
# took ~40 us a vector; a comparison runs at memory speed and cannot collide).
_vector_cache = []   # (key: the vectors' dtypes and bytes, device stack), newest last
_VECTOR_CACHE_SIZE = 16


def vectors_to_device(ctx, *vectors, dtype=np.float64):
    """One (k, n) device array (of ``dtype``, in context ``ctx``) holding the k host vectors,
    sent once and cached.

    A vector may be ``("ones", n)`` or ``("zeros", n)``, standing for that constant vector."""
    key = (_pool.device_id(ctx), np.dtype(dtype).str) + tuple(
        v if isinstance(v, tuple) else (v.dtype.str, v.tobytes()) for v in vectors)
    for i in range(len(_vector_cache) - 1, -1, -1):
        if _vector_cache[i][0] == key:
            return _vector_cache[i][1]
    rows = [np.full(v[1], 1.0 if v[0] == "ones" else 0.0) if isinstance(v, tuple) else v for v in vectors]
    if len(_vector_cache) >= _VECTOR_CACHE_SIZE:
        _vector_cache.pop(0)  # oldest first
    device = cuda.to_device(np.ascontiguousarray(np.stack(rows), dtype=dtype))
    _vector_cache.append((key, device))
    return device


def _affine_params(ctx, weight, bias, n, dtype=np.float64):
    """Device rows (weight, bias), ones and zeros standing in for absent parameters."""
    return vectors_to_device(ctx, ("ones", n) if weight is None else weight,
                             ("zeros", n) if bias is None else bias, dtype=dtype)


def _row_params_dtype(x_dtype, user_param_dtype):
    """float32 parameter rows for float32 input when the user's parameters are float32 too (or
    absent): exact, and half the bytes every row re-reads (the kernels compute in float64
    either way); float64 otherwise."""
    if np.dtype(x_dtype) == np.float32 and user_param_dtype in (None, np.dtype(np.float32)):
        return np.float32
    return np.float64


def _elementwise_geometry(n_rows, n_cols, threads, target):
    """(grid, block) of the 2-D elementwise kernels: threads along the columns (a power of two
    up to ``threads`` that covers short rows), the rest of the block along the rows; at most
    4 x ``target`` blocks, which loop over the rest (four rows at a time)."""
    tx = min(threads, 1 << max(_min_row_log2(), math.ceil(math.log2(n_cols))))
    ty = threads // tx
    gx = min(math.ceil(n_cols / tx), 4 * target)
    gy = min(math.ceil(n_rows / ty), 65535, max(1, 4 * target // gx))
    return (gx, gy), (tx, ty)


# ------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------

class _BatchNormShape:
    """An (outer, C, inner) input and how the kernels see it."""

    def __init__(self, shape, axis):
        self.n_outer = math.prod(shape[:axis])
        self.n_ch = shape[axis]
        self.n_inner = math.prod(shape[axis + 1:])
        self.wide = self.n_inner < RUN_MIN
        self.x3 = (self.n_outer, self.n_ch, self.n_inner)
        if self.wide:  # rows of C * inner columns; column l is channel l // inner
            self.x2 = (self.n_outer, self.n_ch * self.n_inner)
        else:          # rows of one inner run each; row r is channel r % C
            self.x2 = (self.n_outer * self.n_ch, self.n_inner)

    def elementwise(self, wide_kernel, runs_kernel, threads, target, *args):
        """Launch an elementwise kernel; ``args``: device arrays of this shape, then the
        coefficients, then the output (which must be an array of this shape too)."""
        grid, block = _elementwise_geometry(*self.x2, threads, target)
        *inputs, coef, out = args
        views = [Shaped(a, self.x2) for a in inputs]
        if self.wide:
            launch(wide_kernel, grid, block, *views, coef, self.n_inner, Shaped(out, self.x2))
        else:
            launch(runs_kernel, grid, block, *views, coef, Shaped(out, self.x2))

    def partials(self, ctx, target, threads, block2d, run_kernel, wide_kernel, inputs, extra=()):
        """Launch a partial-sums kernel on ``inputs`` (device arrays of this shape) and the
        ``extra`` arguments; returns the (2P, columns) float64 partials it fills."""
        if self.wide:
            n_cols = self.x2[1]
            col_blocks = math.ceil(n_cols / block2d[0])
            parts = max(1, min(math.ceil(self.n_outer / block2d[1]), target // col_blocks + 1))
            partials = _pool.scratch("bn partials", (2 * parts, n_cols), np.float64, ctx)
            launch(wide_kernel, (col_blocks, parts), block2d, *(Shaped(a, self.x2) for a in inputs),
                   *extra, self.n_inner, partials)
        else:
            seg_len = threads * 4
            items = self.n_outer * math.ceil(self.n_inner / seg_len)
            parts = max(1, min(items, target // self.n_ch + 1))
            partials = _pool.scratch("bn partials", (2 * parts, self.n_ch), np.float64, ctx)
            launch(run_kernel, (self.n_ch, parts), (threads,), *(Shaped(a, self.x3) for a in inputs),
                   *extra, seg_len, partials)
        return partials


def _channel_grid(n_ch):
    """(grid, block) of the per-channel kernels: a warp per channel (under the simulator, which
    runs each CUDA thread as an OS thread and has no warps, four threads per channel)."""
    block = (4, 4) if _simulator() else bn.FINALIZE_BLOCK
    return (math.ceil(n_ch / block[1]),), block


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
    geo = _BatchNormShape(tuple(xd.shape), axis)
    ctx = _pool.current_context()
    if training:
        # stats rows: mean, biased variance, rstd; coef rows: mean, scale, shift
        stats = _pool.empty((3, n_ch), np.float64, ctx)
        coef = _pool.scratch("bn coef", (3, n_ch), np.float64, ctx)
        partials = geo.partials(ctx, target, threads, block2d, bn.runs_shifted_sums_kernel,
                                bn.wide_shifted_sums_kernel, (xd,))
        launch(bn.finalize_stats_kernel, *_channel_grid(n_ch), partials, Shaped(xd, geo.x3),
               float(count), float(args.eps), _affine_params(ctx, w, b, n_ch), coef, stats)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
        rstd, scale, shift = args.coefficients(var)
        stats = vectors_to_device(ctx, mean, var, rstd)
        coef = vectors_to_device(ctx, mean, scale, shift)
    yd = _pool.empty(xd.shape, xd.dtype, ctx)
    geo.elementwise(bn.affine_wide_kernel, bn.affine_runs_kernel, threads, target, xd, coef, yd)
    updated = False
    if training and running_mean is not None:
        host_stats = stats.copy_to_host()  # after the last launch: the copy waits for them all
        updated = update_running_stats(running_mean, running_var, host_stats[0], host_stats[1],
                                       count, args.momentum, num_batches_tracked, op)
    saved = BatchNormSaved(
        backend="cuda", x=xd, x_shape=tuple(xd.shape), axis=axis, mean=stats, rstd=None, weight=w,
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
    geo = _BatchNormShape(saved.x_shape, saved.axis)
    ctx = _pool.current_context()
    n_ch = geo.n_ch
    stats = saved.mean  # the device (3, C) array of mean, variance, rstd
    partials = geo.partials(ctx, target, threads, block2d, bn.runs_grad_sums_kernel,
                            bn.wide_grad_sums_kernel, (dyd, saved.x), (stats,))
    coef = _pool.scratch("bn grad coef", (4, n_ch), np.float64, ctx)  # rows: mean, k, a, b
    sums = _pool.scratch("bn grad sums", (2, n_ch), np.float64, ctx)  # rows: dbias, dweight
    launch(bn.finalize_grads_kernel, *_channel_grid(n_ch), partials, stats,
           _affine_params(ctx, saved.weight, None, n_ch), 1.0 / saved.count, int(saved.batch_stats),
           coef, sums)
    dxd = _pool.empty(saved.x_shape, saved.x.dtype, ctx)
    geo.elementwise(bn.grad_input_wide_kernel, bn.grad_input_runs_kernel, threads, target,
                    dyd, saved.x, coef, dxd)
    dweight = dbias = None
    if saved.weight is not None or saved.has_bias:
        host_sums = sums.copy_to_host()
        if saved.weight is not None:
            dweight = host_sums[1].astype(saved.param_dtype)
        if saved.has_bias:
            dbias = host_sums[0].astype(saved.param_dtype)
    return _result(dxd, saved.host_io), dweight, dbias


# ------------------------------------------------------------------------------------------------
# LayerNorm
# ------------------------------------------------------------------------------------------------

def _row_geometry(n_rows, n_cols, threads, target, values_per_thread):
    """(grid, block) of the row kernels: ``blockDim.x`` threads per row, a power of two from a
    warp up, about ``values_per_thread`` values each (measured on an H200, 65536 x 1024: a warp
    per row ran the forward in 0.22 ms, 128 threads in 0.31, 256 in 0.47; the backward was
    fastest with 64), but more when there are too few rows to fill the GPU; and as many rows
    per block as fill ``threads``."""
    log2 = max(_min_row_log2(), math.ceil(math.log2(max(1, n_cols / values_per_thread))))
    while (1 << log2) < threads and n_rows << log2 < target * 64:
        log2 += 1
    tx = min(threads, 1 << log2)
    ty = max(1, threads // tx)
    return (max(1, min(math.ceil(n_rows / ty), target * 8)),), (tx, ty)


def layer_norm(x, normalized_shape, weight, bias, eps):
    """The CUDA twin of :func:`normkit.functional.layer_norm`."""
    op = "layer_norm"
    xd, on_host = to_device(x, op)
    args = _checks.LayerNormArgs(tuple(xd.shape), normalized_shape, weight, bias, eps)
    shape, w, b, n_cols = args.normalized_shape, args.weight, args.bias, args.cols
    rows2 = (xd.size // n_cols, n_cols)
    threads, _, target = _geometry()
    ctx = _pool.current_context()
    yd = _pool.empty(xd.shape, xd.dtype, ctx)
    stats = _pool.empty((2, rows2[0]), np.float64, ctx)  # rows: mean, rstd
    params = _affine_params(ctx, w, b, n_cols, _row_params_dtype(xd.dtype, param_dtype(weight, bias)))
    launch(ln.forward_kernel, *_row_geometry(*rows2, threads, target, 32), Shaped(xd, rows2), params,
           float(args.eps), Shaped(yd, rows2), stats)
    saved = LayerNormSaved(
        backend="cuda", x=xd, x_shape=tuple(xd.shape), normalized_shape=shape, mean=stats, rstd=None,
        weight=w, has_bias=b is not None, param_dtype=param_dtype(weight, bias), host_io=on_host)
    return _result(yd, on_host), saved


def layer_norm_backward(dy, saved):
    """The CUDA twin of :func:`normkit.functional.layer_norm_backward`."""
    op = "layer_norm_backward"
    dyd, _ = to_device(dy, op, "dy")
    if tuple(dyd.shape) != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {tuple(dyd.shape)} but the forward's input had shape {saved.x_shape}")
    n_cols = math.prod(saved.normalized_shape)
    rows2 = (saved.x.size // n_cols, n_cols)
    n_rows = rows2[0]
    threads, block2d, target = _geometry()
    stats = saved.mean  # the device (2, rows) array of mean and rstd
    x2, dy2 = Shaped(saved.x, rows2), Shaped(dyd, rows2)
    ctx = _pool.current_context()
    dxd = _pool.empty(saved.x_shape, saved.x.dtype, ctx)
    params = _affine_params(ctx, saved.weight, None, n_cols,
                            _row_params_dtype(saved.x.dtype, saved.param_dtype))
    launch(ln.backward_dx_kernel, *_row_geometry(*rows2, threads, target, 16), dy2, x2, stats, params,
           Shaped(dxd, rows2))
    dweight = dbias = None
    if saved.weight is not None or saved.has_bias:
        col_blocks = math.ceil(n_cols / block2d[0])
        row_blocks = max(1, min(math.ceil(n_rows / block2d[1]), target // col_blocks + 1))
        partials = _pool.scratch("ln partials", (2 * row_blocks, n_cols), np.float64, ctx)
        launch(ln.param_grad_kernel, (col_blocks, row_blocks), block2d, dy2, x2, stats, partials)
        sums = _pool.scratch("ln sums", (2, n_cols), np.float64, ctx)
        launch(ln.sum_partials_kernel, *_channel_grid(n_cols), partials, sums)
        host_sums = sums.copy_to_host()
        if saved.weight is not None:
            dweight = host_sums[0].reshape(saved.normalized_shape).astype(saved.param_dtype)
        if saved.has_bias:
            dbias = host_sums[1].reshape(saved.normalized_shape).astype(saved.param_dtype)
    return _result(dxd, saved.host_io), dweight, dbias
