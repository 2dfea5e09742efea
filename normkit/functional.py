"""The functional API: input checks, layout handling and backend dispatch.

Argument order follows ``torch.nn.functional``. Every forward returns ``(y, saved)``, where
``saved`` holds what the matching backward needs; pass it back unchanged.
"""

import numpy as np

from . import _backend, _checks, _memory, reference
from ._layout import batch_norm_layout, layer_norm_rows
from ._running import update_running_stats
from ._saved import BatchNormSaved, LayerNormSaved, param_dtype
from .kernels.cpu import batchnorm as _bn_cpu
from .kernels.cpu import layernorm as _ln_cpu

__all__ = ["batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward"]


def _cuda_module():
    from .kernels.cuda import launch  # imported only when asked for: it imports numba.cuda
    return launch


# ----------------------------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------------------------

def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, backend="auto", num_batches_tracked=None):
    """Batch normalisation over every axis but the channel axis.

    Parameters
    ----------
    x : ndarray, float32 or float64, at least 2-D
        Input; any memory layout (views, transposes, read-only arrays are fine).
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics, updated in place in training mode; required in eval mode. With the
        cuda backend they may be CUDA device arrays (both or neither): then they are updated on
        the device, and the call does not wait for the GPU (see the README's GPU section).
    weight, bias : array of shape (C,) or None
        Affine parameters gamma and beta. With the cuda backend they may be device arrays: then
        ``batch_norm_backward`` returns dweight/dbias as device arrays of their dtype.
    training : bool
        True: normalise with the batch statistics (and update the running ones).
        False: normalise with ``running_mean``/``running_var``.
    momentum : float in [0, 1] or None
        ``running = (1 - momentum) * running + momentum * batch``; None means a cumulative
        average, for which ``num_batches_tracked`` (batches seen so far) must be given.
    eps : float > 0
        Added to the variance.
    axis : int
        The channel axis: 1 for (N, C), (N, C, L), (N, C, H, W); -1 for channels-last;
        0 for a (features, batch) layout.
    backend : {"auto", "numba", "numpy", "cuda"}
    num_batches_tracked : int, optional
        Only for ``momentum=None``.

    Returns
    -------
    y : ndarray
        Same shape, dtype (and memory order, for the numba and cuda backends) as ``x``.
    saved : BatchNormSaved
        For :func:`batch_norm_backward`.

    Notes
    -----
    Statistics are accumulated in float64, so float32 inputs with a large mean keep their
    precision. A training batch whose statistics are NaN or inf leaves the running statistics
    unchanged and issues a :class:`normkit.NonFiniteBatchWarning`; the NaN still reaches ``y``.
    """
    op = "batch_norm"
    backend = _backend.resolve(backend, x, op)
    if backend == "cuda":
        return _cuda_module().batch_norm(x, running_mean, running_var, weight, bias, training,
                                         momentum, eps, axis=axis,
                                         num_batches_tracked=num_batches_tracked)
    x = _checks.float_array(x, op)
    args = _checks.BatchNormArgs(x.shape, axis, weight, bias, running_mean, running_var, training,
                                 momentum, eps, num_batches_tracked)
    axis, momentum, eps, w, b = args.axis, args.momentum, args.eps, args.weight, args.bias
    running_mean, running_var, count = args.running_mean, args.running_var, args.count

    if backend == "numpy":
        return reference.batch_norm(x, running_mean, running_var, weight, bias, training,
                                    momentum, eps, axis=axis, num_batches_tracked=num_batches_tracked)

    layout = batch_norm_layout(x, axis)
    xk = layout.view(x)
    band = _bn_cpu.one_pass_band(xk, layout.group, n_inputs=1) if training else 0
    # (the one-pass kernels stream rows: a line-aligned output suits them)
    offset = 0 if band else _bn_cpu.output_line_offset(xk)
    yk, y = layout.empty(x.dtype, apart_from=(xk,), line_offset=offset)
    updated = False
    if band:
        mean, var, rstd = _bn_cpu.one_pass_forward(xk, w, b, eps, yk, band, layout.group)
    else:
        if training:
            mean, var = _bn_cpu.batch_stats(xk, layout.group)
        else:
            mean = running_mean.astype(np.float64)
            var = running_var.astype(np.float64)
        rstd, coefficients = _bn_cpu.forward_coefficients(mean, var, w, b, eps, x.dtype,
                                                          layout.group)
        _bn_cpu.affine(xk, coefficients, yk)
    if training and running_mean is not None:
        updated = update_running_stats(running_mean, running_var, mean, var, count, momentum,
                                       num_batches_tracked, op)
    saved = BatchNormSaved(
        backend="numba", x=xk, x_shape=x.shape, axis=axis, mean=mean, rstd=rstd, weight=w,
        has_bias=b is not None, param_dtype=param_dtype(weight, bias), batch_stats=bool(training),
        count=count, running_stats_updated=updated, layout=layout)
    return y, saved


