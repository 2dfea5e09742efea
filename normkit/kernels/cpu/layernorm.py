"""LayerNorm CPU kernels on a (rows, cols) array, normalising each row.

Each row is read from memory once: its mean and variance (float64 sums of x - K and (x - K)^2
with K the row's first value; see batchnorm.py for why this is exact to about n * eps64) and then
its output, while the row sits in cache. The backward pass produces dx two rows at a time, also
while the next rows' sums are taken, and accumulates dweight/dbias into per-chunk partial rows (a
fixed number of chunks, so the result does not depend on the thread count), merged at the end.
The forward pass computes its output in the output's dtype, the backward pass in float64.
"""

import math

import numpy as np
from numba import prange

from ... import _memory
from ._compile import (borrowed, cast_like, helper, inline_helper, kernel, split_like,
                       wide_vectors, wide_vectors_for)
from ._bn_runs import run_shifted_sums

BACKWARD_CHUNKS = 16  # partial dweight/dbias rows; enough to keep 16 cores busy
# Rows at least this long are pipelined in the backward pass (see _pipelined_row_pairs). Shorter
# rows gain nothing: measured 0.8-1.1x at 64-256 values.
PIPELINE_MIN_COLS = 512


@kernel
def _forward(x, weight, bias, eps, out, mean, rstd, rows_per_task):
    x, weight, bias, out, mean, rstd = borrowed(x, weight, bias, out, mean, rstd)
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
            xr = x[r]  # 1-D row views let LLVM vectorise (see _bn_wide.py)
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


@inline_helper
def _sum_terms(g, x, w, mu, rs):
    """This value's terms of sum(dxhat) and sum(dxhat * xhat), where dxhat = dy * weight."""
    dxhat = g * w
    return dxhat, dxhat * ((x - mu) * rs)


@helper
def _row_sums(gr, xr, weight, mu, rs):
    """sum(dxhat) and sum(dxhat * xhat) of one row (float64)."""
    sum_g = 0.0
    sum_g_xhat = 0.0
    for c in range(xr.shape[0]):
        t, u = _sum_terms(gr[c], xr[c], weight[c], mu, rs)
        sum_g += t
        sum_g_xhat += u
    return sum_g, sum_g_xhat


@inline_helper
def _dx_coefficients(sum_g, sum_g_xhat, mu, rs, inv_n):
    """What :func:`_dx` needs of one row: (mu, rs, mean(dxhat), mean(dxhat * xhat))."""
    return mu, rs, sum_g * inv_n, sum_g_xhat * inv_n


@inline_helper
def _dx(g, x, w, mu, rs, mean_g, mean_g_xhat):
    """(dx, dy * xhat) of one value, in float64: dx = rs * (dxhat - mean(dxhat) - xhat *
    mean(dxhat * xhat)). (In float32 arithmetic, as the forward pass, it measured only 1.05x
    faster, and dxhat - mean(dxhat) then cancels to an error of rs * ulp(dxhat): 6e-5 where
    the exact dx is 0, e.g. rows of one value.)"""
    g = np.float64(g)
    xhat = (x - mu) * rs
    return rs * (g * w - mean_g - xhat * mean_g_xhat), g * xhat


@inline_helper
def _pair_dx(g0, x0, k0, o0, g1, x1, k1, o1, weight, dw, db):
    """dx of two rows (each with its _dx_coefficients), their dweight/dbias terms added to dw, db."""
    mu0, rs0, mg0, mgx0 = k0
    mu1, rs1, mg1, mgx1 = k1
    for c in range(weight.shape[0]):
        o0[c], t0 = _dx(g0[c], x0[c], weight[c], mu0, rs0, mg0, mgx0)
        o1[c], t1 = _dx(g1[c], x1[c], weight[c], mu1, rs1, mg1, mgx1)
        dw[c] += t0 + t1
        db[c] += np.float64(g0[c]) + np.float64(g1[c])


