"""Losses as objects: ``value = loss(pred, target)`` (a float, the batch mean), then
``dpred = loss.backward()``."""

import math

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax

from . import _checks


class _Loss:
    name = "loss"

    def __init__(self):
        self._cache = None

    def check_target(self, target, pred_shape=None):
        """Raise if ``target`` cannot be this loss's target.

        Parameters
        ----------
        target : array_like
            Targets, samples along the first axis.
        pred_shape : tuple of int, optional
            The shape of the predictions for all of ``target``; without it only the values are
            checked (those this loss never accepts, whatever the prediction).

        Notes
        -----
        :func:`normkit.fit` calls it on all its targets before training, so that a bad target in
        a late batch, or a model output of the wrong width, does not stop training half way.
        """
        if pred_shape is not None and np.size(target) != math.prod(pred_shape):
            raise ValueError(f"{type(self).__name__}: pred has shape {tuple(pred_shape)} but target "
                             f"has shape {np.shape(target)}")

    def backward(self):
        """dLoss/dpred for the last call, in the prediction's dtype."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._grad()

    def _pair(self, pred, target):
        pred = _checks.float_array(pred, type(self).__name__, "pred")
        target = np.asarray(target)
        self.check_target(target, pred.shape)
        return pred, target.reshape(pred.shape).astype(np.float64)


class _BinaryLoss(_Loss):
    def check_target(self, target, pred_shape=None):
        # Targets are probabilities too (0/1 labels or soft labels): outside [0, 1] the loss has
        # no meaning and can go negative, and a NaN target makes every gradient of a batch NaN.
        target = np.asarray(target)
        if target.dtype.kind not in "biuf":
            raise TypeError(f"{type(self).__name__}: target must hold real numbers, got dtype "
                            f"{target.dtype}")
        bad = ~((target >= 0) & (target <= 1))
        if bad.any():
            raise ValueError(f"{type(self).__name__}: target must hold probabilities in [0, 1] "
                             f"(labels 0/1 or soft labels), got a value of {target[bad].flat[0]}")
        super().check_target(target, pred_shape)


class BCELoss(_BinaryLoss):
    """Binary cross-entropy on probabilities (the output of a Sigmoid). Logs are clamped at -100,
    as in PyTorch, so a saturated prediction gives a large but finite loss."""

    def __call__(self, pred, target):
        p, t = self._pair(pred, target)
        outside = (p < 0) | (p > 1)  # NaN is neither: a diverged model's NaN loss stays NaN
        if outside.any():
            raise ValueError(f"BCELoss: pred must be probabilities in [0, 1] (as after a Sigmoid; "
                             f"BCEWithLogitsLoss takes logits), got a value of {p[outside].flat[0]}")
        pd = p.astype(np.float64)
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped just below
            loss = -(t * np.maximum(np.log(pd), -100) + (1 - t) * np.maximum(np.log1p(-pd), -100))
        self._cache = (p, pd, t)
        return float(loss.mean())

    def _grad(self):
        p, pd, t = self._cache
        eps = 1e-12  # keeps the gradient finite where p is exactly 0 or 1
        return ((pd - t) / np.maximum(pd * (1 - pd), eps) / pd.size).astype(p.dtype)


class BCEWithLogitsLoss(_BinaryLoss):
    """Binary cross-entropy on logits, computed stably (no overflow for large |logit|)."""

    def __call__(self, pred, target):
        z, t = self._pair(pred, target)
        zd = z.astype(np.float64)
        loss = -(t * log_expit(zd) + (1 - t) * log_expit(-zd))
        self._cache = (z, zd, t)
        return float(loss.mean())

    def _grad(self):
        z, zd, t = self._cache
        return ((expit(zd) - t) / zd.size).astype(z.dtype)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy: logits (N, K) and integer class labels (N,) in [0, K)."""

    def check_target(self, target, pred_shape=None):
        # Labels are integers >= 0, one per sample, and below the number of classes K, which
        # only the logits' shape (N, K) tells.
        labels = np.asarray(target)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"CrossEntropyLoss: labels must be integers, got dtype {labels.dtype}")
        if labels.ndim != 1:
            raise ValueError(f"CrossEntropyLoss: expected labels (N,), got shape {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"CrossEntropyLoss: labels must be >= 0, got {labels.min()}")
        if pred_shape is None:
            return
        if len(pred_shape) != 2 or labels.shape != (pred_shape[0],):
            raise ValueError(f"CrossEntropyLoss: expected logits (N, K) and labels (N,), got "
                             f"{tuple(pred_shape)} and {labels.shape}")
        if labels.size and labels.max() >= pred_shape[1]:
            raise ValueError(f"CrossEntropyLoss: labels must be in [0, {pred_shape[1]}), got "
                             f"[{labels.min()}, {labels.max()}]")

    def __call__(self, pred, target):
        z = _checks.float_array(pred, "CrossEntropyLoss", "pred")
        labels = np.asarray(target)
        self.check_target(labels, z.shape)
        logp = log_softmax(z.astype(np.float64), axis=1)
        rows = np.arange(z.shape[0])
        self._cache = (z, labels, rows)
        return float(-logp[rows, labels].mean())

    def _grad(self):
        z, labels, rows = self._cache
        g = softmax(z.astype(np.float64), axis=1)
        g[rows, labels] -= 1
        return (g / z.shape[0]).astype(z.dtype)


class MSELoss(_Loss):
    """Mean squared error."""

    def __call__(self, pred, target):
        p, t = self._pair(pred, target)
        diff = p.astype(np.float64) - t
        self._cache = (p, diff)
        return float(np.mean(diff * diff))

    def _grad(self):
        p, diff = self._cache
        return (2 * diff / diff.size).astype(p.dtype)
