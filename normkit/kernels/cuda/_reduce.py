"""Block-wide reductions in shared memory.

Warp shuffles would be faster, but Numba's CUDA simulator does not model them, and the kernels
must run unchanged under the simulator (CI) and on a GPU. Shared memory tree reductions cost a few
microseconds per block at most, small next to the memory traffic of a normalisation.
"""

from numba import cuda

BLOCK = 256  # threads per block for the 1-D kernels: a power of two (the tree reduction needs it)


@cuda.jit(device=True)
def block_sum2(a, b, sa, sb):
    """Sum ``a`` and ``b`` over the threads of a 1-D block; every thread gets both sums.

    ``sa``/``sb`` are float64 shared arrays of blockDim.x elements (a power of two).
    """
    tid = cuda.threadIdx.x
    sa[tid] = a
    sb[tid] = b
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            sa[tid] += sa[tid + step]
            sb[tid] += sb[tid + step]
        cuda.syncthreads()
        step //= 2
    total_a = sa[0]
    total_b = sb[0]
    cuda.syncthreads()  # the shared arrays may be reused right after
    return total_a, total_b
