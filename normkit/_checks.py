"""Input validation shared by the functional API and the layers.

Every check runs before any state is touched, so a call that raises changes nothing.
"""

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def not_masked(x, op, name):
    """A TypeError for a masked array: normkit computes on every value, so its mask would be
    ignored silently (and NumPy's own functions, as in the reference backend, would honour it)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{op}: {name} is a masked array, whose mask normkit would ignore; pass "
                        f"{name}.filled(value) or only the values to use")


def float_array(x, op, name="x"):
    """``x`` as a float32/float64 ndarray, or a TypeError/ValueError naming ``op`` and the problem.

    Subclasses of ndarray come back as plain ndarray views of the same memory: the layers' ``*``
    and ``@`` would mean matrix products on an ``np.matrix``. Masked arrays are refused."""
    if type(x) is not np.ndarray:
        if isinstance(x, np.ndarray):
            not_masked(x, op, name)
            x = x.view(np.ndarray)
        else:
            try:
                x = np.asarray(x)
            except Exception as exc:  # ragged lists and the like
                raise TypeError(f"{op}: {name} must be an array of floats, "
                                f"got {type(x).__name__}") from exc
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a float32 or float64 array, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{op}: {name} is empty (shape {x.shape})")
    return x


def same_shape(a, b, op, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{op}: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def float_dtype(dtype, op):
    """``dtype`` as a NumPy dtype if it is float32 or float64, else a TypeError naming ``op``."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    return dtype


def int_axis(axis, op):
    """``axis`` if it is an int (its range is checked against each input), else a TypeError."""
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")
    return int(axis)


def channel_axis(axis, ndim, op):
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, without ABC checks (~us)
        return axis % ndim
    int_axis(axis, op)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an input with {ndim} dimensions")
    return int(axis) % ndim


def int_at_least(value, low, op, name):
    """``value`` as an int if it is an integer (not a bool) >= ``low``, else a ValueError."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        wanted = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{op}: {name} must be {wanted}, got {value!r}")
    return int(value)


def positive_int(value, op, name):
    """``value`` as an int if it is a positive integer (not a bool), else a ValueError."""
    return int_at_least(value, 1, op, name)


def real_in(value, low, high, op, name, *, high_open=False):
    """``value`` as a float if it is a real number in [low, high] ([low, high) with
    ``high_open``), else a ValueError naming ``op``, ``name`` and the range."""
    if (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and low <= value and (value < high if high_open else value <= high)):
        return float(value)
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"{op}: {name} must be a number in {interval}, got {value!r}")


def positive_eps(eps, op):
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if not isinstance(eps, numbers.Real) or not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"{op}: eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def momentum_value(momentum, op):
    if momentum is None or (type(momentum) is float and 0.0 <= momentum <= 1.0):
        return momentum
    if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op}: momentum must be in [0, 1] or None, got {momentum!r}")
    return float(momentum)


def param_vector(p, shape, op, name):
    """A weight/bias of exactly ``shape``, flattened to float64; ``None`` stays ``None``."""
    if p is None:
        return None
    p = float_array(p, op, name)
    if p.shape != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {p.shape}")
    p = p.astype(np.float64, order="C")  # a copy (half the time of np.ascontiguousarray's)
    return p if p.ndim == 1 else p.reshape(-1)


def running_stat(r, n_channels, op, name):
    """A running statistic: a writable float array of shape (C,), updated in place; or ``None``."""
    if r is None:
        return None
    if not isinstance(r, np.ndarray):
        raise TypeError(f"{op}: {name} must be a NumPy array (it is updated in place), got {type(r).__name__}")
    not_masked(r, op, name)
    if r.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {r.dtype}")
    if r.shape != (n_channels,):
        raise ValueError(f"{op}: {name} must have shape ({n_channels},) to match the input's "
                         f"{n_channels} channels, got {r.shape}")
    if not r.flags.writeable:
        raise ValueError(f"{op}: {name} is read-only but must be updated in place")
    return r


def normalized_shape_tuple(normalized_shape, op):
    if type(normalized_shape) is int and normalized_shape > 0:  # the common case, without ABC
        return (normalized_shape,)                                # checks (2 us of a 25 us call)
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        if isinstance(normalized_shape, (str, bytes)):
            raise TypeError
        shape = tuple(int(d) for d in normalized_shape)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: normalized_shape must be an int or a tuple of ints, "
                        f"got {normalized_shape!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"{op}: normalized_shape must be non-empty with positive sizes, got {shape}")
    return shape


class BatchNormArgs:
    """The validated arguments of a BatchNorm call (shared by every backend)."""

    def __init__(self, shape, axis, weight, bias, running_mean, running_var, training, momentum,
                 eps, num_batches_tracked, op="batch_norm", check_count=True, *,
                 vector=param_vector, running=running_stat):
        """``vector``/``running``: the checks of weight/bias and of the running statistics (the
        CUDA backend passes its own, which also accept device arrays)."""
        if len(shape) < 2:
            raise ValueError(f"{op}: x must have at least 2 dimensions (batch and channel), got shape {shape}")
        self.axis = channel_axis(axis, len(shape), op)
        self.channels = shape[self.axis]
        self.count = math.prod(shape) // self.channels  # values per channel
        self.eps = positive_eps(eps, op)
        self.momentum = momentum_value(momentum, op)
        self.weight = vector(weight, (self.channels,), op, "weight")
        self.bias = vector(bias, (self.channels,), op, "bias")
        self.running_mean = running(running_mean, self.channels, op, "running_mean")
        self.running_var = running(running_var, self.channels, op, "running_var")
        if (self.running_mean is None) != (self.running_var is None):
            raise ValueError(f"{op}: give both running_mean and running_var, or neither")
        if (isinstance(self.running_mean, np.ndarray) and isinstance(self.running_var, np.ndarray)
                and np.may_share_memory(self.running_mean, self.running_var)):
            # each update would overwrite the other statistic
            raise ValueError(f"{op}: running_mean and running_var share memory; give two arrays")
        if not training and self.running_mean is None:
            raise ValueError(f"{op}: training=False normalises with the running statistics, "
                             "so running_mean and running_var are required")
        if training and check_count and self.count <= 1:
            raise ValueError(f"{op}: expected more than 1 value per channel when training, "
                             f"got input of shape {shape} (channel axis {self.axis})")
        if training and self.running_mean is not None and self.momentum is None and num_batches_tracked is None:
            raise ValueError(f"{op}: momentum=None (cumulative average) needs num_batches_tracked")

    def coefficients(self, var):
        """(rstd, scale, shift) per channel, float64: y = (x - mean) * scale + shift."""
        rstd = 1.0 / np.sqrt(var + self.eps)
        scale = rstd if self.weight is None else rstd * self.weight
        shift = np.zeros(self.channels) if self.bias is None else self.bias
        return rstd, scale, shift


class LayerNormArgs:
    """The validated arguments of a LayerNorm call (shared by every backend)."""

    def __init__(self, shape, normalized_shape, weight, bias, eps, op="layer_norm", *,
                 vector=param_vector):
        self.normalized_shape = normalized_shape_tuple(normalized_shape, op)
        k = len(self.normalized_shape)
        if len(shape) < k or tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"{op}: the input's trailing dimensions must equal normalized_shape "
                             f"{self.normalized_shape}, got input of shape {tuple(shape)}")
        self.cols = math.prod(self.normalized_shape)
        self.eps = positive_eps(eps, op)
        self.weight = vector(weight, self.normalized_shape, op, "weight")
        self.bias = vector(bias, self.normalized_shape, op, "bias")
