"""Host side of the CUDA backend: input checks, device transfers, launch geometry.

Inputs may be NumPy arrays (copied to the device, results copied back) or device arrays: numba
device arrays or anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), used in
place, with results left on the device as numba device arrays. Inputs of any layout are
accepted, and the kernels read C-contiguous arrays: BatchNorm puts the axes in memory order
first, as the CPU path does, so that a dense input with permuted axes (channels-last,
transposed) is read in place and its results come back in its memory order; any other layout is
copied (a host input on its way to the device, a device input by a kernel, :mod:`._strided`).

Per call the host does as little as it can, because numba-cuda's host costs (tens of us per
launch, allocation and copy) rival a whole kernel: outputs and scratch arrays come from
:mod:`._pool`, launches go through :mod:`._launcher`, per-channel arithmetic (merging block
partials, coefficients, the running update) runs on the device, mostly in the last blocks of the
sums kernels rather than in kernels of its own (a launch costs ~11 us of host time on an H100),
and only what must reach the host (running statistics, parameter gradients) is copied back,
once, after the last launch. Weights, biases
and running statistics may be device arrays too (:mod:`._vectors`): then nothing is copied back
and a call never waits for the GPU.
"""

import functools
import math

import numpy as np
from numba import cuda

from ... import _checks
from ..._backend import is_device_array
from ..._layout import batch_norm_layout
from ..._running import update_running_stats
from ..._saved import BatchNormSaved, LayerNormSaved
from ..cpu.batchnorm import RUN_MIN
from . import _pool, _strided
from . import _vectors as vec
from . import simulator as _simulator
from . import batchnorm as bn
from . import layernorm as ln
from ._launcher import Shaped, launch
from ._reduce import BLOCK
from ._vector_io import aligned


# log2 of the fewest threads along a row of a row kernel (rows narrower than a warp share it:
# see _reduce.row_sum2). Few, so that narrow rows (64 values) still get 16-byte loads and many
# values a thread; not one, so that a row of a few values still takes a few lanes.
MIN_ROW_LOG2 = 2


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
    """(C-contiguous device array, came_from_host) for a float32/float64 input; clear errors
    otherwise. Device inputs of another layout are copied into a C-contiguous array."""
    a, on_host = checked_input(x, op, name)
    return kernel_input(a, None, op, name), on_host


def checked_input(x, op, name="x"):
    """(array, came_from_host): a device input as a numba device array of its own layout (a
    zero-copy view of other CUDA arrays), a host one as a float NumPy array; clear errors for
    other dtypes and empty device arrays."""
    if is_device_array(x):
        d = vec.as_device(x, op, name, contiguous=False)
        if d.size == 0:
            raise ValueError(f"{op}: {name} is empty (shape {d.shape})")
        return d, False
    return _checks.float_array(x, op, name), True


