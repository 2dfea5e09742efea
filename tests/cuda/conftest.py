"""Records the kernels these tests launch under Numba's simulator, when NORMKIT_RECORD_LAUNCHES
names a file (tests/test_cuda_simulator.py sets it).

Why: the simulator runs each kernel as Python, so it never compiles one; a kernel that only a GPU
compiler rejects (a type numba-cuda cannot lower, an intrinsic with a wrong signature) would
pass here and fail on the first real GPU. The main test process compiles every recorded
(kernel, argument types) pair to PTX for a GPU target, with no GPU (tests/test_cuda_simulator.py).
"""

import os
import pickle

import numpy as np
import pytest

RECORD_FILE = os.environ.get("NORMKIT_RECORD_LAUNCHES")


def argument_type(value):
    """The numba type numba-cuda's dispatcher gives a launch argument on a real GPU (a simulator
    device array is typed as the device array it stands for)."""
    from numba import from_dtype, typeof, types
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    if isinstance(value, FakeCUDAArray):
        value = value._ary
    if isinstance(value, np.ndarray):
        layout = "C" if value.flags.c_contiguous else "F" if value.flags.f_contiguous else "A"
        return types.Array(from_dtype(value.dtype), value.ndim, layout)
    return typeof(value)


@pytest.fixture(scope="session", autouse=True)
def record_launches():
    if not RECORD_FILE:
        yield
        return
    from numba.cuda.simulator import kernel as sim
    launches = set()
    original = sim.FakeCUDAKernel.__call__

    def recording_call(self, *args):
        # a launch (not a device function) of one of normkit's kernels (not a test's own)
        if not self._device and not sim._kernel_context and self.fn.__module__.startswith("normkit."):
            launches.add((self.fn.__module__, self.fn.__qualname__,
                          tuple(argument_type(a) for a in args)))
        return original(self, *args)

    sim.FakeCUDAKernel.__call__ = recording_call
    try:
        yield
    finally:
        sim.FakeCUDAKernel.__call__ = original
        with open(RECORD_FILE, "wb") as f:
            pickle.dump(sorted(launches, key=repr), f)
