"""BatchNorm on the CPU: the entry points :mod:`normkit.functional` calls, and the choices they
make on the host (tile sizes, streaming stores, one pass over the data or two). The compiled
kernels are in the modules beside this one:

* ``_bn_rows.py``: the elementwise arithmetic on one row or run, inlined into the kernels;
* ``_bn_wide.py``: the kernels of the wide layout, and its streamed "flat" passes;
* ``_bn_runs.py``: the kernels of the runs layout;
* ``_bn_coefficients.py``: per-channel statistics and the coefficients of the elementwise passes;
* ``_bn_one_pass.py``: training forward and backward in one pass over data that fits in L2.

The dispatcher hands over one of two layouts, both with the channel as a fixed axis:

* "wide": a 2D array (rows, cols) where every column belongs to one channel and ``group``
  neighbouring columns share a channel ((N, C) data, channels-last data, short inner runs).
  Narrow ones are folded into wider rows (see ``FOLD_MAX_COLS``);
* "runs": a 3D array (outer, C, inner) whose inner runs are long and contiguous (NCHW images).
  Runs of tens to hundreds of values (small images) have kernels of their own, ``short_runs_*``,
  where the per-run work of the general ones cost as much as the arithmetic; when their output
  streams, they are passed to the wide layout's kernels as (outer, C * inner).

Which kernels an elementwise pass takes (flat, row by row, runs) is decided in one place,
:func:`elementwise_plan`, since where its output is allocated depends on it too
(:func:`output_line_offset`).

Statistics are accumulated in float64 in one pass, as sums of (x - K) and (x - K)^2 where the
shift K is a value of the data itself (the channel's first value). Why this is exact enough: the
rounding error of var = E[(x-K)^2] - E[x-K]^2 is about eps64 * E[(x-K)^2] / var relative, and
since K is one of the n values, var >= (K - mean)^2 / n, so that ratio is at most 1 + n: at most
n * 1.1e-16 relative even for adversarial data (1e-11 for a million values), and about 1e-16 for
ordinary data. Unlike E[x^2] - E[x]^2 it cannot lose the signal to a large mean (randn + 1e6),
and unlike a two-pass variance it reads the data once. Tiles have a fixed size, so results do not
depend on the thread count. The elementwise passes (output, input gradient) compute in the
output's dtype with the mean split in two (see ``_bn_coefficients.py``).
"""

import functools
import math
from typing import NamedTuple

import numpy as np

from ... import config
from ..._memory import line_placed
from ._bn_coefficients import (NONE, backward_coefficients, channel_total_pair, combine_moments,
                               forward_coefficients, moments_from_partials)
from ._bn_one_pass import (runs_one_pass_backward, runs_one_pass_forward, wide_one_pass_backward,
                           wide_one_pass_forward)
from ._bn_runs import (runs_affine, runs_grad_input, runs_grad_sums, runs_shifted_sums,
                       short_runs_affine, short_runs_grad_input, short_runs_grad_sums,
                       short_runs_shifted_sums)
from ._bn_wide import (flat_affine, flat_grad_input, partials_for, wide_affine, wide_grad_input,
                       wide_grad_sums, wide_shifted_sums)
from ._streaming import LINE_BYTES, worth_streaming

__all__ = ["RUN_MIN", "batch_stats", "forward_coefficients", "affine", "grad_sums",
           "backward_coefficients", "grad_input", "combine_moments", "one_pass_band",
           "one_pass_forward", "one_pass_backward", "elementwise_plan", "output_line_offset"]

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
SHORT_SUM_RUN = 256     # shorter runs are summed by whole outer rows (short_runs_*_sums):
                        # 2.5x at runs of 49, 1.1-1.3x at 196, no gain at 784 (measured)