def batch_norm_backward(dy, saved):
    """Gradients of :func:`batch_norm`.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient, the shape of the forward's output.
    saved : BatchNormSaved
        The second value the forward returned.

    Returns
    -------
    dx : ndarray
        Same shape and dtype as the forward's input.
    dweight, dbias : ndarray of shape (C,) or None
        None where the forward had no weight / bias.
    """
    op = "batch_norm_backward"
    if not isinstance(saved, BatchNormSaved):
        raise TypeError(f"{op}: saved must be what batch_norm returned, got {type(saved).__name__}")
    if saved.backend == "cuda":
        return _cuda_module().batch_norm_backward(dy, saved)
    dy = _checks.float_array(dy, op, "dy")
    if dy.shape != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {dy.shape} but the forward's input had shape {saved.x_shape}")
    if saved.backend == "numpy":
        return reference.batch_norm_backward(dy, saved)

    layout, xk, mean, rstd = saved.layout, saved.x, saved.mean, saved.rstd
    if dy.dtype != xk.dtype:  # the kernels take dy and x of one dtype; dx has x's anyway
        dy = dy.astype(xk.dtype)
    dyk = layout.view(dy)
    needs_sums = saved.batch_stats or saved.weight is not None or saved.has_bias
    band = _bn_cpu.one_pass_band(xk, layout.group, n_inputs=2) if needs_sums else 0
    offset = 0 if band else _bn_cpu.output_line_offset(xk, dyk)
    dxk, dx = layout.empty(xk.dtype, apart_from=(dyk, xk), line_offset=offset)
    if band:
        sum_dy, dweight = _bn_cpu.one_pass_backward(dyk, xk, mean, rstd, saved.weight, saved.count,
                                                    saved.batch_stats, dxk, band, layout.group)
    else:
        if needs_sums:
            sum_dy, sum_dy_xc = _bn_cpu.grad_sums(dyk, xk, mean, layout.group)
        else:  # eval mode without affine parameters: dx = dy * rstd needs no sums
            sum_dy = sum_dy_xc = np.zeros(mean.shape[0])
        coefficients, dweight = _bn_cpu.backward_coefficients(
            sum_dy, sum_dy_xc, mean, rstd, saved.weight, saved.count, saved.batch_stats, xk.dtype,
            layout.group)
        _bn_cpu.grad_input(dyk, xk, coefficients, dxk)
    dweight = None if saved.weight is None else dweight.astype(saved.param_dtype)
    dbias = sum_dy.astype(saved.param_dtype) if saved.has_bias else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------------
# LayerNorm
# ----------------------------------------------------------------------------------------------

def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="auto"):
    """Layer normalisation over the last ``len(normalized_shape)`` axes.

    Parameters
    ----------
    x : ndarray, float32 or float64
        Input whose trailing dimensions equal ``normalized_shape``.
    normalized_shape : int or tuple of int
        The shape of the normalised trailing axes (an int means one axis).
    weight, bias : array of shape ``normalized_shape`` or None
        With the cuda backend they may be device arrays: then ``layer_norm_backward`` returns
        dweight/dbias as device arrays of their dtype, without waiting for the GPU.
    eps : float > 0
    backend : {"auto", "numba", "numpy", "cuda"}

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (C-contiguous).
    saved : LayerNormSaved
        For :func:`layer_norm_backward` (holds per-row mean and rstd).
    """
    op = "layer_norm"
    backend = _backend.resolve(backend, x, op)
    if backend == "cuda":
        return _cuda_module().layer_norm(x, normalized_shape, weight, bias, eps)
    x = _checks.float_array(x, op)
    args = _checks.LayerNormArgs(x.shape, normalized_shape, weight, bias, eps)
    shape, eps, w, b, n_cols = args.normalized_shape, args.eps, args.weight, args.bias, args.cols
    if backend == "numpy":
        return reference.layer_norm(x, shape, weight, bias, eps)

    xk = layer_norm_rows(x, n_cols)
    y = _memory.empty(x.shape, x.dtype, apart_from=(xk,))
    mean, rstd = _ln_cpu.forward(xk, np.ones(n_cols) if w is None else w,
                                 np.zeros(n_cols) if b is None else b, eps, y.reshape(xk.shape))
    saved = LayerNormSaved(
        backend="numba", x=xk, x_shape=x.shape, normalized_shape=shape, mean=mean, rstd=rstd,
        weight=w, has_bias=b is not None, param_dtype=param_dtype(weight, bias))
    return y, saved


def layer_norm_backward(dy, saved):
    """Gradients of :func:`layer_norm`.

    Parameters
    ----------
    dy : ndarray
        Upstream gradient, the shape of the forward's output.
    saved : LayerNormSaved
        The second value the forward returned.

    Returns
    -------
    dx : ndarray
        Same shape and dtype as the forward's input.
    dweight, dbias : ndarray of shape ``normalized_shape`` or None
        None where the forward had no weight / bias.
    """
    op = "layer_norm_backward"
    if not isinstance(saved, LayerNormSaved):
        raise TypeError(f"{op}: saved must be what layer_norm returned, got {type(saved).__name__}")
    if saved.backend == "cuda":
        return _cuda_module().layer_norm_backward(dy, saved)
    dy = _checks.float_array(dy, op, "dy")
    if dy.shape != saved.x_shape:
        raise ValueError(f"{op}: dy has shape {dy.shape} but the forward's input had shape {saved.x_shape}")
    if saved.backend == "numpy":
        return reference.layer_norm_backward(dy, saved)

    xk = saved.x
    dyk = layer_norm_rows(dy, xk.shape[1])
    dx = _memory.empty(saved.x_shape, xk.dtype, apart_from=(dyk, xk))
    weight = np.ones(xk.shape[1]) if saved.weight is None else saved.weight
    dweight, dbias = _ln_cpu.backward(dyk, xk, saved.mean, saved.rstd, weight, dx.reshape(xk.shape))
    dweight = None if saved.weight is None else dweight.reshape(saved.normalized_shape).astype(saved.param_dtype)
    dbias = dbias.reshape(saved.normalized_shape).astype(saved.param_dtype) if saved.has_bias else None
    return dx, dweight, dbias

