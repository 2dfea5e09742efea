"""How CPU kernels are compiled and launched: a parallel build and a serial twin of each."""

import hashlib
import types
from pathlib import Path

import numpy as np
from numba import njit
from numba import types as nb_types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ... import config
from ... import _threading

# 'reassoc' lets LLVM vectorise the float64 reductions; 'contract' allows FMAs. No 'nnan'/'ninf':
# NaN and inf in the input must keep their meaning and propagate to the output.
FASTMATH = {"reassoc", "contract"}
# NumPy's error model: division by zero gives inf/NaN instead of raising, which also lets LLVM
# vectorise loops with divisions (Python's model puts a check in every iteration).
OPTIONS = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


# Numba invalidates a cached build only when the file of the compiled function itself changes, not
# when a helper it calls from another file does (numba/numba#8396), and the kernels here inline
# helpers from _streaming.py, _compile.py and each other's files. So each cached build is stamped
# with a digest of every source file of this folder too: an edit to any of them recompiles them
# all, instead of leaving kernels cached before it running the old helper.
SOURCES_DIGEST = hashlib.sha256(
    b"".join(p.name.encode() + p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()


def _stamped(dispatcher):
    """``dispatcher`` (compiled with cache=True) with :data:`SOURCES_DIGEST` in its cache stamp."""
    try:
        cache_file = dispatcher._cache._cache_file  # numba's internals (0.60-0.68)
        cache_file._source_stamp = (cache_file._source_stamp, SOURCES_DIGEST)
    except AttributeError:  # other internals: numba's own per-file invalidation only
        pass
    return dispatcher


def cached_njit(py_func, **options):
    """``njit(**OPTIONS, **options)(py_func)``, its cache stamped with :data:`SOURCES_DIGEST`."""
    return _stamped(njit(**OPTIONS, **options)(py_func))


def _twin(py_func, suffix):
    """A copy of ``py_func`` under another name, so Numba's on-disk cache keeps both builds apart."""
    twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + suffix,
                              py_func.__defaults__, py_func.__closure__)
    twin.__qualname__ = py_func.__qualname__ + suffix
    twin.__doc__ = py_func.__doc__
    return twin


class Kernel:
    """A kernel compiled twice: ``parallel=True`` for large inputs, serial for small ones.

    Call it with the kernel's arguments and ``work=`` the number of elements it will touch; it
    picks the build and takes the launch lock for the parallel one (see ``normkit._threading``).
    """

    def __init__(self, py_func):
        self.__name__ = py_func.__name__
        self.__doc__ = py_func.__doc__
        self.parallel = cached_njit(py_func, parallel=True)
        self.serial = cached_njit(_twin(py_func, "_serial"))

    def __call__(self, *args, work):
        if work < config.PARALLEL_MIN_ELEMENTS or _threading.serial_only():
            return self.serial(*args)
        _threading.start()
        with _threading.launch_lock():
            return self.parallel(*args)


def kernel(py_func):
    """Decorator: make ``py_func`` (written with ``prange``) a :class:`Kernel`."""
    return Kernel(py_func)


def helper(py_func):
    """Decorator for helpers called from kernels: compiled once, inlined into both builds."""
    return cached_njit(py_func)


# Helpers called once per row of a tile: inlined by Numba itself, before LLVM sees the code. LLVM
# kept the elementwise row helpers (vectorised loops, a streaming path) as calls with seven
# arguments per array, which made 64-column rows 1.5-2x slower. Their kernels' caches hold them.
inline_helper = njit(inline="always", **{k: v for k, v in OPTIONS.items() if k != "cache"})


# LLVM's cost model for AVX-512 server cores prefers 256-bit vectors (the 'prefer-256-bit' tuning
# flag), so Numba's loops use half the register width. The float64 moment sums are compute-bound
# (a float32 -> float64 conversion, a subtraction, an add and an FMA per value): 512-bit vectors
# measured 6-15% faster on the BN statistics passes, and the pipelined LayerNorm forward, whose
# one loop both sums a row and writes the previous one, gained 10-20% more with them. The
# elementwise passes are memory-bound and measured 0-13% slower with them (AVX-512 costs clock),
# the LayerNorm backward 5-24% slower on float64 data (its float32 build asks: wide_vectors_for).
# The request is the function attribute "prefer-vector-width"="512" (what clang's
# -mprefer-vector-width=512 sets); on a CPU without AVX-512 LLVM ignores it. llvmlite only accepts
# a fixed list of attribute names, hence the direct set.add; if that ever fails, the kernel simply
# keeps 256-bit vectors.
WIDE_VECTOR_ATTRIBUTE = '"prefer-vector-width"="512"'


def _prefer_wide_vectors(builder):
    try:
        set.add(builder.function.attributes, WIDE_VECTOR_ATTRIBUTE)
    except Exception:  # a future llvmlite with another attribute API: no wide vectors
        pass


@intrinsic
def wide_vectors(typingctx):
    """Call first in a ``prange`` body or a helper whose loops should use 512-bit vectors.

    It marks the LLVM function being compiled: for a ``prange`` body the outlined parallel task,
    not the kernel that launches it. A helper is vectorised on its own before it is inlined, so
    it needs its own call. It generates no instructions.
    """
    def codegen(context, builder, signature, args):
        _prefer_wide_vectors(builder)
        return context.get_dummy_value()
    return nb_types.none(), codegen


@intrinsic
def wide_vectors_for(typingctx, array):
    """:func:`wide_vectors` in the build where ``array`` holds float32 values, nothing in the
    float64 build. The LayerNorm backward (float64 arithmetic either way) measured 1.0-1.4x
    faster with 512-bit vectors on float32 data, and slower on float64 data."""
    wide = array.dtype == nb_types.float32

    def codegen(context, builder, signature, args):
        if wide:
            _prefer_wide_vectors(builder)
        return context.get_dummy_value()
    return nb_types.none(array), codegen


@intrinsic
def borrowed(typingctx, *arrays):
    """``arrays`` (a tuple, even of one) for use inside a kernel only, without the reference
    counting of their memory. Every kernel borrows its array arguments first thing.

    Numba counts references to an array's memory (atomic increments and decrements) for every
    view taken of it and every call it is passed to, and prunes the counts only where it can
    prove them paired. In loops that pass rows or vectors to helpers it often could not, and the
    counts cost ~10 ns per array per call: serial builds ran 1.4-3x slower than the parallel
    build on one thread, whose tasks receive their arrays without counts. A borrowed array must
    not leave the kernel: never return it or a view of it (that would be a NumPy array over
    memory nothing keeps alive); return arrays the kernel allocated.
    """
    def codegen(context, builder, signature, args):
        views = []
        for array, value in zip(signature.return_type, cgutils.unpack_tuple(builder, args[0])):
            view = context.make_array(array)(context, builder, value=value)
            view.meminfo = cgutils.get_null_value(view.meminfo.type)
            view.parent = cgutils.get_null_value(view.parent.type)
            views.append(view._getvalue())
        return context.make_tuple(builder, signature.return_type, views)
    return nb_types.Tuple(arrays)(nb_types.StarArgTuple(arrays)), codegen


def cast_like(value, array):
    """``value`` converted to the dtype of ``array`` (an array or a scalar: inside kernels,
    float32 stays float32)."""
    return array.dtype.type(value)


@overload(cast_like, jit_options=dict(cache=True))
def _cast_like_impl(value, array):
    if getattr(array, "dtype", array) == nb_types.float32:
        return lambda value, array: np.float32(value)
    return lambda value, array: np.float64(value)


def split_like(value, array):
    """``(hi, lo)`` in ``array``'s dtype with hi + lo = ``value`` to about twice its precision
    (float64: ``(value, 0.0)``)."""
    hi = array.dtype.type(value)
    return hi, array.dtype.type(value - float(hi))


@overload(split_like, jit_options=dict(cache=True))
def _split_like_impl(value, array):
    if array.dtype == nb_types.float32:
        def split32(value, array):
            hi = np.float32(value)
            return hi, np.float32(value - np.float64(hi))
        return split32
    return lambda value, array: (np.float64(value), np.float64(0.0))
