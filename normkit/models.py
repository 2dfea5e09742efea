"""The seed lesson's model, with a choice of normalisation."""

import numpy as np

from . import _checks
from .nn import BatchNorm, Dropout, LayerNorm, Linear, ReLU, Sequential, Sigmoid

NORMS = ("batch", "layer", "none")


def seed_model(in_features, out_features=1, *, norm="batch", hidden=256, blocks=3, dropout=0.3,
               sigmoid=None, rng=None, dtype=np.float32):
    """``blocks`` x (Linear -> norm -> ReLU -> Dropout), then Linear (-> Sigmoid).

    Parameters
    ----------
    in_features, out_features : int
        Input features; outputs (1 for a binary task, the number of classes otherwise).
    norm : {"batch", "layer", "none"}
        BatchNorm, LayerNorm or no normalisation between each Linear and its ReLU.
    hidden : int
        Width of every block.
    blocks : int
        Number of blocks, >= 0 (0: a single Linear).
    dropout : float
        Dropout probability of every block, in [0, 1].
    sigmoid : bool, optional
        End with a Sigmoid (for BCELoss); defaults to ``out_features == 1``.
    rng : numpy Generator, optional
        For the weight init; normkit's global generator otherwise.
    dtype : float32 or float64
        Of the parameters and running statistics.

    Returns
    -------
    Sequential
    """
    if norm not in NORMS:
        raise ValueError(f"seed_model: norm must be one of {NORMS}, got {norm!r}")
    blocks = _checks.int_at_least(blocks, 0, "seed_model", "blocks")
    layers = []
    width = in_features
    for _ in range(blocks):
        layers.append(Linear(width, hidden, rng=rng, dtype=dtype))
        if norm == "batch":
            layers.append(BatchNorm(hidden, dtype=dtype))
        elif norm == "layer":
            layers.append(LayerNorm(hidden, dtype=dtype))
        layers += [ReLU(), Dropout(dropout)]
        width = hidden
    layers.append(Linear(width, out_features, rng=rng, dtype=dtype))
    if sigmoid if sigmoid is not None else out_features == 1:
        layers.append(Sigmoid())
    return Sequential(*layers)
