"""LayerNorm CPU kernels on a (rows, cols) array, normalising each row.

Each row is read from memory once: its mean and variance (float64 sums of x - K and (x - K)^2
with K the row's first value; see batchnorm.py for why this is exact to about n * eps64) and then
its output, while the row sits in cache. The backward pass produces dx row by row
and accumulates dweight/dbias into per-chunk partial rows (a fixed number of chunks, so the result
does not depend on the thread count), merged at the end.
"""

import math

import numpy as np
from numba import prange

from ._compile import cast_like, helper, kernel, split_like, wide_vectors
from .batchnorm import run_shifted_sums

BACKWARD_CHUNKS = 16  # partial dweight/dbias rows; enough to keep 16 cores busy


@kernel
def _forward(x, weight, bias, eps, out, mean, rstd, rows_per_task):
    n_rows, n_cols = x.shape
    inv_n = 1.0 / n_cols
    for t in prange((n_rows + rows_per_task - 1) // rows_per_task):
        wide_vectors()
        r0 = t * rows_per_task
        r1 = min(r0 + rows_per_task, n_rows)
        k = np.float64(x[r0, 0])
        s1, s2 = run_shifted_sums(x[r0], k)
        for r in range(r0, r1):
            mean_d = s1 * inv_n
            mu = k + mean_d
            rs = 1.0 / math.sqrt(max(s2 * inv_n - mean_d * mean_d, 0.0) + eps)
            mean[r] = mu
            rstd[r] = rs
            xr = x[r]  # 1-D row views let LLVM vectorise (see batchnorm.py)
            o = out[r]
            # Everything in the output's dtype (float32: twice the SIMD width of float64), with the
            # mean split in two: its value in that dtype and the rest. x - mu_hi is exact near the
            # mean (Sterbenz) and rounded once elsewhere, so a large mean costs no accuracy: a few
            # ulps of the output, as when centring in float64 (measured 5-15% faster than that).
            mu_hi, mu_lo = split_like(mu, out)
            rs_out = cast_like(rs, out)
            if r + 1 < r1:
                # Pipelined: row r's output (its values are in L1/L2 since its sums were taken)
                # in the same loop as the next row's sums, so that the next row streams in from
                # memory while this one is written, instead of the two waiting on each other:
                # 1.1-1.8x on rows of 768-8192 values; the same speed on short rows.
                xn = x[r + 1]
                k = np.float64(xn[0])
                s1 = 0.0
                s2 = 0.0
                for c in range(n_cols):
                    o[c] = ((xr[c] - mu_hi) - mu_lo) * (rs_out * weight[c]) + bias[c]
                    d = xn[c] - k
                    s1 += d
                    s2 += d * d
            else:
                for c in range(n_cols):
                    o[c] = ((xr[c] - mu_hi) - mu_lo) * (rs_out * weight[c]) + bias[c]


def forward_rows_per_task(n_rows):
    """Rows per parallel task of the forward pass: at most 64 (each task's first row is summed
    on its own, outside the pipeline), and at least 16 tasks when there are 16 rows. A function of
    the shape alone, so that results do not depend on the thread count."""
    return max(1, min(64, n_rows // 16))


@helper
def _row_sums(gr, xr, weight, mu, rs):
    """sum(dxhat) and sum(dxhat * xhat) of one row, where dxhat = dy * weight."""
    sum_g = 0.0
    sum_g_xhat = 0.0
    for c in range(xr.shape[0]):
        g = gr[c] * weight[c]
        sum_g += g
        sum_g_xhat += g * ((xr[c] - mu) * rs)
    return sum_g, sum_g_xhat


@kernel
def _backward(dy, x, mean, rstd, weight, out, n_chunks):
    n_rows, n_cols = x.shape
    inv_n = 1.0 / n_cols
    rows_per_chunk = (n_rows + n_chunks - 1) // n_chunks
    dweight = np.empty((n_chunks, n_cols))
    dbias = np.empty((n_chunks, n_cols))
    for k in prange(n_chunks):
        dw = dweight[k]
        db = dbias[k]
        dw[:] = 0.0  # zeroed here, in parallel and into this core's cache
        db[:] = 0.0
        r0 = k * rows_per_chunk
        r1 = min(r0 + rows_per_chunk, n_rows)
        # Two rows per sweep, one from each half of the chunk: dweight/dbias partials are updated
        # once per two rows, which halves the stores that bound this loop, and the rows are two
        # separate sequential streams for the prefetcher (see batchnorm._tile_shifted_sums).
        h = max(r1 - r0, 0) // 2  # the last chunks can be empty (r0 > r1)
        for r in range(r0, r0 + h):
            x0, x1, g0, g1, o0, o1 = x[r], x[r + h], dy[r], dy[r + h], out[r], out[r + h]
            mu0, mu1, rs0, rs1 = mean[r], mean[r + h], rstd[r], rstd[r + h]
            a0, b0 = _row_sums(g0, x0, weight, mu0, rs0)
            a1, b1 = _row_sums(g1, x1, weight, mu1, rs1)
            a0 *= inv_n
            b0 *= inv_n
            a1 *= inv_n
            b1 *= inv_n
            for c in range(n_cols):
                gg0 = np.float64(g0[c])
                gg1 = np.float64(g1[c])
                xh0 = (x0[c] - mu0) * rs0
                xh1 = (x1[c] - mu1) * rs1
                o0[c] = rs0 * (gg0 * weight[c] - a0 - xh0 * b0)
                o1[c] = rs1 * (gg1 * weight[c] - a1 - xh1 * b1)
                dw[c] += gg0 * xh0 + gg1 * xh1
                db[c] += gg0 + gg1
        for r in range(r0 + 2 * h, r1):
            xr, gr, o = x[r], dy[r], out[r]
            mu, rs = mean[r], rstd[r]
            a, b = _row_sums(gr, xr, weight, mu, rs)
            a *= inv_n
            b *= inv_n
            for c in range(n_cols):
                g = np.float64(gr[c])
                xhat = (xr[c] - mu) * rs
                o[c] = rs * (g * weight[c] - a - xhat * b)
                dw[c] += g * xhat
                db[c] += g
    return _sum_rows(dweight), _sum_rows(dbias)


@helper
def _sum_rows(partials):
    """The column sums of ``partials``, rows added in order (a tenth of a wide backward's time as
    NumPy calls after the kernel: 16 x 8192 partials)."""
    total = partials[0].copy()
    for k in range(1, partials.shape[0]):
        total += partials[k]
    return total


def forward(x, weight, bias, eps, out):
    """Normalise each row of ``x`` into ``out``; return per-row mean and rstd (float64).
    ``weight``/``bias`` are float64 vectors, applied in the output's dtype."""
    mean = np.empty(x.shape[0])
    rstd = np.empty(x.shape[0])
    _forward(x, weight.astype(out.dtype), bias.astype(out.dtype), eps, out, mean, rstd,
             forward_rows_per_task(x.shape[0]), work=x.size)
    return mean, rstd


def backward(dy, x, mean, rstd, weight, out):
    """Write dx into ``out``; return dweight and dbias (float64, one value per column)."""
    n_chunks = min(BACKWARD_CHUNKS, x.shape[0])
    return _backward(dy, x, mean, rstd, weight, out, n_chunks, work=x.size)
