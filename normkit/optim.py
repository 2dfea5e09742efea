"""Optimisers with PyTorch's update rules: ``optimizer.step()`` after ``model.backward``."""

import numpy as np

from .kernels.cpu.optim import adam_update, sgd_update


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr!r}")
        self.lr = float(lr)

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay:
    ``g = grad + weight_decay * p; buf = momentum * buf + g; p -= lr * buf``."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self._buf = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._steps = 0

    def step(self):
        for p, buf in zip(self.params, self._buf):
            sgd_update(_flat(p.data), _flat(p.grad), buf, self.lr, self.momentum,
                       self.weight_decay, self._steps == 0)
        self._steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` adds L2 to the gradient, as in
    PyTorch's Adam."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        # Moments in the parameter dtype, as in PyTorch: the update is memory-bound on them.
        self._m = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._v = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._t = 0

    def step(self):
        self._t += 1
        bias1 = 1 - self.beta1 ** self._t
        bias2 = 1 - self.beta2 ** self._t
        for p, m, v in zip(self.params, self._m, self._v):
            adam_update(_flat(p.data), _flat(p.grad), m, v, self.lr, self.beta1, self.beta2,
                        bias1, bias2, self.eps, self.weight_decay)


def _flat(a):
    """A 1-D view of a parameter array (parameters are contiguous: they are created so)."""
    flat = a.reshape(-1)
    if not np.shares_memory(flat, a):
        raise ValueError("optimiser: parameter arrays must be contiguous")
    return flat
