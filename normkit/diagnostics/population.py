"""BatchNorm's running statistics against the population statistics of its input.

In training a BatchNorm layer normalises with the statistics of each batch and keeps running
averages of them; at inference it normalises with those running averages. They stand in for the
statistics of the layer's input over the whole data set as the trained model sees it in eval
mode (the *population* statistics), and can differ from them: the averages lag behind a model
that changes, small batches make them noisy, and a layer that follows Dropout sees a wider input
in training, with Dropout on, than at inference. :func:`running_stats_gap` measures the
difference; :func:`set_population_stats` replaces the running statistics by the population ones
(what Wu & Johnson, 2021, call "precise BatchNorm").
"""

import numpy as np

from ..nn import BatchNorm


def _bn_inputs(model, X, *, update=False):
    """[(layer, its input as float64)] for each BatchNorm layer of the Sequential ``model``
    that keeps running statistics, for the input ``X`` in eval mode (the mode is restored).
    With ``update=True`` each such layer's running statistics are set to the population
    statistics of its input before it is applied, so that later layers see the new ones."""
    was_training = model.training
    model.eval()
    seen = []
    try:
        x = X
        for layer in model:
            if isinstance(layer, BatchNorm) and layer.track_running_stats:
                xd = np.asarray(x, dtype=np.float64)
                if update:
                    layer.running_mean[...], layer.running_var[...] = _population_stats(xd, layer.axis)
                seen.append((layer, xd))
            x = layer(x)
    finally:
        model.train(was_training)
    return seen


def _population_stats(x, axis):
    """Per-channel mean and unbiased variance of ``x`` over every axis but ``axis``."""
    channels_last = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    return channels_last.mean(axis=0), channels_last.var(axis=0, ddof=1)


def running_stats_gap(model, X):
    """How far each BatchNorm layer's running statistics are from the population statistics of
    its input over ``X``.

    Parameters
    ----------
    model : Sequential
    X : ndarray
        The data (usually the training set), pushed through ``model`` in eval mode, what
        inference will feed each layer; the model's mode is restored.

    Returns
    -------
    list of (float, float)
        One pair per BatchNorm layer with running statistics, in order: the mean over channels
        of |running mean - population mean| in units of the population std, and the geometric
        mean over channels of running variance / population variance (1 when they agree).
        Channels constant over ``X`` (dead units) are left out.
    """
    gaps = []
    for layer, x in _bn_inputs(model, X):
        mean, var = _population_stats(x, layer.axis)
        live = var > 1e-12
        mean_gap = np.abs(layer.running_mean[live] - mean[live]) / np.sqrt(var[live])
        var_ratio = np.exp(np.mean(np.log(layer.running_var[live] / var[live])))
        gaps.append((float(mean_gap.mean()), float(var_ratio)))
    return gaps


def set_population_stats(model, X):
    """Replace every BatchNorm layer's running statistics by the population statistics of its
    input over ``X`` (mean, unbiased variance), layer after layer in eval mode, so that each
    layer's input reflects the new statistics of the layers before it.

    Parameters
    ----------
    model : Sequential
        Changed in place (its running statistics; not its mode).
    X : ndarray
        The data, usually the training set (in one array: its statistics are exact).

    Returns
    -------
    Sequential
        ``model``.
    """
    _bn_inputs(model, X, update=True)
    return model
