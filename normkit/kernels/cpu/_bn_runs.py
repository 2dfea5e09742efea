"""BatchNorm kernels for the "runs" layout, a 3-D (outer, C, inner) array whose inner runs are long
and contiguous (NCHW images): per-segment partial sums and the elementwise passes, by runs; and
their ``short_runs_*`` twins for runs of tens to hundreds of values, by whole runs and outer rows.
"""

import numpy as np
from numba import prange

from ._bn_rows import affine_row, affine_values, grad_input_row, grad_input_values
from ._compile import borrowed, helper, kernel, wide_vectors
from ._streaming import end_streams


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
def run_grad_sums(gs, xs, mean):
    """sum(gs) and sum(gs * (xs - mean)) of 1-D runs, in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(xs.shape[0]):
        g = np.float64(gs[i])
        s1 += g
        s2 += g * (xs[i] - mean)
    return s1, s2


@kernel
def runs_shifted_sums(x, shift, segment):
    """Per run segment: sum(x - shift) and sum((x - shift)^2), each (outer * n_segments, C)."""
    x, shift = borrowed(x, shift)
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
def runs_affine(x, centre, scale, shift, out, runs_per_task, segment, stream):
    """out = (x - centre) * scale + shift per channel, in out's dtype (see :func:`affine`)."""
    x, centre, scale, shift, out = borrowed(x, centre, scale, shift, out)
    n_outer, n_ch, n_inner = x.shape
    n_runs = n_outer * n_ch
    n_seg = (n_inner + segment - 1) // segment
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task * n_seg):
        i0 = (t % n_seg) * segment
        i1 = min(i0 + segment, n_inner)
        first = (t // n_seg) * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            o, c = run // n_ch, run % n_ch
            affine_row(x[o, c, i0:i1], centre[c], scale[c], shift[c], out[o, c, i0:i1], stream)
        if stream:
            end_streams()


@kernel
def short_runs_shifted_sums(x, shift, outer_per_task):
    """:func:`runs_shifted_sums` for short runs: per task, ``outer_per_task`` whole outer rows
    (every channel) read in memory order into one row of partial sums, (n_tasks, C). With runs
    of 49 values, 2.5x faster than a task and a partial per run (whose partials were as large as
    a sixth of a float32 input); the same speed from runs of ~800."""
    x, shift = borrowed(x, shift)
    n_outer, n_ch, n_inner = x.shape
    n_tasks = (n_outer + outer_per_task - 1) // outer_per_task
    sums = np.zeros((n_tasks, n_ch))
    squares = np.zeros((n_tasks, n_ch))
    for t in prange(n_tasks):
        o0 = t * outer_per_task
        for o in range(o0, min(o0 + outer_per_task, n_outer)):
            for c in range(n_ch):
                a1, a2 = run_shifted_sums(x[o, c], shift[c])
                sums[t, c] += a1
                squares[t, c] += a2
    return sums, squares


@kernel
def short_runs_affine(x, centre, scale, shift, out, runs_per_task):
    """:func:`runs_affine` for C-contiguous ``x`` and ``out`` whose output is not streamed, in
    tasks of ``runs_per_task`` whole runs read as one flat array. Without the per-run indexing of
    three axes, the segment arithmetic and the stream test, measured 1.5-2.3x faster on runs of
    49-196 values (small NCHW images), 1.25-1.35x on runs of 784."""
    x, centre, scale, shift, out = borrowed(x, centre, scale, shift, out)
    n_ch, n_inner = x.shape[1], x.shape[2]
    xf, of = x.reshape(-1), out.reshape(-1)
    n_runs = xf.shape[0] // n_inner
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task):
        first = t * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            c = run % n_ch
            i0 = run * n_inner
            i1 = i0 + n_inner
            affine_values(xf[i0:i1], centre[c], scale[c], shift[c], of[i0:i1])


@kernel
def runs_grad_sums(dy, x, mean, segment):
    """Per run segment: sum(dy) and sum(dy * (x - mean)), each (outer * n_segments, C)."""
    dy, x, mean = borrowed(dy, x, mean)
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
        sum_dy[o * n_seg + s, c], sum_dy_xc[o * n_seg + s, c] = run_grad_sums(
            dy[o, c, i0:i1], x[o, c, i0:i1], mean[c])
    return sum_dy, sum_dy_xc


@kernel
def short_runs_grad_sums(dy, x, mean, outer_per_task):
    """:func:`runs_grad_sums` for short runs, by whole outer rows (see
    :func:`short_runs_shifted_sums`)."""
    dy, x, mean = borrowed(dy, x, mean)
    n_outer, n_ch, n_inner = x.shape
    n_tasks = (n_outer + outer_per_task - 1) // outer_per_task
    sum_dy = np.zeros((n_tasks, n_ch))
    sum_dy_xc = np.zeros((n_tasks, n_ch))
    for t in prange(n_tasks):
        o0 = t * outer_per_task
        for o in range(o0, min(o0 + outer_per_task, n_outer)):
            for c in range(n_ch):
                a1, a2 = run_grad_sums(dy[o, c], x[o, c], mean[c])
                sum_dy[t, c] += a1
                sum_dy_xc[t, c] += a2
    return sum_dy, sum_dy_xc


@kernel
def runs_grad_input(dy, x, centre, k_dy, k_x, k_0, out, runs_per_task, segment, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 per channel, in out's dtype (see :func:`grad_input`)."""
    dy, x, centre, k_dy, k_x, k_0, out = borrowed(dy, x, centre, k_dy, k_x, k_0, out)
    n_outer, n_ch, n_inner = x.shape
    n_runs = n_outer * n_ch
    n_seg = (n_inner + segment - 1) // segment
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task * n_seg):
        i0 = (t % n_seg) * segment
        i1 = min(i0 + segment, n_inner)
        first = (t // n_seg) * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            o, c = run // n_ch, run % n_ch
            grad_input_row(dy[o, c, i0:i1], x[o, c, i0:i1], centre[c], k_dy[c], k_x[c], k_0[c],
                           out[o, c, i0:i1], stream)
        if stream:
            end_streams()


@kernel
def short_runs_grad_input(dy, x, centre, k_dy, k_x, k_0, out, runs_per_task):
    """:func:`runs_grad_input` for C-contiguous ``dy``, ``x`` and ``out`` whose output is not
    streamed (see :func:`short_runs_affine`)."""
    dy, x, centre, k_dy, k_x, k_0, out = borrowed(dy, x, centre, k_dy, k_x, k_0, out)
    n_ch, n_inner = x.shape[1], x.shape[2]
    dyf, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    n_runs = xf.shape[0] // n_inner
    for t in prange((n_runs + runs_per_task - 1) // runs_per_task):
        first = t * runs_per_task
        for run in range(first, min(first + runs_per_task, n_runs)):
            c = run % n_ch
            i0 = run * n_inner
            i1 = i0 + n_inner
            grad_input_values(dyf[i0:i1], xf[i0:i1], centre[c], k_dy[c], k_x[c], k_0[c], of[i0:i1])
