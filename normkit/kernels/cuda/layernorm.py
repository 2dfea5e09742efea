"""LayerNorm CUDA kernels on a contiguous (rows, cols) array.

Forward: one block per row (grid-stride over rows); the row's float64 shifted sums are reduced in
shared memory, then the block writes the normalised row (the second read hits L1/L2).
Backward: the same shape for dx; dweight/dbias are column sums over rows, done by a second kernel
with 32 x 8 blocks (coalesced along columns) writing per-block partials that the host adds up.
"""

import math

from numba import cuda, float64

from ._reduce import BLOCK, block_sum2, column_partials

COL_X, ROW_Y = 32, 8


@cuda.jit
def forward_kernel(x, params, eps, out, stats):
    """params: rows (weight, bias); stats: rows (mean, rstd) per row of x, written here."""
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    tid = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
        k = float64(x[r, 0])
        s1 = 0.0
        s2 = 0.0
        for c in range(tid, n_cols, cuda.blockDim.x):
            d = float64(x[r, c]) - k
            s1 += d
            s2 += d * d
        s1, s2 = block_sum2(s1, s2, sa, sb)
        mean_d = s1 / n_cols
        mu = k + mean_d
        rs = 1.0 / math.sqrt(max(s2 / n_cols - mean_d * mean_d, 0.0) + eps)
        for c in range(tid, n_cols, cuda.blockDim.x):
            out[r, c] = (float64(x[r, c]) - mu) * rs * params[0, c] + params[1, c]
        if tid == 0:
            stats[0, r] = mu
            stats[1, r] = rs


@cuda.jit
def backward_dx_kernel(dy, x, stats, params, out):
    n_rows, n_cols = x.shape
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    tid = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
        mu = stats[0, r]
        rs = stats[1, r]
        s1 = 0.0
        s2 = 0.0
        for c in range(tid, n_cols, cuda.blockDim.x):
            g = float64(dy[r, c]) * params[0, c]
            s1 += g
            s2 += g * (float64(x[r, c]) - mu) * rs
        s1, s2 = block_sum2(s1, s2, sa, sb)
        a = s1 / n_cols
        b = s2 / n_cols
        for c in range(tid, n_cols, cuda.blockDim.x):
            xhat = (float64(x[r, c]) - mu) * rs
            out[r, c] = rs * (float64(dy[r, c]) * params[0, c] - a - xhat * b)


@cuda.jit
def param_grad_kernel(dy, x, stats, partials):
    """partials[blockIdx.y, col] and partials[P + blockIdx.y, col] (P = gridDim.y): sums over this
    block's rows of dy * xhat (dweight) and of dy (dbias)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * COL_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        for r in range(cuda.blockIdx.y * cuda.blockDim.y + ty, n_rows, cuda.gridDim.y * cuda.blockDim.y):
            g = float64(dy[r, col])
            s1 += g * (float64(x[r, col]) - stats[0, r]) * stats[1, r]
            s2 += g
    sh1 = cuda.shared.array((ROW_Y, COL_X), float64)
    sh2 = cuda.shared.array((ROW_Y, COL_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)
