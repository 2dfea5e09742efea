"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only``.

Every implementation runs at the same thread count (NORMKIT_BENCH_THREADS, default 2), one
warm-up round first so that Numba's compilation is never timed.
"""

import os

import numba
import pytest

import normkit

THREADS = int(os.environ.get("NORMKIT_BENCH_THREADS", "2"))


def pytest_configure(config):
    # PyTorch first: imported after Numba's OpenMP runtime started, it would share that runtime
    # (one libgomp.so.1 in the process) and run with normkit's wait policy instead of its own.
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    # normkit's, not numba's: it starts OpenMP with threads that sleep when idle, as normkit's
    # first kernel would have (normkit/_threading.py)
    normkit.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))


@pytest.fixture
def timed(benchmark):
    """Time fn with one warm-up round and a few rounds; the same settings for every peer."""
    def run(fn, rounds=5):
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    return run
