"""Finite-difference gradient checks with a random upstream gradient."""

import numpy as np


def numerical_grad(f, arr, upstream, h=1e-6, max_entries=60, rng=None):
    """d/d(arr) of sum(f() * upstream) by central differences, at up to ``max_entries`` entries.

    ``f`` reads ``arr`` (which is perturbed in place and restored). Returns (indices, grads).
    """
    flat = arr.reshape(-1)
    idx = np.arange(flat.size)
    if flat.size > max_entries:
        idx = (rng or np.random.default_rng(0)).choice(flat.size, max_entries, replace=False)
    grads = np.empty(idx.size)
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f() * upstream)
        flat[i] = old - h
        minus = np.sum(f() * upstream)
        flat[i] = old
        grads[k] = (plus - minus) / (2 * h)
    return idx, grads
