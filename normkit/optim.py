"""Optimisers with PyTorch's update rules: ``optimizer.step()`` after ``model.backward``."""

import math
import numbers

import numpy as np

from . import _checks
from .kernels.cpu.optim import adam_update, sgd_update
from .nn.module import Parameter, _unusable, check_state


class Optimizer:
    """The base of the optimisers: the parameters they update and a learning rate.

    Parameters
    ----------
    params : iterable of Parameter
        Usually ``model.parameters()``; at least one.
    lr : float
        Learning rate, > 0.

    Notes
    -----
    Subclasses name their hyper-parameters in ``HYPER_PARAMETERS`` (attributes, checked by
    ``_checked``) and their per-parameter state in ``_buffers``; :meth:`state_dict` and
    :meth:`load_state_dict` save and restore both, and the step count.
    """

    HYPER_PARAMETERS = ("lr",)

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
        self.lr = self._checked("lr", lr)
        # what the optimiser's state (momentum buffers, moments) was made for
        self._layouts = [(p.data.shape, p.data.dtype) for p in self.params]
        self._steps = 0  # steps taken

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

    def _checked(self, name, value):
        """The hyper-parameter ``name`` (one of ``HYPER_PARAMETERS``) set to ``value``, checked:
        a ValueError naming the optimiser where it is out of range."""
        if name == "lr":
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and 0 < value < math.inf):
                raise ValueError(f"{type(self).__name__}: lr must be a finite number > 0, got {value!r}")
            return float(value)
        raise KeyError(name)

    def _buffers(self):
        """{name: one flat array per parameter}: the state each parameter's updates carry."""
        return {}

    def state_dict(self):
        """The optimiser's state, to resume training where it stopped (save it beside the model's
        with ``normkit.save(model, path, optimizer)``).

        Returns
        -------
        dict of str to ndarray
            Copies: ``step`` (steps taken), each hyper-parameter (``lr``, ...) and, per
            parameter ``i`` in the order the optimiser was given them, its buffers of that
            parameter's shape and dtype (``momentum_buffer.i`` for SGD, ``exp_avg.i`` and
            ``exp_avg_sq.i`` for Adam, PyTorch's names).
        """
        state = {"step": np.array(self._steps)}
        for name in self.HYPER_PARAMETERS:
            state[name] = np.array(getattr(self, name), dtype=np.float64)
        for name, buffers in self._buffers().items():
            for i, (buffer, (shape, _)) in enumerate(zip(buffers, self._layouts)):
                state[f"{name}.{i}"] = buffer.reshape(shape).copy()
        return state

    def _check_state_dict(self, state):
        """Raise a ValueError naming every entry of ``state`` that :meth:`load_state_dict` could
        not load."""
        expected = self.state_dict()

        def problem(name, value):
            value = np.asarray(value)
            why = _unusable(value, expected[name])
            if why:
                return why
            if name in self.HYPER_PARAMETERS:
                try:
                    self._checked(name, value.tolist())
                except ValueError as exc:
                    return str(exc)
                return None
            if name == "step":
                return None if value >= 0 else f"expected a count >= 0, got {value}"
            return None if np.isfinite(value).all() else "expected finite values"
        check_state(f"{type(self).__name__}.load_state_dict", expected, state, problem)

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (the hyper-parameters too, as PyTorch does):
        the same parameters' shapes and dtypes are expected, in the same order.

        Parameters
        ----------
        state : dict of str to array_like

        Raises
        ------
        ValueError
            Naming every entry that is missing, unexpected, of the wrong shape or out of range;
            the optimiser is then left unchanged.
        """
        self._check_state_dict(state)
        return self._load_checked(state)

    def _load_checked(self, state):
        """Load a state that :meth:`_check_state_dict` accepted."""
        for name in self.HYPER_PARAMETERS:
            setattr(self, name, self._checked(name, np.asarray(state[name]).tolist()))
        self._steps = int(state["step"])
        for name, buffers in self._buffers().items():
            for i, buffer in enumerate(buffers):
                buffer[...] = np.asarray(state[f"{name}.{i}"]).reshape(-1)
        return self


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

    HYPER_PARAMETERS = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = self._checked("momentum", momentum)
        self.weight_decay = self._checked("weight_decay", weight_decay)
        self._buf = [np.zeros(p.data.size, p.data.dtype) for p in self.params]

    def _checked(self, name, value):
        if name in ("momentum", "weight_decay"):
            return self._hyper(value, name)
        return super()._checked(name, value)

    def _buffers(self):
        return {"momentum_buffer": self._buf}

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

    HYPER_PARAMETERS = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas = self._checked("betas", betas)
        self.eps = self._checked("eps", eps)
        self.weight_decay = self._checked("weight_decay", weight_decay)
        # Moments in the parameter dtype, as in PyTorch: the update is memory-bound on them.
        self._m = [np.zeros(p.data.size, p.data.dtype) for p in self.params]
        self._v = [np.zeros(p.data.size, p.data.dtype) for p in self.params]

    def _checked(self, name, value):
        if name == "betas":
            try:
                beta1, beta2 = value
            except (TypeError, ValueError):
                raise ValueError(f"Adam: betas must be a pair of numbers, got {value!r}") from None
            return self._hyper(beta1, "betas[0]", 1.0), self._hyper(beta2, "betas[1]", 1.0)
        if name in ("eps", "weight_decay"):
            return self._hyper(value, name)
        return super()._checked(name, value)

    def _buffers(self):
        return {"exp_avg": self._m, "exp_avg_sq": self._v}

    def step(self):
        arrays = self._flat_arrays()
        self._steps += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1 ** self._steps
        bias2 = 1 - beta2 ** self._steps
        scalars = (beta1, 1 - beta1, beta2, 1 - beta2, self.lr / bias1,
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
