"""Figures for the experiments (matplotlib, the ``plot`` extra), drawn off-screen to PNG."""

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'normkit[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(result, path):
    """Draw the figure of an experiment to a PNG file.

    Parameters
    ----------
    result : normkit.diagnostics.experiments.Result
    path : str or path-like

    Returns
    -------
    str or path-like
        ``path``.
    """
    plt = _pyplot()
    fig = DRAW[result.name](plt, result)
    fig.suptitle(result.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shift(plt, r):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (label, (epochs, pct)) in zip(axes, r.data["curves"].items()):
        for k, name in enumerate(("15th", "50th", "85th")):
            ax.plot(epochs, pct[:, k], marker="o", ms=3, label=f"{name} percentile")
        ax.set_title(f"{label}: layer 2 pre-activation, unit 0")
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("value on the probe batch")
    axes[0].legend(fontsize=8)
    return fig


def _batch_size(plt, r):
    hists = r.data["hists"]
    fig, axes = plt.subplots(2, len(hists), figsize=(13, 5.5))
    for col, (b, (before, after)) in enumerate(hists.items()):
        axes[0, col].hist(before, bins=40, color="#e74c3c", alpha=0.75, density=True)
        axes[0, col].set_title(f"before BN (B={b})", fontsize=9)
        axes[1, col].hist(after, bins=np.linspace(-4, 4, 41), color="#3498db", alpha=0.75, density=True)
        axes[1, col].set_title(f"after BN (B={b})", fontsize=9)
        axes[1, col].set_xlim(-4, 4)
    axes[0, 0].set_ylabel("density")
    axes[1, 0].set_ylabel("density")
    return fig


def _lines(plt, xs, series, xlabel, ylabel, logx=True):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def _small_batch(plt, r):
    from .experiments import NORM_LABEL
    return _lines(plt, r.data["sizes"], {NORM_LABEL[k]: v for k, v in r.data["acc"].items()},
                  "batch size", "validation accuracy")


def _learning_rate(plt, r):
    from .experiments import NORM_LABEL
    return _lines(plt, r.data["lrs"], {NORM_LABEL[k]: v for k, v in r.data["acc"].items()},
                  "learning rate (plain SGD)", "validation accuracy")


def _init(plt, r):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (scale, label), accs in r.data["curves"].items():
        ax.plot(range(1, len(accs) + 1), accs, marker="o", ms=3,
                linestyle="-" if label == "BatchNorm" else "--", label=f"{label}, init x{scale:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return fig


def _train_eval(plt, r):
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    labels = [f"B={b}" + ("" if dropout else ", no dropout") for b, dropout in r.data["runs"]]
    for label, run in zip(labels, r.data["runs"]):
        gaps = r.data["gaps"][run]  # (epochs + 1, BN layers, 2)
        style = "-" if run[1] else "--"
        left.plot(range(len(gaps)), gaps[:, :, 0].mean(axis=1), marker="o", ms=3, ls=style, label=label)
        middle.plot(range(1, gaps.shape[1] + 1), gaps[-1, :, 1], marker="o", ls=style, label=label)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("|running - population mean| / std")
    left.legend(fontsize=8)
    middle.axhline(1.0, color="grey", lw=0.8)
    middle.set_xticks(range(1, gaps.shape[1] + 1))
    middle.set_xlabel("BatchNorm layer")
    middle.set_ylabel("running / population variance, last epoch")
    width = 0.8 / len(r.data["acc"])
    for k, (name, values) in enumerate(r.data["acc"].items()):
        right.bar(np.arange(len(labels)) + (k - 1) * width, values, width, label=f"{name} statistics")
    right.set_xticks(np.arange(len(labels)), labels, fontsize=8, rotation=20)
    right.set_ylim(0.5, 1.0)
    right.set_ylabel("validation accuracy")
    right.legend(fontsize=8, loc="lower right")
    return fig


DRAW = {"shift": _shift, "batch-size": _batch_size, "small-batch": _small_batch,
        "learning-rate": _learning_rate, "init": _init, "train-eval": _train_eval}
