"""BatchNorm CUDA kernels on a contiguous (outer, C, inner) input, in one of two layouts:

* "wide" (inner < RUN_MIN): the input as (outer, C * inner) rows; column l belongs to channel
  l // inner. Threads run along the columns (coalesced), blocks split the rows.
* "runs": one block per (channel, slice of its outer x inner values); threads run along the
  contiguous inner runs.

Statistics are float64 sums of (x - K) and (x - K)^2 with K the channel's first value (the CPU
module explains why this is exact); blocks write partial sums, and the last block of a channel's
blocks to finish (``_reduce.last_to_arrive``) turns them into the mean, variance and the
coefficients of the elementwise pass, on the device and in the same kernel: no host round trip,
and no second launch (~11 us of host time). That needs a channel's blocks to be known: in the
runs layout they are its blockIdx.x, in the wide layout a column of blocks when a channel is
one column (inner = 1); a wide input with several columns a channel has a one-warp-per-channel
kernel (``finalize_stats_kernel``) after its sums instead. The backward's sums end the same
way. Running statistics that live on the device are updated there too, by the last of those
last blocks (or by ``update_running_kernel`` after a finalize kernel), and eval mode with them
computes its coefficients there (``eval_coefficients_kernel``).

The elementwise passes have a kernel per layout, so that the channel of a value is known per
column (wide) or per row (runs) and found with one integer division per column or row, not per
element (a 64-bit division per element made the first version compute-bound at ~100 G
elements/s).

Every loop over the data takes four values per thread per iteration, loaded before any is
used: with one, each thread waits for every load in turn (~1.3 TB/s of an H200's ~4).
"""

import math

from numba import cuda, float64, int32

from ._reduce import (BLOCK, add4, block_partials, column_partials, column_totals,
                      last_to_arrive, load_shared_by_blocks, partial_sums)
from ._vector_io import load4_row, store4_row

WIDE_X, WIDE_Y = 32, 8  # block shape of the wide reduction kernels


