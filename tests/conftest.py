import os
import random
import zlib

import numpy as np
import pytest

from normkit import config

# tests/cuda needs NUMBA_ENABLE_CUDASIM set before numba is imported (or a GPU): it runs in its own
# pytest process, started by tests/test_cuda_simulator.py, or by hand with NORMKIT_CUDA_TESTS=1.
collect_ignore = [] if os.environ.get("NORMKIT_CUDA_TESTS") else ["cuda"]

# Fresh random inputs on every run; set NORMKIT_TEST_SEED to replay a failing one.
SESSION_SEED = int(os.environ.get("NORMKIT_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Tolerances tied to the dtype, for outputs computed in float64 and rounded once to the dtype.
TOL = {
    np.float32: dict(rtol=2e-5, atol=2e-5),
    np.float64: dict(rtol=1e-10, atol=1e-10),
}


def pytest_report_header(config):
    return f"normkit test seed: NORMKIT_TEST_SEED={SESSION_SEED}"


@pytest.fixture
def rng(request):
    # One stream per test, derived from the session seed and the test's id: reproducible, fresh.
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(params=["serial", "parallel"])
def kernel_build(request, monkeypatch):
    """Run the test once with the serial builds of the kernels and once with the parallel ones."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1 << 62 if request.param == "serial" else 0)
    return request.param


def assert_close(actual, expected, dtype, scale=1.0, what=""):
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


def at_line_offset(a, offset):
    """A copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    block = np.empty(a.nbytes + 128, np.uint8)
    start = (offset - block.ctypes.data) % 64
    out = block[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def pytest_terminal_summary(terminalreporter):
    # Shown also under -q, so that a failure seen in CI can be replayed.
    terminalreporter.write_line(f"normkit test seed: NORMKIT_TEST_SEED={SESSION_SEED}")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: start it only if it will run
def pytest_collection_modifyitems(config, items):
    """Start the simulator run of tests/cuda now if a test that needs it was selected (it then
    overlaps with the rest of the suite instead of adding ~3 minutes at the end)."""
    if config.option.collectonly:
        return
    for item in items:
        if hasattr(item.module, "simulator_run"):  # tests/test_cuda_simulator.py
            item.module.simulator_run(config)
            return
