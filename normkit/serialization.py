"""Saving and loading model state as ``.npz`` files."""

import os

import numpy as np


def save(model, path):
    """Write a model's state (parameters and buffers) to a file.

    Parameters
    ----------
    model : Module
    path : str or path-like
        A ``.npz`` file, written with NumPy's ``savez`` (``.npz`` is added if missing).
    """
    np.savez(path, **model.state_dict())


def load_state(model, path):
    """Load a file written by :func:`save` into a model of the same structure.

    Parameters
    ----------
    model : Module
    path : str, path-like or file object
        As given to :func:`save`: a path without ``.npz`` finds the file ``save`` wrote.

    Returns
    -------
    Module
        ``model``, with the file's state.

    Raises
    ------
    ValueError
        For missing, unexpected, wrongly shaped or non-numeric entries (all of them named);
        the model is then left unchanged.
    """
    if (isinstance(path, (str, os.PathLike)) and not os.path.exists(path)
            and not os.fspath(path).endswith(".npz")):
        path = os.fspath(path) + ".npz"  # what np.savez wrote
    with np.load(path, allow_pickle=False) as data:
        return model.load_state_dict({k: data[k] for k in data.files})
