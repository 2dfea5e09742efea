"""Linear, activations, Dropout and Sequential: what normalisation layers are used between."""

import numpy as np
from scipy.special import expit

from .. import _checks, _memory, random
from ..kernels.cpu import dropout as _dropout_cpu
from .module import Module, Parameter


class Linear(Module):
    """``y = x @ weight.T + bias``; weight is (out_features, in_features) as in PyTorch.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the last axis of the input and of the output.
    bias : bool
        Learn an additive ``bias`` of ``out_features`` values.
    rng : numpy.random.Generator, optional
        Draws the initial values; normkit's global generator (:mod:`normkit.random`) if None.
    dtype : float32 or float64
        Of the parameters.

    Notes
    -----
    Initialised like PyTorch's default (Kaiming-uniform with a = sqrt(5)): weight and bias drawn
    from U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(self, in_features, out_features, *, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        in_features = _checks.positive_int(in_features, "Linear", "in_features")
        out_features = _checks.positive_int(out_features, "Linear", "out_features")
        dtype = _checks.float_dtype(dtype, "Linear")
        rng = random.generator() if rng is None else rng
        bound = 1.0 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None
        self._x = None

    def forward(self, x):
        x = _checks.float_array(x, "Linear")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input with {self.in_features} features on the last "
                             f"axis, got shape {x.shape}")
        self._x = x
        y = x @ self.weight.data.astype(x.dtype, copy=False).T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        x = self._need_forward(self._x)
        dy = self._upstream(dy, x.shape[:-1] + (self.out_features,), x.dtype)
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.weight.grad += dy2.T @ x2
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return dy @ self.weight.data.astype(dy.dtype, copy=False)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """``max(x, 0)``, elementwise; its gradient is taken as 0 at 0, as in PyTorch."""

    def forward(self, x):
        x = _checks.float_array(x, "ReLU")
        self._mask = x > 0
        self._dtype = x.dtype
        return x * self._mask

    def backward(self, dy):
        mask = self._need_forward(getattr(self, "_mask", None))
        return self._upstream(dy, mask.shape, self._dtype) * mask


class Sigmoid(Module):
    """The logistic function 1 / (1 + exp(-x)), elementwise, without overflow for large |x|."""

    def forward(self, x):
        self._y = expit(_checks.float_array(x, "Sigmoid"))  # overflow-free logistic
        return self._y

    def backward(self, dy):
        y = self._need_forward(getattr(self, "_y", None))
        return self._upstream(dy, y.shape, y.dtype) * y * (1 - y)


class Tanh(Module):
    """The hyperbolic tangent, elementwise."""

    def forward(self, x):
        self._y = np.tanh(_checks.float_array(x, "Tanh"))
        return self._y

    def backward(self, dy):
        y = self._need_forward(getattr(self, "_y", None))
        return self._upstream(dy, y.shape, y.dtype) * (1 - y * y)


class Dropout(Module):
    """Inverted dropout: in training, zero each value with probability ``p`` and scale the rest
    by 1 / (1 - p); the identity in eval mode.

    Parameters
    ----------
    p : float
        Probability of zeroing a value, in [0, 1].
    rng : numpy.random.Generator, optional
        Keys the masks; normkit's global generator (which :func:`normkit.fit` seeds from its
        ``seed``) if None.

    Notes
    -----
    Each forward call takes one draw of ``rng`` as the key of its mask, and the mask is drawn from
    that key by a counter-based generator (SplitMix64; see ``kernels/cpu/dropout.py``) in the same
    parallel loop that applies it: seeding ``rng`` reproduces the masks, whatever the thread
    count, and the backward pass draws the same mask again instead of keeping it.
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        self.p = _checks.real_in(p, 0.0, 1.0, "Dropout", "p")
        self.rng = rng
        self._mask = self._input = None  # (key, p) of the last mask; (shape, dtype) of the input

    def forward(self, x):
        x = _checks.float_array(x, "Dropout")
        self._input = x.shape, x.dtype
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        rng = random.generator() if self.rng is None else self.rng
        self._mask = int(rng.integers(0, 2 ** 64, dtype=np.uint64)), self.p
        return self._apply_mask(x)

    def backward(self, dy):
        dy = self._upstream(dy, *self._need_forward(self._input))
        return dy if self._mask is None else self._apply_mask(dy)

    def _apply_mask(self, a):
        key, p = self._mask
        out = _memory.empty(a.shape, a.dtype, apart_from=(a,))
        return _dropout_cpu.dropout(np.ascontiguousarray(a), key, p, out)

    def extra_repr(self):
        return f"p={self.p}"


def _check_layer(layer, index):
    if not isinstance(layer, Module):
        raise TypeError(f"Sequential: item {index} is a {type(layer).__name__}, not a layer")
    return layer


def _check_used_once(layers):
    # A layer keeps what its last forward needs for its backward (its input, a ReLU's mask, a
    # BatchNorm's statistics), so one applied twice in a pass would give the first use the
    # second's: wrong gradients, silently. (PyTorch's autograd keeps one record per use.)
    seen = {}
    for index, layer in enumerate(layers):
        for module in layer.modules():
            first = seen.setdefault(id(module), index)
            if first != index:
                raise ValueError(
                    f"Sequential: item {index} ({type(module).__name__}) is already used at item "
                    f"{first}: a layer remembers its last forward for its backward, so it cannot "
                    "be applied twice in one pass; give each place its own layer")


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Parameters
    ----------
    *layers : Module
        The layers, in the order their forwards run. State-dict keys are prefixed by the
        layer's index (``"1.running_mean"``), as in PyTorch; indexing gives a layer, slicing a
        Sequential of the same layer objects.
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            _check_layer(layer, i)
        _check_used_once(layers)
        self.layers = list(layers)

    def append(self, layer):
        """Add ``layer`` at the end (it takes the next index in state-dict keys); returns self."""
        _check_used_once(self.layers + [_check_layer(layer, len(self.layers))])
        self.layers.append(layer)
        return self

    def children(self):
        """The layers, named by their index."""
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def __getitem__(self, i):
        """The layer at index ``i``; a slice gives a Sequential of the same layer objects (not
        copies: they share parameters and state), in this one's mode, as in PyTorch."""
        if isinstance(i, slice):
            part = Sequential(*self.layers[i])
            part.training = self.training
            return part
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
