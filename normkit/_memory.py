"""Output arrays: large ones reuse freed buffers instead of fresh pages from the OS.

Why: glibc hands every block above 32 MiB (its largest mmap threshold) back to the operating
system when it is freed, so each new output of that size is page-faulted and zeroed by the
kernel. Measured on the 2-core development machine: a fresh 64 MiB output costs ~5 ms, a quarter
of a BatchNorm forward on (65536, 256) float32. In a training loop the same sizes come back every
step, so normkit keeps the buffers of its own freed outputs (up to ``config.OUTPUT_CACHE_BYTES``)
and hands them out again, as PyTorch's CUDA caching allocator does on the GPU.

Every output starts on a 64-byte boundary (NumPy's large blocks start 16 bytes past one), so
rows whose length is a multiple of 64 bytes are whole cache lines, which the CPU kernels write
with streaming stores and no scalar head or tail (see ``kernels/cpu/_streaming.py``); or, where
the caller asks (``line_offset``), as far into one as its input is, so that an output written as
one flat run of lines reads its input by whole lines too (see ``output_line_offset`` in
``kernels/cpu/batchnorm.py``). Small vectors read beside an output line by line are copied to
start where it does in its line (:func:`line_placed`).

Outputs also keep clear of their inputs modulo 1 MiB (``apart_from``). Measured on the
development machine: when an output starts up to about three cache lines after an input's address
modulo 1 MiB, a kernel that reads the input and streams the output in step ran at 0.65-0.75x
(a LayerNorm forward with streamed output, (2048, 2048) float32, 16-176 bytes after; it is not
kept, for other reasons) or lost its streaming gain
(BatchNorm eval, (256, 8192): 1.0x instead of 1.35x); before the input or further on, nothing.
(Probably loads taken for ones that may depend on a store to the same low 20 address bits.)
Large arrays of one size often land there: both start at a page boundary plus a header (NumPy's
0 or 16 bytes, ours 64). So an output moves on, a line at a time, until it starts more than
``ALIAS_WINDOW`` bytes after each input; its buffer has room for that.

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
from numba import njit

from . import config

# Re-entrant: a finalizer can run from the garbage collector while this thread holds the lock.
_lock = threading.RLock()
_free = []          # cached buffers (1-D uint8 arrays, PADDING bytes over size), oldest first
_free_bytes = 0     # bytes of output they hold
ALIGNMENT = 64      # bytes: a cache line
ALIAS_SPAN = 1 << 20  # outputs keep out of a window after their inputs' addresses modulo this,
ALIAS_WINDOW = 256    # this many bytes long
MAX_APART_FROM = 2    # inputs an output can keep clear of (dy and x)
# room to align, to move into the line (line_offset), then past the windows
PADDING = 2 * ALIGNMENT + MAX_APART_FROM * ALIAS_WINDOW


class _Owner:
    """Holds one cached buffer while arrays use it; NumPy sees it through ``__array_interface__``."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, buffer, nbytes, address):
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1",
                                    "data": (address, False)}


def _address(a):
    return a.__array_interface__["data"][0]


@njit(cache=True)
def _placed(buffer_address, first, second, n_inputs, line_offset):
    """:func:`output_address` for ``n_inputs`` (0 to 2) of the input addresses ``first`` and
    ``second`` (int64): the one implementation of the rule."""
    address = buffer_address + (-buffer_address) % ALIGNMENT + line_offset
    while ((n_inputs > 0 and 0 < (address - first) % ALIAS_SPAN <= ALIAS_WINDOW)
           or (n_inputs > 1 and 0 < (address - second) % ALIAS_SPAN <= ALIAS_WINDOW)):
        address += ALIGNMENT
    return address


def output_address(buffer_address, input_addresses, line_offset=0):
    """Where an output starts in a buffer at ``buffer_address``: ``line_offset`` bytes past the
    first 64-byte boundary, moved on a line at a time while it lies 1 to ``ALIAS_WINDOW`` bytes
    after an input's address (at most two inputs) modulo 1 MiB (at most ``ALIAS_WINDOW`` bytes
    per input: within ``PADDING``)."""
    padded = [*input_addresses, 0, 0]
    return _placed(buffer_address, padded[0], padded[1], len(input_addresses), line_offset)


@njit(cache=True)
def _start_in(buffer, first, second, n_inputs, line_offset):
    """The byte offset in ``buffer`` at which :func:`output_address` puts an output computed
    from ``n_inputs`` (0 to 2) of ``first`` and ``second``, ``line_offset`` bytes into a line.

    Compiled because reading an array's address from Python costs ~2 us (NumPy builds its whole
    ``__array_interface__``): three of them were a third of a (32, 256) BatchNorm eval call."""
    base = np.int64(buffer.ctypes.data)
    return _placed(base, np.int64(first.ctypes.data), np.int64(second.ctypes.data), n_inputs,
                   line_offset) - base


