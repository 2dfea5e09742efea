"""BatchNorm kernels for the "wide" layout, a 2-D (rows, cols) array whose every column belongs to
one channel ((N, C) data, channels-last data, short inner runs): per-tile partial sums and the
elementwise passes, by tiles of rows and columns; and the "flat" elementwise passes, which
stream the output of an array with short rows as one run of values.
"""

import numpy as np
from numba import prange

from ... import _memory
from ._bn_rows import (affine_lines, affine_row, affine_values, grad_input_lines, grad_input_row,
                       grad_input_values)
from ._compile import borrowed, helper, kernel, wide_vectors
from ._streaming import LINE_BYTES, end_streams


def partials_for(x, row_tile):
    """The work array of the partial-sum passes over the wide ``x``: (2, row tiles, columns).

    From ``_memory.work_array``, which reuses freed buffers: allocated in the kernel (np.zeros),
    partials of 1 MiB and more ((16384, 1024) float32: 128 row tiles of 1024 columns, two of
    them) were fresh pages from the OS on every call, zeroed by one thread: the statistics pass
    took 1.56 ms, 0.93 since (session 20, AMD EPYC). Each tile zeroes its own row of partials."""
    return _memory.work_array((2, -(-x.shape[0] // row_tile), x.shape[1]))


# Inner loops index 1-D row slices (x[r, c0:c1]) rather than x[r, c]: Numba then proves the
# accesses contiguous and LLVM vectorises them (measured: 4x faster on (65536, 256) float32).


# Arrays with rows this long (2048 float32 columns, 1024 float64) are summed eight rows per
# sweep instead of four: their tiles are 1024-column pieces of long rows, whose partial sums
# (two rows of 8 KiB) share the L1 with the rows streaming through it, and eight rows per
# sweep update them half as often. Measured on the statistics pass alone (session 20, AMD EPYC,
# old and new code alternated): float32 rows of 2048-16384 columns 1.15-1.2x (64 MB: 1.17-1.35
# -> 1.01-1.17 ms), float64 1.1-1.2x; float32 rows of 1024 columns 0.9x, 256-512 0.85-0.95x.
# The one-pass kernels' bands (tile_shifted_sums over all rows of a band) follow the same rule:
# their training forward on (256, 8192), (128, 4096), (64, 16384) float32 and (256, 2048)
# float64 measured the same either way.
EIGHT_ROW_MIN_ROW_BYTES = 8192


@helper
def _four_row_sweeps(x, r0, q, c0, c1, k, s1, s2):
    """Rows r0 + i, r0 + q + i, r0 + 2q + i, r0 + 3q + i for i < q into s1, s2 (see
    :func:`tile_shifted_sums`)."""
    wide_vectors()  # see _compile.py: the moment sums are compute-bound
    for r in range(r0, r0 + q):
        x0, x1, x2, x3 = x[r, c0:c1], x[r + q, c0:c1], x[r + 2 * q, c0:c1], x[r + 3 * q, c0:c1]
        for j in range(k.shape[0]):
            d0 = x0[j] - k[j]
            d1 = x1[j] - k[j]
            d2 = x2[j] - k[j]
            d3 = x3[j] - k[j]
            s1[j] += (d0 + d1) + (d2 + d3)
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


@helper
def _eight_row_sweeps(x, r0, q, c0, c1, k, s1, s2):
    """Rows r0 + m * q + i for m < 8, i < q into s1, s2 (see EIGHT_ROW_MIN_ROW_BYTES)."""
    wide_vectors()
    for r in range(r0, r0 + q):
        x0, x1, x2, x3 = x[r, c0:c1], x[r + q, c0:c1], x[r + 2 * q, c0:c1], x[r + 3 * q, c0:c1]
        x4, x5 = x[r + 4 * q, c0:c1], x[r + 5 * q, c0:c1]
        x6, x7 = x[r + 6 * q, c0:c1], x[r + 7 * q, c0:c1]
        for j in range(k.shape[0]):
            kj = k[j]
            d0 = x0[j] - kj
            d1 = x1[j] - kj
            d2 = x2[j] - kj
            d3 = x3[j] - kj
            d4 = x4[j] - kj
            d5 = x5[j] - kj
            d6 = x6[j] - kj
            d7 = x7[j] - kj
            s1[j] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            s2[j] += (((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
                      + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7)))


@helper
def tile_shifted_sums(x, r0, r1, c0, c1, k, s1, s2):
    """Add sum(x - k) and sum((x - k)^2) over rows r0:r1 of columns c0:c1 to s1 and s2."""
    wide_vectors()
    # Four (or eight) rows per sweep, one from each quarter (eighth) of the tile: the partial
    # sums are updated once per sweep (the store port is out of the critical path) and the
    # rows are sequential streams the hardware prefetcher follows. Four neighbouring rows
    # instead confused it: measured 1.7x slower from DRAM, though faster in cache.
    n = 8 if x.shape[1] * x.itemsize >= EIGHT_ROW_MIN_ROW_BYTES else 4
    q = (r1 - r0) // n
    if n == 8:
        _eight_row_sweeps(x, r0, q, c0, c1, k, s1, s2)
    else:
        _four_row_sweeps(x, r0, q, c0, c1, k, s1, s2)
    for r in range(r0 + n * q, r1):
        xr = x[r, c0:c1]
        for j in range(k.shape[0]):
            d = xr[j] - k[j]
            s1[j] += d
            s2[j] += d * d


@helper
def tile_affine(x, r0, r1, c0, c1, centre, scale, shift, out, stream):
    """out = (x - centre) * scale + shift over rows r0:r1 of columns c0:c1 (vectors of c1 - c0)."""
    if stream:
        for r in range(r0, r1):
            affine_row(x[r, c0:c1], centre, scale, shift, out[r, c0:c1], True)
    else:  # without the streaming set-up, which costs on short rows
        for r in range(r0, r1):
            affine_values(x[r, c0:c1], centre, scale, shift, out[r, c0:c1])


@helper
def tile_grad_sums(dy, x, r0, r1, c0, c1, mean, s1, s2):
    """Add sum(dy) and sum(dy * (x - mean)) over rows r0:r1 of columns c0:c1 to s1 and s2."""
    h = (r1 - r0) // 2
    for r in range(r0, r0 + h):  # two rows per sweep, from the two halves of the tile
        x0, x1 = x[r, c0:c1], x[r + h, c0:c1]  # (see tile_shifted_sums)
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
def tile_grad_input(dy, x, r0, r1, c0, c1, centre, k_dy, k_x, k_0, out, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 over rows r0:r1 of columns c0:c1."""
    if stream:
        for r in range(r0, r1):
            grad_input_row(dy[r, c0:c1], x[r, c0:c1], centre, k_dy, k_x, k_0, out[r, c0:c1], True)
    else:  # without the streaming set-up, which costs on short rows
        for r in range(r0, r1):
            grad_input_values(dy[r, c0:c1], x[r, c0:c1], centre, k_dy, k_x, k_0, out[r, c0:c1])


@kernel
def wide_shifted_sums(x, shift, row_tile, col_tile, partials):
    """Per row tile and column: sum(x - shift) into ``partials[0]`` and sum((x - shift)^2) into
    ``partials[1]``, a (2, n_row_tiles, cols) work array (see :func:`partials_for`)."""
    x, shift, partials = borrowed(x, shift, partials)
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        rt = t // n_ct
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        r0 = rt * row_tile
        s1, s2 = partials[0, rt, c0:c1], partials[1, rt, c0:c1]
        s1[:] = 0.0  # zeroed here, in parallel and into this core's cache
        s2[:] = 0.0
        tile_shifted_sums(x, r0, min(r0 + row_tile, n_rows), c0, c1, shift[c0:c1], s1, s2)


@kernel
def wide_affine(x, centre, scale, shift, out, row_tile, col_tile, stream):
    """out = (x - centre) * scale + shift per column, in out's dtype (see :func:`affine`)."""
    x, centre, scale, shift, out = borrowed(x, centre, scale, shift, out)
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        r0 = (t // n_ct) * row_tile
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        tile_affine(x, r0, min(r0 + row_tile, n_rows), c0, c1, centre[c0:c1], scale[c0:c1],
                    shift[c0:c1], out, stream)
        if stream:
            end_streams()


@kernel
def wide_grad_sums(dy, x, mean, row_tile, col_tile, partials):
    """Per row tile and column: sum(dy) into ``partials[0]`` and sum(dy * (x - mean)) into
    ``partials[1]``, a (2, n_row_tiles, cols) work array (see :func:`partials_for`)."""
    dy, x, mean, partials = borrowed(dy, x, mean, partials)
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        rt = t // n_ct
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        r0 = rt * row_tile
        s1, s2 = partials[0, rt, c0:c1], partials[1, rt, c0:c1]
        s1[:] = 0.0  # zeroed here, in parallel and into this core's cache
        s2[:] = 0.0
        tile_grad_sums(dy, x, r0, min(r0 + row_tile, n_rows), c0, c1, mean[c0:c1], s1, s2)


@kernel
def wide_grad_input(dy, x, centre, k_dy, k_x, k_0, out, row_tile, col_tile, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 per column, in out's dtype (see :func:`grad_input`)."""
    dy, x, centre, k_dy, k_x, k_0, out = borrowed(dy, x, centre, k_dy, k_x, k_0, out)
    n_rows, n_cols = x.shape
    n_rt = (n_rows + row_tile - 1) // row_tile
    n_ct = (n_cols + col_tile - 1) // col_tile
    for t in prange(n_rt * n_ct):
        r0 = (t // n_ct) * row_tile
        c0 = (t % n_ct) * col_tile
        c1 = min(c0 + col_tile, n_cols)
        tile_grad_input(dy, x, r0, min(r0 + row_tile, n_rows), c0, c1, centre[c0:c1],
                        k_dy[c0:c1], k_x[c0:c1], k_0[c0:c1], out, stream)
        if stream:
            end_streams()


# ----------------------------------------------------------------------------------------------
# "flat" streaming of a wide array with short rows (channels-last data: rows of C values): finding
# the lines of each row costs more than streaming saves, so the array is walked as one run of
# values, and each line reads its coefficients at its first column from vectors that repeat
# periodically (one line longer than a row), whatever row boundary the line crosses. The output
# may start anywhere in a line (normkit puts it where x starts in its line: see
# batchnorm.output_line_offset); the values before its first line and after its last whole one
# are written by scalar code.
# ----------------------------------------------------------------------------------------------

@helper
def _flat_task(t, chunk, head, n, step):
    """Task ``t`` of a flat pass writes the flat values s:e, of which a:stop are whole lines of
    the output (``head`` values precede its first line); s:a and stop:e, the values before the
    first line (task 0) and after the last whole one (the last task), are left to scalar code."""
    e = min(head + (t + 1) * chunk, n)
    a = min(head + t * chunk, e)
    stop = a + (e - a) // step * step
    return (0 if t == 0 else a), a, stop, e


@helper
def _flat_head(out):
    """Values of ``out`` before its first 64-byte line, at most its size (its address is a
    multiple of its item size: the flat passes are only given such outputs)."""
    head = (LINE_BYTES - out.ctypes.data % LINE_BYTES) % LINE_BYTES // out.itemsize
    return min(head, out.size)


@helper
def _next_column(col, step, n_cols):
    """The column ``step`` values after ``col`` (rows may be shorter than a line)."""
    col += step
    while col >= n_cols:
        col -= n_cols
    return col


@helper
def _affine_range(x, centre, scale, shift, out, lo, hi):
    """Scalar out = (x - centre) * scale + shift over the flat values lo:hi."""
    n_cols = x.shape[1]
    for r in range(lo // n_cols, (hi + n_cols - 1) // n_cols):
        c0 = max(lo - r * n_cols, 0)
        c1 = min(hi - r * n_cols, n_cols)
        affine_values(x[r, c0:c1], centre[c0:c1], scale[c0:c1], shift[c0:c1], out[r, c0:c1])


@helper
def _grad_input_range(dy, x, centre, k_dy, k_x, k_0, out, lo, hi):
    """Scalar out = dy * k_dy + (x - centre) * k_x + k_0 over the flat values lo:hi."""
    n_cols = x.shape[1]
    for r in range(lo // n_cols, (hi + n_cols - 1) // n_cols):
        c0 = max(lo - r * n_cols, 0)
        c1 = min(hi - r * n_cols, n_cols)
        grad_input_values(dy[r, c0:c1], x[r, c0:c1], centre[c0:c1], k_dy[c0:c1], k_x[c0:c1],
                          k_0[c0:c1], out[r, c0:c1])


@kernel
def flat_affine(x, centre, scale, shift, out, chunk):
    """Streamed out = (x - centre) * scale + shift over C-contiguous (rows, cols) arrays; the
    coefficients are :func:`periodic`; ``chunk`` (values per task) is a multiple of a line."""
    x, centre, scale, shift, out = borrowed(x, centre, scale, shift, out)
    n = out.size
    step = LINE_BYTES // out.itemsize
    head = _flat_head(out)
    for t in prange(max(1, (n - head + chunk - 1) // chunk)):
        s, a, stop, e = _flat_task(t, chunk, head, n, step)
        col = a % x.shape[1]
        for f in range(a, stop, step):
            affine_lines(out, f, ((x, f), (centre, col), (scale, col), (shift, col)))
            col = _next_column(col, step, x.shape[1])
        end_streams()
        _affine_range(x, centre, scale, shift, out, s, a)
        _affine_range(x, centre, scale, shift, out, stop, e)


@kernel
def flat_grad_input(dy, x, centre, k_dy, k_x, k_0, out, chunk):
    """Streamed out = dy * k_dy + (x - centre) * k_x + k_0, as :func:`flat_affine`."""
    dy, x, centre, k_dy, k_x, k_0, out = borrowed(dy, x, centre, k_dy, k_x, k_0, out)
    n = out.size
    step = LINE_BYTES // out.itemsize
    head = _flat_head(out)
    for t in prange(max(1, (n - head + chunk - 1) // chunk)):
        s, a, stop, e = _flat_task(t, chunk, head, n, step)
        col = a % x.shape[1]
        for f in range(a, stop, step):
            grad_input_lines(out, f, ((dy, f), (x, f), (centre, col), (k_dy, col), (k_x, col),
                                      (k_0, col)))
            col = _next_column(col, step, x.shape[1])
        end_streams()
        _grad_input_range(dy, x, centre, k_dy, k_x, k_0, out, s, a)
        _grad_input_range(dy, x, centre, k_dy, k_x, k_0, out, stop, e)
