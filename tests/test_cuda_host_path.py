"""The CUDA backend's host code as it runs on a GPU, without one: pooled outputs, the statistics
that share their buffer, the choice of kernel, and launches in Numba's kernel ABI, with only
the driver stubbed (see tests/cuda_host_stub.py). Under the simulator these branches never run.
"""

import gc
import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the 'cuda' extra)")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator replaces numba's device arrays", allow_module_level=True)

import normkit.functional as F  # noqa: E402

from .cuda_host_stub import stubbed_driver  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


@pytest.fixture
def stub():
    with stubbed_driver() as driver:
        yield driver


def address(a):
    return a.device_ctypes_pointer.value


def c_array(a):
    """A device array as a launch argument: (pointer, dtype, shape, C-contiguous strides)."""
    return address(a), np.dtype(a.dtype), tuple(a.shape), tuple(np.empty(a.shape, a.dtype).strides)


def _layer_norm_inputs(stub, rows=32, cols=128, offset=0):
    return (stub.device_array((rows, cols), np.float32, offset),
            stub.device_array((cols,), np.float32), stub.device_array((cols,), np.float32))


def test_layer_norm_launches_on_the_callers_arrays_and_keeps_its_statistics_by_the_output(stub):
    x, w, b = _layer_norm_inputs(stub)
    y, saved = F.layer_norm(x, 128, w, b)
    (forward,) = stub.launches
    assert forward.name == "forward_vec4_kernel"
    xa, wa, ba, eps, ya, stats = forward.arguments()
    assert (xa, wa, ba, eps) == (c_array(x), c_array(w), c_array(b), 1e-5)
    assert ya == c_array(y) and y.dtype == F32 and y.shape == (32, 128)
    # the (mean, rstd) rows, in the output's pooled buffer after it, are what saved keeps
    assert stats[1:3] == (F64, (2, 32)) and stats[0] == address(saved.mean)
    assert stats[0] >= address(y) + y.nbytes

    stub.launches.clear()
    dy = stub.device_array((32, 128), np.float32)
    dx, dweight, dbias = F.layer_norm_backward(dy, saved)
    assert [launch.name for launch in stub.launches] == [
        "backward_dx_vec4_kernel", "param_grad_kernel"]  # its last blocks add up the partials
    dya, xa, statsa, wa, dxa = stub.launches[0].arguments()
    assert (dya, xa, statsa, wa, dxa) == (c_array(dy), c_array(x), stats, c_array(w), c_array(dx))
    dya, xa, statsa, partials, arrivals, dwa, dba = stub.launches[1].arguments()
    assert (dya, xa, statsa) == (c_array(dy), c_array(x), stats)
    # block counters: at least one for each of the 128 / 32 columns of blocks
    assert partials[1] == F64 and arrivals[1] == np.dtype(np.int32) and arrivals[2][0] >= 4
    assert dwa[0] == address(dweight) and dba[0] == address(dbias)
    assert dweight.dtype == F32 and dweight.shape == (128,) and dbias.shape == (128,)


def test_layer_norm_takes_the_scalar_kernel_for_data_off_a_16_byte_boundary(stub):
    x, w, b = _layer_norm_inputs(stub, offset=4)
    assert address(x) % 16 == 4
    F.layer_norm(x, 128, w, b)
    (forward,) = stub.launches
    assert forward.name == "forward_kernel" and forward.arguments()[0] == c_array(x)


def test_host_parameters_are_sent_once_and_reused(stub):
    x, _, _ = _layer_norm_inputs(stub)
    w = np.ones(128, np.float32)
    F.layer_norm(x, 128, w, None)
    F.layer_norm(x, 128, w.copy(), None)  # the same values: the same device copy
    first, second = (launch.arguments()[1] for launch in stub.launches)
    assert first == second
    w[0] = 2.0
    F.layer_norm(x, 128, w, None)
    assert stub.launches[-1].arguments()[1] != first


