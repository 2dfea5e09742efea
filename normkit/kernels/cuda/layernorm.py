"""LayerNorm CUDA kernels on a contiguous (rows, cols) array.

Forward and the dx of the backward: each row is handled by one row of threads of a 2-D block
(blockDim.x threads per row, blockDim.y rows per block, so that short rows still fill a block).
The row's float64 sums are reduced in shared memory, then the same threads write the row (its
second read hits L1/L2). Loops take four values per thread per iteration: with one, each
thread waits for every load in turn, and the kernels reached only ~1.3 TB/s of an H200's ~4.
(Holding a thread's values in registers instead of reading them twice measured 2x slower: the
eight conditional loads did not overlap.) Float32 rows of a multiple of four values have twins of
the forward and dx kernels with 16-byte loads and stores (``*_vec4_kernel``, see ._vector_io),
1.25-1.6x faster on an H100. dweight/dbias are column sums over rows: a kernel with 32 x 8 blocks
(coalesced along columns) writes per-block partials, which the last block of each column of
blocks adds up, so that only the two final rows travel to the host (none do when the parameters
are device arrays).
"""

import math

from numba import cuda, float64

from ._reduce import BLOCK, add4, column_partials, column_totals, last_to_arrive, row_sum2
from ._vector_io import load4, load4_row, store4_row

COL_X, ROW_Y = 32, 8


@cuda.jit
def forward_kernel(x, weight, bias, eps, out, stats):
    """stats: rows (mean, rstd) per row of x, written here."""
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    # Every thread runs the same number of iterations (syncthreads in row_sum2 needs it).
    for first in range(cuda.blockIdx.x * cuda.blockDim.y, n_rows, cuda.gridDim.x * cuda.blockDim.y):
        r = first + cuda.threadIdx.y
        valid = r < n_rows
        s1 = 0.0
        s2 = 0.0
        k = 0.0
        if valid:
            k = float64(x[r, 0])
            c = tid
            while c + 3 * step < n_cols:  # four independent loads in flight per thread
                d0 = float64(x[r, c]) - k
                d1 = float64(x[r, c + step]) - k
                d2 = float64(x[r, c + 2 * step]) - k
                d3 = float64(x[r, c + 3 * step]) - k
                s1, s2 = add4(s1, s2, d0, d1, d2, d3)
                c += 4 * step
            while c < n_cols:
                d0 = float64(x[r, c]) - k
                s1 += d0
                s2 += d0 * d0
                c += step
        s1, s2 = row_sum2(s1, s2, sa, sb)
        if valid:
            mean_d = s1 / n_cols
            mu = k + mean_d
            rs = 1.0 / math.sqrt(max(s2 / n_cols - mean_d * mean_d, 0.0) + eps)
            c = tid
            while c + 3 * step < n_cols:
                v0 = float64(x[r, c])
                v1 = float64(x[r, c + step])
                v2 = float64(x[r, c + 2 * step])
                v3 = float64(x[r, c + 3 * step])
                out[r, c] = (v0 - mu) * rs * weight[c] + bias[c]
                out[r, c + step] = (v1 - mu) * rs * weight[c + step] + bias[c + step]
                out[r, c + 2 * step] = (v2 - mu) * rs * weight[c + 2 * step] + bias[c + 2 * step]
                out[r, c + 3 * step] = (v3 - mu) * rs * weight[c + 3 * step] + bias[c + 3 * step]
                c += 4 * step
            while c < n_cols:
                out[r, c] = (float64(x[r, c]) - mu) * rs * weight[c] + bias[c]
                c += step
            if tid == 0:
                stats[0, r] = mu
                stats[1, r] = rs


