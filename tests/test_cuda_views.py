"""The host side of the CUDA path on numba's real ``DeviceNDArray`` type, without a GPU.

Under the simulator (tests/cuda) device arrays are NumPy wrappers, so the branch of
``_strided._view`` that builds real numba device arrays on an input's memory runs only on a GPU.
Building a ``DeviceNDArray`` needs no GPU when it is given its memory, so these tests hand it a
stand-in for the memory and check the views that BatchNorm reads and returns: their shapes,
strides and memory, against NumPy's views of a host array with the same strides.
"""

import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the 'cuda' extra)")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator replaces numba's device arrays", allow_module_level=True)

from numba.cuda.cudadrv.devicearray import DeviceNDArray  # noqa: E402

from normkit.kernels.cuda import _strided, launch  # noqa: E402


class _Memory:
    """Stands for a device allocation: the views must hold this very object."""


def _device_like(host, memory):
    return DeviceNDArray(host.shape, host.strides, host.dtype, gpu_data=memory)


# (an array laid out as some caller would hand it over, its channel axis)
PERMUTED = [
    (np.empty((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2), 1),  # torch channels_last NCHW
    (np.empty((6, 300)).T, 0),                                        # a transposed (batch, features)
    (np.empty((2, 7, 3), np.float32).transpose(0, 2, 1), 1),          # NCL stored as NLC
    (np.empty((3, 2, 4, 5)).transpose(1, 0, 2, 3), 1),                # N and C swapped
]


@pytest.mark.parametrize("host,axis", PERMUTED)
def test_batch_norm_reads_a_permuted_device_array_in_place(host, axis):
    memory = _Memory()
    d = _device_like(host, memory)
    layout = launch._memory_order(d, axis)
    assert layout is not None
    kernel_view = launch.kernel_input(d, layout.order, "batch_norm", "x")
    # what the kernels read: C-contiguous, on the input's memory, no copy
    assert isinstance(kernel_view, DeviceNDArray) and kernel_view.gpu_data is memory
    assert kernel_view.is_c_contiguous()
    assert kernel_view.shape == host.transpose(layout.order).shape
    assert kernel_view.strides == host.transpose(layout.order).strides
    # what the caller gets back: the input's shape and memory order
    result = launch._result(kernel_view, False, layout)
    assert result.gpu_data is memory
    assert (result.shape, result.strides) == (host.shape, host.strides)


def test_c_contiguous_device_arrays_are_left_as_they_are():
    host = np.empty((4, 3, 5), np.float32)
    d = _device_like(host, _Memory())
    assert launch._memory_order(d, 1) is None
    assert launch.kernel_input(d, None, "batch_norm", "x") is d


def test_the_gather_reads_the_span_of_the_strided_array():
    """``gather`` hands its kernel the memory a strided array spans, from its first element."""
    memory = _Memory()
    host = np.empty((5, 8, 6))[1:4, ::2, 1:5]
    d = _device_like(host, memory)
    shape, strides = _strided.merged_axes(host.shape, tuple(s // 8 for s in host.strides))
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    flat = _strided._view(d, (span,), (8,))
    assert flat.gpu_data is memory and flat.shape == (span,) and flat.alloc_size == span * 8
    # the last element the gather reads is the strided array's last one
    last = sum((n - 1) * s for n, s in zip(host.shape, host.strides)) // 8
    assert last == span - 1
