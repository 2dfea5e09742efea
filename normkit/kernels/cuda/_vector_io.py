"""Loads and stores of four neighbouring float32 values in one 16-byte instruction.

Why: with one 4-byte load per value, the LayerNorm forward reached 71% of a device-to-device
copy on an H100 (65536 x 1024: 258 us); with 16-byte loads and stores, 97% (198 us; PyTorch's
214 us). numba has no vector loads from arrays, so these are LLVM intrinsics: a load or store
of ``<4 x float>`` aligned to 16 bytes. The caller guarantees that alignment (the array's data
pointer is a multiple of 16 bytes and so is the element's offset: rows of a multiple of four
values, column a multiple of four).

Under Numba's simulator, which cannot run LLVM intrinsics, the same names are four scalar
accesses, so kernels that use them run (and are tested) there unchanged.
"""

from numba import cuda, types

from . import simulator


def _intrinsics():
    from llvmlite import ir
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    def vector_pointer(context, builder, array_type, array, index_types, indices):
        """A ``<4 x dtype>*`` to the element at ``indices`` of the array."""
        struct = context.make_array(array_type)(context, builder, array)
        indices = [context.cast(builder, i, t, types.intp) for i, t in zip(indices, index_types)]
        element = cgutils.get_item_pointer(context, builder, array_type, struct, indices,
                                           wraparound=False)
        vector = ir.VectorType(context.get_value_type(array_type.dtype), 4)
        return builder.bitcast(element, vector.as_pointer())

    def load(n_indices):
        def codegen(context, builder, sig, args):
            pointer = vector_pointer(context, builder, sig.args[0], args[0], sig.args[1:], args[1:])
            vector = builder.load(pointer, align=16)
            values = [builder.extract_element(vector, ir.Constant(ir.IntType(32), i))
                      for i in range(4)]
            return context.make_tuple(builder, sig.return_type, values)
        return codegen

    @intrinsic
    def load4(typingctx, array, i):
        """(a[i], a[i + 1], a[i + 2], a[i + 3]) of a 1-D array."""
        return types.UniTuple(array.dtype, 4)(array, i), load(1)

    @intrinsic
    def load4_row(typingctx, array, r, c):
        """(a[r, c], ..., a[r, c + 3]) of a 2-D array."""
        return types.UniTuple(array.dtype, 4)(array, r, c), load(2)

    @intrinsic
    def store4_row(typingctx, array, r, c, v0, v1, v2, v3):
        """a[r, c:c + 4] = (v0, v1, v2, v3), each converted to the array's dtype."""
        def codegen(context, builder, sig, args):
            dtype = sig.args[0].dtype
            pointer = vector_pointer(context, builder, sig.args[0], args[0], sig.args[1:3], args[1:3])
            vector = ir.Constant(ir.VectorType(context.get_value_type(dtype), 4), ir.Undefined)
            for i, (v, t) in enumerate(zip(args[3:], sig.args[3:])):
                vector = builder.insert_element(vector, context.cast(builder, v, t, dtype),
                                                ir.Constant(ir.IntType(32), i))
            builder.store(vector, pointer, align=16)
            return context.get_dummy_value()
        return types.void(array, r, c, v0, v1, v2, v3), codegen

    return load4, load4_row, store4_row


def _scalar_accesses():
    @cuda.jit(device=True)
    def load4(a, i):
        return a[i], a[i + 1], a[i + 2], a[i + 3]

    @cuda.jit(device=True)
    def load4_row(a, r, c):
        return a[r, c], a[r, c + 1], a[r, c + 2], a[r, c + 3]

    @cuda.jit(device=True)
    def store4_row(a, r, c, v0, v1, v2, v3):
        a[r, c] = v0
        a[r, c + 1] = v1
        a[r, c + 2] = v2
        a[r, c + 3] = v3

    return load4, load4_row, store4_row


load4, load4_row, store4_row = _scalar_accesses() if simulator() else _intrinsics()


def aligned(*arrays):
    """Whether every device array's data starts on a 16-byte boundary (always true under the
    simulator, whose accesses are scalar)."""
    if simulator():
        return True
    return all(a.device_ctypes_pointer.value % 16 == 0 for a in arrays)