@cuda.jit
def forward_vec4_kernel(x, weight, bias, eps, out, stats):
    """:func:`forward_kernel` with 16-byte loads and stores (see ._vector_io): float32 rows of a
    multiple of four values, every array 16-byte aligned. A thread takes four neighbouring
    values at a time, two such loads in flight in the sums' loop."""
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    c0 = cuda.threadIdx.x * 4
    step = cuda.blockDim.x * 4
    for first in range(cuda.blockIdx.x * cuda.blockDim.y, n_rows, cuda.gridDim.x * cuda.blockDim.y):
        r = first + cuda.threadIdx.y
        valid = r < n_rows
        s1 = 0.0
        s2 = 0.0
        k = 0.0
        if valid:
            k = float64(x[r, 0])
            c = c0
            while c + step < n_cols:
                a0, a1, a2, a3 = load4_row(x, r, c)
                b0, b1, b2, b3 = load4_row(x, r, c + step)
                s1, s2 = add4(s1, s2, a0 - k, a1 - k, a2 - k, a3 - k)
                s1, s2 = add4(s1, s2, b0 - k, b1 - k, b2 - k, b3 - k)
                c += 2 * step
            if c < n_cols:
                a0, a1, a2, a3 = load4_row(x, r, c)
                s1, s2 = add4(s1, s2, a0 - k, a1 - k, a2 - k, a3 - k)
        s1, s2 = row_sum2(s1, s2, sa, sb)
        if valid:
            mean_d = s1 / n_cols
            mu = k + mean_d
            rs = 1.0 / math.sqrt(max(s2 / n_cols - mean_d * mean_d, 0.0) + eps)
            for c in range(c0, n_cols, step):
                v0, v1, v2, v3 = load4_row(x, r, c)
                w0, w1, w2, w3 = load4(weight, c)
                b0, b1, b2, b3 = load4(bias, c)
                store4_row(out, r, c, (v0 - mu) * rs * w0 + b0, (v1 - mu) * rs * w1 + b1,
                           (v2 - mu) * rs * w2 + b2, (v3 - mu) * rs * w3 + b3)
            if cuda.threadIdx.x == 0:
                stats[0, r] = mu
                stats[1, r] = rs


@cuda.jit
def backward_dx_kernel(dy, x, stats, weight, out):
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    for first in range(cuda.blockIdx.x * cuda.blockDim.y, n_rows, cuda.gridDim.x * cuda.blockDim.y):
        r = first + cuda.threadIdx.y
        valid = r < n_rows
        s1 = 0.0
        s2 = 0.0
        mu = 0.0
        rs = 0.0
        if valid:
            mu = stats[0, r]
            rs = stats[1, r]
            c = tid
            while c + 3 * step < n_cols:  # four independent pairs of loads in flight per thread
                g0 = float64(dy[r, c]) * weight[c]
                g1 = float64(dy[r, c + step]) * weight[c + step]
                g2 = float64(dy[r, c + 2 * step]) * weight[c + 2 * step]
                g3 = float64(dy[r, c + 3 * step]) * weight[c + 3 * step]
                x0 = float64(x[r, c]) - mu
                x1 = float64(x[r, c + step]) - mu
                x2 = float64(x[r, c + 2 * step]) - mu
                x3 = float64(x[r, c + 3 * step]) - mu
                s1 += (g0 + g1) + (g2 + g3)
                s2 += (g0 * x0 + g1 * x1) + (g2 * x2 + g3 * x3)
                c += 4 * step
            while c < n_cols:
                g0 = float64(dy[r, c]) * weight[c]
                s1 += g0
                s2 += g0 * (float64(x[r, c]) - mu)
                c += step
        s1, s2 = row_sum2(s1, s2, sa, sb)
        if valid:
            a = s1 / n_cols
            b = s2 * rs / n_cols
            c = tid
            while c + 3 * step < n_cols:
                g0 = float64(dy[r, c]) * weight[c]
                g1 = float64(dy[r, c + step]) * weight[c + step]
                g2 = float64(dy[r, c + 2 * step]) * weight[c + 2 * step]
                g3 = float64(dy[r, c + 3 * step]) * weight[c + 3 * step]
                x0 = (float64(x[r, c]) - mu) * rs
                x1 = (float64(x[r, c + step]) - mu) * rs
                x2 = (float64(x[r, c + 2 * step]) - mu) * rs
                x3 = (float64(x[r, c + 3 * step]) - mu) * rs
                out[r, c] = rs * (g0 - a - x0 * b)
                out[r, c + step] = rs * (g1 - a - x1 * b)
                out[r, c + 2 * step] = rs * (g2 - a - x2 * b)
                out[r, c + 3 * step] = rs * (g3 - a - x3 * b)
                c += 4 * step
            while c < n_cols:
                xhat = (float64(x[r, c]) - mu) * rs
                out[r, c] = rs * (float64(dy[r, c]) * weight[c] - a - xhat * b)
                c += step


