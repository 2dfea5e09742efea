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


# What GNU OpenMP reports at start-up with OMP_DISPLAY_ENV=VERBOSE: its wait policy, and the
# spin count of idle threads, 0 under the passive policy (300000 when the variable is unset,
# although the policy then reads 'PASSIVE' too).
START_SCRIPT = """
import os, sys, warnings
import numba
import numpy as np
import normkit
first = sys.argv[1]
if first == "numba.set_num_threads":
    numba.set_num_threads(1)
elif first == "normkit.set_num_threads":
    normkit.set_num_threads(1)
normkit.config.PARALLEL_MIN_ELEMENTS = 0
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    normkit.F.batch_norm(np.ones((64, 8), np.float32), None, None, training=True)
print("after:", os.environ.get("OMP_WAIT_POLICY"))
print("threads:", normkit.get_num_threads())
print("warned:", [type(w.message).__name__ for w in caught])
print("policy:", normkit.info()["openmp_wait_policy"])
"""


@pytest.mark.parametrize("first, user_policy, reported, warned, policy", [
    ("a kernel", None, "GOMP_SPINCOUNT = '0'", [], "PASSIVE (set by normkit)"),
    ("normkit.set_num_threads", None, "GOMP_SPINCOUNT = '0'", [], "PASSIVE (set by normkit)"),
    ("a kernel", "ACTIVE", "OMP_WAIT_POLICY = 'ACTIVE'", [], "ACTIVE (from the environment)"),
    # too late to choose: OpenMP started spinning before normkit's first kernel, which says so
    ("numba.set_num_threads", None, "GOMP_SPINCOUNT = '300000'", ["SpinningThreadsWarning"],
     "unknown: OpenMP was started before normkit could set it"),
])
def test_openmp_threads_sleep_when_idle_unless_the_user_says(first, user_policy, reported,
                                                             warned, policy):
    # Spinning OpenMP threads made a kernel launched after a NumPy matrix product 50x slower
    # (normkit/_threading.py); the policy must reach OpenMP and leave os.environ as it was.
    if not _layer_available("omp"):
        pytest.skip(f"numba {numba.__version__} here has no omp threading layer")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(NUMBA_THREADING_LAYER="omp", OMP_DISPLAY_ENV="VERBOSE")
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    proc = subprocess.run([sys.executable, "-c", START_SCRIPT, first], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert reported in proc.stderr, proc.stderr
    assert f"after: {user_policy}" in proc.stdout
    assert f"warned: {warned}" in proc.stdout
    assert f"policy: {policy}" in proc.stdout
    if first.endswith("set_num_threads"):
        assert "threads: 1" in proc.stdout
