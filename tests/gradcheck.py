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


def check_batch_norm_gradients(impl, rng, shape, axis, training):
    """``impl.batch_norm_backward`` (``impl``: normkit.functional or normkit.reference) against
    finite differences of ``impl.batch_norm`` for x, weight and bias (float64, running
    statistics given, a random upstream gradient)."""
    x = rng.standard_normal(shape) * 2 + 1
    c = shape[axis]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy = rng.standard_normal(shape)

    def forward():  # on copies: a training forward updates the running statistics
        return impl.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, axis=axis)[0]

    _, saved = impl.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training, axis=axis)
    _check(forward, (x, w, b), impl.batch_norm_backward(dy, saved), dy, rng)


def check_layer_norm_gradients(impl, rng, shape, normalized_shape):
    """As :func:`check_batch_norm_gradients`, for ``impl.layer_norm``."""
    x = rng.standard_normal(shape) * 2 + 1
    nshape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    w, b = rng.standard_normal(nshape), rng.standard_normal(nshape)
    dy = rng.standard_normal(shape)

    def forward():
        return impl.layer_norm(x, normalized_shape, w, b)[0]

    saved = impl.layer_norm(x, normalized_shape, w, b)[1]
    _check(forward, (x, w, b), impl.layer_norm_backward(dy, saved), dy, rng)


def _check(forward, arrays, grads, dy, rng):
    for arr, grad in zip(arrays, grads):
        idx, num = numerical_grad(forward, arr, dy, rng=rng)
        np.testing.assert_allclose(grad.reshape(-1)[idx], num, rtol=1e-6, atol=1e-7)
