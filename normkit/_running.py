"""The running-statistics update of BatchNorm, and its policy for non-finite batches."""

import warnings

import numpy as np


class NonFiniteBatchWarning(RuntimeWarning):
    """A training batch had NaN or inf statistics; the running statistics were left unchanged."""


def update_running_stats(running_mean, running_var, mean, var, count, momentum,
                         num_batches_tracked, op):
    """Fold one batch's statistics into the running ones, in place, PyTorch's way.

    ``running = (1 - f) * running + f * batch``, with ``f = momentum`` or, for ``momentum=None``,
    ``f = 1 / (num_batches_tracked + 1)`` (a cumulative average). The running variance takes the
    unbiased batch variance ``var * n / (n - 1)``.

    Policy for non-finite input: if any channel's batch mean or variance is NaN or inf, nothing is
    updated and a :class:`NonFiniteBatchWarning` is issued, so one bad batch cannot silently poison
    every later eval-mode prediction. (The forward output still carries the NaN, as in PyTorch.)

    Returns True when the statistics were updated.
    """
    finite = np.isfinite(mean) & np.isfinite(var)
    if not finite.all():
        warnings.warn(f"{op}: the batch has NaN or inf values in {int((~finite).sum())} of "
                      f"{finite.size} channels; running statistics were left unchanged",
                      NonFiniteBatchWarning, stacklevel=4)
        return False
    if momentum is None:
        if num_batches_tracked is None:
            raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")
        factor = 1.0 / (num_batches_tracked + 1)
    else:
        factor = momentum
    unbiased = var * (count / (count - 1))
    # Compute both before writing either, so an exception cannot leave them half-updated.
    new_mean = (1.0 - factor) * running_mean + factor * mean
    new_var = (1.0 - factor) * running_var + factor * unbiased
    running_mean[...] = new_mean
    running_var[...] = new_var
    return True
