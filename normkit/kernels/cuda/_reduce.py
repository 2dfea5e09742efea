"""Block-wide reductions.

On a GPU, ``row_sum2`` adds within each warp by shuffles and across the warps of a row through
shared memory (one barrier); Numba's CUDA simulator does not model shuffles, so under it the
same name is a shared-memory tree (a barrier per halving). Both give every thread its row's
sums; the kernels run unchanged on either, and tests/cuda runs on both (and runs the shuffle
version under the simulator too, with the shuffles emulated: tests/cuda/test_warp_reductions.py).
"""

from numba import cuda, int32

from . import simulator

BLOCK = 256  # threads per block (the shared arrays of row_sum2 hold one value per thread)


@cuda.jit(device=True)
def _row_sum2_tree(a, b, sa, sb):
    """Sum ``a`` and ``b`` over the threads of each row (threadIdx.y) of a block; every thread
    gets its row's sums. 1-D blocks are one row.

    ``sa``/``sb`` are float64 shared arrays of at least blockDim.x * blockDim.y elements;
    blockDim.x is a power of two (the tree needs it). Every thread of the block must call this.
    """
    tid = cuda.threadIdx.x
    base = cuda.threadIdx.y * cuda.blockDim.x
    sa[base + tid] = a
    sb[base + tid] = b
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            sa[base + tid] += sa[base + tid + step]
            sb[base + tid] += sb[base + tid + step]
        cuda.syncthreads()
        step //= 2
    total_a = sa[base]
    total_b = sb[base]
    cuda.syncthreads()  # the shared arrays may be reused right after
    return total_a, total_b


_FULL_WARP = 0xFFFFFFFF


@cuda.jit(device=True)
def add4(s1, s2, d0, d1, d2, d3):
    """(s1 + the sum of d0..d3, s2 + the sum of their squares): four values loaded together."""
    return s1 + ((d0 + d1) + (d2 + d3)), s2 + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))