@cuda.jit
def wide_shifted_sums_kernel(x, col_group, partials, arrivals, count, eps, weight, bias, coef,
                             stats, update, factor, unbiased, running_mean, running_var):
    """partials[blockIdx.y, l] and partials[P + blockIdx.y, l] (P = gridDim.y): this block's
    rows' sum of (x - K) and of its square, K = x[0, first column of l's channel]. With a
    channel per column (``col_group`` 1), the last block of each column of blocks to finish
    writes its channels' statistics and coefficients (see :func:`finalize_stats_kernel`), and
    if ``update`` is 1, the last of those updates the running statistics (see
    :func:`update_running_kernel`; ``arrivals`` has a counter for each column of blocks and
    one for them all)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * WIDE_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        k = float64(x[0, (col // col_group) * col_group])
        step = cuda.gridDim.y * cuda.blockDim.y
        r = cuda.blockIdx.y * cuda.blockDim.y + ty
        while r + 3 * step < n_rows:  # four independent loads in flight per thread
            d0 = float64(x[r, col]) - k
            d1 = float64(x[r + step, col]) - k
            d2 = float64(x[r + 2 * step, col]) - k
            d3 = float64(x[r + 3 * step, col]) - k
            s1, s2 = add4(s1, s2, d0, d1, d2, d3)
            r += 4 * step
        while r < n_rows:
            d0 = float64(x[r, col]) - k
            s1 += d0
            s2 += d0 * d0
            r += step
    sh1 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    sh2 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)
    # (col_group is the same in every block: all of a block's threads reach the barriers or none)
    if col_group == 1 and last_to_arrive(arrivals, cuda.blockIdx.x, cuda.gridDim.y):
        s1, s2 = column_totals(partials, col, n_cols, sh1, sh2)
        if ty == 0 and col < n_cols:
            _finish_stats(col, s1, s2, float64(x[0, col]), count, eps, weight, bias, coef, stats)
        if update and last_to_arrive(arrivals, cuda.gridDim.x, cuda.gridDim.x):
            _update_running(stats, factor, unbiased, running_mean, running_var)


@cuda.jit
def wide_grad_sums_kernel(dy, x, stats, col_group, partials, arrivals, weight, inv_count,
                          batch_stats, coef, dbias, dweight):
    """partials[blockIdx.y, l] and partials[P + blockIdx.y, l]: this block's rows' sum of dy and
    of dy * (x - mean), mean = stats[0, channel of l]. With a channel per column (``col_group``
    1), the last block of each column of blocks to finish writes its channels' gradients and
    coefficients (see :func:`finalize_grads_kernel`)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col = cuda.blockIdx.x * WIDE_X + tx
    n_rows, n_cols = x.shape
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        m = stats[0, col // col_group]
        step = cuda.gridDim.y * cuda.blockDim.y
        r = cuda.blockIdx.y * cuda.blockDim.y + ty
        while r + 3 * step < n_rows:
            g0 = float64(dy[r, col])
            g1 = float64(dy[r + step, col])
            g2 = float64(dy[r + 2 * step, col])
            g3 = float64(dy[r + 3 * step, col])
            x0 = float64(x[r, col]) - m
            x1 = float64(x[r + step, col]) - m
            x2 = float64(x[r + 2 * step, col]) - m
            x3 = float64(x[r + 3 * step, col]) - m
            s1 += (g0 + g1) + (g2 + g3)
            s2 += (g0 * x0 + g1 * x1) + (g2 * x2 + g3 * x3)
            r += 4 * step
        while r < n_rows:
            g0 = float64(dy[r, col])
            s1 += g0
            s2 += g0 * (float64(x[r, col]) - m)
            r += step
    sh1 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    sh2 = cuda.shared.array((WIDE_Y, WIDE_X), float64)
    column_partials(s1, s2, sh1, sh2, partials, col, n_cols)
    if col_group == 1 and last_to_arrive(arrivals, cuda.blockIdx.x, cuda.gridDim.y):
        s1, s2 = column_totals(partials, col, n_cols, sh1, sh2)
        if ty == 0 and col < n_cols:
            _finish_grads(col, s1, s2, stats, weight, inv_count, batch_stats, coef, dbias,
                          dweight)


@cuda.jit(device=True)
def _segment(item, n_segments, seg_len, n_inner):
    """(outer index, first inner index, end) of work item ``item`` of a channel: its values are
    split into segments of ``seg_len`` along each inner run."""
    o = item // n_segments
    i0 = (item - o * n_segments) * seg_len
    return o, i0, min(i0 + seg_len, n_inner)


@cuda.jit
def runs_shifted_sums_kernel(x, seg_len, partials, arrivals, count, eps, weight, bias, coef,
                             stats, update, factor, unbiased, running_mean, running_var):
    """partials[blockIdx.y, c] and partials[P + blockIdx.y, c] for channel c = blockIdx.x: sums
    of (x - K) and of its square over this block's segments of the channel, K = x[0, c, 0]; the
    channel's last block to finish writes its statistics and coefficients (see
    :func:`finalize_stats_kernel`), and if ``update`` is 1 the last of those updates the running
    statistics (``arrivals``: a counter per channel and one for them all)."""
    c = cuda.blockIdx.x
    n_outer, _, n_inner = x.shape
    n_segments = (n_inner + seg_len - 1) // seg_len
    k = float64(x[0, c, 0])
    s1 = 0.0
    s2 = 0.0
    for item in range(cuda.blockIdx.y, n_outer * n_segments, cuda.gridDim.y):
        o, i0, end = _segment(item, n_segments, seg_len, n_inner)
        i = i0 + cuda.threadIdx.x
        step = cuda.blockDim.x
        while i + 3 * step < end:  # four independent loads in flight per thread
            d0 = float64(x[o, c, i]) - k
            d1 = float64(x[o, c, i + step]) - k
            d2 = float64(x[o, c, i + 2 * step]) - k
            d3 = float64(x[o, c, i + 3 * step]) - k
            s1, s2 = add4(s1, s2, d0, d1, d2, d3)
            i += 4 * step
        while i < end:
            d0 = float64(x[o, c, i]) - k
            s1 += d0
            s2 += d0 * d0
            i += step
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    block_partials(s1, s2, sa, sb, partials, c)
    if last_to_arrive(arrivals, c, cuda.gridDim.y):
        s1, s2 = partial_sums(partials, c, 1, True, sa, sb)
        if cuda.threadIdx.x == 0:
            _finish_stats(c, s1, s2, k, count, eps, weight, bias, coef, stats)
        if update and last_to_arrive(arrivals, cuda.gridDim.x, cuda.gridDim.x):
            _update_running(stats, factor, unbiased, running_mean, running_var)


@cuda.jit
def runs_grad_sums_kernel(dy, x, stats, seg_len, partials, arrivals, weight, inv_count,
                          batch_stats, coef, dbias, dweight):
    """partials[blockIdx.y, c] and partials[P + blockIdx.y, c]: sum of dy and of dy * (x - mean)
    over this block's segments of channel c, mean = stats[0, c]; the channel's last block to
    finish writes its gradients and coefficients (see :func:`finalize_grads_kernel`)."""
    c = cuda.blockIdx.x
    n_outer, _, n_inner = x.shape
    n_segments = (n_inner + seg_len - 1) // seg_len
    m = stats[0, c]
    s1 = 0.0
    s2 = 0.0
    for item in range(cuda.blockIdx.y, n_outer * n_segments, cuda.gridDim.y):
        o, i0, end = _segment(item, n_segments, seg_len, n_inner)
        i = i0 + cuda.threadIdx.x
        step = cuda.blockDim.x
        while i + 3 * step < end:
            g0 = float64(dy[o, c, i])
            g1 = float64(dy[o, c, i + step])
            g2 = float64(dy[o, c, i + 2 * step])
            g3 = float64(dy[o, c, i + 3 * step])
            x0 = float64(x[o, c, i]) - m
            x1 = float64(x[o, c, i + step]) - m
            x2 = float64(x[o, c, i + 2 * step]) - m
            x3 = float64(x[o, c, i + 3 * step]) - m
            s1 += (g0 + g1) + (g2 + g3)
            s2 += (g0 * x0 + g1 * x1) + (g2 * x2 + g3 * x3)
            i += 4 * step
        while i < end:
            g0 = float64(dy[o, c, i])
            s1 += g0
            s2 += g0 * (float64(x[o, c, i]) - m)
            i += step
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    block_partials(s1, s2, sa, sb, partials, c)
    if last_to_arrive(arrivals, c, cuda.gridDim.y):
        s1, s2 = partial_sums(partials, c, 1, True, sa, sb)
        if cuda.threadIdx.x == 0:
            _finish_grads(c, s1, s2, stats, weight, inv_count, batch_stats, coef, dbias, dweight)


FINALIZE_BLOCK = (32, 8)  # a warp per channel, eight channels per block


@cuda.jit(device=True)
def _channel_sums(partials, n_ch, sa, sb):
    """(channel, valid, s1, s2) for this row of threads of a FINALIZE_BLOCK block: the two sums
    of its channel over every part and every partial column of the channel (``partials`` is
    (2P, C * g), channel c's columns c*g..c*g+g-1: g = inner for the wide layout, 1 for runs)."""
    c = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    valid = c < n_ch
    group = partials.shape[1] // n_ch
    s1, s2 = partial_sums(partials, c * group, group, valid, sa, sb)
    return c, valid and cuda.threadIdx.x == 0, s1, s2


@cuda.jit
def finalize_stats_kernel(partials, x, count, eps, weight, bias, coef, stats):
    """Per channel c, from the shifted partial sums: stats[:, c] = (mean, biased variance, rstd)
    and coef[:, c] = (mean, weight * rstd, bias), the coefficients of y = (x - mean) * scale +
    bias. x: the (outer, C, inner) input, whose x[0, c, 0] is the shift K of channel c's sums.
    For the wide layout with several columns a channel; the other layouts do this at the end of
    their sums kernel."""
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    c, writer, s1, s2 = _channel_sums(partials, stats.shape[1], sa, sb)
    if writer:
        _finish_stats(c, s1, s2, float64(x[0, c, 0]), count, eps, weight, bias, coef, stats)


@cuda.jit(device=True)
def _finish_stats(c, s1, s2, shift, count, eps, weight, bias, coef, stats):
    """Channel c's statistics and coefficients from its sums of (x - shift) and its square."""
    mean_d = s1 / count
    v = s2 / count - mean_d * mean_d
    var = 0.0 if v < 0.0 else v  # written so that NaN stays NaN
    _write_channel(c, shift + mean_d, var, weight, bias, eps, coef, stats)


@cuda.jit(device=True)
def _write_channel(c, mean, var, weight, bias, eps, coef, stats):
    """stats[:, c] = (mean, variance, rstd) and coef[:, c] = (mean, weight * rstd, bias)."""
    rstd = 1.0 / math.sqrt(var + eps)
    stats[0, c] = mean
    stats[1, c] = var
    stats[2, c] = rstd
    coef[0, c] = mean
    coef[1, c] = weight[c] * rstd
    coef[2, c] = bias[c]


@cuda.jit
def update_running_kernel(stats, factor, unbiased, running_mean, running_var):
    """running = (1 - factor) * running + factor * batch statistic, in place on the device, the
    variance taking the unbiased batch variance (biased * ``unbiased``): the CPU path's update
    (normkit._running), with its policy that a batch with any non-finite channel statistic
    changes nothing. One block, so that every channel is checked before any is written (1024
    threads on a GPU: with 256 it took 26 us for 8192 channels on an H100). After a finalize
    kernel; the sums kernels that finish their channels do this in their last block."""
    _update_running(stats, factor, unbiased, running_mean, running_var)


@cuda.jit(device=True)
def _update_running(stats, factor, unbiased, running_mean, running_var):
    """:func:`update_running_kernel`'s work, by every thread of one block (of any shape)."""
    any_bad = cuda.shared.array(1, int32)
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    n_threads = cuda.blockDim.x * cuda.blockDim.y
    n_ch = stats.shape[1]
    if tid == 0:
        any_bad[0] = 0
    cuda.syncthreads()
    for c in range(tid, n_ch, n_threads):
        # (other blocks of the same kernel may have written them: read past L1)
        if not (math.isfinite(load_shared_by_blocks(stats, 0, c))
                and math.isfinite(load_shared_by_blocks(stats, 1, c))):
            any_bad[0] = 1  # every writer stores the same value
    cuda.syncthreads()
    if any_bad[0] == 0:
        for c in range(tid, n_ch, n_threads):
            mean = load_shared_by_blocks(stats, 0, c)
            var = load_shared_by_blocks(stats, 1, c)
            running_mean[c] = (1.0 - factor) * running_mean[c] + factor * mean
            running_var[c] = (1.0 - factor) * running_var[c] + factor * (var * unbiased)


@cuda.jit
def eval_coefficients_kernel(running_mean, running_var, weight, bias, eps, coef, stats):
    """Eval mode with running statistics on the device, a thread per channel: stats[:, c] =
    (mean, variance, rstd) and coef[:, c] = (mean, weight * rstd, bias), in float64 as on the
    host."""
    c = cuda.grid(1)
    if c < stats.shape[1]:
        _write_channel(c, float64(running_mean[c]), float64(running_var[c]), weight, bias, eps,
                       coef, stats)


@cuda.jit
def finalize_grads_kernel(partials, stats, weight, inv_count, batch_stats, coef, dbias, dweight):
    """Per channel c: dbias[c] = sum dy and dweight[c] = sum dy * (x - mean) * rstd, from the
    partial sums, and coef[:, c] = (mean, k, a, b) of
    dx = k * (dy - a - (x - mean) * b), k = rstd * weight, a = sum(dy) / count and
    b = sum(dy * (x - mean)) * rstd^2 / count (zero unless ``batch_stats`` is 1: running
    statistics are constants). dbias/dweight may be float32 (the gradients of float32
    parameters that stay on the device). For the wide layout with several columns a channel;
    the other layouts do this at the end of their sums kernel."""
    sa = cuda.shared.array(BLOCK, float64)
    sb = cuda.shared.array(BLOCK, float64)
    c, writer, s1, s2 = _channel_sums(partials, stats.shape[1], sa, sb)
    if writer:
        _finish_grads(c, s1, s2, stats, weight, inv_count, batch_stats, coef, dbias, dweight)


@cuda.jit(device=True)
def _finish_grads(c, s1, s2, stats, weight, inv_count, batch_stats, coef, dbias, dweight):
    """Channel c's gradients and backward coefficients from its sums of dy (s1) and of
    dy * (x - mean) (s2)."""
    rstd = stats[2, c]
    dbias[c] = s1
    dweight[c] = s2 * rstd
    coef[0, c] = stats[0, c]
    coef[1, c] = rstd * weight[c]
    a = 0.0
    b = 0.0
    if batch_stats:
        a = s1 * inv_count
        b = s2 * (rstd * rstd * inv_count)
    coef[2, c] = a
    coef[3, c] = b


# Elementwise passes. Each thread walks down a column, four rows at a time. In the wide layout
# the column is one channel (col // inner), whose coefficients stay in registers; in the runs
# layout each row is a channel (row % C), looked up per value.

@cuda.jit
def affine_wide_kernel(x, coef, col_group, out):
    """out = (x - mean) * scale + shift on (rows, C * inner) arrays, coef rows (mean, scale,
    shift) of channel col // col_group."""
    n_rows, n_cols = x.shape
    r0 = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    for col in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n_cols,
                     cuda.gridDim.x * cuda.blockDim.x):
        c = col // col_group
        m = coef[0, c]
        k = coef[1, c]
        t = coef[2, c]
        r = r0
        while r + 3 * step < n_rows:
            v0 = float64(x[r, col])
            v1 = float64(x[r + step, col])
            v2 = float64(x[r + 2 * step, col])
            v3 = float64(x[r + 3 * step, col])
            out[r, col] = (v0 - m) * k + t
            out[r + step, col] = (v1 - m) * k + t
            out[r + 2 * step, col] = (v2 - m) * k + t
            out[r + 3 * step, col] = (v3 - m) * k + t
            r += 4 * step
        while r < n_rows:
            out[r, col] = (float64(x[r, col]) - m) * k + t
            r += step


