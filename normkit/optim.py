"""Optimisers with PyTorch's update rules: ``optimizer.step()`` after ``model.backward``."""

import math
import numbers

import numpy as np

from . import _checks
from .kernels.cpu.optim import adam_update, sgd_update
from .nn.module import Parameter


class Optimizer:
    """The base of the optimisers: the parameters they update and a learning rate.

    Parameters
    ----------
    params : iterable of Parameter
        Usually ``model.parameters()``; at least one.
    lr : float
        Learning rate, > 0.
    """

    def __init__(self, params, lr):
        name = type(self).__name__
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{name}: got no parameters to optimise")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: params[{i}] is a {type(p).__name__}, not a Parameter "
                                f"(pass model.parameters())")
        if len({id(p) for p in self.params}) < len(self.params):
            # PyTorch warns; here it would silently take two steps per step for those
            raise ValueError(f"{name}: a parameter is listed more than once")
        if not (isinstance(lr, numbers.Real) and not isinstance(lr, bool) and 0 < lr < math.inf):
            raise ValueError(f"{name}: lr must be a finite number > 0, got {lr!r}")
        self.lr = float(lr)
        # what the optimiser's state (momentum buffers, moments) was made for
        self._layouts = [(p.data.shape, p.data.dtype) for p in self.params]

    def zero_grad(self):
        """Set every parameter's gradient to zero."""
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        """Update every parameter from its gradient (call after ``model.backward``)."""
        raise NotImplementedError

    def _flat_arrays(self):
        """Every parameter's data and gradient as flat arrays, all checked before a step changes
        anything. Why: the fused update kernels index the optimiser's state by the parameter's
        size without bounds checks, so a parameter whose ``.data`` was replaced by a larger
        array would have its step write past that state (heap corruption, seen as a crash
        later); and a step that raises half way would have updated only some parameters."""
        name = type(self).__name__
        arrays = []
        for i, (p, (shape, dtype)) in enumerate(zip(self.params, self._layouts)):
            data, grad = p.data, p.grad
            if not (isinstance(data, np.ndarray) and data.shape == shape and data.dtype == dtype):
                raise ValueError(f"{name}: params[{i}].data is now {_described(data)}, but the "
                                 f"optimiser was made for {dtype} of shape {shape}: make a new "
                                 "optimiser after changing a parameter's shape or dtype")
            if not (isinstance(grad, np.ndarray) and grad.shape == shape):
                raise ValueError(f"{name}: params[{i}].grad is {_described(grad)}, but its data "
                                 f"has shape {shape}")
            if grad.dtype not in _checks.FLOAT_DTYPES:
                raise TypeError(f"{name}: params[{i}].grad must be float32 or float64, got {grad.dtype}")
            if not (data.flags.c_contiguous and grad.flags.c_contiguous and data.flags.writeable):
                raise ValueError(f"{name}: params[{i}].data and .grad must be C-contiguous and "
                                 "the data writeable (the update is in place)")
            arrays.append((data.reshape(-1), grad.reshape(-1)))
        return arrays

    def _hyper(self, value, name, high=math.inf):
        """A hyper-parameter in [0, high), checked."""
        return _checks.real_in(value, 0.0, high, type(self).__name__, name, high_open=True)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay, PyTorch's rule:
    ``g = grad + weight_decay * p; buf = momentum * buf + g; p -= lr * buf``.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        Learning rate, > 0.
    momentum : float
        >= 0; 0 for plain gradient descent.
    weight_decay : float
        L2 penalty factor, >= 0.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = self._hyper(momentum, "momentum")
        self.weight_decay = self._hyper(weight_decay, "weight_decay")
        self._buf = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._steps = 0

    def step(self):
        for (data, grad), buf in zip(self._flat_arrays(), self._buf):
            sgd_update(data, grad, buf, self.lr, self.momentum, self.weight_decay, self._steps == 0)
        self._steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, PyTorch's rule.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        Learning rate, > 0.
    betas : (float, float)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float
        Added to the root of the second moment, >= 0.
    weight_decay : float
        Adds ``weight_decay * p`` to the gradient (L2, as PyTorch's Adam; not AdamW), >= 0.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair of numbers, got {betas!r}") from None
        self.beta1 = self._hyper(beta1, "betas[0]", 1.0)
        self.beta2 = self._hyper(beta2, "betas[1]", 1.0)
        self.eps = self._hyper(eps, "eps")
        self.weight_decay = self._hyper(weight_decay, "weight_decay")
        # Moments in the parameter dtype, as in PyTorch: the update is memory-bound on them.
        self._m = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._v = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._t = 0

    def step(self):
        arrays = self._flat_arrays()
        self._t += 1
        bias1 = 1 - self.beta1 ** self._t
        bias2 = 1 - self.beta2 ** self._t
        scalars = (self.beta1, 1 - self.beta1, self.beta2, 1 - self.beta2, self.lr / bias1,
                   math.sqrt(bias2), self.eps, self.weight_decay)
        typed = {}  # the scalars in each parameter dtype: the update computes in it, as PyTorch's
        for (data, grad), m, v in zip(arrays, self._m, self._v):
            if data.dtype not in typed:
                typed[data.dtype] = tuple(data.dtype.type(s) for s in scalars)
            adam_update(data, grad, m, v, *typed[data.dtype])


def _described(a):
    if isinstance(a, np.ndarray):
        return f"{a.dtype} of shape {a.shape}"
    return f"a {type(a).__name__}"