def _first_rows(a, n):
    """``a[:n]`` as numba builds it (slicing itself asks the driver for the current context)."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    memory = a.gpu_data.view(0, n * a.strides[0])
    return DeviceNDArray((n, *a.shape[1:]), a.strides, a.dtype, gpu_data=memory)


def test_an_output_buffer_is_reused_only_once_nothing_uses_it(stub):
    x, w, b = _layer_norm_inputs(stub)
    y, saved = F.layer_norm(x, 128, w, b)
    first = address(y)
    del y
    gc.collect()
    y2, saved2 = F.layer_norm(x, 128, w, b)
    assert address(y2) != first  # saved still holds the statistics in y's buffer
    view = _first_rows(y2, 4)
    del y2, saved2
    gc.collect()
    y3, saved3 = F.layer_norm(x, 128, w, b)
    assert address(y3) not in (first, address(view))  # a view holds its buffer too
    freed = (first, address(view), address(y3))
    del view, saved, y3, saved3
    gc.collect()
    y4, _ = F.layer_norm(x, 128, w, b)
    assert address(y4) in freed  # all three are free again: no new allocation


def _batch_norm_vectors(stub, channels):
    return [stub.device_array((channels,), np.float32) for _ in range(4)]


def test_batch_norm_training_reads_the_input_and_updates_the_running_statistics_in_place(stub):
    x = stub.device_array((64, 256), np.float32)
    mean, var, w, b = _batch_norm_vectors(stub, 256)
    y, saved = F.batch_norm(x, mean, var, w, b, training=True)
    launched = {launch.name: launch.arguments() for launch in stub.launches}
    assert len(launched) == len(stub.launches)  # each kernel once
    readers = [name for name, args in launched.items() if c_array(x) in args]
    assert len(readers) == 2  # the sums, then the normalisation
    assert any(c_array(y) in args for args in launched.values())
    updates = [name for name, args in launched.items()
               if c_array(mean) in args and c_array(var) in args]
    assert len(updates) == 1 and saved.running_stats_updated is None  # (not known: on the device)
    assert y.shape == (64, 256) and y.dtype == F32
    # the sums kernel's last blocks write the statistics and coefficients and update the
    # running statistics: no finalize or update kernel
    assert list(launched) == ["wide_shifted_sums_kernel", "affine_wide_kernel"]
    *_, coef, stats, update, _, _, mean_a, var_a = launched["wide_shifted_sums_kernel"]
    assert stats[0] == address(saved.mean) and coef in launched["affine_wide_kernel"]
    assert (update, mean_a, var_a) == (1, c_array(mean), c_array(var))


@pytest.mark.parametrize("shape,kernels", [
    ((64, 256), ["wide_shifted_sums_kernel", "affine_wide_kernel"]),
    ((4, 8, 40), ["runs_shifted_sums_kernel", "affine_runs_kernel"]),
    ((4, 8, 5), ["wide_shifted_sums_kernel", "finalize_stats_kernel", "affine_wide_kernel",
                 "update_running_kernel"])])
def test_batch_norm_training_finishes_each_channel_in_its_sums_kernel(stub, shape, kernels):
    x = stub.device_array(shape, np.float32)
    F.batch_norm(x, *_batch_norm_vectors(stub, shape[1]), training=True)
    assert [launch.name for launch in stub.launches] == kernels
    update = stub.launches[0].arguments()[-5]
    assert update == (len(kernels) == 2)  # the sums kernel updates the running statistics


@pytest.mark.parametrize("shape,kernels", [
    ((64, 256), ["wide_grad_sums_kernel", "grad_input_wide_kernel"]),
    ((4, 8, 40), ["runs_grad_sums_kernel", "grad_input_runs_kernel"]),
    # a channel over several columns: its sums' last blocks cannot finish it
    ((4, 8, 5), ["wide_grad_sums_kernel", "finalize_grads_kernel", "grad_input_wide_kernel"])])
def test_batch_norm_backward_finishes_each_channel_in_its_sums_kernel(stub, shape, kernels):
    x = stub.device_array(shape, np.float32)
    _, saved = F.batch_norm(x, None, None, *_batch_norm_vectors(stub, shape[1])[2:], training=True)
    stub.launches.clear()
    _, dweight, dbias = F.batch_norm_backward(stub.device_array(shape, np.float32), saved)
    assert [launch.name for launch in stub.launches] == kernels
    *_, coef, dba, dwa = stub.launches[0].arguments()
    assert (dwa[0], dba[0]) == (address(dweight), address(dbias))
    assert coef in stub.launches[-1].arguments()


def test_batch_norm_reads_a_channels_last_input_in_place_and_answers_in_its_order(stub):
    from normkit.kernels.cuda import _strided
    n, h, w_, c = 4, 5, 6, 8
    nhwc = stub.device_array((n, h, w_, c), np.float32)
    nchw = _strided.permuted(nhwc, (0, 3, 1, 2))  # what a channels_last tensor looks like
    assert not nchw.is_c_contiguous()
    y, _ = F.batch_norm(nchw, *_batch_norm_vectors(stub, c), training=True)
    names = [launch.name for launch in stub.launches]
    assert not any("gather" in name for name in names)
    as_rows = (address(nhwc), F32, (n * h * w_, c), (c * 4, 4))
    assert any(as_rows in launch.arguments() for launch in stub.launches)
    assert y.shape == (n, c, h, w_) and y.strides == nchw.strides


def test_block_counters_are_one_array_grown_for_wider_grids(stub):
    """The sums kernels' block counters (zero between launches) are one array per thread,
    replaced by a longer one when a grid has more columns of blocks than it counts."""
    counters = []
    for cols in (128, 40000, 256):  # 4, 1250 and 8 columns of 32-thread blocks
        x, w, b = _layer_norm_inputs(stub, rows=8, cols=cols)
        _, saved = F.layer_norm(x, cols, w, b)
        stub.launches.clear()
        F.layer_norm_backward(stub.device_array((8, cols), np.float32), saved)
        counters.append(stub.launches[-1].arguments()[4])
    assert counters[1][2][0] >= 1250 > counters[0][2][0]
    assert counters[2] == counters[1]  # the longer array, kept
