"""Host cost, in microseconds per call, of the pieces of a normkit CUDA call.

    python benchmarks/gpu_host_costs.py

Needs a GPU and numba-cuda. Small arrays (32 x 128), so that the GPU never holds the host
back: every figure is host time (Python, numba-cuda, the driver), which is what sets normkit's
speed below ~100 MB (see benchmarks/RESULTS.md).

    python benchmarks/gpu_host_costs.py --stub-driver

needs no GPU: the host work of whole calls (device arrays in, device arrays out) with the
driver stubbed (tests/cuda_host_stub.py), so without the driver's own share (a launch ~5.5 us,
measured on the H100 machine): the Python that normkit and numba-cuda run, on this machine.
"""

import sys
import time
from pathlib import Path

import numpy as np
from numba import cuda

from normkit import _checks
from normkit import functional as F
from normkit.kernels.cuda import _launcher, _pool, _vectors, launch as host
from normkit.kernels.cuda import layernorm as ln
from normkit.kernels.cuda._launcher import Shaped


def stubbed_main():
    """Host microseconds per whole call with the driver stubbed: the best of 7 runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/
    from tests.cuda_host_stub import stubbed_driver
    with stubbed_driver() as stub:
        x = stub.device_array((32, 128), np.float32)
        w, b = stub.device_array((128,), np.float32), stub.device_array((128,), np.float32)
        xb = stub.device_array((64, 256), np.float32)
        vectors = [stub.device_array((256,), np.float32) for _ in range(4)]
        _, saved = F.layer_norm(x, 128, w, b)
        _, bn_saved = F.batch_norm(xb, *vectors, training=True)
        calls = {
            "LayerNorm forward (32, 128)": lambda: F.layer_norm(x, 128, w, b),
            "LayerNorm backward": lambda: F.layer_norm_backward(x, saved),
            "BatchNorm training forward (64, 256)": lambda: F.batch_norm(xb, *vectors, training=True),
            "BatchNorm eval": lambda: F.batch_norm(xb, *vectors, training=False),
            "BatchNorm backward": lambda: F.batch_norm_backward(xb, bn_saved),
        }
        for name, fn in calls.items():
            stub.launches.clear()
            fn()
            launches = len(stub.launches)
            best = min(_seconds_per_call(fn) for _ in range(7))
            print(f"{name:>38}: {best * 1e6:6.1f} us, {launches} launches", flush=True)
    return 0


def _seconds_per_call(fn, n=1000):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main():
    from gpu_profile import host_us  # benchmarks/, this script's folder

    rows, cols = 32, 128
    x = cuda.to_device(np.ones((rows, cols), np.float32))
    w, b = cuda.to_device(np.ones(cols, np.float32)), cuda.to_device(np.zeros(cols, np.float32))
    out = cuda.device_array((rows, cols), np.float32)
    stats = cuda.device_array((2, rows), np.float64)
    args = (Shaped(x, (rows, cols)), w, b, 1e-5, Shaped(out, (rows, cols)), stats)
    grid, block = (4,), (32, 8)
    kernel = ln.forward_vec4_kernel
    _launcher.launch(kernel, grid, block, *args)  # compiles; later launches skip the dispatcher
    captured = {}
    core_launch = _launcher._core_launch

    def capture(*a):
        captured["args"] = a
        core_launch(*a)
    _launcher._core_launch = capture
    _launcher.launch(kernel, grid, block, *args)
    _launcher._core_launch = core_launch
    ctx = _pool.current_context()
    costs = {
        "normkit's launch()": lambda: _launcher.launch(kernel, grid, block, *args),
        "cuda.core.launch alone": lambda: core_launch(*captured["args"]),
        "_pool.current_context()": _pool.current_context,
        "numba's cuda.current_context()": cuda.current_context,
        "_pool.empty (an output)": lambda: _pool.empty((rows, cols), np.float32, ctx),
        "_pool.empty_with_span (+ stats)": lambda: _pool.empty_with_span(
            ctx, ((rows, cols), np.float32), ((2, rows), np.float64)),
        "LayerNormArgs, device w and b": lambda: _checks.LayerNormArgs(
            (rows, cols), cols, w, b, 1e-5, vector=_vectors.param),
        "to_device(x), a device array": lambda: host.to_device(x, "op"),
        "F.layer_norm, whole call": lambda: F.layer_norm(x, cols, w, b),
    }
    for name, fn in costs.items():
        print(f"{name:>34}: {host_us(fn, 3000):6.2f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(stubbed_main() if "--stub-driver" in sys.argv[1:] else main())
