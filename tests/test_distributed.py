"""SyncBatchNorm and data-parallel fit over MPI: each case runs under ``mpiexec -n 2`` and
``-n 3`` in a subprocess with a time limit, so a hang is a failure."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "mpi_check.py"
# One thread per process: BLAS and Numba threads of several processes fighting for the cores
# while MPI busy-waits made a training step 50x slower (measured).
ONE_THREAD = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    from normkit import distributed
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"normkit\[mpi\]"):
        distributed.SyncBatchNorm(4)


def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not os.path.exists(exe):
        pytest.skip("no mpiexec (pip install mpich)")
    return exe


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode", ["sync", "fit", "fault", "eval", "guards"])
def test_under_mpiexec(n, mode):
    proc = subprocess.run([_mpiexec(), "-n", str(n), sys.executable, str(SCRIPT), mode],
                          capture_output=True, text=True, timeout=240,
                          env=ONE_THREAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for rank in range(n):
        assert f"OK {mode} rank {rank}" in proc.stdout, out[-4000:]


def test_distributed_demo():
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "normkit", "demo", "--distributed",
                           "--dataset", "breast_cancer", "--epochs", "2"],
                          capture_output=True, text=True, timeout=300,
                          env=ONE_THREAD)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("breast_cancer")]
    assert len(rows) == 3  # rank 0 alone prints the table
    assert "2 processes" in proc.stdout
