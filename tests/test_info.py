import os
import subprocess
import sys

import numba

import normkit


def test_info_reports_versions_layer_threads_and_cuda():
    d = normkit.info()
    assert d["normkit"] == normkit.__version__
    assert d["numba"] == numba.__version__
    assert d["num_threads"] == numba.get_num_threads()
    assert isinstance(d["cuda_available"], bool)
    assert d["threading_layer"] == numba.threading_layer()  # info() started it
    if d["threading_layer"] == "omp" and "OMP_WAIT_POLICY" not in os.environ:
        assert d["openmp_wait_policy"] == "PASSIVE (set by normkit)"
    else:
        assert d["openmp_wait_policy"].startswith(("none: ", os.environ.get("OMP_WAIT_POLICY", "-")))


def test_info_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "normkit", "info"], capture_output=True, text=True, check=True).stdout
    assert "threading_layer" in out and "num_threads" in out and normkit.__version__ in out
