"""BatchNorm's one-pass kernels: when one task's share of the data fits in a core's L2 cache (a
channel of an NCHW batch, a band of columns of a small-batch (N, C) array), the task takes its
statistics or gradient sums and then writes its output at once, so the second pass reads from
L2 instead of memory: 1.3-1.7x on the BatchNorm training forward and backward (measured on
(32, 64, 56, 56) and (256, 8192) float32). The coefficients come from the same helpers as the
two-pass path: per channel (runs) or on one band's slices (wide; a band holds whole channels where
a channel has several columns, as NCHW images of 2-31 values do: 1.3-2x there). Whether they apply:
:func:`normkit.kernels.cpu.batchnorm.one_pass_band`.
"""

import numpy as np
from numba import prange

from ._bn_coefficients import (channel_backward_coefficients, channel_forward_coefficients,
                               channel_total_pair, fill_backward, fill_forward, moments)
from ._bn_rows import affine_row, affine_values, grad_input_row, grad_input_values
from ._bn_runs import run_grad_sums, run_shifted_sums
from ._bn_wide import tile_affine, tile_grad_input, tile_grad_sums, tile_shifted_sums
from ._compile import borrowed, cast_like, helper, kernel
from ._streaming import end_streams


@helper
def channel_affine(x, c, centre, scale, shift, out, stream):
    """out = (x - centre) * scale + shift over channel ``c``'s runs (the runs layout's
    ``tile_affine``)."""
    if stream:
        for o in range(x.shape[0]):
            affine_row(x[o, c], centre, scale, shift, out[o, c], True)
    else:  # without the streaming set-up, which costs on short runs
        for o in range(x.shape[0]):
            affine_values(x[o, c], centre, scale, shift, out[o, c])


@helper
def channel_grad_input(dy, x, c, centre, k_dy, k_x, k_0, out, stream):
    """out = dy * k_dy + (x - centre) * k_x + k_0 over channel ``c``'s runs."""
    if stream:
        for o in range(x.shape[0]):
            grad_input_row(dy[o, c], x[o, c], centre, k_dy, k_x, k_0, out[o, c], True)
    else:
        for o in range(x.shape[0]):
            grad_input_values(dy[o, c], x[o, c], centre, k_dy, k_x, k_0, out[o, c])


@kernel
def runs_one_pass_forward(x, weight, bias, eps, out, mean, var, rstd, stream):
    x, weight, bias, out, mean, var, rstd = borrowed(x, weight, bias, out, mean, var, rstd)
    n_outer, n_ch, n_inner = x.shape
    inv_count = 1.0 / (n_outer * n_inner)
    zero = cast_like(0.0, out)
    for c in prange(n_ch):
        k = np.float64(x[0, c, 0])
        s1 = 0.0
        s2 = 0.0
        for o in range(n_outer):
            a1, a2 = run_shifted_sums(x[o, c], k)
            s1 += a1
            s2 += a2
        mean[c], var[c] = moments(k, s1, s2, inv_count)
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
        centre, scale, shift = channel_forward_coefficients(
            mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0,
            bias[c] if bias.shape[0] else 0.0, zero)
        channel_affine(x, c, centre, scale, shift, out, stream)
        if stream:
            end_streams()


@helper
def band_channel_moments(k, s1, s2, group, inv_count, mean, var):
    """Mean and biased variance of each channel of a band (``mean``, ``var``: its slices) from
    its columns' sums ``s1``, ``s2`` of x - k, ``group`` neighbouring columns a channel, all with
    the channel's shift."""
    if group == 1:  # a loop of its own: with only the general one, (64, 4096) ran 1.1x slower
        for j in range(s1.shape[0]):
            mean[j], var[j] = moments(k[j], s1[j], s2[j], inv_count)
        return
    # A channel's columns share its shift: their sums add.
    t1, t2 = channel_total_pair(s1.reshape(1, -1), s2.reshape(1, -1), mean.shape[0], group)
    for h in range(mean.shape[0]):
        mean[h], var[h] = moments(k[h * group], t1[h], t2[h], inv_count)


