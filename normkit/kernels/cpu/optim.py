"""Fused optimiser updates: one pass over each parameter instead of a dozen NumPy temporaries
(Adam in NumPy took 40% of a training step of the seed model); and the check ``fit`` makes on
the gradients before each step."""

import math

from ._compile import helper


@helper
def adam_update(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                bias2_sqrt, eps, weight_decay):
    """In place on flat arrays: Adam's moment updates and step, with L2 ``weight_decay``, in
    PyTorch's form (``step_size = lr / bias1``, ``denom = sqrt(v) / sqrt(bias2) + eps``) and in
    the arithmetic of the scalars' type: the caller passes them in the parameter's dtype, as
    PyTorch computes. (float64 arithmetic on float32 parameters, with two divisions a value,
    took 2.7x as long, 108 against 39 us on a 256x256 weight: a quarter of a training step of
    the seed model.)"""
    for i in range(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        m[i] = beta1 * m[i] + one_minus_beta1 * gi
        v[i] = beta2 * v[i] + one_minus_beta2 * gi * gi
        p[i] -= step_size * m[i] / (math.sqrt(v[i]) / bias2_sqrt + eps)


@helper
def sgd_update(p, g, buf, lr, momentum, weight_decay, first):
    """In place on flat arrays: SGD with momentum (``buf``) and L2 ``weight_decay``."""
    for i in range(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0.0:
            buf[i] = gi if first else momentum * buf[i] + gi
            gi = buf[i]
        p[i] -= lr * gi


@helper
def all_finite(a):
    """Whether a flat array holds no NaN or inf. ``v * 0.0`` is 0 for every finite value and
    NaN otherwise, so the sum is 0 exactly when all are finite: a loop without a branch, which
    the fast-math 'reassoc' flag lets LLVM vectorise (9-13 us for the seed model's 150k gradient
    values, where ``np.isfinite(g).all()`` took 26 us and a loop that stops at the first NaN,
    55). Without 'nnan' LLVM may not fold ``v * 0.0`` to 0."""
    total = 0.0
    for i in range(a.shape[0]):
        total += a[i] * 0.0
    return total == 0.0
