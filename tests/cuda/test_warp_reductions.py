"""The GPU's warp-shuffle reductions, run under the simulator too.

On a GPU every block reduction of normkit's kernels is ``_reduce._row_sum2_shuffle`` (warp
shuffles). Numba's simulator has no shuffles, so the other tests run a shared-memory tree there,
and CI only compiled the GPU's version (tests/test_cuda_simulator.py), never ran it. Here the
simulator is given ``shfl_xor_sync`` (each lane posts its value, a barrier, each reads its
partner's, a barrier: what a shuffle does when every thread of the block calls it, as
``row_sum2`` requires) and the kernels get the shuffle version, checked against the reference on
rows narrower than a warp (whose lanes share a warp with other rows), of one warp and of two
(the kernels' own geometry gives narrow rows; whole-warp rows are in the first test and in the
BatchNorm kernels' blocks of two warps). On a GPU the fixture changes nothing: the kernels use
real shuffles already.
"""

import sys
import threading

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")

from numba import float64  # noqa: E402

from normkit._backend import cuda_available  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no GPU and no simulator")

from normkit.kernels.cuda import _reduce, simulator  # noqa: E402
from normkit.kernels.cuda import batchnorm, layernorm  # noqa: E402,F401  (to be patched below)

from . import test_cuda_kernels as kernel_tests  # noqa: E402

FULL_WARP = 0xFFFFFFFF
_SHUFFLES = [0]  # emulated shuffles run (threads add without a lock: only > 0 is checked)


def _emulated_shfl_xor_sync(fake_cuda, mask, value, lane_mask):
    """``cuda.shfl_xor_sync`` for the simulator: the value of the lane ``lane_mask`` away (by
    xor) in the same warp (32 consecutive threads of the block, x fastest, as on a GPU)."""
    thread = threading.current_thread()
    block = thread._manager
    n_threads = int(np.prod(block._block_dim))
    assert mask == FULL_WARP and n_threads % 32 == 0, "a full-warp shuffle in a partial warp"
    assert 0 < lane_mask < 32
    posts = block.__dict__.setdefault("shuffle_posts", {})
    posts[thread.thread_id] = value
    thread.syncthreads()
    partner = posts[thread.thread_id ^ lane_mask]
    thread.syncthreads()  # no lane posts its next value before every lane has read this one
    _SHUFFLES[0] += 1
    return partner


@pytest.fixture
def warp_shuffles(monkeypatch):
    """Under the simulator: emulated shuffles, and every kernel module's ``row_sum2`` the GPU's.
    Yields the number of shuffles run so far (a one-element list; on a GPU, None)."""
    if not simulator():
        yield None
        return
    from numba.cuda.simulator import kernelapi
    monkeypatch.setattr(kernelapi.FakeCUDAModule, "shfl_xor_sync", _emulated_shfl_xor_sync,
                        raising=False)
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("normkit.kernels.cuda") and getattr(module, "row_sum2", None) is _reduce._row_sum2_tree:
            monkeypatch.setattr(module, "row_sum2", _reduce._row_sum2_shuffle)
            patched.append(name)
    assert "normkit.kernels.cuda._reduce" in patched and "normkit.kernels.cuda.layernorm" in patched
    _SHUFFLES[0] = 0
    yield _SHUFFLES


@cuda.jit
def _row_sums_kernel(values, out):
    sa = cuda.shared.array(_reduce.BLOCK, float64)
    sb = cuda.shared.array(_reduce.BLOCK, float64)
    x, y = cuda.threadIdx.x, cuda.threadIdx.y
    v = values[y, x]
    s1, s2 = _reduce.row_sum2(v, v * v, sa, sb)
    out[0, y, x] = s1
    out[1, y, x] = s2


@pytest.mark.parametrize("row_threads,rows", [(4, 16), (8, 4), (16, 2), (32, 2), (64, 1), (64, 2)])
def test_every_thread_gets_its_own_rows_sums(warp_shuffles, row_threads, rows):
    values = np.random.default_rng(row_threads * rows).standard_normal((rows, row_threads))
    out = cuda.to_device(np.zeros((2,) + values.shape))
    _row_sums_kernel[1, (row_threads, rows)](cuda.to_device(values), out)
    out = out.copy_to_host()
    for got, want in zip(out, (values.sum(axis=1), (values ** 2).sum(axis=1))):
        np.testing.assert_allclose(got, np.broadcast_to(want[:, None], values.shape), rtol=1e-13)
    if warp_shuffles is not None:
        assert warp_shuffles[0] > 0  # the shuffle version ran, not the tree


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", [((40, 5), 5),  # rows of four threads, eight rows a warp
                                      ((9, 64), 64)])  # of 16 (float32: 16-byte loads), two a warp
def test_layer_norm_with_warp_reductions(warp_shuffles, shape, ns, dtype):
    kernel_tests.test_layer_norm_matches_reference(shape, ns, dtype)
    if warp_shuffles is not None:
        assert warp_shuffles[0] > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (the wide layout with a channel a column adds its partials without row_sum2: not here)
@pytest.mark.parametrize("shape,axis", [((8, 3, 5), 1), ((2, 3, 300), 1)])
def test_batch_norm_with_warp_reductions(warp_shuffles, shape, axis, dtype):
    kernel_tests.test_batch_norm_matches_reference(shape, axis, dtype, True)
    if warp_shuffles is not None:
        assert warp_shuffles[0] > 0
