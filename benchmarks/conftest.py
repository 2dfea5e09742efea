"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only``.

Every implementation runs at the same thread count (NORMKIT_BENCH_THREADS, default 2), one
warm-up round first so that Numba's compilation is never timed.
"""

import os

import numba
import pytest

THREADS = int(os.environ.get("NORMKIT_BENCH_THREADS", "2"))


def pytest_configure(config):
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass


@pytest.fixture
def timed(benchmark):
    """Time fn with one warm-up round and a few rounds; the same settings for every peer."""
    def run(fn, rounds=5):
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    return run
