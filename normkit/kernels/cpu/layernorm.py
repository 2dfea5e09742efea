"""LayerNorm CPU kernels on a (rows, cols) array, normalising each row.

Each row is read from memory once: its mean, its two-pass variance and its output are computed
while the row sits in cache, with float64 accumulators. The backward pass produces dx row by row
and accumulates dweight/dbias into per-chunk partial rows (a fixed number of chunks, so the result
does not depend on the thread count), merged at the end.
"""

import math

import numpy as np
from numba import prange

from ._compile import kernel

BACKWARD_CHUNKS = 16  # partial dweight/dbias rows; enough to keep 16 cores busy


@kernel
def _forward(x, weight, bias, eps, out, mean, rstd):
    n_rows, n_cols = x.shape
    inv_n = 1.0 / n_cols
    for r in prange(n_rows):
        xr = x[r]  # 1-D row views let LLVM vectorise (see batchnorm.py)
        total = 0.0
        for c in range(n_cols):
            total += xr[c]
        mu = total * inv_n
        sq = 0.0
        for c in range(n_cols):  # the row is still in cache
            d = xr[c] - mu
            sq += d * d
        rs = 1.0 / math.sqrt(sq * inv_n + eps)
        o = out[r]
        for c in range(n_cols):
            o[c] = (xr[c] - mu) * rs * weight[c] + bias[c]
        mean[r] = mu
        rstd[r] = rs


@kernel
def _backward(dy, x, mean, rstd, weight, out, n_chunks):
    n_rows, n_cols = x.shape
    inv_n = 1.0 / n_cols
    rows_per_chunk = (n_rows + n_chunks - 1) // n_chunks
    dweight = np.zeros((n_chunks, n_cols))
    dbias = np.zeros((n_chunks, n_cols))
    for k in prange(n_chunks):
        dw = dweight[k]
        db = dbias[k]
        for r in range(k * rows_per_chunk, min((k + 1) * rows_per_chunk, n_rows)):
            mu = mean[r]
            rs = rstd[r]
            xr = x[r]
            gr = dy[r]
            o = out[r]
            sum_g = 0.0       # sum of dxhat = dy * weight
            sum_g_xhat = 0.0  # sum of dxhat * xhat
            for c in range(n_cols):
                g = gr[c] * weight[c]
                sum_g += g
                sum_g_xhat += g * ((xr[c] - mu) * rs)
            mean_g = sum_g * inv_n
            mean_g_xhat = sum_g_xhat * inv_n
            for c in range(n_cols):  # the row is still in cache
                g = np.float64(gr[c])
                xhat = (xr[c] - mu) * rs
                o[c] = rs * (g * weight[c] - mean_g - xhat * mean_g_xhat)
                dw[c] += g * xhat
                db[c] += g
    return dweight, dbias


def forward(x, weight, bias, eps, out):
    """Normalise each row of ``x`` into ``out``; return per-row mean and rstd (float64)."""
    mean = np.empty(x.shape[0])
    rstd = np.empty(x.shape[0])
    _forward(x, weight, bias, eps, out, mean, rstd, work=x.size)
    return mean, rstd


def backward(dy, x, mean, rstd, weight, out):
    """Write dx into ``out``; return dweight and dbias (float64, one value per column)."""
    n_chunks = min(BACKWARD_CHUNKS, x.shape[0])
    dweight, dbias = _backward(dy, x, mean, rstd, weight, out, n_chunks, work=x.size)
    return dweight.sum(axis=0), dbias.sum(axis=0)
