"""Output arrays: large ones reuse freed buffers instead of fresh pages from the OS.

Why: glibc hands every block above 32 MiB (its largest mmap threshold) back to the operating
system when it is freed, so each new output of that size is page-faulted and zeroed by the
kernel. Measured on the 2-core development machine: a fresh 64 MiB output costs ~5 ms, a quarter
of a BatchNorm forward on (65536, 256) float32. In a training loop the same sizes come back every
step, so normkit keeps the buffers of its own freed outputs (up to ``config.OUTPUT_CACHE_BYTES``)
and hands them out again, as PyTorch's CUDA caching allocator does on the GPU.

Every output starts on a 64-byte boundary (NumPy's large blocks start 16 bytes past one), so
rows whose length is a multiple of 64 bytes are whole cache lines, which the CPU kernels write
with streaming stores and no scalar head or tail (see ``kernels/cpu/_streaming.py``).

Safety: an output is an ordinary ndarray whose chain of ``base`` objects ends in an
:class:`_Owner`; every view of it keeps that owner alive (NumPy stops collapsing a view's base
at non-ndarray objects), and only when the last one is gone does a ``weakref.finalize`` return
the buffer to the cache. Smaller outputs are plain ``np.empty``: glibc already reuses freed
blocks of those sizes.
"""

import math
import sys
import threading
import weakref

import numpy as np

from . import config

# Re-entrant: a finalizer can run from the garbage collector while this thread holds the lock.
_lock = threading.RLock()
_free = []          # cached buffers (1-D uint8 arrays, ALIGNMENT bytes over size), oldest first
_free_bytes = 0     # bytes of output they hold
ALIGNMENT = 64      # bytes: a cache line


class _Owner:
    """Holds one cached buffer while arrays use it; NumPy sees it through ``__array_interface__``."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, buffer, nbytes):
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1",
                                    "data": (_aligned_address(buffer), False)}


def _aligned_address(buffer):
    address = buffer.__array_interface__["data"][0]
    return address + (-address) % ALIGNMENT


def _new_buffer(nbytes):
    return np.empty(nbytes + ALIGNMENT, np.uint8)


def _take(nbytes):
    """A cached buffer for ``nbytes`` of output (the newest such), or None."""
    global _free_bytes
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if _free[i].nbytes == nbytes + ALIGNMENT:
                _free_bytes -= nbytes
                return _free.pop(i)
    return None


def _give_back(buffer):
    """Called when the last array using ``buffer`` is gone: cache it, evicting the oldest."""
    global _free_bytes
    limit = config.OUTPUT_CACHE_BYTES
    nbytes = buffer.nbytes - ALIGNMENT
    if nbytes > limit:
        return
    with _lock:
        _free.append(buffer)
        _free_bytes += nbytes
        while _free_bytes > limit:
            _free_bytes -= _free.pop(0).nbytes - ALIGNMENT


def empty(shape, dtype):
    """A new uninitialised C-contiguous array, like ``np.empty(shape, dtype)``, whose data starts
    on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < config.OUTPUT_CACHE_MIN_BYTES or nbytes > config.OUTPUT_CACHE_BYTES:
        buffer = _new_buffer(nbytes)
        start = _aligned_address(buffer) - buffer.__array_interface__["data"][0]
        return buffer[start:start + nbytes].view(dtype).reshape(shape)
    buffer = _take(nbytes)
    if buffer is None:
        buffer = _new_buffer(nbytes)
    owner = _Owner(buffer, nbytes)
    weakref.finalize(owner, _give_back, buffer)
    return np.asarray(owner).view(dtype).reshape(shape)


def cached_bytes():
    """Bytes held in freed output buffers, ready for reuse."""
    return _free_bytes


def empty_cache():
    """Release every cached output buffer: host buffers to the operating system and, when the
    CUDA backend has been used, device buffers to the driver."""
    global _free_bytes
    with _lock:
        _free.clear()
        _free_bytes = 0
    device_pool = sys.modules.get("normkit.kernels.cuda._pool")  # never import numba.cuda here
    if device_pool is not None:
        device_pool.empty_cache()
