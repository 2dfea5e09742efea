"""Run in a subprocess by tests/test_concurrency.py: 8 Python threads at once, then a fork pool.

Usage: python concurrency_check.py threads|fork. Exits 0 when every result was right; a crash of
the threading layer kills this process instead, which the test sees as a failure.
"""

import multiprocessing
import sys
import threading

import numba
import numpy as np

import normkit
from normkit import functional as F
from normkit import reference as R

rng = np.random.default_rng(0)
X_BN = rng.standard_normal((2048, 64)).astype(np.float32) + 3
X_LN = rng.standard_normal((1024, 128)).astype(np.float32) - 2
DY_BN = rng.standard_normal(X_BN.shape).astype(np.float32)


def compute():
    y_bn, saved = F.batch_norm(X_BN, None, None, training=True)
    dx_bn = F.batch_norm_backward(DY_BN, saved)[0]
    y_ln, _ = F.layer_norm(X_LN, 128)
    return y_bn, dx_bn, y_ln


def expected():
    y_bn, saved = R.batch_norm(X_BN, None, None, training=True)
    return y_bn, R.batch_norm_backward(DY_BN, saved)[0], R.layer_norm(X_LN, 128)[0]


def max_error(results, want):
    return max(float(np.abs(a - b).max()) for a, b in zip(results, want))


def worker(_):
    return max_error(compute(), expected())


def main(mode):
    normkit.config.PARALLEL_MIN_ELEMENTS = 0  # every call below launches the parallel builds
    want = expected()
    assert max_error(compute(), want) < 1e-4  # the parent has now started its threading layer
    print("threading layer:", numba.threading_layer(), flush=True)
    if mode == "threads":
        errors = []

        def run():
            for _ in range(25):
                errors.append(max_error(compute(), want))

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 200 and max(errors) < 1e-4, max(errors)
    else:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # A child killed by the threading layer would leave map() waiting forever.
            errors = pool.map_async(worker, range(4), chunksize=1).get(timeout=60)
        assert max(errors) < 1e-4, errors
    print("ok", mode, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
