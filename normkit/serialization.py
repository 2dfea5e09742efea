"""Saving and loading model state (and an optimiser's, to resume training) as ``.npz`` files."""

import os
import zipfile

import numpy as np

OPTIMIZER_PREFIX = "optimizer."  # the file's keys of the optimiser's state


def save(model, path, optimizer=None):
    """Write a model's state (parameters and buffers) to a file, and an optimiser's.

    Parameters
    ----------
    model : Module
    path : str or path-like
        A ``.npz`` file, written with NumPy's ``savez`` (``.npz`` is added if missing).
    optimizer : SGD or Adam, optional
        Its state too (``optimizer.state_dict()``, under keys ``"optimizer.<name>"``): a
        checkpoint that :func:`load_state` resumes training from.
    """
    state = model.state_dict()
    if optimizer is not None:
        clashing = sorted(k for k in state if k.startswith(OPTIMIZER_PREFIX))
        if clashing:
            raise ValueError(f"save: the model's state has keys {clashing}, which would be taken "
                             "for the optimiser's")
        state.update({OPTIMIZER_PREFIX + k: v for k, v in optimizer.state_dict().items()})
    np.savez(path, **state)


def load_state(model, path, optimizer=None):
    """Load a file written by :func:`save` into a model of the same structure (and its
    optimiser's state into ``optimizer``).

    Parameters
    ----------
    model : Module
    path : str, path-like or file object
        As given to :func:`save`: a path without ``.npz`` finds the file ``save`` wrote.
    optimizer : SGD or Adam, optional
        An optimiser of the same kind, over the model's parameters in the order of the one
        saved; the file must hold its state. Without it, any optimiser state in the file is
        ignored (a checkpoint loads as a model).

    Returns
    -------
    Module
        ``model``, with the file's state.

    Raises
    ------
    ValueError
        For missing, unexpected, wrongly shaped or non-numeric entries (all of them named);
        the model and the optimiser are then left unchanged.
    """
    if (isinstance(path, (str, os.PathLike)) and not os.path.exists(path)
            and not os.fspath(path).endswith(".npz")):
        path = os.fspath(path) + ".npz"  # what np.savez wrote
    not_saved = f"load_state: {path!r} is not a file written by normkit.save (an .npz archive)"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile) as exc:  # (NumPy takes other files for pickles)
        raise ValueError(f"{not_saved}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_saved}: it holds a single array")
    with data:
        state = {k: data[k] for k in data.files}
    model_state = {k: v for k, v in state.items() if not k.startswith(OPTIMIZER_PREFIX)}
    if optimizer is None:
        return model.load_state_dict(model_state)
    optimizer_state = {k[len(OPTIMIZER_PREFIX):]: v for k, v in state.items()
                       if k.startswith(OPTIMIZER_PREFIX)}
    if not optimizer_state:
        raise ValueError("load_state: the file holds no optimiser state (save(model, path, "
                         "optimizer) writes it)")
    model._check_state_dict(model_state)  # both checked before either changes
    optimizer._check_state_dict(optimizer_state)
    optimizer._load_checked(optimizer_state)
    return model._load_checked(model_state)
