"""BatchNorm's per-channel arithmetic: mean and variance from partial sums, the merge of parts,
and the coefficients of the elementwise passes, forward and backward.
"""

import numpy as np

from ._compile import cast_like, helper, inline_helper


@helper
def channel_totals(partials, n_ch, group):
    """Per channel, the sum of ``partials`` (one row per tile) over its rows and columns: column
    j belongs to channel (j % (n_ch * group)) // group (a channel owns ``group`` neighbouring
    columns, and a folded array repeats its columns). Compiled: NumPy's sums over the transposed
    partials took 9 us each on the (1, 8192) partials of an (8, 512, 4, 4) input, this ~1."""
    total = np.zeros(n_ch)
    period = n_ch * group
    for t in range(partials.shape[0]):
        for j0 in range(0, partials.shape[1], period):
            row = partials[t, j0:j0 + period]
            if group == 1:
                total += row
            else:
                for c in range(n_ch):
                    for g in range(group):
                        total[c] += row[c * group + g]
    return total


@helper
def channel_total_pair(first, second, n_ch, group):
    """:func:`channel_totals` of two partial-sum arrays, in one call."""
    return channel_totals(first, n_ch, group), channel_totals(second, n_ch, group)


@helper
def moments_from_partials(shift, sums, squares, count, group):
    """Mean and biased variance per channel from partial sums of d = x - shift and d^2 (one row
    of ``sums``/``squares`` per tile, columns as :func:`channel_totals` says) over ``count``
    values per channel. Compiled: the NumPy calls it replaced took 3-4x as long (C = 8192:
    ~70 us vs ~20 us). NaN/inf input gives NaN/inf."""
    sum_d, sum_d2 = channel_total_pair(sums, squares, shift.shape[0], group)
    mean = np.empty_like(sum_d)
    var = np.empty_like(sum_d)
    inv_count = 1.0 / count  # a multiply per column vectorises better than a divide
    for j in range(sum_d.shape[0]):
        mean[j], var[j] = moments(shift[j], sum_d[j], sum_d2[j], inv_count)
    return mean, var


@helper
def moments(shift, sum_d, sum_d2, inv_count):
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


# without losing a large mean: the mean is split into ``centre``, its value in that dtype, and the
# rest, which is folded into the constant term:
#     (x - mean) * scale + shift = (x - centre) * scale + (shift - (mean - centre) * scale).
# x - centre is exact near the mean (Sterbenz) and rounded once elsewhere, as a float64 result
# would be when stored, so outputs stay within about an ulp even for randn + 1e6 (measured 5-25%
# faster than centring in float64). The per-channel coefficients are computed by compiled loops:
# for 256 channels they took 3.5x as long as a dozen NumPy calls.

NONE = np.empty(0)  # an absent weight or bias, for the compiled helpers


# The per-channel arithmetic is written for scalars (channel_*_coefficients), used by the
# fill_* loops over channels and by the one-pass kernels channel by channel. (The one-pass
# kernels used to pass one-channel slices to fill_*: Numba counted references to each, ~150 ns
# a channel in the serial builds, which made them 2x slower; see _compile.borrowed.)

@inline_helper
def channel_forward_coefficients(mean, rstd, weight, bias, zero):
    """One channel's (centre, scale, shift), in the type of ``zero`` (the output's dtype), from
    its mean and rstd (float64) and its weight and bias (1 and 0 where there are none)."""
    centre = cast_like(mean, zero)
    scale = cast_like(rstd * weight, zero)
    return centre, scale, cast_like(bias - (mean - np.float64(centre)) * np.float64(scale), zero)


@helper
def fill_forward(mean, var, weight, bias, eps, rstd, centre, scale, shift):
    """:func:`forward_coefficients` into its arrays: ``centre``, ``scale``, ``shift`` hold
    ``group`` = len(centre) // len(mean) entries per channel."""
    for c in range(mean.shape[0]):  # a loop of its own, so that the square roots vectorise
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
    zero = cast_like(0.0, centre)
    group = centre.shape[0] // mean.shape[0]
    if group == 1:  # a loop of its own, which vectorises
        for c in range(mean.shape[0]):
            centre[c], scale[c], shift[c] = channel_forward_coefficients(
                mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0,
                bias[c] if bias.shape[0] else 0.0, zero)
        return
    for c in range(mean.shape[0]):  # whole slices: stores of one value at a time took 2x as long
        centre_c, scale_c, shift_c = channel_forward_coefficients(
            mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0,
            bias[c] if bias.shape[0] else 0.0, zero)
        centre[c * group:(c + 1) * group] = centre_c
        scale[c * group:(c + 1) * group] = scale_c
        shift[c * group:(c + 1) * group] = shift_c


