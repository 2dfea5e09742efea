"""Experiments that measure the lesson's claims about BatchNorm on real data.

Each ``run_<name>(quick=False, seed=0)`` returns a :class:`Result` (a table, plus the data behind
its figure); :func:`plot` draws the figure with matplotlib (the ``plot`` extra). The tables report
what was measured; where a claim does not hold on this data, the numbers show it.
"""

import copy
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import datasets, random
from .._running import NonFiniteBatchWarning
from ..losses import CrossEntropyLoss
from ..models import seed_model
from ..nn import BatchNorm, Linear, ReLU
from ..optim import SGD, Adam
from ..training import _batches, fit, predict
from .population import running_stats_gap, set_population_stats
from .recorder import ActivationRecorder

NORM_LABEL = {"none": "no norm", "batch": "BatchNorm", "layer": "LayerNorm"}


@dataclass
class Result:
    """What an experiment measured.

    Attributes
    ----------
    name : str
        The experiment's name (a key of ``EXPERIMENTS``), which picks its figure in :func:`plot`.
    title : str
    columns : list of str
    rows : list of list
        The table's rows, one value per column (None for "not applicable").
    data : dict
        The series behind the figure.
    """

    name: str
    title: str
    columns: list
    rows: list
    data: dict = field(default_factory=dict)

    def table(self):
        """The title and the rows as a plain-text table, columns right-aligned."""
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(self.columns)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        return "\n".join([self.title, fmt.format(*self.columns), fmt.format(*("-" * w for w in widths))]
                         + [fmt.format(*r) for r in cells])


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _digits(quick, seed, n_quick=400):
    X, y, Xv, yv = datasets.load_digits(seed=seed)
    if quick:
        X, y = X[:n_quick], y[:n_quick]
    return X, y, Xv, yv


def _model(norm, n_in, n_out, seed, init_scale=1.0, dropout=0.3):
    with random.seeded(seed):
        model = seed_model(n_in, n_out, norm=norm, dropout=dropout)
    for layer in model:
        if isinstance(layer, Linear):
            layer.weight.data *= init_scale
    return model


def _train(model, X, y, Xv, yv, *, epochs, batch_size, optimizer, seed, callbacks=()):
    with warnings.catch_warnings():  # diverging runs (large learning rates) are part of the data
        warnings.simplefilter("ignore", NonFiniteBatchWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return fit(model, X, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                   batch_size=batch_size, validation=(Xv, yv), seed=seed, progress=False,
                   callbacks=callbacks, nan_policy="propagate")


def _indices(model, kind, nth):
    return [i for i, layer in enumerate(model) if isinstance(layer, kind)][nth]


# ------------------------------------------------------------------------------------------------

def run_shift(quick=False, seed=0):
    """Internal covariate shift: layer 2's input over training, with and without BatchNorm."""
    X, y, Xv, yv = _digits(quick, seed)
    epochs = 3 if quick else 20
    report_epochs = list(range(epochs + 1)) if quick else [0, 1, 2, 5, 10, 15, 20]
    rows, curves = [], {}
    for norm in ("none", "batch"):
        model = _model(norm, X.shape[1], 10, seed)
        recorder = ActivationRecorder(Xv[:256], {"input": _indices(model, Linear, 1),
                                                 "pre-activation": _indices(model, ReLU, 1)})
        recorder.record(model, 0)
        hist = _train(model, X, y, Xv, yv, epochs=epochs, batch_size=32, seed=seed,
                      optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9), callbacks=[recorder])
        inp = {r["epoch"]: r for r in recorder.records if r["layer"] == "input"}
        pre = {r["epoch"]: r for r in recorder.records if r["layer"] == "pre-activation"}
        for e in report_epochs:
            rows.append([NORM_LABEL[norm], e, inp[e]["mean"], inp[e]["std"], pre[e]["mean"], pre[e]["std"],
                         hist["val_accuracy"][e - 1] if e else None])
        ep, pct = recorder.series("pre-activation", "unit_percentiles")
        curves[NORM_LABEL[norm]] = (ep, pct[:, 0, :])  # unit 0: 15/50/85th percentiles per epoch
    return Result("shift", "Layer 2 input and pre-activation statistics on a fixed probe batch "
                  "(digits, SGD lr 0.05 momentum 0.9, batch 32)",
                  ["model", "epoch", "L2 input mean", "L2 input std", "L2 pre-act mean",
                   "L2 pre-act std", "val acc"], rows, {"curves": curves})


