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

from ..nn import BatchNorm, Sequential


def _layers_in_order(model, prefix=""):
    """(name, layer) of every layer ``model`` (a Sequential, maybe of Sequentials) applies, in
    order, nested Sequentials opened (``"0.1"``: layer 1 of layer 0, the state-dict prefix)."""
    for i, layer in enumerate(model):
        name = f"{prefix}{i}"
        if isinstance(layer, Sequential):
            yield from _layers_in_order(layer, name + ".")
            continue
        holds_batchnorm = any(isinstance(m, BatchNorm) for m in layer.modules())
        if holds_batchnorm and not isinstance(layer, BatchNorm):
            # its forward is its own: the input of a BatchNorm inside cannot be seen from here
            raise ValueError(f"layer {name} ({type(layer).__name__}) holds a BatchNorm that "
                             "is not reached through Sequentials; its input cannot be measured")
        yield name, layer


def _bn_inputs(model, X, *, update=False):
    """[(layer, its input as float64)] for each BatchNorm layer of the Sequential ``model``
    (nested Sequentials included) that keeps running statistics, for the input ``X`` in eval
    mode (the mode is restored).
    With ``update=True`` each such layer's running statistics are set to the population
    statistics of its input before it is applied, so that later layers see the new ones; if
    any layer's cannot be (statistics that are not finite, one value per channel) or anything
    raises, every layer's running statistics are put back as they were."""
    was_training = model.training
    model.eval()
    seen = []
    before = []  # (layer, running mean, running var) as they were, for an update that fails
    try:
        x = X
        for name, layer in _layers_in_order(model):
            if isinstance(layer, BatchNorm) and layer.track_running_stats:
                xd = np.asarray(x, dtype=np.float64)
                if update:
                    before.append((layer, layer.running_mean.copy(), layer.running_var.copy()))
                    mean, var = _population_stats(xd, layer.axis, name)
                    layer.running_mean[...], layer.running_var[...] = mean, var
                seen.append((layer, xd))
            x = layer(x)
    except BaseException:
        for layer, mean, var in before:
            layer.running_mean[...], layer.running_var[...] = mean, var
        raise
    finally:
        model.train(was_training)
    return seen


def _population_stats(x, axis, name=None):
    """Per-channel mean and unbiased variance of ``x`` over every axis but ``axis``; with the
    layer's ``name`` (for the message), a ValueError where they are no running statistics an
    eval-mode layer could use (NaN or inf in the data, a single value per channel)."""
    channels_last = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    if name is not None and len(channels_last) < 2:
        raise ValueError(f"set_population_stats: layer {name} (BatchNorm) sees one value per "
                         "channel: a variance needs more than 1 value per channel")
    with np.errstate(invalid="ignore", over="ignore"):
        mean, var = channels_last.mean(axis=0), channels_last.var(axis=0, ddof=1)
    if name is not None and not (np.isfinite(mean).all() and np.isfinite(var).all()):
        bad = int(np.count_nonzero(~(np.isfinite(mean) & np.isfinite(var))))
        raise ValueError(f"set_population_stats: the input of layer {name} (BatchNorm) has NaN "
                         f"or inf statistics in {bad} of {mean.size} channels; no running "
                         "statistics were changed")
    return mean, var


def running_stats_gap(model, X):
    """How far each BatchNorm layer's running statistics are from the population statistics of
    its input over ``X``.

    Parameters
    ----------
    model : Sequential
        Its BatchNorm layers, those in nested Sequentials too, in the order they run.
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
        Changed in place (the running statistics of its BatchNorm layers, those in nested
        Sequentials too; not its mode).
    X : ndarray
        The data, usually the training set (in one array: its statistics are exact).

    Returns
    -------
    Sequential
        ``model``.

    Raises
    ------
    ValueError
        Where a layer's input has NaN or inf statistics, or one value per channel: the running
        statistics of every layer are then left as they were (as a training batch with NaN
        statistics leaves them).
    """
    _bn_inputs(model, X, update=True)
    return model
