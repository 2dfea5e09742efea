"""normkit's CUDA host path as it runs on a GPU, on a machine without one.

Why: under the simulator (tests/cuda) the host code takes its simulator branches (plain
``cuda.device_array`` instead of the pool, the dispatcher instead of direct ``cuda.core``
launches), so the branches a GPU takes (pooled buffers shared by an output and its statistics,
launch parameters laid out in Numba's kernel ABI, the 16-byte-alignment rule) ran nowhere but
on a GPU. Real numba device arrays need no GPU when they are handed their memory, so
:func:`stubbed_driver` replaces only what talks to the driver (the context and its allocations,
the device's SM count, the kernel launch) and lets everything else run: the tests check what
each launch was given, and ``benchmarks/gpu_host_costs.py --stub-driver`` times the host work.
Nothing is ever read or written at the stub's addresses.
"""

import contextlib
import gc
import itertools
from dataclasses import dataclass

import numpy as np

SM_COUNT = 132  # an H100's: the launch geometry is computed as for one
_pages = itertools.count(1 << 28)  # stub addresses, in 4 KiB pages: never the same one twice


@dataclass
class Launch:
    """One kernel launch the host path made: the kernel (numba's dispatcher), its grid and
    block, the launcher's key (the kernel, then per argument ``float``, ``int`` or an array's
    (dtype, ndim)) and the parameters in Numba's kernel ABI (an array is meminfo, parent, size,
    itemsize, data pointer, shape..., strides...)."""
    kernel: object
    grid: tuple
    block: tuple
    key: tuple
    params: tuple

    @property
    def name(self):
        return self.kernel.py_func.__name__

    def arguments(self):
        """The kernel's arguments as the GPU gets them: scalars, and each array as
        (data pointer, dtype, shape, strides in bytes)."""
        out, i = [], 0
        for kind in self.key[1:]:
            if kind in (int, float):
                out.append(self.params[i].value)  # (a ctypes int64 or double)
                i += 1
            else:
                dtype, ndim = kind
                pointer = self.params[i + 4]
                shape = tuple(self.params[i + 5:i + 5 + ndim])
                strides = tuple(self.params[i + 5 + ndim:i + 5 + 2 * ndim])
                assert self.params[i + 2] == int(np.prod(shape)) and self.params[i + 3] == dtype.itemsize
                out.append((pointer, dtype, shape, strides))
                i += 5 + 2 * ndim
        assert i == len(self.params)
        return out


class StubDriver:
    """What :func:`stubbed_driver` yields: the launches made so far, and device arrays."""

    def __init__(self):
        self.launches = []

    def device_array(self, shape, dtype, offset=0):
        """A numba device array of C-contiguous ``shape`` at a fresh stub address (plus
        ``offset`` bytes: 16-byte alignment matters to the kernels chosen)."""
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        dtype = np.dtype(dtype)
        strides = np.empty(shape, dtype).strides
        memory = self.alloc(int(np.prod(shape)) * dtype.itemsize + offset)
        if offset:
            memory = memory.view(offset)
        return DeviceNDArray(shape, strides, dtype, gpu_data=memory)

    def alloc(self, size):
        """A numba pointer to ``size`` bytes at a fresh stub address."""
        from numba.cuda.cudadrv import driver
        address = next(_pages) * 4096
        for _ in range(-(-size // 4096)):
            next(_pages)
        return driver.MemoryPointer(_Context, driver.binding.CUdeviceptr(address), size)


class _Device:
    id = 0
    MULTIPROCESSOR_COUNT = SM_COUNT


class _Context:
    """Stands for a CUDA context: its device, and allocations from the stub."""
    device = _Device()
    stub = None

    @classmethod
    def memalloc(cls, size):
        return cls.stub.alloc(size)


class _AnyKernel(dict):
    """The launcher's table of compiled kernels, as if every signature had been compiled: the
    'kernel' of a signature is its key, from which the stub's launch reads which it was."""

    def get(self, key, default=None):
        return key


@contextlib.contextmanager
def stubbed_driver():
    """Run normkit's CUDA host code as on a GPU, with the driver stubbed (see the module's
    docstring); yields a :class:`StubDriver`. Restores everything on exit and empties the
    device pool of the stub's buffers."""
    from numba import cuda

    from normkit.kernels.cuda import (_launcher, _pool, _reduce, _strided, _vector_io,
                                      _vectors, launch as host)
    stub = StubDriver()
    _Context.stub = stub

    def record(stream, config, key, *params):
        stub.launches.append(Launch(key[0], tuple(config.grid), tuple(config.block), key, params))

    def to_device(a, *args, **kwargs):  # host vectors (weights): their values are never read
        return stub.device_array(np.shape(a), np.asarray(a).dtype)

    def not_simulator():
        return False

    patches = [(m, "_simulator", not_simulator) for m in (_launcher, _strided, host)]
    patches += [(m, "simulator", not_simulator) for m in (_pool, _vector_io, _reduce)]
    patches += [(host, "_geometry", lambda: (_reduce.BLOCK, (host.bn.WIDE_X, host.bn.WIDE_Y),
                                             SM_COUNT * 8)),
                (_pool, "current_context", lambda: _Context),
                (_launcher, "_fast", _AnyKernel()),
                (_launcher, "_core_launch", record),
                (_launcher, "_default_stream", lambda: None),
                (cuda, "to_device", to_device)]
    saved = [(m, name, getattr(m, name)) for m, name, _ in patches]
    gc.collect()  # device arrays of earlier code give their buffers back now, not in the stub's
    _pool.empty_cache()
    for m, name, value in patches:
        setattr(m, name, value)
    try:
        yield stub
    finally:
        for m, name, value in saved:
            setattr(m, name, value)
        gc.collect()  # the stub's arrays give their buffers back to the pool, to be emptied
        _pool.empty_cache()
        _vectors._cache.clear()  # host vectors "sent" to the stub
        _Context.stub = None