def run_batch_size(quick=False, seed=0):
    """How noisy batch statistics are at B = 8, 32, 128, 512, and what BatchNorm outputs."""
    X, _, _, _ = datasets.load_digits(seed=seed)
    model = _model("none", X.shape[1], 10, seed)
    acts = np.asarray(model[0](X), dtype=np.float64)      # real pre-activations (N, 256)
    full_mean, full_std = acts.mean(axis=0), acts.std(axis=0)
    keep = full_std > 1e-6
    acts, full_mean, full_std = acts[:, keep], full_mean[keep], full_std[keep]
    rng = np.random.default_rng(seed)
    repeats = 40 if quick else 300
    rows, hists = [], {}
    for b in (8, 32, 128, 512):
        means, variances = [], []
        for _ in range(repeats):
            batch = acts[rng.choice(len(acts), b, replace=False)]
            means.append(batch.mean(axis=0))
            variances.append(batch.var(axis=0))
        mean_err = np.std((np.array(means) - full_mean) / full_std, axis=0).mean()
        var_ratio = np.std(np.array(variances) / full_std ** 2, axis=0).mean()
        rows.append([b, mean_err, 1 / math.sqrt(b), var_ratio, math.sqrt(2 / (b - 1))])
        batch = acts[rng.choice(len(acts), b, replace=False)]
        bn = BatchNorm(batch.shape[1], affine=False, dtype=np.float64)
        hists[b] = (batch.ravel(), np.asarray(bn(batch)).ravel())
    return Result("batch-size", "Spread of batch statistics of real pre-activations (digits, first "
                  "Linear layer) over random batches, in units of the full-data std",
                  ["B", "sd(batch mean)", "1/sqrt(B)", "sd(batch var/var)", "sqrt(2/(B-1))"],
                  rows, {"hists": hists})


def run_small_batch(quick=False, seed=0):
    """Validation accuracy of BatchNorm vs LayerNorm vs none at small batch sizes."""
    X, y, Xv, yv = _digits(quick, seed, n_quick=200)
    sizes = (4, 32) if quick else (2, 4, 8, 32, 128)
    epochs = 1 if quick else 5
    rows, acc = [], {n: [] for n in ("none", "batch", "layer")}
    for b in sizes:
        row = [b]
        for norm in acc:
            model = _model(norm, X.shape[1], 10, seed)
            hist = _train(model, X, y, Xv, yv, epochs=epochs, batch_size=b, seed=seed,
                          optimizer=Adam(model.parameters(), lr=1e-3))
            acc[norm].append(hist["val_accuracy"][-1])
            row.append(hist["val_accuracy"][-1])
        rows.append(row)
    return Result("small-batch", f"Validation accuracy after {epochs} epochs (digits, Adam lr 1e-3)",
                  ["batch size"] + [NORM_LABEL[n] for n in acc], rows, {"sizes": sizes, "acc": acc})


TARGET = 0.9


def run_learning_rate(quick=False, seed=0):
    """The highest learning rate that still trains, and epochs to a target accuracy."""
    X, y, Xv, yv = _digits(quick, seed)
    lrs = (0.1, 1.0) if quick else (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    epochs = 1 if quick else 8
    rows, acc = [], {"none": [], "batch": []}
    for lr in lrs:
        for norm in acc:
            model = _model(norm, X.shape[1], 10, seed)
            hist = _train(model, X, y, Xv, yv, epochs=epochs, batch_size=32, seed=seed,
                          optimizer=SGD(model.parameters(), lr=lr))
            final = hist["val_accuracy"][-1]
            acc[norm].append(final)
            rows.append([lr, NORM_LABEL[norm], hist["loss"][-1], final,
                         hist.epochs_to("val_accuracy", TARGET)])
    for norm, values in acc.items():
        ok = [lr for lr, a in zip(lrs, values) if a >= TARGET]
        rows.append([f"highest lr >= {TARGET}", NORM_LABEL[norm], None, None, max(ok) if ok else None])
    return Result("learning-rate", f"Plain SGD, {epochs} epochs, batch 32 (digits); epochs to "
                  f"val acc >= {TARGET}", ["lr", "model", "train loss", "val acc", "epochs to target"],
                  rows, {"lrs": lrs, "acc": acc})


def run_init(quick=False, seed=0):
    """Sensitivity to badly scaled initial weights (x0.1, x1, x10), with and without BatchNorm."""
    X, y, Xv, yv = _digits(quick, seed)
    epochs = 1 if quick else 10
    rows, curves = [], {}
    for scale in (0.1, 1.0, 10.0):
        for norm in ("none", "batch"):
            model = _model(norm, X.shape[1], 10, seed, init_scale=scale)
            hist = _train(model, X, y, Xv, yv, epochs=epochs, batch_size=32, seed=seed,
                          optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9))
            rows.append([scale, NORM_LABEL[norm], hist["loss"][0], hist["loss"][-1],
                         hist["val_accuracy"][-1], hist.epochs_to("val_accuracy", TARGET)])
            curves[(scale, NORM_LABEL[norm])] = hist["val_accuracy"]
    return Result("init", f"Weights scaled at init, SGD lr 0.01 momentum 0.9, {epochs} epochs "
                  f"(digits); epochs to val acc >= {TARGET}",
                  ["init scale", "model", "loss epoch 1", "final loss", "val acc", "epochs to target"],
                  rows, {"curves": curves})