def kernel_input(a, axes, op, name):
    """``a`` (from :func:`checked_input`) with its axes in the order ``axes`` (None: as they
    are) as a C-contiguous device array: ``a`` itself when that is one, else a copy."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a if axes is None else a.transpose(axes)))
    if axes is not None:
        a = _strided.permuted(a, axes)
    if not a.is_c_contiguous():
        threads, _, target = _geometry()
        a = _strided.gather(a, threads, target, op, name)
    return a


def _memory_order(a, axis):
    """The BatchNorm layout of a non-C-contiguous input ``a`` (from :func:`checked_input`),
    whose axes the kernels read in memory order, as the CPU path does: a dense input whose axes
    are only permuted (channels-last, transposed) is then read in place, and the results come
    back in the input's memory order. None for a C-contiguous input, and for a device one with a
    negative stride (which :func:`kernel_input` refuses with a clear error)."""
    if isinstance(a, np.ndarray):
        if a.flags.c_contiguous:
            return None
    elif a.is_c_contiguous() or any(s < 0 for s in a.strides):
        return None
    layout = batch_norm_layout(a, axis)
    return None if layout.order == tuple(range(a.ndim)) else layout


def _result(d, on_host, layout=None):
    """A result ``d`` (the kernels' C-contiguous array) as the caller gets it: on the host if
    the input was, in the input's memory order if ``layout`` permuted its axes."""
    if on_host:
        h = d.copy_to_host()
        return h if layout is None else h.transpose(layout.inverse)
    return d if layout is None else _strided.permuted(d, layout.inverse)


def _row_params_dtype(x_dtype, user_param_dtype):
    """float32 device copies of host LayerNorm parameters for float32 input when the user's
    parameters are float32 too (or absent): exact, and half the bytes every row re-reads (the
    kernels compute in float64 either way); float64 otherwise."""
    if np.dtype(x_dtype) == np.float32 and user_param_dtype in (None, np.dtype(np.float32)):
        return np.float32
    return np.float64


@functools.lru_cache(maxsize=256)  # pure, and a few us of host time a call
def _elementwise_geometry(n_rows, n_cols, threads, target):
    """(grid, block) of the 2-D elementwise kernels: threads along the columns (a power of two
    up to ``threads`` that covers short rows), the rest of the block along the rows; at most
    4 x ``target`` blocks, which loop over the rest (four rows at a time)."""
    tx = min(threads, 1 << max(MIN_ROW_LOG2, math.ceil(math.log2(n_cols))))
    ty = threads // tx
    gx = min(math.ceil(n_cols / tx), 4 * target)
    gy = min(math.ceil(n_rows / ty), 65535, max(1, 4 * target // gx))
    return (gx, gy), (tx, ty)


# ------------------------------------------------------------------------------------------------
# BatchNorm
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _batch_norm_shape(shape, axis):
    """The (cached: a training step sees the same few shapes) :class:`_BatchNormShape`."""
    return _BatchNormShape(shape, axis)


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

    def elementwise(self, kernels, threads, target, *args):
        """Launch an elementwise kernel; ``kernels``: (wide, wide with 16-byte accesses or None,
        runs); ``args``: device arrays of this shape, then the coefficients, then the output
        (an array of this shape too)."""
        *inputs, coef, out = args
        views = [Shaped(a, self.x2) for a in inputs]
        wide, wide_vec4, runs = kernels
        n_rows, n_cols = self.x2
        if not self.wide:
            launch(runs, *_elementwise_geometry(n_rows, n_cols, threads, target), *views, coef,
                   Shaped(out, self.x2))
        elif (wide_vec4 is not None and n_cols % 4 == 0 and n_cols >= VEC4_MIN_COLS
              and n_rows >= VEC4_MIN_ROWS and all(a.dtype == np.float32 for a in inputs)
              and aligned(*inputs, out)):
            launch(wide_vec4, *_elementwise_geometry(n_rows, n_cols // 4, threads, target), *views,
                   coef, self.n_inner, Shaped(out, self.x2))
        else:
            launch(wide, *_elementwise_geometry(n_rows, n_cols, threads, target), *views, coef,
                   self.n_inner, Shaped(out, self.x2))

    @property
    def sums_finish(self):
        """Whether the sums kernels also finish the per-channel step (statistics, gradients) in
        their last block of each channel: every layout but the wide one with several columns a
        channel, which needs a finalize kernel after them."""
        return not self.wide or self.n_inner == 1

    def sums(self, ctx, target, threads, block2d, kernels, inputs, extra, finish):
        """Launch a sums kernel (``kernels``: (runs, wide)) on ``inputs`` (device arrays of this
        shape), the ``extra`` arguments and, after the partials and their block counters (one
        per channel or column of blocks, one for them all), the ``finish`` arguments of its
        per-channel step; returns the (2P, columns) float64 partials it fills."""
        run_kernel, wide_kernel = kernels
        if self.wide:
            n_cols = self.x2[1]
            col_blocks = math.ceil(n_cols / block2d[0])
            parts = max(1, min(math.ceil(self.n_outer / block2d[1]), target // col_blocks + 1))
            partials = _pool.scratch("bn partials", (2 * parts, n_cols), np.float64, ctx)
            launch(wide_kernel, (col_blocks, parts), block2d, *(Shaped(a, self.x2) for a in inputs),
                   *extra, self.n_inner, partials,
                   _pool.arrivals(col_blocks + 1, ctx), *finish)
        else:
            seg_len = threads * 4
            items = self.n_outer * math.ceil(self.n_inner / seg_len)
            parts = max(1, min(items, target // self.n_ch + 1))
            partials = _pool.scratch("bn partials", (2 * parts, self.n_ch), np.float64, ctx)
            launch(run_kernel, (self.n_ch, parts), (threads,), *(Shaped(a, self.x3) for a in inputs),
                   *extra, seg_len, partials, _pool.arrivals(self.n_ch + 1, ctx),
                   *finish)
        return partials


_SHIFTED_SUMS = (bn.runs_shifted_sums_kernel, bn.wide_shifted_sums_kernel)
_GRAD_SUMS = (bn.runs_grad_sums_kernel, bn.wide_grad_sums_kernel)
_AFFINE = (bn.affine_wide_kernel, bn.affine_wide_vec4_kernel, bn.affine_runs_kernel)
_GRAD_INPUT = (bn.grad_input_wide_kernel, None, bn.grad_input_runs_kernel)
# Where the wide kernel with 16-byte accesses was measured faster (affine_wide_vec4_kernel);
# under the simulator every shape the tests use, so that it is tested there too.
VEC4_MIN_COLS, VEC4_MIN_ROWS = (4, 1) if _simulator() else (128, 8192)


@functools.lru_cache(maxsize=256)  # pure, and a few us of host time a call
def _channel_grid(n_ch):
    """(grid, block) of the per-channel kernels: a warp per channel (under the simulator, which
    runs each CUDA thread as an OS thread, four threads per channel, eight channels a block: a
    whole warp, as the GPU's shuffle reductions need, which tests/cuda run there too)."""
    block = (4, 8) if _simulator() else bn.FINALIZE_BLOCK
    return (math.ceil(n_ch / block[1]),), block


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, *, axis,
               num_batches_tracked=None):
    """The CUDA twin of :func:`normkit.functional.batch_norm` (same checks, same results).

    Running statistics given as device arrays are updated on the device, with the host's policy
    (a batch with non-finite statistics changes nothing) but without its warning, which would
    have to wait for the GPU; ``saved.running_stats_updated`` is then None (not known)."""
    op = "batch_norm"
    xa, on_host = checked_input(x, op)
    args = _checks.BatchNormArgs(tuple(xa.shape), axis, weight, bias, running_mean, running_var,
                                 training, momentum, eps, num_batches_tracked,
                                 vector=vec.param, running=vec.running_stat)
    axis, n_ch, count, w, b = args.axis, args.channels, args.count, args.weight, args.bias
    running_mean, running_var = args.running_mean, args.running_var
    stats_on_device = vec.on_device(running_mean)
    if running_mean is not None and stats_on_device != vec.on_device(running_var):
        raise ValueError(f"{op}: running_mean and running_var must both be device arrays or "
                         "both host arrays")
    layout = _memory_order(xa, axis)
    xd, kernel_axis = _batch_norm_input(xa, layout, axis, op, "x")
    threads, block2d, target = _geometry()
    geo = _batch_norm_shape(tuple(xd.shape), kernel_axis)
    ctx = _pool.current_context()
    # stats rows: mean, biased variance, rstd (the backward's); coef rows: mean, scale, shift
    if training or stats_on_device:  # statistics computed on the device, into y's buffer
        yd, stats = _pool.empty_with_span(ctx, (xd.shape, xd.dtype), ((3, n_ch), np.float64))
        coef = _pool.scratch("bn coef", (3, n_ch), np.float64, ctx)
        wd = vec.kernel_vector(ctx, w, n_ch, "ones", np.float64)
        bd = vec.kernel_vector(ctx, b, n_ch, "zeros", np.float64)
    update_on_device = training and running_mean is not None and stats_on_device
    if training:
        finish = (float(count), float(args.eps), wd, bd, coef, stats)
        if update_on_device and geo.sums_finish:  # by the sums kernel's last block
            update = (1, _momentum_factor(args.momentum, num_batches_tracked),
                      count / (count - 1), running_mean, running_var)
        else:  # (arrays of a running statistic's type, which the kernel leaves alone)
            update = (0, 0.0, 0.0, Shaped(stats, (stats.size,)), Shaped(stats, (stats.size,)))
        partials = geo.sums(ctx, target, threads, block2d, _SHIFTED_SUMS, (xd,), (),
                            finish + update)
        if not geo.sums_finish:
            launch(bn.finalize_stats_kernel, *_channel_grid(n_ch), partials, Shaped(xd, geo.x3),
                   *finish)
    elif stats_on_device:
        launch(bn.eval_coefficients_kernel, (math.ceil(n_ch / threads),), (threads,),
               running_mean, running_var, wd, bd, float(args.eps), coef, stats)
    else:  # host running statistics: the coefficients are computed here, sent once and cached
        yd = _pool.empty(xd.shape, xd.dtype, ctx)
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
        rstd, scale, shift = args.coefficients(var)
        coef = vec.host_vector(ctx, np.stack((mean, scale, shift)), np.float64)
        stats = vec.host_vector(ctx, np.stack((mean, var, rstd)), np.float64)
    geo.elementwise(_AFFINE, threads, target, xd, coef, yd)
    updated = False
    if update_on_device:
        if not geo.sums_finish:
            launch(bn.update_running_kernel, (1,), (64 if _simulator() else 1024,), stats,
                   _momentum_factor(args.momentum, num_batches_tracked), count / (count - 1),
                   running_mean, running_var)
        updated = None  # not known without waiting for the GPU
    elif training and running_mean is not None:
        host_stats = stats.copy_to_host()  # after the last launch: the copy waits for them all
        updated = update_running_stats(running_mean, running_var, host_stats[0], host_stats[1],
                                       count, args.momentum, num_batches_tracked, op)
    saved = BatchNormSaved(
        backend="cuda", x=xd, x_shape=tuple(xa.shape), axis=axis, mean=stats, rstd=None, weight=w,
        has_bias=b is not None, param_dtype=vec.dtype_of(weight, bias),
        batch_stats=bool(training), count=count, running_stats_updated=updated, layout=layout,
        host_io=on_host, params_on_device=vec.on_device(w) or vec.on_device(b))
    return _result(yd, on_host, layout), saved


def _batch_norm_input(a, layout, axis, op, name):
    """(``a`` as the kernels read it, a C-contiguous device array, with its axes in the order
    of ``layout`` when given; the channel axis there)."""
    if layout is None:
        return kernel_input(a, None, op, name), axis
    return kernel_input(a, layout.order, op, name), layout.order.index(axis)


def _momentum_factor(momentum, num_batches_tracked):
    """The weight of the batch statistics in the running update (see normkit._running)."""
    return float(momentum) if momentum is not None else 1.0 / (num_batches_tracked + 1)


def _grad_outputs(ctx, saved, shape):
    """Two arrays of ``shape`` for the kernels to write the parameter gradients into: of the
    parameters' dtype, returned as they are, when the parameters were device arrays (nothing
    waits for the GPU); float64 scratch otherwise, copied back by :func:`_grads_to_caller`."""
    if saved.params_on_device:
        return _pool.empty_many(ctx, (shape, saved.param_dtype), (shape, saved.param_dtype))
    n = math.prod(shape)
    return (_pool.scratch("grad 0", (n,), np.float64, ctx),
            _pool.scratch("grad 1", (n,), np.float64, ctx))


def _grads_to_caller(saved, dweight, dbias, shape):
    """(dweight, dbias) as the caller gets them: None where the forward had no such parameter;
    device arrays as they are; host copies (after the last launch: the first copy waits for the
    GPU) in the parameters' dtype and ``shape``."""
    out = []
    for grad, wanted in ((dweight, saved.weight is not None), (dbias, saved.has_bias)):
        if not wanted:
            out.append(None)
        elif saved.params_on_device:
            out.append(grad)
        else:
            out.append(grad.copy_to_host().reshape(shape).astype(saved.param_dtype))
    return tuple(out)


def batch_norm_backward(dy, saved):
    """The CUDA twin of :func:`normkit.functional.batch_norm_backward`."""
    op = "batch_norm_backward"
    dya, _ = checked_input(dy, op, "dy")
    if tuple(dya.shape) != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {tuple(dya.shape)} but the forward's input had shape {saved.x_shape}")
    dyd, kernel_axis = _batch_norm_input(dya, saved.layout, saved.axis, op, "dy")
    threads, block2d, target = _geometry()
    geo = _batch_norm_shape(tuple(saved.x.shape), kernel_axis)
    ctx = _pool.current_context()
    n_ch = geo.n_ch
    stats = saved.mean  # the device (3, C) array of mean, variance, rstd
    coef = _pool.scratch("bn grad coef", (4, n_ch), np.float64, ctx)  # rows: mean, k, a, b
    dxd = _pool.empty(tuple(saved.x.shape), saved.x.dtype, ctx)
    dweight, dbias = _grad_outputs(ctx, saved, (n_ch,))
    finish = (vec.kernel_vector(ctx, saved.weight, n_ch, "ones", np.float64), 1.0 / saved.count,
              int(saved.batch_stats), coef, dbias, dweight)
    partials = geo.sums(ctx, target, threads, block2d, _GRAD_SUMS, (dyd, saved.x), (stats,), finish)
    if not geo.sums_finish:
        launch(bn.finalize_grads_kernel, *_channel_grid(n_ch), partials, stats, *finish)
    geo.elementwise(_GRAD_INPUT, threads, target, dyd, saved.x, coef, dxd)
    return (_result(dxd, saved.host_io, saved.layout),) + _grads_to_caller(saved, dweight, dbias, (n_ch,))


# ------------------------------------------------------------------------------------------------
# LayerNorm
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)  # pure, and a few us of host time a call
def _row_geometry(n_rows, n_cols, threads, target, values_per_thread, at_least=False):
    """(grid, block) of the row kernels: ``blockDim.x`` threads per row, a power of two from
    ``2 ** MIN_ROW_LOG2`` up, at most (``at_least``: at least) ``values_per_thread`` values
    each, but more threads when there are too few rows to fill the GPU; and as many rows per
    block as fill ``threads``. Measured: on an H200, 65536 x 1024, a warp per row ran the scalar forward in
    0.22 ms, 128 threads in 0.31, 256 in 0.47, and the backward was fastest with 64; on an
    H100 the 16-byte-load forward was fastest with 16-32 values a thread (1024 columns: 64
    threads, 198 us, against 240 with 32 and 218 with 128; 768 columns: 32 threads, 22 against
    25 us with 64; 8192 columns: 256 threads, 7.3 against 10.5 us with 128)."""
    rounded = math.floor if at_least else math.ceil
    log2 = max(MIN_ROW_LOG2, rounded(math.log2(max(1, n_cols / values_per_thread))))
    while (1 << log2) < threads and n_rows << log2 < target * 64:
        log2 += 1
    tx = min(threads, 1 << log2)
    ty = max(1, threads // tx)
    return (max(1, min(math.ceil(n_rows / ty), target * 8)),), (tx, ty)


def layer_norm(x, normalized_shape, weight, bias, eps):
    """The CUDA twin of :func:`normkit.functional.layer_norm`."""
    op = "layer_norm"
    xd, on_host = to_device(x, op)
    args = _checks.LayerNormArgs(tuple(xd.shape), normalized_shape, weight, bias, eps,
                                 vector=vec.param)
    shape, w, b, n_cols = args.normalized_shape, args.weight, args.bias, args.cols
    rows2 = (xd.size // n_cols, n_cols)
    threads, _, target = _geometry()
    ctx = _pool.current_context()
    # stats rows: mean, rstd of each row
    yd, stats = _pool.empty_with_span(ctx, (xd.shape, xd.dtype), ((2, rows2[0]), np.float64))
    user_dtype = vec.dtype_of(weight, bias)
    host_dtype = _row_params_dtype(xd.dtype, user_dtype)
    wd = _row_vector(ctx, w, n_cols, "ones", host_dtype)
    bd = _row_vector(ctx, b, n_cols, "zeros", host_dtype)
    if _vec4_rows(xd, n_cols, wd, bd):
        kernel, geometry = ln.forward_vec4_kernel, _row_geometry(*rows2, threads, target, 16, True)
    else:
        kernel, geometry = ln.forward_kernel, _row_geometry(*rows2, threads, target, 32)
    launch(kernel, *geometry, Shaped(xd, rows2), wd, bd, float(args.eps), Shaped(yd, rows2), stats)
    saved = LayerNormSaved(
        backend="cuda", x=xd, x_shape=tuple(xd.shape), normalized_shape=shape, mean=stats, rstd=None,
        weight=w, has_bias=b is not None, param_dtype=user_dtype, host_io=on_host,
        params_on_device=vec.on_device(w) or vec.on_device(b))
    return _result(yd, on_host), saved


def _vec4_rows(xd, n_cols, *vectors):
    """Whether the 16-byte-load LayerNorm kernels can run: float32 input in rows of a multiple
    of four values, at least four per thread of the narrowest row of threads, and every array
    16-byte aligned (the output, pooled, is)."""
    return (xd.dtype == np.float32 and n_cols % 4 == 0 and n_cols >= 4 << MIN_ROW_LOG2
            and aligned(xd, *(v.array if isinstance(v, Shaped) else v for v in vectors)))


def _row_vector(ctx, v, n, default, host_dtype):
    """A LayerNorm weight/bias as the kernels read it: a flat (n,) view of a device one."""
    d = vec.kernel_vector(ctx, v, n, default, host_dtype)
    return Shaped(d, (n,)) if len(d.shape) != 1 else d


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
    host_dtype = _row_params_dtype(saved.x.dtype, saved.param_dtype)
    wd = _row_vector(ctx, saved.weight, n_cols, "ones", host_dtype)
    if dyd.dtype == saved.x.dtype and _vec4_rows(saved.x, n_cols, dyd, wd):
        kernel, geometry = ln.backward_dx_vec4_kernel, _row_geometry(*rows2, threads, target, 16, True)
    else:
        kernel, geometry = ln.backward_dx_kernel, _row_geometry(*rows2, threads, target, 16)
    launch(kernel, *geometry, dy2, x2, stats, wd, Shaped(dxd, rows2))
    dweight = dbias = None
    if saved.weight is not None or saved.has_bias:
        col_blocks = math.ceil(n_cols / block2d[0])
        row_blocks = max(1, min(math.ceil(n_rows / block2d[1]), target // col_blocks + 1))
        partials = _pool.scratch("ln partials", (2 * row_blocks, n_cols), np.float64, ctx)
        dweight, dbias = _grad_outputs(ctx, saved, saved.normalized_shape)
        launch(ln.param_grad_kernel, (col_blocks, row_blocks), block2d, dy2, x2, stats, partials,
               _pool.arrivals(col_blocks, ctx), Shaped(dweight, (n_cols,)),
               Shaped(dbias, (n_cols,)))
        dweight, dbias = _grads_to_caller(saved, dweight, dbias, saved.normalized_shape)
    return _result(dxd, saved.host_io), dweight, dbias
