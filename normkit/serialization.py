"""Saving and loading model state as ``.npz`` files."""

import numpy as np


def save(model, path):
    """Write ``model.state_dict()`` to ``path`` (a ``.npz`` file)."""
    np.savez(path, **model.state_dict())


def load_state(model, path):
    """Load a file written by :func:`save` into ``model``; returns the model. Missing, extra or
    wrongly shaped entries raise a ValueError naming them, and leave the model unchanged."""
    with np.load(path, allow_pickle=False) as data:
        return model.load_state_dict({k: data[k] for k in data.files})