@inline_helper
def _pair_dx_and_next_sums(g0, x0, k0, o0, g1, x1, k1, o1, weight, dw, db,
                           gn0, xn0, mun0, rsn0, gn1, xn1, mun1, rsn1):
    """:func:`_pair_dx`, and the _row_sums of two other rows (gn, xn, with their mean and rstd)
    in the same loop."""
    mu0, rs0, mg0, mgx0 = k0
    mu1, rs1, mg1, mgx1 = k1
    a0 = b0 = a1 = b1 = 0.0
    for c in range(weight.shape[0]):
        o0[c], t0 = _dx(g0[c], x0[c], weight[c], mu0, rs0, mg0, mgx0)
        o1[c], t1 = _dx(g1[c], x1[c], weight[c], mu1, rs1, mg1, mgx1)
        dw[c] += t0 + t1
        db[c] += np.float64(g0[c]) + np.float64(g1[c])
        s0, u0 = _sum_terms(gn0[c], xn0[c], weight[c], mun0, rsn0)
        s1, u1 = _sum_terms(gn1[c], xn1[c], weight[c], mun1, rsn1)
        a0 += s0
        b0 += u0
        a1 += s1
        b1 += u1
    return a0, b0, a1, b1


@inline_helper
def _row_pairs(dy, x, mean, rstd, weight, out, r0, h, inv_n, dw, db):
    """dx of rows r0 + i and r0 + h + i for i < h, their dweight/dbias terms added to dw, db."""
    for r in range(r0, r0 + h):
        a0, b0 = _row_sums(dy[r], x[r], weight, mean[r], rstd[r])
        a1, b1 = _row_sums(dy[r + h], x[r + h], weight, mean[r + h], rstd[r + h])
        _pair_dx(dy[r], x[r], _dx_coefficients(a0, b0, mean[r], rstd[r], inv_n), out[r],
                 dy[r + h], x[r + h], _dx_coefficients(a1, b1, mean[r + h], rstd[r + h], inv_n),
                 out[r + h], weight, dw, db)


@inline_helper
def _pipelined_row_pairs(dy, x, mean, rstd, weight, out, r0, h, inv_n, dw, db):
    """dx of rows r0 + i and r0 + h + i for i < h, their dweight/dbias terms added to dw, db.

    Pipelined as the forward pass: each pair's dx (its rows are in L2 since their sums were
    taken) is computed in the same loop as the next pair's sums, so that the next rows stream in
    from memory meanwhile: 1.2-1.7x on rows of 768-8192 values (outputs bit-identical). (The
    pipelined and plain loops are separate helpers, chosen per chunk: with both inside one row
    loop LLVM made the plain path 1.5x slower on 64-value rows.)
    """
    a0, b0 = _row_sums(dy[r0], x[r0], weight, mean[r0], rstd[r0])
    a1, b1 = _row_sums(dy[r0 + h], x[r0 + h], weight, mean[r0 + h], rstd[r0 + h])
    for r in range(r0, r0 + h):
        k0 = _dx_coefficients(a0, b0, mean[r], rstd[r], inv_n)
        k1 = _dx_coefficients(a1, b1, mean[r + h], rstd[r + h], inv_n)
        if r + 1 < r0 + h:
            a0, b0, a1, b1 = _pair_dx_and_next_sums(
                dy[r], x[r], k0, out[r], dy[r + h], x[r + h], k1, out[r + h], weight, dw, db,
                dy[r + 1], x[r + 1], mean[r + 1], rstd[r + 1],
                dy[r + h + 1], x[r + h + 1], mean[r + h + 1], rstd[r + h + 1])
        else:
            _pair_dx(dy[r], x[r], k0, out[r], dy[r + h], x[r + h], k1, out[r + h], weight, dw, db)


