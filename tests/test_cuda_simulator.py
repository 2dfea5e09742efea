"""Runs tests/cuda under Numba's CUDA simulator, in a subprocess: NUMBA_ENABLE_CUDASIM must be
set before numba is imported, which this process has already done. The tests marked ``gpu``
(pooled device memory, direct launches, PyTorch tensors, realistic sizes) need a real GPU and
are deselected here; everything else must run, none skipped."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the 'cuda' extra)")


def test_cuda_kernels_under_the_simulator():
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NORMKIT_CUDA_TESTS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                           "tests/cuda"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, out[-2000:]
    assert "skipped" not in out, out[-2000:]
