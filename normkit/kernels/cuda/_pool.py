"""Device buffers for outputs and scratch space, reused instead of allocated per call.

Why: numba-cuda allocates every device array with ``cuMemAlloc``, and on an H200 that cost
24 us for 1 KB and 135 us for 64 MB of host time per array (measured; PyTorch's caching
allocator: 2.5 us). A LayerNorm forward needs its output and a (2, rows) statistics array, so
allocation alone cost more than the whole 64 MB kernel (~40 us). Like PyTorch, normkit keeps the
buffers of its freed arrays and hands them out again.

Safety: a handed-out buffer is wrapped exactly as numba wraps its own allocations (an
``AutoFreePointer`` whose owned references every view of the array holds), except that its
finalizer returns the buffer to this pool instead of freeing it. So a buffer comes back only
when no array or view uses it any more. Kernels all run on the default stream, in order, so a
buffer reused by the next call cannot be overwritten before the work queued on it is done.
Under the simulator there is no device memory to save: plain ``cuda.device_array``.
"""

import ctypes
import functools
import itertools
import math
import threading
import weakref

import numpy as np
from numba import cuda

from ... import config
from . import simulator

if not simulator():  # (the simulator has neither; its branches below do not use them)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import AutoFreePointer, driver

_SMALL = 1 << 20
_lock = threading.RLock()   # re-entrant: finalizers can run from the GC while it is held
_free = {}                  # (device id, rounded size in bytes) -> owned numba allocations
_free_bytes = 0
_live = {}                  # key -> handed-out pointer (held here as numba holds its own)
_keys = itertools.count()