def _accuracy_with_batch_stats(model, Xv, yv, batch_size):
    """Validation accuracy with BatchNorm normalising each batch of ``batch_size`` by its own
    statistics (training-mode BatchNorm, dropout off), on a copy of ``model``."""
    model = copy.deepcopy(model).eval()
    for layer in model:
        if isinstance(layer, BatchNorm):
            layer.train()
    # in order, a last batch of one folded into the one before (as fit does)
    pred = np.concatenate([model(Xv[i]) for i in _batches(len(Xv), batch_size, np.arange(len(Xv)))])
    return float(np.mean(np.argmax(pred, axis=1) == yv))


def run_train_eval(quick=False, seed=0):
    """Training-mode (batch) against inference-mode (running) statistics, by batch size.

    Also without dropout at one batch size: dropout is on in training and off at inference, so
    the BatchNorm layers after it see a wider input in training."""
    X, y, Xv, yv = _digits(quick, seed)
    runs = [(8, 0.3), (64, 0.3)] if quick else [(4, 0.3), (16, 0.3), (64, 0.3), (256, 0.3), (64, 0.0)]
    epochs = 2 if quick else 10
    rows, gaps, acc = [], {}, {"running": [], "batch": [], "population": []}
    for b, dropout in runs:
        model = _model("batch", X.shape[1], 10, seed, dropout=dropout)
        per_epoch = [running_stats_gap(model, X)]
        hist = _train(model, X, y, Xv, yv, epochs=epochs, batch_size=b, seed=seed,
                      optimizer=Adam(model.parameters(), lr=1e-3),
                      callbacks=[lambda epoch, m, h: per_epoch.append(running_stats_gap(m, X))])
        gaps[(b, dropout)] = np.array(per_epoch)  # (epochs + 1, BN layers, 2)
        final = gaps[(b, dropout)][-1]
        acc["running"].append(hist["val_accuracy"][-1])  # eval mode: the running statistics
        acc["batch"].append(_accuracy_with_batch_stats(model, Xv, yv, b))
        precise = copy.deepcopy(model)
        set_population_stats(precise, X)
        acc["population"].append(float(np.mean(np.argmax(predict(precise, Xv), axis=1) == yv)))
        rows.append([b, dropout, float(final[:, 0].mean())] + [float(v) for v in final[:, 1]]
                    + [acc[k][-1] for k in acc])
    n_bn = len(gaps[runs[0]][0])
    return Result("train-eval", "Running statistics (inference) against the population statistics "
                  "of each BN layer's input, and validation accuracy normalising with each "
                  f"(digits, Adam lr 1e-3, {epochs} epochs)",
                  ["B", "dropout", "|run-pop mean|/std"]
                  + [f"run/pop var BN{i + 1}" for i in range(n_bn)]
                  + ["acc: running", "acc: batch", "acc: population"],
                  rows, {"runs": runs, "gaps": gaps, "acc": acc})


EXPERIMENTS = {"shift": run_shift, "batch-size": run_batch_size, "small-batch": run_small_batch,
               "learning-rate": run_learning_rate, "init": run_init, "train-eval": run_train_eval}


def run(name, quick=False, seed=0):
    """Run one experiment by name.

    Parameters
    ----------
    name : {"shift", "batch-size", "small-batch", "learning-rate", "init", "train-eval"}
    quick : bool
        A subset of the data and fewer epochs (seconds instead of a minute; what the tests run).
    seed : int
        Seeds the data split, the initial weights, the shuffling and the dropout masks.

    Returns
    -------
    Result
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name](quick=quick, seed=seed)
