"""BatchNorm CPU kernels.

The dispatcher hands over one of two layouts, both with the channel as a fixed axis:

* "wide": a 2D array (rows, cols) where every column belongs to one channel and ``group``
  neighbouring columns share a channel ((N, C) data, channels-last data, short inner runs);
* "runs": a 3D array (outer, C, inner) whose inner runs are long and contiguous (NCHW images).

Statistics are accumulated in float64 in one pass, as sums of (x - K) and (x - K)^2 where the
shift K is a value of the data itself (the channel's first value). Why this is exact enough: the
rounding error of var = E[(x-K)^2] - E[x-K]^2 is about eps64 * E[(x-K)^2] / var relative, and
since K is one of the n values, var >= (K - mean)^2 / n, so that ratio is at most 1 + n: at most
n * 1.1e-16 relative even for adversarial data (1e-11 for a million values), and about 1e-16 for
ordinary data. Unlike E[x^2] - E[x]^2 it cannot lose the signal to a large mean (randn + 1e6),
and unlike a two-pass variance it reads the data once. Tiles have a fixed size, so results do not
depend on the thread count. The elementwise passes (output, input gradient) compute in the
output's dtype with the mean split in two (see the comment before :func:`forward_coefficients`).
"""

import numpy as np
from numba import prange

from ... import config
from ._compile import helper, inline_helper, kernel, wide_vectors
from ._streaming import (LINE_BYTES, at, end_streams, line_span, line_writer, part,
                         worth_streaming)

# Tiles of the partial-sum passes: one tile is one parallel task and one row of partial sums,
# COL_TILE columns wide (its partials stay in L1; measured best) and big enough that each of the
# four rows read per sweep is a long sequential stream. Fixed sizes: results do not depend on
# the thread count.
COL_TILE = 1024
TILE_ELEMENTS = 131072
# Tiles of the elementwise passes (no partials to keep in cache): whole rows up to this many
# columns, measured 10-20% faster than 1024-column tiles on (256, 8192). Runs-layout tasks cover
# as many values (several short runs, or a stretch of a long one), so that a task that streams
# its output (see _streaming.py) pays for its closing fence over at least 256 KiB.
ELEMENTWISE_COL_TILE = 8192
ELEMENTWISE_TILE_ELEMENTS = 65536
# Streamed tiles are narrower: the three or four per-column coefficient vectors of 2048 columns
# stay in L1 beside the streaming stores (whole 8192-column rows measured 10% slower streamed).
STREAM_COL_TILE = 2048
RUN_MIN = 32            # inner runs at least this long use the "runs" kernels
SEGMENT = 16384         # longest stretch of one run in one task of the sum passes


