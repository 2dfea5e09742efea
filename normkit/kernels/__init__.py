"""Compute kernels: ``cpu`` (Numba ``@njit(parallel=True)``) and ``cuda`` (``numba.cuda``)."""
