"""Runs tests/cuda under Numba's CUDA simulator, in a subprocess: NUMBA_ENABLE_CUDASIM must be
set before numba is imported, which this process has already done. The tests marked ``gpu``
(pooled device memory, direct launches, PyTorch tensors, realistic sizes) need a real GPU and
are deselected here; everything else must run, none skipped.

The subprocess is started as soon as this test is collected (``tests/conftest.py``), so that its
~3 minutes on one core overlap with the rest of the suite; the test waits for it and checks it.
It records every kernel it launches with its argument types (tests/cuda/conftest.py), and
``test_every_kernel_compiles_for_a_gpu`` then compiles each of them to PTX for real GPUs, which
the simulator, running kernels as Python, never does.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the 'cuda' extra)")

TIMEOUT_S = 1200


ROOT = Path(__file__).resolve().parent.parent
COMPILE_SCRIPT = ROOT / "tests" / "scripts" / "compile_for_gpu.py"
NO_COMPILER = 77  # compile_for_gpu.py's exit status without NVVM/NVRTC


class SimulatorRun:
    """``pytest tests/cuda`` under the simulator, running in the background; output to a file
    (a pipe nobody reads while the suite runs could fill up and stall it), and the kernels it
    launches to ``launches_file``."""

    def __init__(self):
        fd, self.launches_file = tempfile.mkstemp(prefix="normkit-launches-", suffix=".pkl")
        os.close(fd)
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NORMKIT_CUDA_TESTS="1",
                   NORMKIT_RECORD_LAUNCHES=self.launches_file)
        self.output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", "tests/cuda"],
            cwd=ROOT, env=env, stdout=self.output, stderr=subprocess.STDOUT, text=True)
        self.result = None

    def wait(self):
        """(exit status, output), waiting for the run the first time."""
        if self.result is None:
            try:
                returncode = self.process.wait(timeout=TIMEOUT_S)
            finally:
                self.stop()
            self.output.seek(0)
            self.result = returncode, self.output.read()
        return self.result

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self):
        self.stop()
        if os.path.exists(self.launches_file):
            os.remove(self.launches_file)


def simulator_run(config):
    """The session's simulator run, started now if ``tests/conftest.py`` did not start it."""
    run = config.stash.get(SIMULATOR_RUN, None)
    if run is None:
        run = config.stash[SIMULATOR_RUN] = SimulatorRun()
        config.add_cleanup(run.close)
    return run


def test_cuda_kernels_under_the_simulator(request):
    returncode, out = simulator_run(request.config).wait()
    assert returncode == 0, out[-5000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, out[-2000:]
    assert "skipped" not in out, out[-2000:]


@pytest.mark.parametrize("compute_capability", ["7.5", "9.0"])  # the oldest CUDA 13 targets; H100/H200
def test_every_kernel_compiles_for_a_gpu(request, compute_capability):
    # Every (kernel, argument types) the simulator run launched, compiled by numba-cuda's GPU
    # compiler as a first launch on a GPU would: errors only a GPU compile meets (a type the CUDA
    # target cannot lower, the 16-byte load intrinsics, the warp-shuffle reductions the
    # simulator replaces) fail here instead of on the next machine with a GPU.
    run = simulator_run(request.config)
    assert run.wait()[0] == 0, "the simulator run failed: see test_cuda_kernels_under_the_simulator"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(COMPILE_SCRIPT), run.launches_file, compute_capability],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == NO_COMPILER:
        pytest.skip(f'{proc.stdout.strip()} (pip install "numba-cuda[cu13]")')
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = re.search(r"compiled (\d+) signatures of (\d+) kernels", proc.stdout)
    # (the script fails if a kernel was never launched; this says it found them: 19 today)
    assert summary and int(summary.group(2)) >= 19, proc.stdout[-2000:]


SIMULATOR_RUN = pytest.StashKey[SimulatorRun]()
