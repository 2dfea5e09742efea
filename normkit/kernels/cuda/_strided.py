"""Device inputs that are not C-contiguous: views with their axes permuted, and copies.

The kernels index C-contiguous arrays (and load 16 bytes at a time where they can). BatchNorm
first puts the axes in memory order (:func:`permuted`), as the CPU path does, so a dense input
whose axes are merely permuted, such as a PyTorch tensor in ``channels_last`` memory format or
a transposed array, is read in place. Any other layout (a slice, a broadcast view), and for
LayerNorm any non-C-contiguous input, is copied into a pooled C-contiguous array by
:func:`gather_kernel`: one read and one write of the input, as PyTorch's ``.contiguous()``.
"""

import math

import numpy as np
from numba import cuda

from . import _pool
from . import simulator as _simulator


@cuda.jit
def gather_kernel(src, shape, strides, dst):
    """``dst`` (1-D, C order) = the array of ``shape`` whose element (j0, j1, ...) is
    ``src[j0 * strides[0] + j1 * strides[1] + ...]``: ``src`` is the memory the strided array
    spans, from its first element, and ``strides`` are in elements."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dst.size:
        rest = i
        offset = 0
        for k in range(len(shape) - 1, -1, -1):  # last axis first: C order
            offset += (rest % shape[k]) * strides[k]
            rest //= shape[k]
        dst[i] = src[offset]
        i += step


def gather(d, threads, target, op, name):
    """A C-contiguous copy, from the pool, of the non-empty numba device array ``d`` (input
    ``name`` of ``op``, for errors). ``threads``/``target``: threads per block and target
    number of blocks."""
    itemsize = d.dtype.itemsize
    if any(s < 0 or s % itemsize for s in d.strides):
        raise ValueError(f"{op}: device array {name} has strides {tuple(d.strides)} (bytes): "
                         "negative or not a multiple of its item size; copy it first")
    shape, strides = merged_axes(d.shape, tuple(s // itemsize for s in d.strides))
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    out = _pool.empty(tuple(d.shape), d.dtype, _pool.current_context())
    blocks = max(1, min(math.ceil(d.size / threads), 4 * target))
    # Through numba's dispatcher, not normkit's launcher: it takes the tuples, and this copy is
    # the exception, not the per-call path.
    memory = _view(d, (span,), (itemsize,))  # what the strided array spans, from its start
    gather_kernel[blocks, threads](memory, shape, strides, out.reshape(d.size))
    return out


def merged_axes(shape, strides):
    """(shape, strides) of the same elements in the same C order with as few axes as can be:
    size-1 axes dropped, and each axis merged into the one before it where that one steps over
    it exactly (``strides[k - 1] == shape[k] * strides[k]``), so that the gather divides once
    per remaining axis (a sliced (N, C, H, W) array with whole rows: two axes, not four)."""
    out_shape, out_strides = [], []
    for n, s in zip(shape, strides):
        if n == 1:
            continue
        if out_shape and out_strides[-1] == n * s:
            out_shape[-1] *= n
            out_strides[-1] = s
        else:
            out_shape.append(n)
            out_strides.append(s)
    return (tuple(out_shape), tuple(out_strides)) if out_shape else ((1,), (1,))


def permuted(d, axes):
    """The numba device array ``d`` with its axes in the order ``axes``, as NumPy's
    ``transpose(axes)``: a view (numba's own ``transpose`` is 2-D only)."""
    return _view(d, tuple(d.shape[a] for a in axes), tuple(d.strides[a] for a in axes))


def _view(d, shape, strides):
    """A device array of ``shape`` and byte ``strides`` on ``d``'s memory, from its first
    element (whose strides are not negative), holding a reference to that memory."""
    if _simulator():  # the simulator's device arrays wrap host NumPy arrays
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(np.lib.stride_tricks.as_strided(d._ary, shape, strides))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(shape, strides, d.dtype, gpu_data=d.gpu_data)