@cuda.jit(device=True)
def _coef4(coef, row, col, col_group):
    """Coefficient ``row`` of the channels of columns col..col + 3 (wide layout)."""
    return (coef[row, col // col_group], coef[row, (col + 1) // col_group],
            coef[row, (col + 2) // col_group], coef[row, (col + 3) // col_group])


@cuda.jit
def affine_wide_vec4_kernel(x, coef, col_group, out):
    """:func:`affine_wide_kernel` with 16-byte loads and stores (see ._vector_io): float32
    arrays of a multiple of four columns, 16-byte aligned. A thread takes four neighbouring
    columns (whose channels may differ: each has its own coefficients), two rows at a time.

    Measured on an H100 against the scalar kernel: (65536, 256) 50 us against 53 (eval 54
    against 58), but (256, 8192) 18 against 14 us, where each thread has one row to amortise
    its twelve coefficients, and (401408, 64) 83 against 79 us, whose 16 column groups leave
    half of each warp idle; the launcher picks it only for tall inputs of >= 128 columns. The
    same treatment of the backward's grad_input kernel was slower at every shape tried
    (87-152 us against 80-121) and is not kept."""
    n_rows, n_cols = x.shape
    r0 = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    for col in range((cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) * 4, n_cols,
                     cuda.gridDim.x * cuda.blockDim.x * 4):
        m0, m1, m2, m3 = _coef4(coef, 0, col, col_group)
        k0, k1, k2, k3 = _coef4(coef, 1, col, col_group)
        t0, t1, t2, t3 = _coef4(coef, 2, col, col_group)
        r = r0
        while r + step < n_rows:
            a0, a1, a2, a3 = load4_row(x, r, col)
            b0, b1, b2, b3 = load4_row(x, r + step, col)
            store4_row(out, r, col, (a0 - m0) * k0 + t0, (a1 - m1) * k1 + t1,
                       (a2 - m2) * k2 + t2, (a3 - m3) * k3 + t3)
            store4_row(out, r + step, col, (b0 - m0) * k0 + t0, (b1 - m1) * k1 + t1,
                       (b2 - m2) * k2 + t2, (b3 - m3) * k3 + t3)
            r += 2 * step
        if r < n_rows:
            a0, a1, a2, a3 = load4_row(x, r, col)
            store4_row(out, r, col, (a0 - m0) * k0 + t0, (a1 - m1) * k1 + t1,
                       (a2 - m2) * k2 + t2, (a3 - m3) * k3 + t3)


@cuda.jit(device=True)
def _next_channel(c, step, n_ch):
    """(c + step) % n_ch for 0 <= c, step < n_ch, without a division."""
    c += step
    return c - n_ch if c >= n_ch else c


@cuda.jit
def affine_runs_kernel(x, coef, out):
    """out = (x - mean) * scale + shift on (outer * C, inner) arrays, coef rows (mean, scale,
    shift) of channel row % C. Threads walk down columns like the wide kernels (four rows at a
    time, measured 2x faster than four values along a row here), each row's channel found by
    an addition from the previous one's."""
    n_rows, n_cols = x.shape
    n_ch = coef.shape[1]
    r0 = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    c_step = step % n_ch
    for col in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n_cols,
                     cuda.gridDim.x * cuda.blockDim.x):
        c0 = r0 % n_ch
        r = r0
        while r + 3 * step < n_rows:
            c1 = _next_channel(c0, c_step, n_ch)
            c2 = _next_channel(c1, c_step, n_ch)
            c3 = _next_channel(c2, c_step, n_ch)
            v0 = float64(x[r, col])
            v1 = float64(x[r + step, col])
            v2 = float64(x[r + 2 * step, col])
            v3 = float64(x[r + 3 * step, col])
            out[r, col] = (v0 - coef[0, c0]) * coef[1, c0] + coef[2, c0]
            out[r + step, col] = (v1 - coef[0, c1]) * coef[1, c1] + coef[2, c1]
            out[r + 2 * step, col] = (v2 - coef[0, c2]) * coef[1, c2] + coef[2, c2]
            out[r + 3 * step, col] = (v3 - coef[0, c3]) * coef[1, c3] + coef[2, c3]
            c0 = _next_channel(c3, c_step, n_ch)
            r += 4 * step
        while r < n_rows:
            out[r, col] = (float64(x[r, col]) - coef[0, c0]) * coef[1, c0] + coef[2, c0]
            c0 = _next_channel(c0, c_step, n_ch)
            r += step


@cuda.jit
def grad_input_wide_kernel(dy, x, coef, col_group, out):
    """out = k * (dy - a - (x - mean) * b) on (rows, C * inner) arrays, coef rows (mean, k, a,
    b) of channel col // col_group."""
    n_rows, n_cols = x.shape
    r0 = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    for col in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n_cols,
                     cuda.gridDim.x * cuda.blockDim.x):
        c = col // col_group
        m = coef[0, c]
        k = coef[1, c]
        a = coef[2, c]
        b = coef[3, c]
        r = r0
        while r + 3 * step < n_rows:
            g0 = float64(dy[r, col])
            g1 = float64(dy[r + step, col])
            g2 = float64(dy[r + 2 * step, col])
            g3 = float64(dy[r + 3 * step, col])
            v0 = float64(x[r, col])
            v1 = float64(x[r + step, col])
            v2 = float64(x[r + 2 * step, col])
            v3 = float64(x[r + 3 * step, col])
            out[r, col] = k * (g0 - a - (v0 - m) * b)
            out[r + step, col] = k * (g1 - a - (v1 - m) * b)
            out[r + 2 * step, col] = k * (g2 - a - (v2 - m) * b)
            out[r + 3 * step, col] = k * (g3 - a - (v3 - m) * b)
            r += 4 * step
        while r < n_rows:
            out[r, col] = k * (float64(dy[r, col]) - a - (float64(x[r, col]) - m) * b)
            r += step


@cuda.jit(device=True)
def _grad(g, v, coef, c):
    return coef[1, c] * (g - coef[2, c] - (v - coef[0, c]) * coef[3, c])


@cuda.jit
def grad_input_runs_kernel(dy, x, coef, out):
    """out = k * (dy - a - (x - mean) * b) on (outer * C, inner) arrays, coef rows (mean, k, a,
    b) of channel row % C, walking down columns as affine_runs_kernel."""
    n_rows, n_cols = x.shape
    n_ch = coef.shape[1]
    r0 = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    step = cuda.gridDim.y * cuda.blockDim.y
    c_step = step % n_ch
    for col in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n_cols,
                     cuda.gridDim.x * cuda.blockDim.x):
        c0 = r0 % n_ch
        r = r0
        while r + 3 * step < n_rows:
            c1 = _next_channel(c0, c_step, n_ch)
            c2 = _next_channel(c1, c_step, n_ch)
            c3 = _next_channel(c2, c_step, n_ch)
            g0 = float64(dy[r, col])
            g1 = float64(dy[r + step, col])
            g2 = float64(dy[r + 2 * step, col])
            g3 = float64(dy[r + 3 * step, col])
            v0 = float64(x[r, col])
            v1 = float64(x[r + step, col])
            v2 = float64(x[r + 2 * step, col])
            v3 = float64(x[r + 3 * step, col])
            out[r, col] = _grad(g0, v0, coef, c0)
            out[r + step, col] = _grad(g1, v1, coef, c1)
            out[r + 2 * step, col] = _grad(g2, v2, coef, c2)
            out[r + 3 * step, col] = _grad(g3, v3, coef, c3)
            c0 = _next_channel(c3, c_step, n_ch)
            r += 4 * step
        while r < n_rows:
            out[r, col] = _grad(float64(dy[r, col]), float64(x[r, col]), coef, c0)
            c0 = _next_channel(c0, c_step, n_ch)
            r += step
