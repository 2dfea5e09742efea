"""BatchNorm and LayerNorm layers over :mod:`normkit.functional`."""

import numpy as np

from .. import _backend, _checks, functional as F
from .._backend import is_device_array
from .module import Module, Parameter


def _host_input_check(x, layer_name):
    """dtype/emptiness errors that name the layer (device arrays are checked by the CUDA path)."""
    if not is_device_array(x):
        _checks.float_array(x, layer_name)


def _backward_input(layer, dy):
    """(dy, saved) for ``layer.backward``: errors name the layer (device arrays are checked by
    the CUDA path)."""
    saved = layer._need_forward(layer._saved)
    if not is_device_array(dy):
        dy = layer._upstream(dy, saved.x_shape, saved.x.dtype)
    return dy, saved


def _accumulate(layer, dx, dweight, dbias):
    """Add a normalisation's parameter gradients into .grad; return dx."""
    if dweight is not None:
        layer.weight.grad += dweight
    if dbias is not None:
        layer.bias.grad += dbias
    return dx


class BatchNorm(Module):
    """Batch normalisation over every axis but ``axis`` (PyTorch's BatchNorm1d/2d/3d in one).

    Parameters
    ----------
    num_features : int
        Channels C (the size of ``axis``).
    axis : int
        Channel axis: 1 for (N, C), (N, C, L), (N, C, H, W); -1 channels-last; 0 (features, batch).
    eps : float
        Added to the variance.
    momentum : float or None
        Running-statistics update factor; None for a cumulative average.
    affine : bool
        Learn ``weight`` (gamma, ones) and ``bias`` (beta, zeros).
    track_running_stats : bool
        Keep ``running_mean``/``running_var`` for eval mode; without them eval mode uses batch
        statistics, as in PyTorch.
    dtype : float32 or float64
        Of the parameters and running statistics.
    backend : {"auto", "numba", "numpy", "cuda"}

    Notes
    -----
    :meth:`freeze` keeps the running statistics fixed and normalises with them even in training
    mode, while ``weight`` and ``bias`` keep learning: the usual wish when fine-tuning with small
    batches. Keras's "BatchNormalization(momentum=0.99)" is ``momentum=0.01`` here.
    """

    _buffers = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, *, axis=1, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, backend="auto"):
        super().__init__()
        op = "BatchNorm"
        num_features = _checks.positive_int(num_features, op, "num_features")
        dtype = _checks.float_dtype(dtype, op)
        self.num_features = num_features
        self.axis = _checks.int_axis(axis, op)
        self.eps = _checks.positive_eps(eps, op)
        self.momentum = _checks.momentum_value(momentum, op)
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.backend = _backend.known(backend, op)
        self.frozen = False
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.running_mean = np.zeros(num_features, dtype)
            self.running_var = np.ones(num_features, dtype)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self._saved = None

    def reset_running_stats(self):
        """Running mean 0, running variance 1, ``num_batches_tracked`` 0 (PyTorch's initial state)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
        self.num_batches_tracked = 0

    def _state_problem(self, name, value):
        # Running statistics that eval mode would turn into NaN outputs without a word.
        if name in ("running_mean", "running_var") and not np.isfinite(value).all():
            return f"expected finite values, got {value[~np.isfinite(value)].flat[0]}"
        if name == "running_var" and (value < 0).any():
            return f"a variance cannot be negative, got {value[value < 0].flat[0]}"
        if name == "num_batches_tracked" and value < 0:
            return f"expected a count >= 0, got {value}"
        return None

    def freeze(self):
        """Normalise with the running statistics and stop updating them, even in training mode."""
        if not self.track_running_stats:
            raise ValueError("BatchNorm.freeze: there are no running statistics to freeze "
                             "(track_running_stats=False)")
        self.frozen = True
        return self

    def unfreeze(self):
        """Undo :meth:`freeze`: training mode uses and updates batch statistics again."""
        self.frozen = False
        return self

    def _check_channels(self, x):
        _host_input_check(x, type(self).__name__)
        shape = np.shape(x)
        ndim = len(shape)
        axis = _checks.channel_axis(self.axis, max(ndim, 1), type(self).__name__)
        if ndim < 2 or shape[axis] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected input with {self.num_features} "
                             f"channels on axis {self.axis}, got shape {shape}")

    def forward(self, x):
        self._check_channels(x)
        use_batch_stats = (self.training and not self.frozen) or not self.track_running_stats
        y, saved = F.batch_norm(
            x, self.running_mean, self.running_var,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            training=use_batch_stats, momentum=self.momentum, eps=self.eps, axis=self.axis,
            backend=self.backend, num_batches_tracked=self.num_batches_tracked)
        if saved.running_stats_updated:
            self.num_batches_tracked += 1
        self._saved = saved
        return y

    def backward(self, dy):
        return _accumulate(self, *F.batch_norm_backward(*_backward_input(self, dy)))

    def extra_repr(self):
        return (f"{self.num_features}, axis={self.axis}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class LayerNorm(Module):
    """Layer normalisation over the last ``len(normalized_shape)`` axes.

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float
    elementwise_affine : bool
        Learn ``weight`` (ones) and, with ``bias=True``, ``bias`` (zeros), of ``normalized_shape``.
    bias : bool
    dtype : float32 or float64
    backend : {"auto", "numba", "numpy", "cuda"}
    """

    def __init__(self, normalized_shape, *, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32, backend="auto"):
        super().__init__()
        op = "LayerNorm"
        self.normalized_shape = _checks.normalized_shape_tuple(normalized_shape, op)
        self.eps = _checks.positive_eps(eps, op)
        self.elementwise_affine = elementwise_affine
        self.backend = _backend.known(backend, op)
        dtype = _checks.float_dtype(dtype, op)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if elementwise_affine and bias else None
        self._saved = None

    def forward(self, x):
        _host_input_check(x, "LayerNorm")
        shape, k = tuple(np.shape(x)), len(self.normalized_shape)
        if shape[len(shape) - k:] != self.normalized_shape:
            raise ValueError(f"LayerNorm: expected input whose last {k} dimension(s) are "
                             f"{self.normalized_shape}, got shape {shape}")
        y, self._saved = F.layer_norm(
            x, self.normalized_shape, None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data, eps=self.eps, backend=self.backend)
        return y

    def backward(self, dy):
        return _accumulate(self, *F.layer_norm_backward(*_backward_input(self, dy)))

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