def forward_coefficients(mean, var, weight, bias, eps, dtype, group=1):
    """Per channel: rstd = 1 / sqrt(var + eps) (float64); and the ``(centre, scale, shift)``
    vectors, in ``dtype``, of y = (x - centre) * scale + shift = (x - mean) * rstd * weight + bias,
    with ``group`` entries per channel (one per column of a wide layout with ``group`` columns
    a channel: written here, the three np.repeat calls that did it cost 4-5 us)."""
    n = mean.shape[0]
    rstd = np.empty(n)
    m = n * group
    centre, scale, shift = np.empty(m, dtype), np.empty(m, dtype), np.empty(m, dtype)
    fill_forward(mean, var, NONE if weight is None else weight, NONE if bias is None else bias,
                 float(eps), rstd, centre, scale, shift)
    return rstd, (centre, scale, shift)


@inline_helper
def channel_backward_coefficients(sum_dy, sum_dy_xc, mean, rstd, weight, inv_count, batch_stats,
                                  zero):
    """One channel's (centre, k_dy, k_x, k_0), in the type of ``zero``, and its dweight
    (float64), from its sums, mean, rstd and weight (1 where there is none); see
    :func:`backward_coefficients`."""
    k = rstd * weight
    a = sum_dy * inv_count if batch_stats else 0.0
    b = sum_dy_xc * (rstd * rstd * inv_count) if batch_stats else 0.0
    centre = cast_like(mean, zero)
    return (centre, cast_like(k, zero), cast_like(-k * b, zero),
            cast_like(-k * b * (np.float64(centre) - mean) - k * a, zero), sum_dy_xc * rstd)


@helper
def fill_backward(sum_dy, sum_dy_xc, mean, rstd, weight, inv_count, batch_stats,
                  centre, k_dy, k_x, k_0, dweight):
    """:func:`backward_coefficients` into its arrays, ``group`` = len(centre) // len(mean)
    entries per channel (see :func:`fill_forward`)."""
    zero = cast_like(0.0, centre)
    group = centre.shape[0] // mean.shape[0]
    if group == 1:  # a loop of its own, which vectorises
        for c in range(mean.shape[0]):
            centre[c], k_dy[c], k_x[c], k_0[c], dweight[c] = channel_backward_coefficients(
                sum_dy[c], sum_dy_xc[c], mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0,
                inv_count, batch_stats, zero)
        return
    for c in range(mean.shape[0]):
        centre_c, k_dy_c, k_x_c, k_0_c, dweight[c] = channel_backward_coefficients(
            sum_dy[c], sum_dy_xc[c], mean[c], rstd[c], weight[c] if weight.shape[0] else 1.0,
            inv_count, batch_stats, zero)
        centre[c * group:(c + 1) * group] = centre_c
        k_dy[c * group:(c + 1) * group] = k_dy_c
        k_x[c * group:(c + 1) * group] = k_x_c
        k_0[c * group:(c + 1) * group] = k_0_c


def backward_coefficients(sum_dy, sum_dy_xc, mean, rstd, weight, count, batch_stats, dtype,
                          group=1):
    """The ``(centre, k_dy, k_x, k_0)`` vectors, in ``dtype``, of
    dx = dy * k_dy + (x - centre) * k_x + k_0 = k * (dy - a - (x - mean) * b), with k = rstd * weight,
    a = sum(dy) / count and b = sum(dy * (x - mean)) * rstd^2 / count (a = b = 0 when the forward
    used running statistics: they are constants); and dweight = sum(dy * (x - mean)) * rstd
    (float64). Sums over ``count`` values per channel, as :func:`grad_sums` returns them. The
    coefficient vectors have ``group`` entries per channel, as in :func:`forward_coefficients`."""
    n = mean.shape[0]
    coefficients = tuple(np.empty(n * group, dtype) for _ in range(4))
    dweight = np.empty(n)
    fill_backward(sum_dy, sum_dy_xc, mean, rstd, NONE if weight is None else weight,
                  1.0 / count, bool(batch_stats), *coefficients, dweight)
    return coefficients, dweight
