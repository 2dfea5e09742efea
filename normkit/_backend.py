"""Choosing a backend: "numba" (CPU kernels), "numpy" (the reference) or "cuda"."""

import numpy as np

BACKENDS = ("auto", "numba", "numpy", "cuda")

CUDA_INSTALL_HINT = ("install the CUDA extra: pip install 'normkit[cuda13]' on a GPU machine "
                     "('normkit[cuda12]' for a CUDA 12 driver), or pip install 'normkit[cuda]' and "
                     "set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the simulator")


def is_numba_device_array(x):
    """numba.cuda device arrays, real or the simulator's (which has no CUDA array interface)."""
    return hasattr(x, "copy_to_host") and hasattr(x, "is_c_contiguous")


def is_device_array(x):
    """True for arrays that live on a CUDA device (numba, CuPy, PyTorch CUDA tensors...)."""
    # Cheapest tests first: on a numba device array, reading __cuda_array_interface__ builds
    # the whole interface dict (a few us, on every call and every parameter). The attribute
    # itself must be read: a CPU torch tensor's class has it, but reading it raises.
    if isinstance(x, np.ndarray):
        return False
    return is_numba_device_array(x) or hasattr(x, "__cuda_array_interface__")


def cuda_available():
    """Whether ``backend="cuda"`` can run here: numba-cuda installed and a GPU or the simulator."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # driver problems surface here; treat as unavailable
        return False


def known(backend, op):
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError naming ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(backend, x, op):
    """The concrete backend for input ``x``; a clear error for unknown or unavailable ones."""
    known(backend, op)
    if backend == "auto":
        return "cuda" if is_device_array(x) else "numba"
    if backend == "cuda" and not cuda_available():
        raise RuntimeError(f"{op}: backend='cuda' needs numba-cuda and a GPU; {CUDA_INSTALL_HINT}")
    if backend != "cuda" and is_device_array(x):
        raise TypeError(f"{op}: the input is a CUDA device array but backend={backend!r} runs on "
                        f"the CPU; use backend='cuda' or 'auto', or copy it to the host first")
    return backend
