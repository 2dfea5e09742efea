"""Per-channel vectors (weight, bias, running statistics) of the CUDA backend.

Each may be given as a host array or as a device array (numba's, or anything with
``__cuda_array_interface__``). Device vectors are used in place: running statistics are updated
on the device and the gradients of device parameters are returned as device arrays, so a call
with every vector on the device never waits for the GPU (as PyTorch's modules, whose buffers live
on the device). Host vectors are sent to the device once and cached by content (below).
"""

import numpy as np
from numba import cuda

from ... import _checks
from ..._backend import is_device_array, is_numba_device_array
from . import _pool

# A host-to-device copy costs ~130 us of host time with numba-cuda (measured on an H200), more
# than the kernels themselves below ~100 MB. So host vectors already sent (the same weights, call
# after call in inference) are reused: the last few are kept with their bytes, compared byte for
# byte (hashing 8192 channels' bytes took ~40 us a vector; a comparison runs at memory speed and
# cannot collide).
_cache = []   # (key: the device, the dtype, and the vector's dtype, shape and bytes; device array)
_CACHE_SIZE = 32


def host_vector(ctx, v, dtype):
    """A cached device array of ``dtype`` (in context ``ctx``) holding the host array ``v`` (a
    vector, or a few stacked), which may be ``("ones", n)`` or ``("zeros", n)``, standing for
    that constant vector."""
    key = (_pool.device_id(ctx), np.dtype(dtype).str,
           v if isinstance(v, tuple) else (v.dtype.str, v.shape, v.tobytes()))
    for i in range(len(_cache) - 1, -1, -1):
        if _cache[i][0] == key:
            return _cache[i][1]
    if isinstance(v, tuple):
        v = np.full(v[1], 1.0 if v[0] == "ones" else 0.0)
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(0)  # oldest first
    device = cuda.to_device(np.ascontiguousarray(v, dtype=dtype))
    _cache.append((key, device))
    return device


def as_device(v, op, name, contiguous=True):
    """A device array given for ``name`` (an input or a vector) as a numba device array (a
    zero-copy view of other CUDA arrays): float32/float64 and, with ``contiguous``,
    C-contiguous; or a clear error."""
    d = v if is_numba_device_array(v) else cuda.as_cuda_array(v)
    if np.dtype(d.dtype) not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a float32 or float64 array, got dtype {d.dtype}")
    if contiguous and not d.is_c_contiguous():
        raise ValueError(f"{op}: device array {name} must be C-contiguous (copy it first)")
    return d


def param(p, shape, op, name):
    """The check of a weight/bias: device arrays as they are (shape checked), host ones as on
    the CPU (flattened float64); ``None`` stays ``None``."""
    if p is None or not is_device_array(p):
        return _checks.param_vector(p, shape, op, name)
    d = as_device(p, op, name)
    if tuple(d.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(d.shape)}")
    return d


def running_stat(r, n_channels, op, name):
    """The check of a running statistic: a device array of shape (C,) is updated on the device,
    a host one as on the CPU."""
    if r is None or not is_device_array(r):
        return _checks.running_stat(r, n_channels, op, name)
    d = as_device(r, op, name)
    if tuple(d.shape) != (n_channels,):
        raise ValueError(f"{op}: {name} must have shape ({n_channels},) to match the input's "
                         f"{n_channels} channels, got {tuple(d.shape)}")
    return d


def on_device(v):
    """Whether a checked vector is a device array (host ones are NumPy arrays or None)."""
    return v is not None and not isinstance(v, np.ndarray)


def kernel_vector(ctx, v, n, default, dtype):
    """What a kernel reads for vector ``v`` (checked): a device vector itself, else the cached
    device copy of the host vector, or of ``default`` ("ones" or "zeros") when ``v`` is None."""
    if on_device(v):
        return v
    return host_vector(ctx, (default, n) if v is None else v, dtype)


def dtype_of(weight, bias):
    """The dtype the gradients of these (unchecked) parameters are returned in: their own."""
    for p in (weight, bias):
        if p is not None:
            dtype = getattr(p, "dtype", None)
            if isinstance(dtype, np.dtype):  # NumPy and numba arrays
                return dtype
            if is_device_array(p):  # e.g. a torch CUDA tensor, whose dtype is torch's
                return np.dtype(cuda.as_cuda_array(p).dtype)
            return np.asarray(p).dtype
    return None