def _rounded(nbytes):
    """Sizes are rounded up (to 4 KiB below 1 MiB, to 1 MiB above) so that similar requests
    share buffers; at most 1/4 of a small and 1 MiB of a large buffer goes unused."""
    if nbytes <= _SMALL:
        return max(4096, -(-nbytes // 4096) * 4096)
    return -(-nbytes // _SMALL) * _SMALL


def _take(key):
    global _free_bytes
    with _lock:
        blocks = _free.get(key)
        if blocks:
            _free_bytes -= key[1]
            return blocks.pop()
    return None


def _give_back(key, block):
    """The finalizer of a handed-out buffer: keep ``block`` for reuse, within the budget."""
    global _free_bytes
    with _lock:
        if _free_bytes + key[1] <= config.DEVICE_CACHE_BYTES:
            _free.setdefault(key, []).append(block)
            _free_bytes += key[1]


_contexts = threading.local()


def current_context():
    """The CUDA context that this call's arrays belong to (get it once per call and pass it to
    :func:`empty` and :func:`scratch`).

    numba's ``cuda.current_context()`` takes a lock and asks the driver for the current context
    and its device on every call (4 us of host time on the H100 machine, measured); here one
    driver query checks that the context this thread saw last is still the current one."""
    if simulator():
        return cuda.current_context()
    last = getattr(_contexts, "last", None)
    if last is not None and int(driver.cuCtxGetCurrent()) == last[0]:
        return last[1]
    ctx = cuda.current_context()  # makes a context current if there was none
    _contexts.last = (int(ctx.handle), ctx)
    return ctx


def device_id(ctx):
    """The device of ``ctx``: cached buffers are only ever handed out on their own device."""
    return getattr(ctx.device, "id", None) or 0  # the simulator's device has no id


def empty(shape, dtype, ctx):
    """An uninitialised device array in context ``ctx``, from the pool when a freed buffer of
    its size is there."""
    return empty_many(ctx, (shape, dtype))[0]


_ALIGN = 256  # bytes; where each array of empty_many starts within the buffer


def empty_many(ctx, *specs):
    """Uninitialised device arrays of the given (shape, dtype) ``specs`` in context ``ctx``,
    sharing one pooled buffer (one allocation's host cost for several arrays); the buffer comes
    back to the pool when none of them, nor any view of them, is left."""
    if simulator():
        return [cuda.device_array(shape, dtype) for shape, dtype in specs]
    pointer, layouts = _buffer(ctx, specs)
    return [_array(pointer, layout) for layout in layouts]


def empty_with_span(ctx, spec, span_spec):
    """(an uninitialised device array of ``spec``, a :class:`DeviceSpan` of ``span_spec``) in
    one pooled buffer: an output and the statistics its ``saved`` keeps for the backward, which
    only normkit's kernels read. Under the simulator, two device arrays."""
    if simulator():
        return empty_many(ctx, spec, span_spec)
    pointer, (layout, span) = _buffer(ctx, (spec, span_spec))
    array = _array(pointer, layout)
    shape, _, dtype, start, _ = span
    return array, DeviceSpan(array.gpu_data, pointer.device_pointer_value + start, shape, dtype)


@functools.lru_cache(maxsize=256)
def _layouts(specs):
    """(each array's (shape, strides, dtype, byte offset, bytes), the buffer's size) for the
    (shape, dtype) ``specs`` (shapes as tuples or ints). Cached: the same few come back call
    after call, and computing them took 2.2 us of host time per output (0.14 cached), measured
    without a GPU (``benchmarks/gpu_host_costs.py --stub-driver``)."""
    layouts = []
    offset = 0
    for shape, dtype in specs:
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        strides = []
        stride = dtype.itemsize
        for n in reversed(shape):
            strides.append(stride)
            stride *= n
        layouts.append((shape, tuple(reversed(strides)), dtype, offset, stride))
        offset += -(-stride // _ALIGN) * _ALIGN
    return tuple(layouts), _rounded(offset)


def _buffer(ctx, specs):
    """A pooled buffer for arrays of the (shape, dtype) ``specs``, as numba's pointer to it and
    each array's (shape, strides, dtype, byte offset, bytes)."""
    layouts, size = _layouts(specs)
    pool_key = (ctx.device.id, size)  # a buffer belongs to its device
    block = _take(pool_key)
    if block is None:
        block = ctx.memalloc(size)  # numba's own allocation, kept alive by the pool or the views
    key = next(_keys)
    pointer = AutoFreePointer(weakref.proxy(ctx), block.device_pointer, size,
                              finalizer=_finalizer(key, pool_key, block))
    # Numba's owned references hold only a weak proxy to the pointer: keep it here until the
    # last of them is gone and numba calls the finalizer.
    _live[key] = pointer
    return pointer, layouts


def _array(pointer, layout):
    """A numba device array at its place in ``pointer``'s buffer, holding a reference to it."""
    shape, strides, dtype, start, nbytes = layout
    data = pointer.own() if start == 0 else pointer.view(start, start + nbytes)
    return DeviceNDArray(shape, strides, dtype, gpu_data=data)


class DeviceSpan:
    """A C-contiguous array in part of a pooled buffer, for what only normkit's kernels read
    (the statistics a forward keeps for its backward): it costs ~1 us to make, a numba view
    ~9 us (measured on the H100 machine). It keeps the buffer alive through ``owner``, the
    numba pointer of the array it shares the buffer with; kernels take it like a numba array
    (the launcher reads ``shape``, ``dtype``, ``size`` and ``device_ctypes_pointer``), and
    anything else through its CUDA array interface."""

    __slots__ = ("shape", "dtype", "size", "device_ctypes_pointer", "_owner")

    def __init__(self, owner, pointer, shape, dtype):
        self._owner = owner
        self.shape = shape
        self.dtype = dtype
        self.size = math.prod(shape)
        self.device_ctypes_pointer = ctypes.c_size_t(pointer)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "strides": None, "version": 3,
                "data": (self.device_ctypes_pointer.value, False)}

    def copy_to_host(self):
        return cuda.as_cuda_array(self).copy_to_host()


def _finalizer(key, pool_key, block):
    # A closure over the block, not over the pointer: the pointer must stay collectable.
    def release():
        _live.pop(key, None)
        _give_back(pool_key, block)
    return release


_threads = threading.local()
_SCRATCH_ENTRIES = 32


def scratch(name, shape, dtype, ctx):
    """A device array that only this call's kernels use (block partials, coefficients): the
    same one for every call of this thread with this name, shape and dtype, so it costs no
    allocation after the first call. Safe because normkit's kernels and copies all run in order
    on the default stream: a later call's kernels write it only after the earlier call's
    kernels have read it. Per thread, because two threads' kernels interleave on that stream."""
    arrays = getattr(_threads, "scratch", None)
    if arrays is None:
        arrays = _threads.scratch = {}
    key = (name, shape, dtype, device_id(ctx))
    a = arrays.get(key)
    if a is None:
        if len(arrays) >= _SCRATCH_ENTRIES:
            arrays.pop(next(iter(arrays)))  # oldest first
        a = arrays[key] = empty(shape, dtype, ctx)
    return a


def arrivals(n, ctx):
    """At least ``n`` int32 counters of the blocks of a kernel that have finished, all zero
    between launches (each kernel that uses them sets them back: see
    ``_reduce.last_to_arrive``). One array per thread and device, for every kernel (each
    indexes only the first ``n``), made with zeros and replaced by a longer one when too short:
    unlike a :func:`scratch` array of each shape, it needs no copy to zero it again."""
    counters = getattr(_threads, "arrivals", None)
    if counters is None:
        counters = _threads.arrivals = {}
    device = device_id(ctx)
    a = counters.get(device)
    if a is None or a.shape[0] < n:
        a = counters[device] = cuda.to_device(np.zeros(max(n, 1024), np.int32))
    return a


def cached_bytes():
    """Bytes of device memory held for reuse (not in use by any array)."""
    return _free_bytes


def empty_cache():
    """Release the cached device buffers to the driver (this thread's scratch arrays too)."""
    global _free_bytes
    _threads.scratch = {}
    _threads.arrivals = {}
    with _lock:
        _free.clear()
        _free_bytes = 0