@cuda.jit(device=True)
def _row_sum2_shuffle(a, b, sa, sb):
    """As :func:`_row_sum2_tree`, by warp shuffles. A row narrower than a warp (blockDim.x of
    2-16) is an aligned group of a warp's lanes, and the butterfly's offsets stay below
    blockDim.x, so each row adds only its own lanes; the rows of a wider block are whole warps,
    whose sums are added through shared memory. Every thread of the block must call this (the
    shuffles name all 32 lanes of the warp)."""
    offset = min(16, cuda.blockDim.x // 2)
    while offset > 0:  # butterfly: every lane ends with its row's (or warp's) sums
        a += cuda.shfl_xor_sync(_FULL_WARP, a, offset)
        b += cuda.shfl_xor_sync(_FULL_WARP, b, offset)
        offset //= 2
    if cuda.blockDim.x <= 32:  # the same for the whole block: no thread skips a barrier others reach
        return a, b
    n_warps = cuda.blockDim.x // 32
    base = cuda.threadIdx.y * n_warps
    if cuda.threadIdx.x % 32 == 0:
        sa[base + cuda.threadIdx.x // 32] = a
        sb[base + cuda.threadIdx.x // 32] = b
    cuda.syncthreads()
    total_a = 0.0
    total_b = 0.0
    for w in range(n_warps):
        total_a += sa[base + w]
        total_b += sb[base + w]
    cuda.syncthreads()  # the shared arrays may be reused right after
    return total_a, total_b


# The simulator has no shuffles (see the module docstring).
row_sum2 = _row_sum2_tree if simulator() else _row_sum2_shuffle


@cuda.jit(device=True)
def _sum_down_columns(s1, s2, sh1, sh2):
    """A 2-D block's per-thread (s1, s2) summed down threadIdx.y, for the threads of row 0
    (through ``sh1``/``sh2``: float64 shared arrays of at least (blockDim.y, blockDim.x)).
    Every thread of the block must call this."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    sh1[ty, tx] = s1
    sh2[ty, tx] = s2
    cuda.syncthreads()
    if ty == 0:
        for j in range(1, cuda.blockDim.y):
            s1 += sh1[j, tx]
            s2 += sh2[j, tx]
    return s1, s2


@cuda.jit(device=True)
def column_partials(s1, s2, sh1, sh2, partials, col, n_cols):
    """Sum a 2-D block's per-thread (s1, s2) down threadIdx.y and write them for column ``col``:
    partials[blockIdx.y, col] and partials[gridDim.y + blockIdx.y, col]. ``sh1``/``sh2`` are
    float64 shared arrays of at least (blockDim.y, blockDim.x)."""
    s1, s2 = _sum_down_columns(s1, s2, sh1, sh2)
    if cuda.threadIdx.y == 0 and col < n_cols:
        partials[cuda.blockIdx.y, col] = s1
        partials[cuda.gridDim.y + cuda.blockIdx.y, col] = s2


@cuda.jit(device=True)
def block_partials(s1, s2, sa, sb, partials, col):
    """Sum a 1-D block's (s1, s2) and let thread 0 write partials[blockIdx.y, col] and
    partials[gridDim.y + blockIdx.y, col]."""
    s1, s2 = row_sum2(s1, s2, sa, sb)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.y, col] = s1
        partials[cuda.gridDim.y + cuda.blockIdx.y, col] = s2


@cuda.jit(device=True)
def _load_plain(a, i, j):
    return a[i, j]


@cuda.jit(device=True)
def _load_from_l2(a, i, j):
    return cuda.ldcg(a, (i, j))


# a[i, j], read past the SM's L1 cache (``ld.global.cg``), for values other blocks of the same
# kernel wrote (see last_to_arrive). The simulator has no such loads, nor caches.
load_shared_by_blocks = _load_plain if simulator() else _load_from_l2


@cuda.jit(device=True)
def last_to_arrive(arrivals, i, expected):
    """Whether this block is the last of the ``expected`` blocks that share counter
    ``arrivals[i]`` to get here; the same answer in every thread of the block, which must all
    call this, after writing what the last block will read.

    Why: it lets the last block of a reduction finish it (merge the others' partial sums) in the
    same kernel, instead of in a second launch that costs ~11 us of host time (the "threadFence
    reduction" of CUDA's programming guide). The fence before the count makes this block's
    writes visible to the block that counts last; that block fences again before it reads them
    (with :data:`load_shared_by_blocks`). The counter is set back to 0 by the last block, so
    ``arrivals`` (zero when allocated) is ready for the next launch: a kernel that uses it must
    run to its end, which a kernel that faults does not, but then the CUDA context is lost too.
    """
    last = cuda.shared.array(1, int32)
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        is_last = cuda.atomic.add(arrivals, i, 1) == expected - 1
        if is_last:
            arrivals[i] = 0
        last[0] = 1 if is_last else 0
    cuda.syncthreads()
    if last[0] == 0:
        return False
    cuda.threadfence()
    return True


@cuda.jit(device=True)
def column_totals(partials, col, n_cols, sh1, sh2):
    """The sums over every part of ``partials`` ((2P, columns), as :func:`column_partials`
    writes them) of column ``col``, for the threads of row 0 of a 2-D block (threadIdx.y
    parts in turn, then their sums added through ``sh1``/``sh2``). Every thread of the block
    must call this."""
    n_parts = partials.shape[0] // 2
    s1 = 0.0
    s2 = 0.0
    if col < n_cols:
        for p in range(cuda.threadIdx.y, n_parts, cuda.blockDim.y):
            s1 += load_shared_by_blocks(partials, p, col)
            s2 += load_shared_by_blocks(partials, n_parts + p, col)
    return _sum_down_columns(s1, s2, sh1, sh2)


@cuda.jit(device=True)
def partial_sums(partials, col0, group, valid, sa, sb):
    """The sums over every part of ``partials`` ((2P, columns): rows 0..P-1 hold partial sums of
    a first quantity, rows P..2P-1 of a second) and over columns col0..col0+group-1, by one row
    of threads (lanes take parts in turn; a serial loop over hundreds of parts waited on each
    load and took up to 0.5 ms). Every thread of the block must call this (``valid`` False for
    rows of threads with nothing to sum); all of a row get the two sums."""
    s1 = 0.0
    s2 = 0.0
    if valid:
        n_parts = partials.shape[0] // 2
        for i in range(cuda.threadIdx.x, n_parts * group, cuda.blockDim.x):
            p = i // group
            j = col0 + i - p * group
            s1 += load_shared_by_blocks(partials, p, j)
            s2 += load_shared_by_blocks(partials, n_parts + p, j)
    return row_sum2(s1, s2, sa, sb)
