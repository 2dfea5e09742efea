"""Streaming (non-temporal) stores for the outputs of the elementwise passes.

Why: an ordinary store first reads the output's cache line from memory ("read for ownership")
and writes it back later, so writing y costs two transfers per byte; a non-temporal store writes
whole 64-byte lines past the cache in one. For a pass that reads x and writes y that is three
transfers cut to two. Measured on the 2-core development machine, BatchNorm's eval pass on NCHW
float32: 1.35x (8 MiB), 1.43x (16 MiB), 1.5x (24-98 MiB); the output is bit-identical.

The cost: the output is then in memory, not in cache, for whatever reads it next. With a second
pass reading the output right after, streaming still won from 8 MiB (1.03x at 8 MiB, 1.19x at
32 MiB) but lost below (0.87-0.95x at 1-4 MiB, where the output would have stayed in the L2
caches). Hence only outputs of at least ``config.STREAM_MIN_BYTES`` (8 MiB) stream.

How: LLVM vectorises a non-temporal store only where it knows the vector's address is aligned to
the vector's width, and Numba's arrays promise 4 or 8 bytes, so Numba loops cannot ask for one.
:func:`line_writer` builds the vector code directly: one 64-byte line of output from the matching
values of its operands, stored with LLVM's ``!nontemporal`` hint (MOVNTPS/MOVNTPD on x86; other
targets honour or ignore it). A helper writes an output row as: the values before the first
64-byte boundary with ordinary stores, whole lines with the line writer, the rest with ordinary
stores (:func:`line_span`); the task then calls :func:`end_streams`, since streaming stores are
not ordered with other stores until a fence (one per task: a fence waits for the lines to reach
memory, ~0.25 us, measured 15% slower with one per 12 KiB run).
"""

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from ... import config
from ._compile import FASTMATH, helper

LINE_BYTES = 64  # one cache line: what one streaming store writes


class _LineMath:
    """The arithmetic an expression given to :func:`line_writer` may use, on LLVM vectors, with
    the fast-math flags of Numba's compiled loops (so that contractions into FMAs match)."""

    def __init__(self, builder):
        self._builder = builder
        self._flags = tuple(sorted(FASTMATH))

    def add(self, a, b):
        return self._builder.fadd(a, b, flags=self._flags)

    def sub(self, a, b):
        return self._builder.fsub(a, b, flags=self._flags)

    def mul(self, a, b):
        return self._builder.fmul(a, b, flags=self._flags)


def line_writer(expression):
    """An intrinsic ``write(out, i, operands)`` for compiled code that sets
    ``out[i:i + L] = expression(*operands)`` with one streaming store, L = 64 // out.itemsize.

    ``expression(m, *values)`` builds the result with ``m.add``, ``m.sub`` and ``m.mul`` (see
    :class:`_LineMath`) in the same order as the scalar code it stands for, so that both round
    alike. ``operands`` is a tuple of scalars (the same for every value), arrays (read at
    ``i:i + L``) and ``(array, k)`` pairs (read at ``k:k + L``), all of ``out``'s dtype. Offsets
    count values from an array's first one, whatever its shape: the values read and written
    must be contiguous, and ``out``'s value ``i`` must start a 64-byte line (take ``i`` from
    :func:`line_span`). Nothing checks bounds or strides: the helpers that call it do.
    """
    @intrinsic
    def write(typingctx, out, i, operands):
        if not (isinstance(out, types.Array) and isinstance(out.dtype, types.Float)):
            raise TypingError(f"line writer: out must be a float array, got {out}")
        if not isinstance(operands, types.BaseTuple):
            raise TypingError(f"line writer: operands must be a tuple, got {operands}")
        for ty in operands:
            if _is_pair(ty):
                ty = ty[0]
            kind = ty.dtype if isinstance(ty, types.Array) else ty
            if kind != out.dtype:
                raise TypingError(f"line writer: operands must be {out.dtype} scalars, arrays or "
                                  f"(array, offset) pairs, got {ty}")

        def codegen(context, builder, signature, args):
            out_type, _, operand_types = signature.args
            element = context.get_value_type(out_type.dtype)
            vector = ir.VectorType(element, LINE_BYTES // context.get_abi_sizeof(element))
            index = args[1]
            values = []
            for k, ty in enumerate(operand_types):
                value = builder.extract_value(args[2], k)
                offset = index
                if _is_pair(ty):
                    value, offset = builder.extract_value(value, 0), builder.extract_value(value, 1)
                    ty = ty[0]
                if isinstance(ty, types.Array):
                    data = context.make_array(ty)(context, builder, value).data
                    address = builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())
                    values.append(builder.load(address, align=1))
                else:
                    splat = ir.Constant(vector, ir.Undefined)
                    for lane in range(vector.count):
                        splat = builder.insert_element(splat, value, ir.Constant(ir.IntType(32), lane))
                    values.append(splat)
            result = expression(_LineMath(builder), *values)
            out_data = context.make_array(out_type)(context, builder, args[0]).data
            address = builder.bitcast(builder.gep(out_data, [index]), vector.as_pointer())
            store = builder.store(result, address, align=LINE_BYTES)
            store.set_metadata("nontemporal",
                               builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            return context.get_dummy_value()

        return types.none(out, i, operands), codegen
    return write


def _is_pair(ty):
    return (isinstance(ty, types.BaseTuple) and len(ty) == 2 and isinstance(ty[0], types.Array)
            and isinstance(ty[1], types.Integer))


@helper
def line_span(out, stream):
    """``(start, stop, step)``: ``out[start:stop]`` (a 1-D array with unit stride) is the whole
    64-byte lines a line writer may write, ``step`` values each; ``(0, 0, step)`` when ``stream``
    is false or ``out`` has no unit stride or an address that is not a multiple of its item size."""
    n = out.shape[0]
    step = LINE_BYTES // out.itemsize
    if not stream or out.strides[0] != out.itemsize or out.ctypes.data % out.itemsize:
        return 0, 0, step
    start = min(n, (LINE_BYTES - out.ctypes.data % LINE_BYTES) % LINE_BYTES // out.itemsize)
    return start, start + (n - start) // step * step, step


@intrinsic
def end_streams(typingctx):
    """A memory fence: this thread's streaming stores are visible to every thread after it.
    Call once at the end of a parallel task that streamed."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.none(), codegen


def at(value, j):
    """``value[j]`` for an array, ``value`` for a scalar: lets one helper serve per-channel scalars
    (runs layout) and per-column vectors (wide layout)."""
    return value[j] if hasattr(value, "shape") else value


@overload(at, jit_options=dict(cache=True))
def _at_impl(value, j):
    if isinstance(value, types.Array):
        return lambda value, j: value[j]
    return lambda value, j: value


def part(value, start, stop):
    """``value[start:stop]`` for an array, ``value`` for a scalar (see :func:`at`)."""
    return value[start:stop] if hasattr(value, "shape") else value


@overload(part, jit_options=dict(cache=True))
def _part_impl(value, start, stop):
    if isinstance(value, types.Array):
        return lambda value, start, stop: value[start:stop]
    return lambda value, start, stop: value


def worth_streaming(out):
    """Whether a kernel writing ``out`` should stream it (``config.STREAM_MIN_BYTES``)."""
    return 0 < config.STREAM_MIN_BYTES <= out.nbytes