@kernel
def _backward(dy, x, mean, rstd, weight, out, partials):
    """dx into ``out``; returns (dweight, dbias). ``partials``: a (2, chunks, cols) float64 work
    array (see ``_memory.work_array``) for each chunk of rows' dweight and dbias terms."""
    dy, x, mean, rstd, weight, out, partials = borrowed(dy, x, mean, rstd, weight, out, partials)
    n_rows, n_cols = x.shape
    inv_n = 1.0 / n_cols
    n_chunks = partials.shape[1]
    rows_per_chunk = (n_rows + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        wide_vectors_for(out)
        dw = partials[0, k]
        db = partials[1, k]
        dw[:] = 0.0  # zeroed here, in parallel and into this core's cache
        db[:] = 0.0
        r0 = k * rows_per_chunk
        r1 = min(r0 + rows_per_chunk, n_rows)
        # Two rows per sweep, one from each half of the chunk: dweight/dbias partials are updated
        # once per two rows, which halves the stores that bound this loop, and the rows are two
        # separate sequential streams for the prefetcher (see _bn_wide.tile_shifted_sums).
        h = max(r1 - r0, 0) // 2  # the last chunks can be empty (r0 > r1)
        if h and n_cols >= PIPELINE_MIN_COLS:
            _pipelined_row_pairs(dy, x, mean, rstd, weight, out, r0, h, inv_n, dw, db)
        elif h:
            _row_pairs(dy, x, mean, rstd, weight, out, r0, h, inv_n, dw, db)
        if r0 + 2 * h < r1:  # the chunk's odd row
            _single_row(dy, x, mean, rstd, weight, out, r1 - 1, inv_n, dw, db)
    return _sum_rows(partials[0]), _sum_rows(partials[1])


@inline_helper
def _single_row(dy, x, mean, rstd, weight, out, r, inv_n, dw, db):
    """dx of row r, its dweight/dbias terms added to dw, db."""
    xr, gr, o = x[r], dy[r], out[r]
    a, b = _row_sums(gr, xr, weight, mean[r], rstd[r])
    mu, rs, mean_g, mean_g_xhat = _dx_coefficients(a, b, mean[r], rstd[r], inv_n)
    for c in range(weight.shape[0]):
        o[c], t = _dx(gr[c], xr[c], weight[c], mu, rs, mean_g, mean_g_xhat)
        dw[c] += t
        db[c] += np.float64(gr[c])


@helper
def _sum_rows(partials):
    """The column sums of ``partials``, rows added in order (a tenth of a wide backward's time as
    NumPy calls after the kernel: 16 x 8192 partials)."""
    total = partials[0].copy()
    for k in range(1, partials.shape[0]):
        total += partials[k]
    return total


# Outputs of this size and more have their weight and bias read from copies that start where
# the output does in its line (see _memory.line_placed): float64 forward 1.1-1.2x from 2 MiB
# ((512, 512) to (4096, 4096), session 20, AMD EPYC); under 1 MiB nothing, while the two copies
# cost 3.5 us, half the time of a (32, 64) forward.
PLACED_VECTORS_MIN_BYTES = 1 << 20


def _column_vector(values, out, dtype=None):
    """The per-column vector ``values`` in ``dtype`` (default ``out``'s), for a pass writing
    ``out``: line-placed like it when it is large (see PLACED_VECTORS_MIN_BYTES)."""
    dtype = out.dtype if dtype is None else dtype
    if out.nbytes < PLACED_VECTORS_MIN_BYTES:
        return values.astype(dtype, copy=False)
    return _memory.line_placed(values, out.ctypes.data % _memory.ALIGNMENT, dtype)


def forward(x, weight, bias, eps, out):
    """Normalise each row of ``x`` into ``out``; return per-row mean and rstd (float64).
    ``weight``/``bias`` are float64 vectors, applied in the output's dtype."""
    mean = _memory.work_array((x.shape[0],))
    rstd = _memory.work_array((x.shape[0],))
    _forward(x, _column_vector(weight, out), _column_vector(bias, out), eps, out, mean, rstd,
             forward_rows_per_task(x.shape[0]), work=x.size)
    return mean, rstd


def backward(dy, x, mean, rstd, weight, out):
    """Write dx into ``out``; return dweight and dbias (float64, one value per column)."""
    partials = _memory.work_array((2, min(BACKWARD_CHUNKS, x.shape[0]), x.shape[1]))
    return _backward(dy, x, mean, rstd, _column_vector(weight, out, weight.dtype), out, partials,
                     work=x.size)
