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


@cuda.jit(device=True)
def column_partials(s1, s2, sh1, sh2, partials, col, n_cols):
    """Sum a 2-D block's per-thread (s1, s2) down threadIdx.y and write them for column ``col``:
    partials[blockIdx.y, col] and partials[gridDim.y + blockIdx.y, col]. ``sh1``/``sh2`` are
    float64 shared arrays of at least (blockDim.y, blockDim.x)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    sh1[ty, tx] = s1
    sh2[ty, tx] = s2
    cuda.syncthreads()
    if ty == 0 and col < n_cols:
        for j in range(1, cuda.blockDim.y):
            s1 += sh1[j, tx]
            s2 += sh2[j, tx]
        partials[cuda.blockIdx.y, col] = s1
        partials[cuda.gridDim.y + cuda.blockIdx.y, col] = s2


@cuda.jit(device=True)
def block_partials(s1, s2, sa, sb, partials, col):
    """Sum a 1-D block's (s1, s2) and let thread 0 write partials[blockIdx.y, col] and
    partials[gridDim.y + blockIdx.y, col]."""
    s1, s2 = block_sum2(s1, s2, sa, sb)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.y, col] = s1
        partials[cuda.gridDim.y + cuda.blockIdx.y, col] = s2
