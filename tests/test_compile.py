"""Helpers for writing kernels (normkit/kernels/cpu/_compile.py)."""

import sys

import numpy as np
from numba import njit

from normkit.kernels.cpu._compile import borrowed, cast_like


@njit
def _scaled_row_sums(x, out, factor):
    x, out = borrowed(x, out)
    sums = np.zeros(x.shape[0])
    for r in range(x.shape[0]):
        row, dest = x[r], out[r]  # views of borrowed arrays
        for c in range(row.shape[0]):
            dest[c] = row[c] * factor
            sums[r] += row[c]
    return sums  # an array of the kernel's own: borrowed ones must not be returned


def test_borrowed_arrays_read_and_write_the_callers_memory(rng):
    x = rng.standard_normal((7, 5))
    out = np.zeros_like(x)
    references = sys.getrefcount(x), sys.getrefcount(out)
    sums = _scaled_row_sums(x, out, 3.0)
    np.testing.assert_allclose(sums, x.sum(axis=1), rtol=1e-14)
    np.testing.assert_array_equal(out, x * 3.0)
    assert (sys.getrefcount(x), sys.getrefcount(out)) == references


def test_cast_like_takes_arrays_and_scalars():
    @njit
    def cast(value, like):
        return cast_like(value, like)
    assert cast(0.1, np.zeros(1, np.float32)) == float(np.float32(0.1))
    assert cast(0.1, np.float32(0)) == float(np.float32(0.1))
    assert cast(0.1, np.zeros(1)) == 0.1 and cast(0.1, 0.0) == 0.1
