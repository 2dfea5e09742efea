"""``normkit demo``: the seed lesson's model with BatchNorm, with LayerNorm and without
normalisation, trained on real data, side by side."""

import time

import numpy as np

from . import _checks, datasets, random
from .losses import BCELoss, CrossEntropyLoss
from .models import seed_model
from .optim import Adam
from .training import fit

TARGETS = {"breast_cancer": 0.95, "digits": 0.95}
NORM_NAMES = {"batch": "BatchNorm", "layer": "LayerNorm", "none": "none"}


def run(names=("breast_cancer", "digits"), norms=("batch", "layer", "none"), *, epochs=20,
        batch_size=32, lr=1e-3, seed=0, progress=False, comm=None):
    """Train the seed lesson's model on every (data set, normalisation) pair.

    Parameters
    ----------
    names : sequence of {"breast_cancer", "digits"}
    norms : sequence of {"batch", "layer", "none"}
    epochs, batch_size : int
    lr : float
        Adam's learning rate.
    seed : int
        The same initial weights, split, shuffling and dropout masks for every variant.
    progress : bool
        Print one line per epoch.
    comm : mpi4py communicator, optional
        Data-parallel training across its processes, every BatchNorm converted to a
        SyncBatchNorm.

    Returns
    -------
    list of dict
        One per pair: ``dataset``, ``norm``, ``train_loss``, ``val_accuracy``,
        ``best_val_accuracy``, ``target``, ``epochs_to_target`` (None if not reached),
        ``ms_per_epoch`` (median) and ``total_s``.
    """
    epochs = _checks.positive_int(epochs, "demo.run", "epochs")  # the table reads the last epoch
    rows = []
    for name in names:
        X_tr, y_tr, X_val, y_val = datasets.load(name, seed=seed)
        n_classes = 1 if name == "breast_cancer" else int(y_tr.max()) + 1
        loss = BCELoss() if n_classes == 1 else CrossEntropyLoss()
        for norm in norms:
            with random.seeded(seed):  # same init for every variant
                model = seed_model(X_tr.shape[1], n_classes, norm=norm)
            if comm is not None:
                from .distributed import convert_sync_batchnorm
                convert_sync_batchnorm(model, comm)
            start = time.perf_counter()
            hist = fit(model, X_tr, y_tr, loss=loss, optimizer=Adam(model.parameters(), lr=lr),
                       epochs=epochs, batch_size=batch_size, validation=(X_val, y_val),
                       seed=seed, progress=progress, comm=comm)
            rows.append({
                "dataset": name, "norm": NORM_NAMES[norm], "train_loss": hist["loss"][-1],
                "val_accuracy": hist["val_accuracy"][-1], "best_val_accuracy": max(hist["val_accuracy"]),
                "target": TARGETS[name], "epochs_to_target": hist.epochs_to("val_accuracy", TARGETS[name]),
                # the first epoch includes Numba's compilation when the cache is cold
                "ms_per_epoch": 1e3 * float(np.median(hist["epoch_time"])),
                "total_s": time.perf_counter() - start,
            })
    return rows


def format_table(rows):
    """The rows of :func:`run` as a plain-text table."""
    header = ["data set", "normalisation", "train loss", "val acc", "best val acc",
              "epochs to target", "ms/epoch"]
    lines = [[r["dataset"], r["norm"], f"{r['train_loss']:.4f}", f"{r['val_accuracy']:.4f}",
              f"{r['best_val_accuracy']:.4f}",
              f"{r['epochs_to_target'] if r['epochs_to_target'] else 'not reached'} (>= {r['target']:.2f})",
              f"{r['ms_per_epoch']:.1f}"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)