@kernel
def wide_one_pass_forward(x, weight, bias, eps, out, mean, var, rstd, centre, scale, shift, band,
                          group, stream):
    """Bands of ``band`` columns, a multiple of ``group`` (columns a channel): ``mean``, ``var``,
    ``rstd`` per channel, ``centre``, ``scale``, ``shift`` per column (scratch)."""
    (x, weight, bias, out, mean, var, rstd, centre, scale,
     shift) = borrowed(x, weight, bias, out, mean, var, rstd, centre, scale, shift)
    n_rows, n_cols = x.shape
    inv_count = 1.0 / (n_rows * group)
    for t in prange((n_cols + band - 1) // band):
        c0 = t * band
        c1 = min(c0 + band, n_cols)
        h0 = c0 // group  # the band's channels: h0:h1
        h1 = c1 // group
        # Per column, the shift of its sums: its channel's first value. (Filling by one slice a
        # channel, or by a division per column, made (64, 4096) 1.1-1.35x slower: hence the if.)
        k = x[0, c0:c1].astype(np.float64)
        if group > 1:
            for h in range(h1 - h0):
                k[h * group:(h + 1) * group] = k[h * group]
        s1 = np.zeros(c1 - c0)
        s2 = np.zeros(c1 - c0)
        tile_shifted_sums(x, 0, n_rows, c0, c1, k, s1, s2)
        band_channel_moments(k, s1, s2, group, inv_count, mean[h0:h1], var[h0:h1])
        fill_forward(mean[h0:h1], var[h0:h1], weight[h0:h1], bias[h0:h1], eps,
                     rstd[h0:h1], centre[c0:c1], scale[c0:c1], shift[c0:c1])
        tile_affine(x, 0, n_rows, c0, c1, centre[c0:c1], scale[c0:c1], shift[c0:c1], out, stream)
        if stream:
            end_streams()


@kernel
def runs_one_pass_backward(dy, x, mean, rstd, weight, inv_count, batch_stats, out,
                           sum_dy, sum_dy_xc, dweight, stream):
    (dy, x, mean, rstd, weight, out, sum_dy, sum_dy_xc,
     dweight) = borrowed(dy, x, mean, rstd, weight, out, sum_dy, sum_dy_xc, dweight)
    n_outer, n_ch, n_inner = x.shape
    zero = cast_like(0.0, out)
    for c in prange(n_ch):
        s1 = 0.0
        s2 = 0.0
        for o in range(n_outer):
            a1, a2 = run_grad_sums(dy[o, c], x[o, c], mean[c])
            s1 += a1
            s2 += a2
        sum_dy[c] = s1
        sum_dy_xc[c] = s2
        centre, k_dy, k_x, k_0, dweight[c] = channel_backward_coefficients(
            s1, s2, mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0, inv_count,
            batch_stats, zero)
        channel_grad_input(dy, x, c, centre, k_dy, k_x, k_0, out, stream)
        if stream:
            end_streams()


@kernel
def wide_one_pass_backward(dy, x, mean, rstd, weight, inv_count, batch_stats, out, sum_dy,
                           sum_dy_xc, centre, k_dy, k_x, k_0, dweight, band, group, stream):
    """Bands as :func:`wide_one_pass_forward`'s: ``mean``, ``rstd``, the sums and ``dweight``
    per channel, ``centre``, ``k_dy``, ``k_x``, ``k_0`` per column (scratch)."""
    (dy, x, mean, rstd, weight, out, sum_dy, sum_dy_xc, centre, k_dy, k_x, k_0,
     dweight) = borrowed(dy, x, mean, rstd, weight, out, sum_dy, sum_dy_xc, centre, k_dy, k_x,
                         k_0, dweight)
    n_rows, n_cols = x.shape
    for t in prange((n_cols + band - 1) // band):
        c0 = t * band
        c1 = min(c0 + band, n_cols)
        h0 = c0 // group
        h1 = c1 // group
        if group == 1:  # the sums are the channels' (see wide_one_pass_forward for the if)
            sum_dy[c0:c1] = 0.0
            sum_dy_xc[c0:c1] = 0.0
            tile_grad_sums(dy, x, 0, n_rows, c0, c1, mean[c0:c1], sum_dy[c0:c1],
                           sum_dy_xc[c0:c1])
        else:
            column_mean = np.empty(c1 - c0)
            for h in range(h1 - h0):
                column_mean[h * group:(h + 1) * group] = mean[h0 + h]
            s1 = np.zeros(c1 - c0)
            s2 = np.zeros(c1 - c0)
            tile_grad_sums(dy, x, 0, n_rows, c0, c1, column_mean, s1, s2)
            t1, t2 = channel_total_pair(s1.reshape(1, -1), s2.reshape(1, -1), h1 - h0, group)
            sum_dy[h0:h1] = t1
            sum_dy_xc[h0:h1] = t2
        fill_backward(sum_dy[h0:h1], sum_dy_xc[h0:h1], mean[h0:h1], rstd[h0:h1], weight[h0:h1],
                      inv_count, batch_stats, centre[c0:c1], k_dy[c0:c1], k_x[c0:c1],
                      k_0[c0:c1], dweight[h0:h1])
        tile_grad_input(dy, x, 0, n_rows, c0, c1, centre[c0:c1], k_dy[c0:c1], k_x[c0:c1],
                        k_0[c0:c1], out, stream)
        if stream:
            end_streams()
