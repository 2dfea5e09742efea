"""Runs tests/cuda under Numba's CUDA simulator, in a subprocess: NUMBA_ENABLE_CUDASIM must be
set before numba is imported, which this process has already done. The tests marked ``gpu``
(pooled device memory, direct launches, PyTorch tensors, realistic sizes) need a real GPU and
are deselected here; everything else must run, none skipped.

The subprocess is started as soon as this test is collected (``tests/conftest.py``), so that its
~3 minutes on one core overlap with the rest of the suite; the test waits for it and checks it.
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


class SimulatorRun:
    """``pytest tests/cuda`` under the simulator, running in the background; output to a file
    (a pipe nobody reads while the suite runs could fill up and stall it)."""

    def __init__(self):
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NORMKIT_CUDA_TESTS="1")
        self.output = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", "tests/cuda"],
            cwd=root, env=env, stdout=self.output, stderr=subprocess.STDOUT, text=True)

    def wait(self):
        """(exit status, output)."""
        try:
            returncode = self.process.wait(timeout=TIMEOUT_S)
        finally:
            self.stop()
        self.output.seek(0)
        return returncode, self.output.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_cuda_kernels_under_the_simulator(request):
    run = request.config.stash.get(SIMULATOR_RUN, None) or SimulatorRun()
    returncode, out = run.wait()
    assert returncode == 0, out[-5000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, out[-2000:]
    assert "skipped" not in out, out[-2000:]


SIMULATOR_RUN = pytest.StashKey[SimulatorRun]()
