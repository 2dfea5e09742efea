"""Turning any input layout into the fixed-rank arrays the kernels work on, copying only when the
memory layout leaves no choice.

BatchNorm: the statistics of a channel do not depend on the order of the other axes, so the axes
are put in memory order (largest stride first) and grouped around the channel axis into
(outer, C, inner). A C-contiguous (N, C, H, W) input becomes (N, C, H*W), a channels-last one
(N*H*W, C, 1), a transposed (C, N) view (N, C, 1): each a view, and the output is allocated in
the input's memory order. Short inner runs are folded into the columns of a 2D "wide" array.

LayerNorm: the normalised axes must be the last ones in memory, so the input is viewed as
(rows, cols); it is copied only when a row is not contiguous.
"""

import functools
import math

import numpy as np

from . import _memory
from .kernels.cpu.batchnorm import RUN_MIN


def batch_norm_layout(x, axis):
    """The :class:`BatchNormLayout` of ``x`` (cached: a training loop sees the same few shapes)."""
    return _cached_layout(x.shape, x.strides, axis)


@functools.lru_cache(maxsize=256)
def _cached_layout(shape, strides, axis):
    return BatchNormLayout(shape, strides, axis)


class BatchNormLayout:
    """How an input of one shape and memory order maps onto the BatchNorm kernels."""

    def __init__(self, shape, strides, axis):
        ndim = len(shape)
        order = sorted(range(ndim), key=lambda a: -abs(strides[a]))
        pos = order.index(axis)
        self.order = tuple(order)
        self.inverse = tuple(order.index(a) for a in range(ndim))
        self.permuted_shape = tuple(shape[a] for a in order)
        self.channels = shape[axis]
        self.outer = math.prod(self.permuted_shape[:pos])
        self.inner = math.prod(self.permuted_shape[pos + 1:])
        self.group = 1 if self.inner >= RUN_MIN else self.inner  # columns per channel (wide)
        if self.inner >= RUN_MIN:
            self.kernel_shape = (self.outer, self.channels, self.inner)
        else:
            self.kernel_shape = (self.outer, self.channels * self.inner)

    def view(self, a):
        """``a`` (the input's shape) as the kernels' array: a view when the memory allows."""
        return a.transpose(self.order).reshape(self.kernel_shape)

    def empty(self, dtype, apart_from=(), line_offset=0):
        """A new output: (kernel array to write, the same memory in the input's shape), kept clear
        of the inputs it is computed from, ``line_offset`` bytes into a line (see
        ``_memory.empty``)."""
        buf = _memory.empty(self.permuted_shape, dtype, apart_from, line_offset=line_offset)
        return buf.reshape(self.kernel_shape), buf.transpose(self.inverse)


def layer_norm_rows(a, n_cols):
    """``a`` as a (rows, n_cols) array with contiguous rows."""
    a2 = a.reshape(-1, n_cols)
    if a2.strides[1] != a2.itemsize and n_cols > 1:
        a2 = np.ascontiguousarray(a2)
    return a2
