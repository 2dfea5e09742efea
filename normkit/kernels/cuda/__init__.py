"""numba.cuda kernels (``batchnorm.py``, ``layernorm.py``) and their host-side launchers
(``launch.py``). Importing this package imports ``numba.cuda`` (the numba-cuda package)."""


import functools


@functools.cache  # fixed when numba is imported; asked on every launch and allocation
def simulator():
    """Whether numba.cuda is Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 before numba was
    imported): no device memory, no warps, no cuda.core launches; each kernel adapts to it."""
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)