@cuda.jit(device=True)
def _dx_terms(dy, x, weight, r, c, mu):
    """(g0..g3, d0..d3) for the four values at [r, c:c + 4]: g = dy * weight and d = x - mean,
    in float64, by three 16-byte loads."""
    g0, g1, g2, g3 = load4_row(dy, r, c)
    w0, w1, w2, w3 = load4(weight, c)
    x0, x1, x2, x3 = load4_row(x, r, c)
    return (float64(g0) * w0, float64(g1) * w1, float64(g2) * w2, float64(g3) * w3,
            x0 - mu, x1 - mu, x2 - mu, x3 - mu)


@cuda.jit
def backward_dx_vec4_kernel(dy, x, stats, weight, out):
    """:func:`backward_dx_kernel` with 16-byte loads and stores, on the terms of
    :func:`forward_vec4_kernel` (float32 rows of a multiple of four values, 16-byte aligned)."""
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    c0 = cuda.threadIdx.x * 4
    step = cuda.blockDim.x * 4
    for first in range(cuda.blockIdx.x * cuda.blockDim.y, n_rows, cuda.gridDim.x * cuda.blockDim.y):
        r = first + cuda.threadIdx.y
        valid = r < n_rows
        s1 = 0.0
        s2 = 0.0
        mu = 0.0
        rs = 0.0
        if valid:
            mu = stats[0, r]
            rs = stats[1, r]
            for c in range(c0, n_cols, step):
                g0, g1, g2, g3, d0, d1, d2, d3 = _dx_terms(dy, x, weight, r, c, mu)
                s1 += (g0 + g1) + (g2 + g3)
                s2 += (g0 * d0 + g1 * d1) + (g2 * d2 + g3 * d3)
        s1, s2 = row_sum2(s1, s2, sa, sb)
        if valid:
            a = s1 / n_cols
            b = s2 * rs / n_cols
            for c in range(c0, n_cols, step):
                g0, g1, g2, g3, d0, d1, d2, d3 = _dx_terms(dy, x, weight, r, c, mu)
                store4_row(out, r, c, rs * (g0 - a - d0 * rs * b), rs * (g1 - a - d1 * rs * b),
                           rs * (g2 - a - d2 * rs * b), rs * (g3 - a - d3 * rs * b))


@cuda.jit
def param_grad_kernel(dy, x, stats, partials, arrivals, dweight, dbias):
    """dweight[col] = sum of dy * xhat and dbias[col] = sum of dy over the rows. Each block
    writes its rows' sums to partials[blockIdx.y, col] and partials[P + blockIdx.y, col] (P =
    gridDim.y); the last block of each column of blocks to finish adds them up (``arrivals``:
    one zeroed int32 counter per column of blocks)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        step = cuda.gridDim.y * cuda.blockDim.y
        r = cuda.blockIdx.y * cuda.blockDim.y + ty
        while r + 3 * step < n_rows:  # four independent pairs of loads in flight per thread
            g0 = float64(dy[r, col])
            g1 = float64(dy[r + step, col])
            g2 = float64(dy[r + 2 * step, col])
            g3 = float64(dy[r + 3 * step, col])
            h0 = (float64(x[r, col]) - stats[0, r]) * stats[1, r]
            h1 = (float64(x[r + step, col]) - stats[0, r + step]) * stats[1, r + step]
            h2 = (float64(x[r + 2 * step, col]) - stats[0, r + 2 * step]) * stats[1, r + 2 * step]
            h3 = (float64(x[r + 3 * step, col]) - stats[0, r + 3 * step]) * stats[1, r + 3 * step]
            s1 += (g0 * h0 + g1 * h1) + (g2 * h2 + g3 * h3)
            s2 += (g0 + g1) + (g2 + g3)
            r += 4 * step
        while r < n_rows:
            g0 = float64(dy[r, col])
            s1 += g0 * (float64(x[r, col]) - stats[0, r]) * stats[1, r]
            s2 += g0
            r += step
    sh1 = cuda.shared.array((ROW_Y, COL_X), float64)
    sh2 = cuda.shared.array((ROW_Y, COL_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)
    if last_to_arrive(arrivals, cuda.blockIdx.x, cuda.gridDim.y):
        s1, s2 = column_totals(partials, col, n_cols, sh1, sh2)
        if ty == 0 and col < n_cols:
            dweight[col] = s1
            dbias[col] = s2
