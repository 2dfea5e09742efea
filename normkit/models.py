"""The seed lesson's model, with a choice of normalisation."""

import numpy as np

from .nn import BatchNorm, Dropout, LayerNorm, Linear, ReLU, Sequential, Sigmoid

NORMS = ("batch", "layer", "none")


def seed_model(in_features, out_features=1, *, norm="batch", hidden=256, blocks=3, dropout=0.3,
               sigmoid=None, rng=None, dtype=np.float32):
    """``blocks`` x (Linear -> norm -> ReLU -> Dropout), then Linear (-> Sigmoid).

    Parameters
    ----------
    norm : {"batch", "layer", "none"}
        BatchNorm, LayerNorm or no normalisation between each Linear and its ReLU.
    sigmoid : bool, optional
        End with a Sigmoid (for BCELoss); defaults to ``out_features == 1``.
    rng : numpy Generator, optional
        For the weight init; normkit's global generator otherwise.
    """
    if norm not in NORMS:
        raise ValueError(f"seed_model: norm must be one of {NORMS}, got {norm!r}")
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
