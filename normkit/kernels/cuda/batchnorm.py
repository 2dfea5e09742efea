"""BatchNorm CUDA kernels, on the same two layouts as the CPU kernels:

* "wide" (rows, cols): each column belongs to a channel. Blocks of 32 x 8 threads: a warp reads
  32 neighbouring columns of one row (coalesced), 8 rows at a time.
* "runs" (outer, C, inner) with long contiguous inner runs: one block per (channel, slice),
  threads stride along the runs.

Statistics are float64 sums of (x - K) and (x - K)^2 with K the channel's first value (the CPU
module explains why this is exact); each block writes one partial per channel, and the host merges
the partials (a few KB). Elementwise passes use grid-stride loops.
"""

from numba import cuda, float64

from ._reduce import BLOCK, block_partials, column_partials

WIDE_X, WIDE_Y = 32, 8  # largest block shape of the wide kernels (blockDim.y may be smaller)


@cuda.jit
def wide_shifted_sums_kernel(x, partials):
    """partials[blockIdx.y, col] and partials[P + blockIdx.y, col] (P = gridDim.y): this block's
    rows' sum of (x - K) and of its square, where K = x[0, col] (written to partials[2P, col])."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * WIDE_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        k = float64(x[0, col])
        if cuda.blockIdx.y == 0 and ty == 0:
            partials[2 * cuda.gridDim.y, col] = k
        for r in range(cuda.blockIdx.y * cuda.blockDim.y + ty, n_rows, cuda.gridDim.y * cuda.blockDim.y):
            d = float64(x[r, col]) - k
            s1 += d
            s2 += d * d
    sh1 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    sh2 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)


@cuda.jit
def wide_grad_sums_kernel(dy, x, mean, partials):
    """partials[blockIdx.y, col] and partials[P + blockIdx.y, col]: this block's rows' sum of dy
    and of dy * (x - mean)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * WIDE_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        m = mean[col]
        for r in range(cuda.blockIdx.y * cuda.blockDim.y + ty, n_rows, cuda.gridDim.y * cuda.blockDim.y):
            g = float64(dy[r, col])
            s1 += g
            s2 += g * (float64(x[r, col]) - m)
    sh1 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    sh2 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)


@cuda.jit
def runs_shifted_sums_kernel(x, partials):
    """partials[blockIdx.y, c] and partials[P + blockIdx.y, c] for channel c = blockIdx.x: sums
    of (x - K) and of its square over a slice of the channel, K = x[0, c, 0] (in partials[2P, c])."""
    c = cuda.blockIdx.x
    n_outer, _, n_inner = x.shape
    total = n_outer * n_inner
    k = float64(x[0, c, 0])
    if cuda.blockIdx.y == 0 and cuda.threadIdx.x == 0:
        partials[2 * cuda.gridDim.y, c] = k
    s1 = 0.0
    s2 = 0.0
    stride = cuda.gridDim.y * cuda.blockDim.x
    for j in range(cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x, total, stride):
        d = float64(x[j // n_inner, c, j % n_inner]) - k
        s1 += d
        s2 += d * d
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    block_partials(s1, s2, sa, sb, partials, c)


@cuda.jit
def runs_grad_sums_kernel(dy, x, mean, partials):
    """partials[blockIdx.y, c] and partials[P + blockIdx.y, c]: sum of dy and of dy * (x - mean)
    over a slice of channel c."""
    c = cuda.blockIdx.x
    n_outer, _, n_inner = x.shape
    total = n_outer * n_inner
    m = mean[c]
    s1 = 0.0
    s2 = 0.0
    stride = cuda.gridDim.y * cuda.blockDim.x
    for j in range(cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x, total, stride):
        o = j // n_inner
        i = j % n_inner
        g = float64(dy[o, c, i])
        s1 += g
        s2 += g * (float64(x[o, c, i]) - m)
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    block_partials(s1, s2, sa, sb, partials, c)


@cuda.jit
def affine_kernel(x, coef, out, n_inner):
    """Flat (n,) arrays of a contiguous (outer, C, inner) tensor: out = (x - mean) * scale + shift,
    coef = (mean, scale, shift) rows of C values, the channel of element j being (j // n_inner) % C."""
    n_ch = coef.shape[1]
    for j in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        c = (j // n_inner) % n_ch
        out[j] = (float64(x[j]) - coef[0, c]) * coef[1, c] + coef[2, c]


@cuda.jit
def grad_input_kernel(dy, x, coef, out, n_inner):
    """Flat arrays as in affine_kernel: out = scale * (dy - a - (x - mean) * b), coef = (mean,
    scale, a, b) rows of C values."""
    n_ch = coef.shape[1]
    for j in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        c = (j // n_inner) % n_ch
        out[j] = coef[1, c] * (float64(dy[j]) - coef[2, c] - (float64(x[j]) - coef[0, c]) * coef[3, c])
