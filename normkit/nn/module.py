"""The base class of every layer: parameters, buffers, modes and state dicts."""

import numpy as np

from .. import _checks


def _unusable(value, current):
    """Why ``value`` cannot be loaded where ``current`` is (None if it can): checked before
    anything is loaded, so that a bad entry changes nothing (assigning it would fail half way,
    or quietly cast a complex, object or fractional value)."""
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        return f"expected real numbers, got dtype {value.dtype}"
    if current.dtype.kind in "iu" and not np.array_equal(value, np.round(value)):
        return f"expected whole numbers, got {value}"
    if current.dtype.kind == "f":
        with np.errstate(over="ignore"):
            cast = value.astype(current.dtype)
        if (np.isfinite(value) & ~np.isfinite(cast)).any():
            return f"values too large for {current.dtype} (up to {np.abs(value).max():.3g})"
    return None


def check_state(op, expected, state, value_problem):
    """Raise a ValueError from ``op`` naming every entry of ``state`` that is missing, unexpected,
    of the wrong shape or (``value_problem(name, value)``: a reason or None) of an unusable
    value, against ``expected`` ({name: ndarray}); all are checked before anything is loaded."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(set(expected) & set(state))
    wrong = [f"{k}: expected shape {expected[k].shape}, got {np.shape(state[k])}"
             for k in common if np.shape(state[k]) != expected[k].shape]
    unusable = [f"{k}: {why}" for k in common if np.shape(state[k]) == expected[k].shape
                and (why := value_problem(k, state[k]))]
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if wrong:
        parts.append("wrong shapes: " + "; ".join(wrong))
    if unusable:
        parts.append("wrong values: " + "; ".join(unusable))
    if parts:
        raise ValueError(f"{op}: " + ", ".join(parts))


class Parameter:
    """A trainable array and its gradient.

    Parameters
    ----------
    data : array_like
        The initial values, kept as ``.data`` (an ndarray); ``.grad`` is a zero array of the
        same shape and dtype, into which layers' ``backward`` add their gradients.
    """

    def __init__(self, data):
        self.data = np.asarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        """The shape of ``data`` (and of ``grad``)."""
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """A layer: ``y = layer(x)`` then ``dx = layer.backward(dy)``.

    Subclasses set ``self.<name> = Parameter(...)`` for parameters, list buffer names in
    ``_buffers`` (arrays saved in the state dict but not trained, such as running statistics),
    and implement ``forward`` and ``backward``. ``backward`` returns dL/dx and *adds* parameter
    gradients into ``.grad``, so gradients accumulate until :meth:`zero_grad`.
    """

    _buffers = ()

    def __init__(self):
        self.training = True

    # -- computation ---------------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """The layer's output for ``x``, keeping what :meth:`backward` needs.

        Parameters
        ----------
        x : ndarray
            The input (float32 or float64; normalisation layers also take CUDA device arrays).

        Returns
        -------
        ndarray
            The output, in ``x``'s dtype.
        """
        raise NotImplementedError

    def backward(self, dy):
        """Back-propagate through the last :meth:`forward`.

        Parameters
        ----------
        dy : ndarray
            dL/dy, of the last output's shape.

        Returns
        -------
        ndarray
            dL/dx. Parameter gradients are *added* into each ``Parameter.grad``.

        Raises
        ------
        RuntimeError
            If called before any forward.
        """
        raise NotImplementedError

    def _need_forward(self, cache):
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return cache

    def _upstream(self, dy, output_shape, dtype):
        """``dy`` as an array of the last output's shape and of ``dtype`` (the input's, which
        dx then has too), else an error naming the layer (NumPy would broadcast a (1, C)
        ``dy`` against a (N, C) output without a word)."""
        op = f"{type(self).__name__}.backward"
        dy = _checks.float_array(dy, op, "dy")
        if dy.shape != tuple(output_shape):
            raise ValueError(f"{op}: dy has shape {dy.shape} but the last output had shape "
                             f"{tuple(output_shape)}")
        return dy.astype(dtype, copy=False)

    # -- structure -----------------------------------------------------------------------------
    def children(self):
        """Direct sub-layers, as (name, module) pairs."""
        return []

    def modules(self):
        """This module and every module below it, depth first (as PyTorch's ``modules()``)."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def _own_parameters(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Parameter)]

    def named_parameters(self, prefix=""):
        """Every Parameter of this layer and its sub-layers as (name, Parameter) pairs, named
        as in the state dict (``"0.weight"``), each name starting with ``prefix``."""
        out = [(prefix + k, p) for k, p in self._own_parameters()]
        for name, child in self.children():
            out += child.named_parameters(f"{prefix}{name}.")
        return out

    def parameters(self):
        """Every Parameter of this layer and its sub-layers."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        """Set the gradient of every parameter to zero (gradients accumulate until then)."""
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode=True):
        """Training mode (batch statistics, dropout on); returns self."""
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Inference mode (running statistics, dropout off); returns self."""
        return self.train(False)

    # -- state -----------------------------------------------------------------------------------
    def _own_state(self):
        state = {k: p.data for k, p in self._own_parameters()}
        for name in self._buffers:
            value = getattr(self, name)
            if value is not None:
                state[name] = np.asarray(value)
        return state

    def state_dict(self, prefix=""):
        """Parameters and buffers as ``{name: ndarray}`` (copies), PyTorch's key names."""
        state = {prefix + k: np.array(v, copy=True) for k, v in self._own_state().items()}
        for name, child in self.children():
            state.update(child.state_dict(f"{prefix}{name}."))
        return state

    def _state_problem(self, name, value):
        """Why ``value`` (an ndarray of the right shape and kind) is no valid state entry
        ``name`` of this layer, or None. Layers whose state has rules (a variance is never
        negative) override it; :meth:`load_state_dict` loads nothing when one objects."""
        return None

    def _set_state(self, name, value):
        current = getattr(self, name)
        if isinstance(current, Parameter):
            current.data[...] = value
        elif isinstance(current, np.ndarray):
            current[...] = value
        else:  # scalar buffers such as num_batches_tracked
            setattr(self, name, type(current)(value))

    def _check_state_dict(self, state):
        """Raise a ValueError naming every entry of ``state`` that :meth:`load_state_dict` could
        not load."""
        expected = self.state_dict()
        owners = {name: (module, attr) for name, module, attr in self._state_targets()}

        def problem(name, value):
            module, attr = owners[name]
            return _unusable(value, expected[name]) or module._state_problem(attr, np.asarray(value))
        check_state(f"{type(self).__name__}.load_state_dict", expected, state, problem)

    def load_state_dict(self, state):
        """Load a state dict; entries that are missing, unexpected or of the wrong shape raise a
        ValueError naming all of them, and then nothing is changed."""
        self._check_state_dict(state)
        return self._load_checked(state)

    def _load_checked(self, state):
        """Load a state that :meth:`_check_state_dict` accepted."""
        for name, module, attr in self._state_targets():
            module._set_state(attr, state[name])
        return self

    def _state_targets(self, prefix=""):
        targets = [(prefix + k, self, k) for k in self._own_state()]
        for name, child in self.children():
            targets += child._state_targets(f"{prefix}{name}.")
        return targets

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        """What ``repr(layer)`` shows between the parentheses (subclasses add their settings)."""
        return ""