def _new_buffer(nbytes):
    return np.empty(nbytes + PADDING, np.uint8)


def _take(nbytes):
    """A cached buffer for ``nbytes`` of output (the newest such), or None."""
    global _free_bytes
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if _free[i].nbytes == nbytes + PADDING:
                _free_bytes -= nbytes
                return _free.pop(i)
    return None


def _give_back(buffer):
    """Called when the last array using ``buffer`` is gone: cache it, evicting the oldest."""
    global _free_bytes
    limit = config.OUTPUT_CACHE_BYTES
    nbytes = buffer.nbytes - PADDING
    if nbytes > limit:
        return
    with _lock:
        _free.append(buffer)
        _free_bytes += nbytes
        while _free_bytes > limit:
            _free_bytes -= _free.pop(0).nbytes - PADDING


def empty(shape, dtype, apart_from=(), *, line_offset=0, cache_min_bytes=None):
    """A new uninitialised C-contiguous array, like ``np.empty(shape, dtype)``, whose data starts
    ``line_offset`` bytes (a multiple of the item size, below 64) past a 64-byte boundary, clear
    of the arrays in ``apart_from`` (at most two: the inputs the output is computed from) modulo
    1 MiB. Arrays of ``cache_min_bytes`` and more (default ``config.OUTPUT_CACHE_MIN_BYTES``)
    reuse freed buffers."""
    if len(apart_from) > MAX_APART_FROM:
        raise ValueError(f"empty: at most {MAX_APART_FROM} arrays to keep apart from")
    dtype = np.dtype(dtype)
    if not 0 <= line_offset < ALIGNMENT or line_offset % dtype.itemsize:
        raise ValueError(f"empty: line_offset must be a multiple of {dtype.itemsize} in "
                         f"[0, {ALIGNMENT}), got {line_offset}")
    nbytes = math.prod(shape) * dtype.itemsize
    if cache_min_bytes is None:
        cache_min_bytes = config.OUTPUT_CACHE_MIN_BYTES
    if nbytes < cache_min_bytes or nbytes > config.OUTPUT_CACHE_BYTES:
        buffer = _new_buffer(nbytes)
        # (the buffer stands in for missing inputs: _start_in compares only n_inputs of them)
        first = apart_from[0] if apart_from else buffer
        start = _start_in(buffer, first, apart_from[-1] if apart_from else buffer, len(apart_from),
                          line_offset)
        return np.ndarray(shape, dtype, buffer, start)  # (slicing and viewing took 1 us more)
    buffer = _take(nbytes)
    if buffer is None:
        buffer = _new_buffer(nbytes)
    address = output_address(_address(buffer), [_address(a) for a in apart_from], line_offset)
    owner = _Owner(buffer, nbytes, address)
    weakref.finalize(owner, _give_back, buffer)
    return np.asarray(owner).view(dtype).reshape(shape)


def line_placed(values, line_offset, dtype=None):
    """A copy of the small array ``values`` (in ``dtype``, default its own) that starts
    ``line_offset`` bytes past a 64-byte boundary (rounded down to a multiple of the item size).

    For the per-column vectors (coefficients, weight, bias) that a kernel reads beside an
    output, a line of output at a time: placed where the output starts in its line, each line
    of output reads whole lines of them, instead of loads that straddle two lines wherever NumPy
    happened to put them. Measured on the AMD EPYC (session 20), float64 on 16-64 MB: BatchNorm's
    streamed eval pass 1.1-1.3x and its input gradient 1.05-1.2x, LayerNorm forward 1.05-1.2x
    and backward 1.0-1.05x; float32: BatchNorm's flat passes 1.0-1.2x, LayerNorm about 1.0x."""
    dtype = np.dtype(values.dtype if dtype is None else dtype)
    out = empty(values.shape, dtype, line_offset=line_offset - line_offset % dtype.itemsize)
    out[...] = values
    return out


# Work arrays of this size and more come from the cache of freed buffers. Allocated afresh on
# every call, glibc handed them back to the OS when they were freed (mmap, or trimming the top
# of its heap), and the next call page-faulted them in again: LayerNorm backward partials on
# (16, 8192) and (8, 32768), 460-1060 faults a call and 5-9x the time of the kernel itself;
# LayerNorm forward statistics on (262144, 64), ~1000 faults a call (measured; none when glibc
# keeps its memory: MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ set high).
WORK_CACHE_MIN_BYTES = 128 << 10  # glibc's default trim and mmap thresholds


def work_array(shape):
    """An uninitialised float64 array for what a kernel computes beside its output (partial sums,
    per-row statistics), reusing a freed buffer when it is large enough for glibc to hand its
    memory back to the OS."""
    if math.prod(shape) * 8 < WORK_CACHE_MIN_BYTES:
        return np.empty(shape)  # malloc reuses these itself; and small calls want no overhead
    return empty(shape, np.float64, cache_min_bytes=WORK_CACHE_MIN_BYTES)


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
