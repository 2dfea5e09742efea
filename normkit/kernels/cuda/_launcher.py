"""Kernel launches with less host work than numba-cuda's dispatcher.

Why: ``kernel[grid, block](*args)`` types every argument, converts each array to a strided
memory view and re-checks the launch configuration on every call: 17 us for one array argument
and 66 us for a seven-argument kernel on an H200 (measured; 13 us through this module), while a
whole 64 MB LayerNorm takes the GPU ~40 us and PyTorch ~20 us of host time per call. normkit's kernels always get C-contiguous device arrays,
Python ints and floats, so after the first launch of a signature (through the dispatcher, which
compiles it) this module passes the arguments in Numba's kernel ABI directly to ``cuda.core``'s
``launch``: per array (meminfo, parent, size, itemsize, data pointer, shape..., strides...).

If numba-cuda's internals differ from what this expects (another version; checked with 0.30.4),
or under the simulator, every launch goes through the dispatcher: slower, never wrong.
"""

import ctypes
import logging
from typing import NamedTuple

from numba import typeof

from . import simulator as _simulator
from ._pool import DeviceSpan


class Shaped(NamedTuple):
    """A C-contiguous device array seen as ``shape`` (same size) by a kernel, without building a
    numba view (a reshape costs ~4 us of host time)."""
    array: object
    shape: tuple


_fast = {}      # (dispatcher, argument key) -> cuda.core kernel, or None: use the dispatcher
_configs = {}   # (grid, block) -> cuda.core LaunchConfig
_log = logging.getLogger(__name__)
_fallbacks_logged = set()  # the reasons already logged, so a fallback is reported once, not per call


def _fall_back(where, exc):
    """Log (once per kind of failure) that launches go through the dispatcher from now on.

    Why: the fallback is deliberate (other numba-cuda versions), but silent it hides real bugs:
    a NameError here once sent every launch through the 3x slower dispatcher unnoticed.
    """
    reason = (where, type(exc).__name__)
    if reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        _log.warning("normkit: %s failed (%s: %s); those kernels launch through numba-cuda's "
                     "dispatcher (slower, same results)", where, type(exc).__name__, exc)


def _numba_arg(a):
    """What numba's dispatcher takes for a launch argument (Shaped views and the pool's
    DeviceSpans become numba arrays)."""
    if isinstance(a, Shaped):
        return a.array.reshape(a.shape)
    if isinstance(a, DeviceSpan):
        from numba import cuda
        return cuda.as_cuda_array(a)
    return a


def _core_kernel(dispatcher, args):
    """The cuda.core kernel object of the compiled overload for ``args``, or None."""
    try:
        from cuda.core import LaunchConfig, launch  # noqa: F401  (both needed below)
        overload = dispatcher.overloads[tuple(typeof(_numba_arg(a)) for a in args)]
        return overload._codelibrary.get_cufunc().kernel
    except Exception as exc:  # another numba-cuda layout of internals: keep the dispatcher
        _fall_back("finding the compiled kernel for a direct launch", exc)
        return None


def _config(grid, block):
    config = _configs.get((grid, block))
    if config is None:
        from cuda.core import LaunchConfig
        config = _configs[(grid, block)] = LaunchConfig(grid=grid, block=block, shmem_size=0)
    return config


def launch(dispatcher, grid, block, *args):
    """``dispatcher[grid, block](*args)`` for device arrays (C-contiguous: callers check inputs,
    and normkit allocates the rest), :class:`Shaped` views of them, ints and floats.

    ``grid`` and ``block`` are tuples of ints (1 to 3 of them).
    """
    if _simulator():
        dispatcher[grid, block](*map(_numba_arg, args))
        return
    # One pass builds both the cache key (the argument types) and the kernel parameters.
    key = [dispatcher]
    params = []
    for a in args:
        kind = type(a)
        if kind is float:
            key.append(float)
            params.append(ctypes.c_double(a))
        elif kind is int:
            key.append(int)
            params.append(ctypes.c_int64(a))
        else:
            array, shape = a if kind is Shaped else (a, a.shape)
            layout = _layouts.get((shape, array.dtype))
            if layout is None:
                layout = _layout(shape, array.dtype)
            key.append(layout[0])
            params += layout[1]
            params.append(array.device_ctypes_pointer.value)
            params += layout[2]
    key = tuple(key)
    kernel = _fast.get(key)
    if kernel is not None:
        try:
            _core_launch(_default_stream(), _config(grid, block), kernel, *params)
            return
        except Exception as exc:  # cuda.core refused before launching: dispatcher from now on
            _fall_back("a direct cuda.core launch", exc)
            _fast[key] = None
    dispatcher[grid, block](*map(_numba_arg, args))
    if key not in _fast:  # the first launch of this signature compiled it: look it up
        _fast[key] = _core_kernel(dispatcher, args)


_layouts = {}  # (shape, dtype) -> (its part of the key, ABI fields before and after the pointer)


def _layout(shape, dtype):
    """An array argument in Numba's kernel ABI, but for its data pointer: (meminfo, parent,
    size, itemsize) before it, then the shape and the C-contiguous strides (cached: the same
    few shapes come back call after call)."""
    itemsize = dtype.itemsize
    strides = [itemsize] * len(shape)
    for i in range(len(shape) - 1, 0, -1):
        strides[i - 1] = strides[i] * shape[i]
    size = 1
    for n in shape:
        size *= n
    if len(_layouts) > 4096:
        _layouts.clear()
    layout = _layouts[(shape, dtype)] = ((dtype, len(shape)), (0, 0, size, itemsize),
                                          (*shape, *strides))
    return layout


_stream = []


def _default_stream():
    if not _stream:
        from numba.cuda.cudadrv import driver
        _stream.append(driver._to_core_stream(0))
    return _stream[0]


def _core_launch(*args):
    from cuda.core import launch as core_launch
    global _core_launch
    _core_launch = core_launch  # later calls go straight to cuda.core
    core_launch(*args)