def row_tile_for(n_cols):
    """Rows per partial-sum tile for a wide array of ``n_cols`` columns."""
    return max(16, TILE_ELEMENTS // min(n_cols, COL_TILE))


def elementwise_tile(n_cols, stream=False):
    """(rows, columns) per elementwise tile for a wide array of ``n_cols`` columns."""
    cols = min(n_cols, STREAM_COL_TILE if stream else ELEMENTWISE_COL_TILE)
    return max(1, ELEMENTWISE_TILE_ELEMENTS // cols), cols


def elementwise_runs(n_inner):
    """(runs, segment) per elementwise task for a runs array with inner runs of ``n_inner``."""
    return max(1, ELEMENTWISE_TILE_ELEMENTS // n_inner), ELEMENTWISE_TILE_ELEMENTS


# Rows (wide) or runs shorter than this are not streamed: finding the 64-byte lines of each row
# costs more than streaming saves (rows of 64 float32 values: 0.6-0.9x; 256 values: 1.1-1.2x).
STREAM_MIN_ROW_BYTES = 1024


def streams(x, out):
    """Whether an elementwise pass from ``x`` (wide or runs) into ``out`` streams its output."""
    return worth_streaming(out) and x.shape[-1] * x.itemsize >= STREAM_MIN_ROW_BYTES


# ----------------------------------------------------------------------------------------------
# Elementwise passes on one 1-D row or run: y = (x - centre) * scale + shift and
# dx = dy * k_dy + (x - centre) * k_x + k_0, with per-channel scalars (runs) or per-column vectors
# (wide). Outputs worth it are written with streaming stores (see _streaming.py): the scalar
# loops write the values before the first 64-byte line and after the last whole one. The line
# writers spell out the same arithmetic in the same order, so both round alike (tested).
# ----------------------------------------------------------------------------------------------

# (The scalar loops run from 0 over slices: an index from range(j0, j1) could be negative as far
# as Numba knows, and the wraparound check it then adds stops LLVM vectorising the loop.)

@inline_helper
def _affine_values(x, centre, scale, shift, out):
    for j in range(out.shape[0]):
        out[j] = (x[j] - at(centre, j)) * at(scale, j) + at(shift, j)


_affine_lines = line_writer(
    lambda m, x, centre, scale, shift: m.add(m.mul(m.sub(x, centre), scale), shift))


@inline_helper
def _affine(x, centre, scale, shift, out, stream):
    """out = (x - centre) * scale + shift, in out's dtype (see :func:`affine`)."""
    start, stop, step = line_span(out, stream and x.strides[0] == x.itemsize)
    if stop == 0:  # nothing to stream: one loop, no slicing (it costs on short rows)
        _affine_values(x, centre, scale, shift, out)
        return
    if start:
        _affine_values(x[:start], part(centre, 0, start), part(scale, 0, start),
                       part(shift, 0, start), out[:start])
    for j in range(start, stop, step):
        _affine_lines(out, j, (x, centre, scale, shift))
    n = out.shape[0]
    if stop < n:
        _affine_values(x[stop:], part(centre, stop, n), part(scale, stop, n),
                       part(shift, stop, n), out[stop:])


@inline_helper
def _grad_input_values(dy, x, centre, k_dy, k_x, k_0, out):
    for j in range(out.shape[0]):
        out[j] = dy[j] * at(k_dy, j) + ((x[j] - at(centre, j)) * at(k_x, j) + at(k_0, j))


_grad_input_lines = line_writer(
    lambda m, dy, x, centre, k_dy, k_x, k_0:
    m.add(m.mul(dy, k_dy), m.add(m.mul(m.sub(x, centre), k_x), k_0)))


@inline_helper
def _grad_input(dy, x, centre, k_dy, k_x, k_0, out, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0, in out's dtype (see :func:`grad_input`)."""
    unit_strides = x.strides[0] == x.itemsize and dy.strides[0] == dy.itemsize
    start, stop, step = line_span(out, stream and unit_strides)
    if stop == 0:
        _grad_input_values(dy, x, centre, k_dy, k_x, k_0, out)
        return
    if start:
        _grad_input_values(dy[:start], x[:start], part(centre, 0, start), part(k_dy, 0, start),
                           part(k_x, 0, start), part(k_0, 0, start), out[:start])
    for j in range(start, stop, step):
        _grad_input_lines(out, j, (dy, x, centre, k_dy, k_x, k_0))
    n = out.shape[0]
    if stop < n:
        _grad_input_values(dy[stop:], x[stop:], part(centre, stop, n), part(k_dy, stop, n),
                           part(k_x, stop, n), part(k_0, stop, n), out[stop:])


# ----------------------------------------------------------------------------------------------
# "wide" layout: x is (rows, cols)
# ----------------------------------------------------------------------------------------------

# Inner loops index 1-D row slices (x[r, c0:c1]) rather than x[r, c]: Numba then proves the
# accesses contiguous and LLVM vectorises them (measured: 4x faster on (65536, 256) float32).

@helper
def _tile_shifted_sums(x, r0, r1, c0, c1, k, s1, s2):
    """Add sum(x - k) and sum((x - k)^2) over rows r0:r1 of columns c0:c1 to s1 and s2."""
    wide_vectors()  # see _compile.py: the moment sums are compute-bound
    # Four rows per sweep, one from each quarter of the tile: the partial sums are updated
    # once per four rows (the store port is out of the critical path) and the four rows are
    # four sequential streams the hardware prefetcher follows. Four neighbouring rows
    # instead confused it: measured 1.7x slower from DRAM, though faster in cache.
    q = (r1 - r0) // 4
    for r in range(r0, r0 + q):
        x0, x1, x2, x3 = x[r, c0:c1], x[r + q, c0:c1], x[r + 2 * q, c0:c1], x[r + 3 * q, c0:c1]
        for j in range(k.shape[0]):
            d0 = x0[j] - k[j]
            d1 = x1[j] - k[j]
            d2 = x2[j] - k[j]
            d3 = x3[j] - k[j]
            s1[j] += (d0 + d1) + (d2 + d3)
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for r in range(r0 + 4 * q, r1):
        xr = x[r, c0:c1]
        for j in range(k.shape[0]):
            d = xr[j] - k[j]
            s1[j] += d
            s2[j] += d * d


@helper
def _tile_affine(x, r0, r1, c0, c1, centre, scale, shift, out, stream):
    """out = (x - centre) * scale + shift over rows r0:r1 of columns c0:c1 (vectors of c1 - c0)."""
    if stream:
        for r in range(r0, r1):
            _affine(x[r, c0:c1], centre, scale, shift, out[r, c0:c1], True)
    else:  # without the streaming set-up, which costs on short rows
        for r in range(r0, r1):
            _affine_values(x[r, c0:c1], centre, scale, shift, out[r, c0:c1])


@helper
def _tile_grad_sums(dy, x, r0, r1, c0, c1, mean, s1, s2):
    """Add sum(dy) and sum(dy * (x - mean)) over rows r0:r1 of columns c0:c1 to s1 and s2."""
    h = (r1 - r0) // 2
    for r in range(r0, r0 + h):  # two rows per sweep, from the two halves of the tile
        x0, x1 = x[r, c0:c1], x[r + h, c0:c1]  # (see _tile_shifted_sums)
        g0, g1 = dy[r, c0:c1], dy[r + h, c0:c1]
        for j in range(mean.shape[0]):
            a0 = np.float64(g0[j])
            a1 = np.float64(g1[j])
            s1[j] += a0 + a1
            s2[j] += a0 * (x0[j] - mean[j]) + a1 * (x1[j] - mean[j])
    for r in range(r0 + 2 * h, r1):
        xr = x[r, c0:c1]
        gr = dy[r, c0:c1]
        for j in range(mean.shape[0]):
            g = np.float64(gr[j])
            s1[j] += g
            s2[j] += g * (xr[j] - mean[j])


@helper
def _tile_grad_input(dy, x, r0, r1, c0, c1, centre, k_dy, k_x, k_0, out, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 over rows r0:r1 of columns c0:c1."""
    if stream:
        for r in range(r0, r1):
            _grad_input(dy[r, c0:c1], x[r, c0:c1], centre, k_dy, k_x, k_0, out[r, c0:c1], True)
    else:  # without the streaming set-up, which costs on short rows
        for r in range(r0, r1):
            _grad_input_values(dy[r, c0:c1], x[r, c0:c1], centre, k_dy, k_x, k_0, out[r, c0:c1])


@kernel
def _wide_shifted_sums(x, shift, row_tile, col_tile):
    """Per row tile and column: sum(x - shift) and sum((x - shift)^2), each (n_row_tiles, cols)."""
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    sums = np.zeros((n_rt, n_cols))
    squares = np.zeros((n_rt, n_cols))
    for t in prange(n_rt * n_ct):
        rt = t // n_ct
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        r0 = rt * row_tile
        _tile_shifted_sums(x, r0, min(r0 + row_tile, n_rows), c0, c1, shift[c0:c1],
                           sums[rt, c0:c1], squares[rt, c0:c1])
    return sums, squares


@kernel
def _wide_affine(x, centre, scale, shift, out, row_tile, col_tile, stream):
    """out = (x - centre) * scale + shift per column, in out's dtype (see :func:`affine`)."""
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        r0 = (t // n_ct) * row_tile
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        _tile_affine(x, r0, min(r0 + row_tile, n_rows), c0, c1, centre[c0:c1], scale[c0:c1],
                     shift[c0:c1], out, stream)
        if stream:
            end_streams()


@kernel
def _wide_grad_sums(dy, x, mean, row_tile, col_tile):
    """Per row tile and column: sum(dy) and sum(dy * (x - mean)), each (n_row_tiles, cols)."""
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    sum_dy = np.zeros((n_rt, n_cols))
    sum_dy_xc = np.zeros((n_rt, n_cols))
    for t in prange(n_rt * n_ct):
        rt = t // n_ct
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        r0 = rt * row_tile
        _tile_grad_sums(dy, x, r0, min(r0 + row_tile, n_rows), c0, c1, mean[c0:c1],
                        sum_dy[rt, c0:c1], sum_dy_xc[rt, c0:c1])
    return sum_dy, sum_dy_xc


@kernel
def _wide_grad_input(dy, x, centre, k_dy, k_x, k_0, out, row_tile, col_tile, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 per column, in out's dtype (see :func:`grad_input`)."""
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        r0 = (t // n_ct) * row_tile
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        _tile_grad_input(dy, x, r0, min(r0 + row_tile, n_rows), c0, c1, centre[c0:c1],
                         k_dy[c0:c1], k_x[c0:c1], k_0[c0:c1], out, stream)
        if stream:
            end_streams()


# ----------------------------------------------------------------------------------------------
# "flat" streaming of a wide array with short rows (channels-last data: rows of C values): finding
# the lines of each row costs more than streaming saves, so the array is walked as one run of
# values, and each line reads its coefficients at its first column from vectors that repeat
# periodically (one line longer than a row), whatever row boundary the line crosses.
# ----------------------------------------------------------------------------------------------

def flat_streams(x, out):
    """Whether a wide elementwise pass streams ``out`` as one flat run: short rows, x and out
    C-contiguous (so a line may cross rows), out starting on a line (as normkit's outputs do)."""
    return (worth_streaming(out) and not streams(x, out) and x.flags.c_contiguous
            and out.flags.c_contiguous and out.ctypes.data % LINE_BYTES == 0)


def periodic(per_column, n_cols, itemsize):
    """``per_column`` repeated to one line beyond a row: entry k is column k % n_cols."""
    return np.resize(per_column, n_cols + LINE_BYTES // itemsize)


@helper
def _flat_task(t, chunk, n_rows, n_cols, step):
    """Task ``t`` of a flat pass: its whole lines are the flat values f0:stop, f0 is in column
    ``col``, and rows tail_r0:tail_r1 hold the array's last values from ``stop`` on, less than a
    line (chunks end on a line but the last; other tasks get an empty range)."""
    n = n_rows * n_cols
    f0 = t * chunk
    f1 = min(f0 + chunk, n)
    stop = f0 + (f1 - f0) // step * step
    return f0, stop, f0 % n_cols, stop // n_cols, n_rows if stop < f1 else 0


@helper
def _next_column(col, step, n_cols):
    """The column ``step`` values after ``col`` (rows may be shorter than a line)."""
    col += step
    while col >= n_cols:
        col -= n_cols
    return col


@kernel
def _flat_affine(x, centre, scale, shift, out, chunk):
    """Streamed out = (x - centre) * scale + shift over C-contiguous (rows, cols) arrays; the
    coefficients are :func:`periodic`; ``chunk`` (values per task) is a multiple of a line."""
    n_rows, n_cols = x.shape
    n = n_rows * n_cols
    step = LINE_BYTES // out.itemsize
    for t in prange((n + chunk - 1) // chunk):
        f0, stop, col, tail_r0, tail_r1 = _flat_task(t, chunk, n_rows, n_cols, step)
        for f in range(f0, stop, step):
            _affine_lines(out, f, ((x, f), (centre, col), (scale, col), (shift, col)))
            col = _next_column(col, step, n_cols)
        end_streams()
        for r in range(tail_r0, tail_r1):
            c0 = max(stop - r * n_cols, 0)
            _affine_values(x[r, c0:], centre[c0:n_cols], scale[c0:n_cols], shift[c0:n_cols],
                           out[r, c0:])


@kernel
def _flat_grad_input(dy, x, centre, k_dy, k_x, k_0, out, chunk):
    """Streamed out = dy * k_dy + (x - centre) * k_x + k_0, as :func:`_flat_affine`."""
    n_rows, n_cols = x.shape
    n = n_rows * n_cols
    step = LINE_BYTES // out.itemsize
    for t in prange((n + chunk - 1) // chunk):
        f0, stop, col, tail_r0, tail_r1 = _flat_task(t, chunk, n_rows, n_cols, step)
        for f in range(f0, stop, step):
            _grad_input_lines(out, f, ((dy, f), (x, f), (centre, col), (k_dy, col), (k_x, col),
                                       (k_0, col)))
            col = _next_column(col, step, n_cols)
        end_streams()
        for r in range(tail_r0, tail_r1):
            c0 = max(stop - r * n_cols, 0)
            _grad_input_values(dy[r, c0:], x[r, c0:], centre[c0:n_cols], k_dy[c0:n_cols],
                               k_x[c0:n_cols], k_0[c0:n_cols], out[r, c0:])


# ----------------------------------------------------------------------------------------------
# "runs" layout: x is (outer, C, inner), inner runs long
# ----------------------------------------------------------------------------------------------

@helper
def run_shifted_sums(xs, k):
    """sum(xs - k) and sum((xs - k)^2) of a 1-D run, in float64 (also LayerNorm's row sums)."""
    wide_vectors()  # see _compile.py: the moment sums are compute-bound
    s1 = 0.0
    s2 = 0.0
    for i in range(xs.shape[0]):
        d = xs[i] - k
        s1 += d
        s2 += d * d
    return s1, s2


@helper
def _run_grad_sums(gs, xs, mean):
    """sum(gs) and sum(gs * (xs - mean)) of 1-D runs, in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(xs.shape[0]):
        g = np.float64(gs[i])
        s1 += g
        s2 += g * (xs[i] - mean)
    return s1, s2


@kernel
def _runs_shifted_sums(x, shift, segment):
    """Per run segment: sum(x - shift) and sum((x - shift)^2), each (outer * n_segments, C)."""
    n_outer, n_ch, n_inner = x.shape
    n_seg = (n_inner + segment - 1) // segment
    sums = np.empty((n_outer * n_seg, n_ch))
    squares = np.empty((n_outer * n_seg, n_ch))
    for t in prange(n_outer * n_ch * n_seg):
        s = t % n_seg
        c = (t // n_seg) % n_ch
        o = t // (n_seg * n_ch)
        i0 = s * segment
        sums[o * n_seg + s, c], squares[o * n_seg + s, c] = run_shifted_sums(
            x[o, c, i0:min(i0 + segment, n_inner)], shift[c])
    return sums, squares


@kernel
def _runs_affine(x, centre, scale, shift, out, runs_per_task, segment, stream):
    """out = (x - centre) * scale + shift per channel, in out's dtype (see :func:`affine`)."""
    n_outer, n_ch, n_inner = x.shape
    n_runs = n_outer * n_ch
    n_seg = (n_inner + segment - 1) // segment
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task * n_seg):
        i0 = (t % n_seg) * segment
        i1 = min(i0 + segment, n_inner)
        first = (t // n_seg) * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            o, c = run // n_ch, run % n_ch
            _affine(x[o, c, i0:i1], centre[c], scale[c], shift[c], out[o, c, i0:i1], stream)
        if stream:
            end_streams()


@kernel
def _runs_grad_sums(dy, x, mean, segment):
    """Per run segment: sum(dy) and sum(dy * (x - mean)), each (outer * n_segments, C)."""
    n_outer, n_ch, n_inner = x.shape
    n_seg = (n_inner + segment - 1) // segment
    sum_dy = np.empty((n_outer * n_seg, n_ch))
    sum_dy_xc = np.empty((n_outer * n_seg, n_ch))
    for t in prange(n_outer * n_ch * n_seg):
        s = t % n_seg
        c = (t // n_seg) % n_ch
        o = t // (n_seg * n_ch)
        i0 = s * segment
        i1 = min(i0 + segment, n_inner)
        sum_dy[o * n_seg + s, c], sum_dy_xc[o * n_seg + s, c] = _run_grad_sums(
            dy[o, c, i0:i1], x[o, c, i0:i1], mean[c])
    return sum_dy, sum_dy_xc


@kernel
def _runs_grad_input(dy, x, centre, k_dy, k_x, k_0, out, runs_per_task, segment, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 per channel, in out's dtype (see :func:`grad_input`)."""
    n_outer, n_ch, n_inner = x.shape
    n_runs = n_outer * n_ch
    n_seg = (n_inner + segment - 1) // segment
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task * n_seg):
        i0 = (t % n_seg) * segment
        i1 = min(i0 + segment, n_inner)
        first = (t // n_seg) * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            o, c = run // n_ch, run % n_ch
            _grad_input(dy[o, c, i0:i1], x[o, c, i0:i1], centre[c], k_dy[c], k_x[c], k_0[c],
                        out[o, c, i0:i1], stream)
        if stream:
            end_streams()


# ----------------------------------------------------------------------------------------------
# Entry points used by normkit.functional; ``group`` is the number of neighbouring columns that
# share a channel in the wide layout (ignored for runs).
# ----------------------------------------------------------------------------------------------

@helper
def moments_from_partials(shift, sums, squares, count):
    """Mean and biased variance per column from partial sums of d = x - shift and d^2 (one row
    of ``sums``/``squares`` per tile) over ``count`` values. Compiled: the NumPy calls it
    replaced took 3-4x as long (C = 8192: ~70 us vs ~20 us). NaN/inf input gives NaN/inf."""
    sum_d = sums[0].copy()
    sum_d2 = squares[0].copy()
    for t in range(1, sums.shape[0]):
        sum_d += sums[t]
        sum_d2 += squares[t]
    mean = np.empty_like(sum_d)
    var = np.empty_like(sum_d)
    inv_count = 1.0 / count  # a multiply per column vectorises better than a divide
    for j in range(sum_d.shape[0]):
        mean[j], var[j] = _moments(shift[j], sum_d[j], sum_d2[j], inv_count)
    return mean, var


@helper
def _moments(shift, sum_d, sum_d2, inv_count):
    """Mean and biased variance from sum(d) and sum(d^2), d = x - shift, over 1 / inv_count values."""
    mean_d = sum_d * inv_count
    v = sum_d2 * inv_count - mean_d * mean_d
    return shift + mean_d, 0.0 if v < 0.0 else v  # written so that NaN stays NaN


def combine_moments(counts, means, variances):
    """Merge parts into one: mean and biased variance of the union of parts p, each with
    ``counts[p]`` values, mean ``means[p]`` and biased variance ``variances[p]`` (per column).
    Chan et al.'s formula, free of cancellation: every term is non-negative."""
    counts = counts[:, None]
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / total
    m2 = (counts * variances).sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / total


def _expand(per_channel, group):
    return per_channel if group == 1 else np.repeat(per_channel, group)


def batch_stats(x, group):
    """Mean and biased variance per channel (float64) of ``x`` in the wide or runs layout."""
    if x.ndim == 2:
        n_rows = x.shape[0]
        shift = x[0].astype(np.float64)  # per column: its first value
        sums, squares = _wide_shifted_sums(x, shift, row_tile_for(x.shape[1]), COL_TILE, work=x.size)
        mean, var = moments_from_partials(shift, sums, squares, float(n_rows))
        if group > 1:  # the columns of one channel are equal-sized parts of it
            mean, var = combine_moments(np.full(group, float(n_rows)),
                                        mean.reshape(-1, group).T, var.reshape(-1, group).T)
        return mean, var
    shift = x[0, :, 0].astype(np.float64)
    sums, squares = _runs_shifted_sums(x, shift, SEGMENT, work=x.size)
    count = x.shape[0] * x.shape[2]
    return moments_from_partials(shift, sums, squares, float(count))


# The elementwise passes compute in the output's dtype (float32: twice the SIMD width of float64)
# without losing a large mean: the mean is split into ``centre``, its value in that dtype, and the
# rest, which is folded into the constant term:
#     (x - mean) * scale + shift = (x - centre) * scale + (shift - (mean - centre) * scale).
# x - centre is exact near the mean (Sterbenz) and rounded once elsewhere, as a float64 result
# would be when stored, so outputs stay within about an ulp even for randn + 1e6 (measured 5-25%
# faster than centring in float64). The per-channel coefficients are computed by compiled loops:
# for 256 channels they took 3.5x as long as a dozen NumPy calls.

_NONE = np.empty(0)  # an absent weight or bias, for the compiled helpers


@helper
def _fill_forward(mean, var, weight, bias, eps, rstd, centre, scale, shift):
    for c in range(mean.shape[0]):  # a loop of its own, so that the square roots vectorise
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
    for c in range(mean.shape[0]):
        k = rstd[c] * weight[c] if weight.shape[0] else rstd[c]
        h = bias[c] if bias.shape[0] else 0.0
        centre[c] = mean[c]
        scale[c] = k
        shift[c] = h - (mean[c] - np.float64(centre[c])) * np.float64(scale[c])


def forward_coefficients(mean, var, weight, bias, eps, dtype):
    """Per channel: rstd = 1 / sqrt(var + eps) (float64) and the ``(centre, scale, shift)``
    vectors, in ``dtype``, of y = (x - centre) * scale + shift = (x - mean) * rstd * weight + bias."""
    n = mean.shape[0]
    rstd = np.empty(n)
    centre, scale, shift = np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype)
    _fill_forward(mean, var, _NONE if weight is None else weight, _NONE if bias is None else bias,
                  float(eps), rstd, centre, scale, shift)
    return rstd, (centre, scale, shift)


def affine(x, coefficients, out, group):
    """out = (x - centre) * scale + shift with the per-channel :func:`forward_coefficients`."""
    centre, scale, shift = (_expand(v, group) for v in coefficients)
    stream = streams(x, out)
    if x.ndim == 2 and flat_streams(x, out):
        _flat_affine(x, *(periodic(v, x.shape[1], x.itemsize) for v in (centre, scale, shift)),
                     out, ELEMENTWISE_TILE_ELEMENTS, work=x.size)
    elif x.ndim == 2:
        _wide_affine(x, centre, scale, shift, out, *elementwise_tile(x.shape[1], stream), stream,
                     work=x.size)
    else:
        _runs_affine(x, centre, scale, shift, out, *elementwise_runs(x.shape[2]), stream,
                     work=x.size)


@helper
def _fill_backward(sum_dy, sum_dy_xc, mean, rstd, weight, inv_count, batch_stats,
                   centre, k_dy, k_x, k_0, dweight):
    for c in range(mean.shape[0]):
        r = rstd[c]
        k = r * weight[c] if weight.shape[0] else r
        a = sum_dy[c] * inv_count if batch_stats else 0.0
        b = sum_dy_xc[c] * (r * r * inv_count) if batch_stats else 0.0
        centre[c] = mean[c]
        k_dy[c] = k
        k_x[c] = -k * b
        k_0[c] = -k * b * (np.float64(centre[c]) - mean[c]) - k * a
        dweight[c] = sum_dy_xc[c] * r


def backward_coefficients(sum_dy, sum_dy_xc, mean, rstd, weight, count, batch_stats, dtype):
    """The ``(centre, k_dy, k_x, k_0)`` vectors, in ``dtype``, of
    dx = dy * k_dy + (x - centre) * k_x + k_0 = k * (dy - a - (x - mean) * b), with k = rstd * weight,
    a = sum(dy) / count and b = sum(dy * (x - mean)) * rstd^2 / count (a = b = 0 when the forward
    used running statistics: they are constants); and dweight = sum(dy * (x - mean)) * rstd
    (float64). Sums over ``count`` values per channel, as :func:`grad_sums` returns them."""
    n = mean.shape[0]
    coefficients = tuple(np.empty(n, dtype) for _ in range(4))
    dweight = np.empty(n)
    _fill_backward(sum_dy, sum_dy_xc, mean, rstd, _NONE if weight is None else weight,
                   1.0 / count, bool(batch_stats), *coefficients, dweight)
    return coefficients, dweight


def grad_sums(dy, x, mean, group):
    """Per channel: sum(dy) and sum(dy * (x - mean)), float64."""
    if x.ndim == 2:
        s1, s2 = _wide_grad_sums(dy, x, _expand(mean, group), row_tile_for(x.shape[1]), COL_TILE,
                                 work=x.size)
        s1, s2 = s1.sum(axis=0), s2.sum(axis=0)
        if group > 1:
            s1, s2 = s1.reshape(-1, group).sum(axis=1), s2.reshape(-1, group).sum(axis=1)
        return s1, s2
    s1, s2 = _runs_grad_sums(dy, x, mean, SEGMENT, work=x.size)
    return s1.sum(axis=0), s2.sum(axis=0)


def grad_input(dy, x, coefficients, out, group):
    """dx = dy * k_dy + (x - centre) * k_x + k_0 with the per-channel :func:`backward_coefficients`."""
    cols = [_expand(v, group) for v in coefficients]
    stream = streams(x, out)
    if x.ndim == 2 and flat_streams(x, out) and dy.flags.c_contiguous:
        _flat_grad_input(dy, x, *(periodic(v, x.shape[1], x.itemsize) for v in cols), out,
                         ELEMENTWISE_TILE_ELEMENTS, work=x.size)
    elif x.ndim == 2:
        _wide_grad_input(dy, x, *cols, out, *elementwise_tile(x.shape[1], stream), stream,
                         work=x.size)
    else:
        _runs_grad_input(dy, x, *cols, out, *elementwise_runs(x.shape[2]), stream, work=x.size)


# ----------------------------------------------------------------------------------------------
# One-pass kernels: when one task's share of the data fits in a core's L2 cache (a channel of an
# NCHW batch, a band of columns of a small-batch (N, C) array), the task takes its statistics or
# gradient sums and then writes its output at once, so the second pass reads from L2 instead of
# memory: 1.3-1.7x on the BatchNorm training forward and backward (measured on (32, 64, 56, 56)
# and (256, 8192) float32). The coefficients come from the same helpers as the two-pass path,
# called on one-element (runs) or one-band (wide) slices.
# ----------------------------------------------------------------------------------------------

ONE_PASS_MIN_TASKS = 8     # channels (runs) needed, bands (wide) aimed for: tasks to spread
ONE_PASS_MIN_COLS = 512    # narrowest band (unless the array is narrower): bands of 128-256
                           # float32 columns measured 0.55-0.8x of the two-pass kernels, whose
                           # tiles read rows in 4 KiB pieces the prefetcher can stream


@kernel
def _runs_one_pass_forward(x, weight, bias, eps, out, mean, var, rstd, centre, scale, shift,
                           stream):
    n_outer, n_ch, n_inner = x.shape
    inv_count = 1.0 / (n_outer * n_inner)
    for c in prange(n_ch):
        k = np.float64(x[0, c, 0])
        s1 = 0.0
        s2 = 0.0
        for o in range(n_outer):
            a1, a2 = run_shifted_sums(x[o, c], k)
            s1 += a1
            s2 += a2
        mean[c], var[c] = _moments(k, s1, s2, inv_count)
        _fill_forward(mean[c:c + 1], var[c:c + 1], weight[c:c + 1], bias[c:c + 1], eps,
                      rstd[c:c + 1], centre[c:c + 1], scale[c:c + 1], shift[c:c + 1])
        for o in range(n_outer):
            _affine(x[o, c], centre[c], scale[c], shift[c], out[o, c], stream)
        if stream:
            end_streams()


@kernel
def _wide_one_pass_forward(x, weight, bias, eps, out, mean, var, rstd, centre, scale, shift, band,
                           stream):
    n_rows, n_cols = x.shape
    inv_count = 1.0 / n_rows
    for t in prange((n_cols + band - 1) // band):
        c0 = t * band
        c1 = min(c0 + band, n_cols)
        k = x[0, c0:c1].astype(np.float64)
        s1 = np.zeros(c1 - c0)
        s2 = np.zeros(c1 - c0)
        _tile_shifted_sums(x, 0, n_rows, c0, c1, k, s1, s2)
        for j in range(c1 - c0):
            mean[c0 + j], var[c0 + j] = _moments(k[j], s1[j], s2[j], inv_count)
        _fill_forward(mean[c0:c1], var[c0:c1], weight[c0:c1], bias[c0:c1], eps,
                      rstd[c0:c1], centre[c0:c1], scale[c0:c1], shift[c0:c1])
        _tile_affine(x, 0, n_rows, c0, c1, centre[c0:c1], scale[c0:c1], shift[c0:c1], out, stream)
        if stream:
            end_streams()


@kernel
def _runs_one_pass_backward(dy, x, mean, rstd, weight, inv_count, batch_stats, out,
                            sum_dy, sum_dy_xc, centre, k_dy, k_x, k_0, dweight, stream):
    n_outer, n_ch, n_inner = x.shape
    for c in prange(n_ch):
        s1 = 0.0
        s2 = 0.0
        for o in range(n_outer):
            a1, a2 = _run_grad_sums(dy[o, c], x[o, c], mean[c])
            s1 += a1
            s2 += a2
        sum_dy[c] = s1
        sum_dy_xc[c] = s2
        _fill_backward(sum_dy[c:c + 1], sum_dy_xc[c:c + 1], mean[c:c + 1], rstd[c:c + 1],
                       weight[c:c + 1], inv_count, batch_stats, centre[c:c + 1], k_dy[c:c + 1],
                       k_x[c:c + 1], k_0[c:c + 1], dweight[c:c + 1])
        for o in range(n_outer):
            _grad_input(dy[o, c], x[o, c], centre[c], k_dy[c], k_x[c], k_0[c], out[o, c], stream)
        if stream:
            end_streams()


@kernel
def _wide_one_pass_backward(dy, x, mean, rstd, weight, inv_count, batch_stats, out,
                            sum_dy, sum_dy_xc, centre, k_dy, k_x, k_0, dweight, band, stream):
    n_rows, n_cols = x.shape
    for t in prange((n_cols + band - 1) // band):
        c0 = t * band
        c1 = min(c0 + band, n_cols)
        sum_dy[c0:c1] = 0.0
        sum_dy_xc[c0:c1] = 0.0
        _tile_grad_sums(dy, x, 0, n_rows, c0, c1, mean[c0:c1], sum_dy[c0:c1], sum_dy_xc[c0:c1])
        _fill_backward(sum_dy[c0:c1], sum_dy_xc[c0:c1], mean[c0:c1], rstd[c0:c1], weight[c0:c1],
                       inv_count, batch_stats, centre[c0:c1], k_dy[c0:c1], k_x[c0:c1],
                       k_0[c0:c1], dweight[c0:c1])
        _tile_grad_input(dy, x, 0, n_rows, c0, c1, centre[c0:c1], k_dy[c0:c1], k_x[c0:c1],
                         k_0[c0:c1], out, stream)
        if stream:
            end_streams()


def one_pass_band(x, group, n_inputs):
    """How the one-pass kernels would split ``x`` (``n_inputs`` arrays of its shape are read):
    1 for runs (a channel per task), the columns per task for the wide layout, or 0 when they do
    not apply. A function of the shape alone, so results do not depend on the thread count."""
    bytes_per_value = x.itemsize * n_inputs
    if x.ndim == 3:
        fits = x.shape[0] * x.shape[2] * bytes_per_value <= config.ONE_PASS_BYTES
        return 1 if fits and x.shape[1] >= ONE_PASS_MIN_TASKS else 0
    if group != 1:  # a channel's columns would have to stay in one band
        return 0
    n_rows, n_cols = x.shape
    fit = config.ONE_PASS_BYTES // (n_rows * bytes_per_value)
    band = min(fit, max(-(-n_cols // ONE_PASS_MIN_TASKS), ONE_PASS_MIN_COLS)) // 16 * 16
    return band if band >= min(n_cols, ONE_PASS_MIN_COLS) else 0


def one_pass_forward(x, weight, bias, eps, out, band):
    """Training forward in one pass (see :func:`one_pass_band`): writes ``out`` and returns the
    batch mean, biased variance and rstd per channel (float64)."""
    n = x.shape[1]
    mean, var, rstd = np.empty(n), np.empty(n), np.empty(n)
    coefficients = tuple(np.empty(n, x.dtype) for _ in range(3))  # per-channel scratch
    weight = _NONE if weight is None else weight
    bias = _NONE if bias is None else bias
    stream = streams(x, out)
    if x.ndim == 3:
        _runs_one_pass_forward(x, weight, bias, float(eps), out, mean, var, rstd, *coefficients,
                               stream, work=x.size)
    else:
        _wide_one_pass_forward(x, weight, bias, float(eps), out, mean, var, rstd, *coefficients,
                               band, stream, work=x.size)
    return mean, var, rstd


def one_pass_backward(dy, x, mean, rstd, weight, count, batch_stats, out, band):
    """Backward in one pass (see :func:`one_pass_band`): writes dx into ``out`` and returns
    sum(dy) and dweight per channel (float64), as :func:`grad_sums` and
    :func:`backward_coefficients` would."""
    n = x.shape[1]
    sum_dy, sum_dy_xc, dweight = np.empty(n), np.empty(n), np.empty(n)
    coefficients = tuple(np.empty(n, x.dtype) for _ in range(4))  # per-channel scratch
    args = (dy, x, mean, rstd, _NONE if weight is None else weight, 1.0 / count, bool(batch_stats),
            out, sum_dy, sum_dy_xc, *coefficients, dweight)
    stream = streams(x, out)
    if x.ndim == 3:
        _runs_one_pass_backward(*args, stream, work=x.size)
    else:
        _wide_one_pass_backward(*args, band, stream, work=x.size)
    return sum_dy, dweight