def outer_per_task(x):
    """Outer rows per task of the short-runs sum passes: about TILE_ELEMENTS values."""
    return max(1, TILE_ELEMENTS // (x.shape[1] * x.shape[2]))


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


# Tasks of the elementwise passes over runs no longer than this, when nothing streams (so no fence
# to pay for): whole runs, about this many values. Measured on small NCHW images ((8, 128, 7, 7)
# to (32, 64, 28, 28)): 8192 values per task 1.0-1.35x faster than 65536 in the parallel build.
SHORT_RUN_TASK_ELEMENTS = 8192


def short_runs(stream, *arrays):
    """Whether a runs-layout elementwise pass over ``arrays`` (inputs and output) takes the
    short-runs kernels: nothing streams, runs fit in a task, every array C-contiguous."""
    return (not stream and arrays[0].shape[2] <= SHORT_RUN_TASK_ELEMENTS
            and all(a.flags.c_contiguous for a in arrays))


# Rows (wide) or runs shorter than this are not streamed: finding the 64-byte lines of each row
# costs more than streaming saves (rows of 64 float32 values: 0.6-0.9x; 256 values: 1.1-1.2x).
STREAM_MIN_ROW_BYTES = 1024


def streams(x, out):
    """Whether an elementwise pass from ``x`` (wide or runs) into ``out`` streams its output."""
    return worth_streaming(out) and x.shape[-1] * x.itemsize >= STREAM_MIN_ROW_BYTES


# Wide arrays whose rows are this long or shorter stream flat too when x does not start on a
# line (NumPy's large arrays start 16, 32 or 48 bytes into one three times in four): streamed
# row by row from such an x, the eval pass's time depended on where the output landed modulo
# 4 KiB, 0.9-3.3 ms on (32768, 512) float32, 1.0-2.6 on (16384, 1024), 1.0-1.8 on (8192, 2048)
# (session 19, AMD EPYC, every 128 bytes of placement timed), while the flat pass, its output
# placed like x (output_line_offset), took 1.1-1.4, 1.0-1.3 and 1.0-1.3 ms whatever the placement
# (and 0.97-1.02 against 1.07-1.19 on (65536, 256)). Rows of 16 KiB stream better row by row
# ((4096, 4096): 1.2-1.3 ms against 1.5 flat); with x on a line, so do rows from 1 KiB.
FLAT_MAX_ROW_BYTES = 8192


def flat_input(x):
    """Whether an elementwise pass over the wide ``x`` could write its output as one flat run
    (see :func:`elementwise_plan`): an output large enough to stream, rows too short to stream
    one by one (or, for an x off a line boundary, up to FLAT_MAX_ROW_BYTES), x C-contiguous (so
    a line may cross rows). On a runs-layout ``x`` it asks the same of its inner runs."""
    if not (worth_streaming(x) and x.flags.c_contiguous):
        return False
    row_bytes = x.shape[-1] * x.itemsize
    return row_bytes < STREAM_MIN_ROW_BYTES or (
        x.ndim == 2 and row_bytes <= FLAT_MAX_ROW_BYTES and x.ctypes.data % LINE_BYTES != 0)


def flat_output(out):
    """Whether ``out`` can be written as one flat run: C-contiguous, at an address that is a
    multiple of its item size (normkit's outputs are; see :func:`output_line_offset`)."""
    return out.flags.c_contiguous and out.ctypes.data % out.itemsize == 0


# Short runs of a large output stream as the wide layout's rows do: an (outer, C, inner) array is
# a wide (outer, C * inner) one with ``inner`` columns per channel (one flat run where those rows
# are short too, row by row otherwise). Its per-column coefficient vectors are C * inner long,
# so only up to this period (128 KiB of float32 each), where they stay in cache. Measured against
# the unstreamed short-runs kernels at periods of 784-200704: 1.1-1.5x (affine), 1.1-1.4x (input
# gradient) on outputs of 25-51 MB.
FLAT_RUNS_MAX_PERIOD = 32768


class ElementwisePlan(NamedTuple):
    """How an elementwise pass (:func:`affine`, :func:`grad_input`) runs (see
    :func:`elementwise_plan`)."""

    as_wide: bool  # a runs-layout pass is done on the wide layout (see FLAT_RUNS_MAX_PERIOD)
    flat: bool     # the output is written as one flat run (flat_affine, flat_grad_input)


PLAIN_PASS = ElementwisePlan(as_wide=False, flat=False)  # the layout's own kernels


def elementwise_plan(x, *more, out=None):
    """How the elementwise pass over ``x`` (wide or runs layout; ``more``: its other inputs, such
    as dy, which must be C-contiguous for either choice) runs. ``out``: its output, which must
    allow a flat run (:func:`flat_output`); None before it is allocated, for
    :func:`output_line_offset`, which places it. The one place the choice is made, so that the
    output is placed for the kernels that write it."""
    if not worth_streaming(x):  # the cheap test first: most calls are small (flat_input)
        return PLAIN_PASS
    if (out is not None and not flat_output(out)) or not all(a.flags.c_contiguous for a in more):
        return PLAIN_PASS
    if x.ndim == 2:
        return ElementwisePlan(as_wide=False, flat=flat_input(x))
    if x.shape[1] * x.shape[2] > FLAT_RUNS_MAX_PERIOD or not flat_input(x):
        return PLAIN_PASS
    return ElementwisePlan(as_wide=True, flat=flat_input(_as_wide(x)))


def output_line_offset(x, *more):
    """Where in its 64-byte line the output of an elementwise pass over ``x`` (wide or runs
    layout; ``more``: its other inputs, such as dy) should start, in bytes: where ``x`` starts in
    its line when the pass writes one flat run (:func:`elementwise_plan`), 0 (a line boundary)
    otherwise.

    Why: each line of a flat run is computed from the values of x at the same offset, whose
    loads straddle two lines when x and the output start at different places in their lines.
    NumPy's large arrays start 16, 32 or 48 bytes into a line three times in four (16 past a
    page boundary when mmap'd); 16 bytes in, with line-aligned outputs, the flat eval pass
    measured 1.4x slower on (100352, 64) float32 and 2x on (262144, 32) than with a line-aligned
    x (session 19, AMD EPYC). Rows streamed one by one want line-aligned outputs instead: an
    output offset like x's gives each row a scalar head and tail (measured 1.3x slower on
    (65536, 256) and (32768, 512) float32)."""
    if not elementwise_plan(x, *more).flat:
        return 0
    offset = x.ctypes.data % LINE_BYTES
    return offset if offset % x.itemsize == 0 else 0


def _as_wide(a):
    """A C-contiguous runs-layout array (outer, C, inner) as the wide (outer, C * inner)."""
    return a.reshape(a.shape[0], -1)


# Wide arrays of few columns (an (N, C) batch of a few features, channels-last images with few
# channels) are folded: a C-contiguous (rows, cols) array is also a (rows / k, k * cols) one, whose
# column j belongs to column j % cols of the original, so the kernels' per-row work (loop set-up,
# remainders, horizontal steps) covers k rows at once. The per-column vectors repeat k times, and
# the sums of the k copies of a column are added. Measured on float32 (65536, 16), (8192, 32) and
# (4096, 64): statistics 1.3-1.7x, gradient sums 1.1-2x, elementwise passes 1.1-1.6x faster; none
# at 128 columns and more.
FOLD_MAX_COLS = 64   # arrays this narrow or narrower are folded,
FOLD_COLS = 1024     # into rows of at most this many columns,
FOLD_MIN_ROWS = 4096  # when they have this many rows (each vector repeated costs ~1 us)


@functools.lru_cache(maxsize=256)
def fold_factor(n_rows, n_cols):
    """Rows folded into one (see FOLD_MAX_COLS): the largest divisor k of ``n_rows`` with
    k * ``n_cols`` <= FOLD_COLS, or 1 where the array is wider than FOLD_MAX_COLS."""
    if n_cols > FOLD_MAX_COLS:
        return 1
    for k in range(min(n_rows, FOLD_COLS // n_cols), 1, -1):
        if n_rows % k == 0:
            return k
    return 1


def folding(*arrays):
    """The fold factor for wide ``arrays`` of one shape (inputs and output): 1 for fewer than
    FOLD_MIN_ROWS rows, or unless every one is C-contiguous (only then is the fold a view)."""
    if arrays[0].shape[0] < FOLD_MIN_ROWS or not all(a.flags.c_contiguous for a in arrays):
        return 1
    return fold_factor(*arrays[0].shape)


def fold(k, *arrays):
    """``arrays`` (rows, cols) viewed as (rows / k, k * cols)."""
    return tuple(a.reshape(a.shape[0] // k, -1) for a in arrays)


def fold_wide(arrays, vectors):
    """Wide ``arrays`` of one shape (inputs and output) folded where :func:`folding` allows, and
    their per-column ``vectors`` repeated to match: ``(arrays, vectors)``, as given otherwise."""
    k = folding(*arrays)
    if k == 1:
        return arrays, vectors
    return fold(k, *arrays), [repeated(v, k) for v in vectors]


def repeated(v, k):
    """The vector ``v`` repeated ``k`` times end to end (as np.tile, in under half its time)."""
    out = np.empty((k, v.shape[0]), v.dtype)
    out[:] = v
    return out.reshape(-1)


def periodic(per_column, n_cols, line_offset):
    """``per_column`` repeated to one line beyond a row (entry k is column k % n_cols), placed
    ``line_offset`` bytes into a line (see ``_memory.line_placed``)."""
    values = np.resize(per_column, n_cols + LINE_BYTES // per_column.itemsize)
    return line_placed(values, line_offset)


# ----------------------------------------------------------------------------------------------
# Entry points; ``group`` is the number of neighbouring columns that share a channel in the wide
# layout (ignored for runs). The elementwise passes take their coefficients already per column
# (``forward_coefficients(..., group)``).
# ----------------------------------------------------------------------------------------------

def _expand(per_channel, group):
    return per_channel if group == 1 else np.repeat(per_channel, group)


def batch_stats(x, group):
    """Mean and biased variance per channel (float64) of ``x`` in the wide or runs layout."""
    if x.ndim == 2:
        n_rows, n_cols = x.shape
        shift = x[0, ::group].astype(np.float64)  # per channel: its first value
        (x,), (column_shift,) = fold_wide((x,), (_expand(shift, group),))
        row_tile = row_tile_for(x.shape[1])
        partials = partials_for(x, row_tile)
        wide_shifted_sums(x, column_shift, row_tile, COL_TILE, partials, work=x.size)
        return moments_from_partials(shift, partials[0], partials[1], float(n_rows * group),
                                     group)
    shift = x[0, :, 0].astype(np.float64)
    if x.shape[2] < SHORT_SUM_RUN:
        sums, squares = short_runs_shifted_sums(x, shift, outer_per_task(x), work=x.size)
    else:
        sums, squares = runs_shifted_sums(x, shift, SEGMENT, work=x.size)
    count = x.shape[0] * x.shape[2]
    return moments_from_partials(shift, sums, squares, float(count), 1)


def affine(x, coefficients, out):
    """out = (x - centre) * scale + shift with the :func:`forward_coefficients` (given the
    layout's ``group``: per column of a wide ``x``, per channel of a runs one)."""
    plan = elementwise_plan(x, out=out)
    if plan.as_wide:
        coefficients = [_expand(v, x.shape[2]) for v in coefficients]
        x, out = _as_wide(x), _as_wide(out)
    if plan.flat:
        line_offset = out.ctypes.data % LINE_BYTES
        flat_affine(x, *(periodic(v, x.shape[1], line_offset) for v in coefficients), out,
                    ELEMENTWISE_TILE_ELEMENTS, work=x.size)
        return
    if x.ndim == 2:
        (x, out), coefficients = fold_wide((x, out), coefficients)
    stream = streams(x, out)
    if x.ndim == 2:
        if stream:  # read a line at a time beside the output (unstreamed: no gain measured)
            line_offset = out.ctypes.data % LINE_BYTES
            coefficients = [line_placed(v, line_offset) for v in coefficients]
        wide_affine(x, *coefficients, out, *elementwise_tile(x.shape[1], stream), stream,
                    work=x.size)
    elif short_runs(stream, x, out):
        short_runs_affine(x, *coefficients, out, SHORT_RUN_TASK_ELEMENTS // x.shape[2],
                          work=x.size)
    else:
        runs_affine(x, *coefficients, out, *elementwise_runs(x.shape[2]), stream, work=x.size)


def grad_sums(dy, x, mean, group):
    """Per channel: sum(dy) and sum(dy * (x - mean)), float64."""
    if x.ndim == 2:
        n_ch = x.shape[1] // group
        (dy, x), (mean,) = fold_wide((dy, x), (_expand(mean, group),))
        row_tile = row_tile_for(x.shape[1])
        partials = partials_for(x, row_tile)
        wide_grad_sums(dy, x, mean, row_tile, COL_TILE, partials, work=x.size)
        return channel_total_pair(partials[0], partials[1], n_ch, group)
    if x.shape[2] < SHORT_SUM_RUN:
        s1, s2 = short_runs_grad_sums(dy, x, mean, outer_per_task(x), work=x.size)
    else:
        s1, s2 = runs_grad_sums(dy, x, mean, SEGMENT, work=x.size)
    return channel_total_pair(s1, s2, x.shape[1], 1)


def grad_input(dy, x, coefficients, out):
    """dx = dy * k_dy + (x - centre) * k_x + k_0 with the :func:`backward_coefficients` (given
    the layout's ``group``: per column of a wide ``x``, per channel of a runs one)."""
    plan = elementwise_plan(x, dy, out=out)
    if plan.as_wide:
        coefficients = [_expand(v, x.shape[2]) for v in coefficients]
        dy, x, out = _as_wide(dy), _as_wide(x), _as_wide(out)
    if plan.flat:
        line_offset = out.ctypes.data % LINE_BYTES
        flat_grad_input(dy, x, *(periodic(v, x.shape[1], line_offset) for v in coefficients),
                        out, ELEMENTWISE_TILE_ELEMENTS, work=x.size)
        return
    if x.ndim == 2:
        (dy, x, out), coefficients = fold_wide((dy, x, out), coefficients)
    stream = streams(x, out)
    if x.ndim == 2:
        if stream:  # read a line at a time beside the output (unstreamed: no gain measured)
            line_offset = out.ctypes.data % LINE_BYTES
            coefficients = [line_placed(v, line_offset) for v in coefficients]
        wide_grad_input(dy, x, *coefficients, out, *elementwise_tile(x.shape[1], stream), stream,
                        work=x.size)
    elif short_runs(stream, dy, x, out):
        short_runs_grad_input(dy, x, *coefficients, out, SHORT_RUN_TASK_ELEMENTS // x.shape[2],
                              work=x.size)
    else:
        runs_grad_input(dy, x, *coefficients, out, *elementwise_runs(x.shape[2]), stream,
                        work=x.size)


# ----------------------------------------------------------------------------------------------
# One pass or two (see _bn_one_pass.py)
# ----------------------------------------------------------------------------------------------

ONE_PASS_MIN_TASKS = 8     # channels (runs) needed, bands (wide) aimed for: tasks to spread
ONE_PASS_MIN_COLS = 512    # narrowest band (unless the array is narrower): bands of 128-256
                           # float32 columns measured 0.55-0.8x of the two-pass kernels, whose
                           # tiles read rows in 4 KiB pieces the prefetcher can stream
FOLDED_TWO_PASS_MAX_COLS = 32  # folded arrays (see FOLD_MAX_COLS) this narrow take two passes:
                               # in one they are a single task, and the folded two-pass kernels
                               # measured 1.1-2x faster ((8192, 16) and (16384, 8) float32)


def one_pass_band(x, group, n_inputs):
    """How the one-pass kernels would split ``x`` (``n_inputs`` arrays of its shape are read):
    1 for runs (a channel per task), the columns per task for the wide layout (whole channels:
    a multiple of ``group``), or 0 when they do not apply. A function of the shape alone, so
    results do not depend on the thread count."""
    bytes_per_value = x.itemsize * n_inputs
    if x.ndim == 3:
        fits = x.shape[0] * x.shape[2] * bytes_per_value <= config.ONE_PASS_BYTES
        return 1 if fits and x.shape[1] >= ONE_PASS_MIN_TASKS else 0
    if x.shape[1] <= FOLDED_TWO_PASS_MAX_COLS and folding(x) > 1:
        return 0
    n_rows, n_cols = x.shape
    fit = config.ONE_PASS_BYTES // (n_rows * bytes_per_value)
    unit = 16 * group // math.gcd(16, group)  # a multiple of 16 that keeps channels whole
    wanted = max(-(-n_cols // ONE_PASS_MIN_TASKS), ONE_PASS_MIN_COLS)
    band = min(fit // unit, -(-wanted // unit)) * unit
    return band if band >= min(n_cols, ONE_PASS_MIN_COLS) else 0


def one_pass_forward(x, weight, bias, eps, out, band, group):
    """Training forward in one pass (see :func:`one_pass_band`): writes ``out`` and returns the
    batch mean, biased variance and rstd per channel (float64)."""
    n = x.shape[1] // group
    mean, var, rstd = np.empty(n), np.empty(n), np.empty(n)
    weight = NONE if weight is None else weight
    bias = NONE if bias is None else bias
    stream = streams(x, out)
    if x.ndim == 3:
        runs_one_pass_forward(x, weight, bias, float(eps), out, mean, var, rstd, stream,
                              work=x.size)
    else:
        coefficients = tuple(np.empty(x.shape[1], x.dtype) for _ in range(3))  # per column
        wide_one_pass_forward(x, weight, bias, float(eps), out, mean, var, rstd, *coefficients,
                              band, group, stream, work=x.size)
    return mean, var, rstd


def one_pass_backward(dy, x, mean, rstd, weight, count, batch_stats, out, band, group):
    """Backward in one pass (see :func:`one_pass_band`): writes dx into ``out`` and returns
    sum(dy) and dweight per channel (float64), as :func:`grad_sums` and
    :func:`backward_coefficients` would."""
    n = x.shape[1] // group
    sum_dy, sum_dy_xc, dweight = np.empty(n), np.empty(n), np.empty(n)
    args = (dy, x, mean, rstd, NONE if weight is None else weight, 1.0 / count, bool(batch_stats),
            out, sum_dy, sum_dy_xc)
    stream = streams(x, out)
    if x.ndim == 3:
        runs_one_pass_backward(*args, dweight, stream, work=x.size)
    else:
        coefficients = tuple(np.empty(x.shape[1], x.dtype) for _ in range(4))  # per column
        wide_one_pass_backward(*args, *coefficients, dweight, band, group, stream, work=x.size)
    return sum_dy, dweight
