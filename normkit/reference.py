"""Plain NumPy BatchNorm and LayerNorm, written to read like the maths: the oracle for every test
and the ``backend="numpy"`` path.

Everything is computed in float64 and the outputs are cast back to the input's dtype. These
functions do not validate their arguments; :mod:`normkit.functional` does that before calling them.
"""

import numpy as np

from ._running import update_running_stats
from ._saved import BatchNormSaved, LayerNormSaved, param_dtype

__all__ = ["batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward"]


def _per_channel(v, axis, ndim):
    """Reshape a per-channel vector (C,) so it broadcasts along ``axis`` of an ndim-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, axis=1, backend="numpy", num_batches_tracked=None):
    """BatchNorm forward: see :func:`normkit.functional.batch_norm`. Returns ``(y, saved)``."""
    axis = axis % x.ndim
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    xd = x.astype(np.float64)                                     # (..., C, ...)
    count = x.size // x.shape[axis]                               # values per channel
    updated = False
    if training:
        with np.errstate(invalid="ignore"):  # inf input: NaN statistics, reported below
            mean = xd.mean(axis=reduce_axes)                      # (C,)
            var = xd.var(axis=reduce_axes)                        # (C,) biased, two-pass
        if running_mean is not None:
            updated = update_running_stats(running_mean, running_var, mean, var, count, momentum,
                                           num_batches_tracked, "batch_norm", compiled=False)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    rstd = 1.0 / np.sqrt(var + eps)                               # (C,)
    with np.errstate(invalid="ignore"):  # NaN/inf propagate to the output, as in PyTorch
        xhat = (xd - _per_channel(mean, axis, x.ndim)) * _per_channel(rstd, axis, x.ndim)
    y = xhat
    if weight is not None:
        y = y * _per_channel(weight, axis, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, axis, x.ndim)
    saved = BatchNormSaved(
        backend="numpy", x=x, x_shape=x.shape, axis=axis, mean=mean, rstd=rstd,
        weight=None if weight is None else np.asarray(weight, dtype=np.float64),
        has_bias=bias is not None, param_dtype=param_dtype(weight, bias),
        batch_stats=bool(training), count=count, running_stats_updated=updated)
    return y.astype(x.dtype), saved


def batch_norm_backward(dy, saved):
    """BatchNorm backward: ``(dx, dweight, dbias)``; dweight/dbias are None without weight/bias.

    With batch statistics (N values per channel, xhat = (x - mean) * rstd):
    dxhat = dy * gamma;  dx = rstd / N * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)).
    With running statistics the mean and rstd are constants: dx = dy * gamma * rstd.
    """
    x, axis, ndim = saved.x, saved.axis, saved.x.ndim
    reduce_axes = tuple(a for a in range(ndim) if a != axis)
    dyd = np.asarray(dy, dtype=np.float64)
    rstd = _per_channel(saved.rstd, axis, ndim)
    xhat = (x.astype(np.float64) - _per_channel(saved.mean, axis, ndim)) * rstd
    gamma = 1.0 if saved.weight is None else _per_channel(saved.weight, axis, ndim)
    dxhat = dyd * gamma
    if saved.batch_stats:
        n = saved.count
        dx = rstd / n * (n * dxhat
                         - dxhat.sum(axis=reduce_axes, keepdims=True)
                         - xhat * (dxhat * xhat).sum(axis=reduce_axes, keepdims=True))
    else:
        dx = dxhat * rstd
    dweight = None if saved.weight is None else (dyd * xhat).sum(axis=reduce_axes)
    dbias = dyd.sum(axis=reduce_axes) if saved.has_bias else None
    return dx.astype(x.dtype), _cast(dweight, saved), _cast(dbias, saved)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend="numpy"):
    """LayerNorm forward over the last ``len(normalized_shape)`` axes. Returns ``(y, saved)``."""
    normalized_shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    xd = x.astype(np.float64)
    mean = xd.mean(axis=axes, keepdims=True)                      # (..., 1, 1)
    var = xd.var(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (xd - mean) * rstd                                        # xhat
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    saved = LayerNormSaved(
        backend="numpy", x=x, x_shape=x.shape, normalized_shape=normalized_shape,
        mean=mean.reshape(-1), rstd=rstd.reshape(-1),
        weight=None if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1),
        has_bias=bias is not None, param_dtype=param_dtype(weight, bias))
    return y.astype(x.dtype), saved


def layer_norm_backward(dy, saved):
    """LayerNorm backward: ``(dx, dweight, dbias)``.

    Per row of D values: dxhat = dy * gamma;
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    """
    x = saved.x
    d = int(np.prod(saved.normalized_shape))
    x2 = x.astype(np.float64).reshape(-1, d)                      # (R, D)
    dy2 = np.asarray(dy, dtype=np.float64).reshape(-1, d)
    rstd = saved.rstd[:, None]                                    # (R, 1)
    xhat = (x2 - saved.mean[:, None]) * rstd
    gamma = 1.0 if saved.weight is None else saved.weight[None, :]
    dxhat = dy2 * gamma
    dx = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    dweight = None if saved.weight is None else (dy2 * xhat).sum(axis=0).reshape(saved.normalized_shape)
    dbias = dy2.sum(axis=0).reshape(saved.normalized_shape) if saved.has_bias else None
    return dx.reshape(x.shape).astype(x.dtype), _cast(dweight, saved), _cast(dbias, saved)


def _cast(grad, saved):
    return None if grad is None else grad.astype(saved.param_dtype)
