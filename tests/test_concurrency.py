"""Threads and fork under both the omp and workqueue threading layers, each in a subprocess so
that a crash (Numba aborts the process) is a failed test, not a dead test run."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "concurrency_check.py"


def _layer_available(layer):
    if layer == "omp":
        try:
            from numba.np.ufunc import omppool  # noqa: F401
        except ImportError:
            return False
    return True


@pytest.mark.parametrize("layer", ["omp", "workqueue"])
@pytest.mark.parametrize("mode", ["threads", "fork"])
def test_parallel_kernels_survive(layer, mode):
    if not _layer_available(layer):
        pytest.skip(f"numba {numba.__version__} here has no {layer} threading layer")
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(SCRIPT), mode], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert f"threading layer: {layer}" in proc.stdout
    assert f"ok {mode}" in proc.stdout
