"""``normkit.info()``: what normkit runs on here."""

import platform

import numba
import numpy as np

from . import __version__, _backend, _threading


def _version(module_name):
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return getattr(module, "__version__", "installed")


def info():
    """Versions, the Numba threading layer and thread count, and CUDA availability.

    Returns
    -------
    dict
        Keys: ``normkit``, ``python``, ``numpy``, ``numba``, ``scipy``, ``torch`` (None when
        absent), ``threading_layer`` (started if it was not), ``openmp_wait_policy`` (what idle
        OpenMP threads do, see the README's policies), ``num_threads``, ``cuda_available``, ``cuda_simulator``.
    """
    import numba.core.config as numba_config
    return {
        "normkit": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": _version("scipy"),
        "torch": _version("torch"),
        "numba_cuda": _version("numba_cuda"),
        "threading_layer": _threading.threading_layer(),
        "openmp_wait_policy": _threading.openmp_wait_policy(),
        "num_threads": numba.get_num_threads(),
        "cuda_available": _backend.cuda_available(),
        "cuda_simulator": bool(numba_config.ENABLE_CUDASIM),
    }


def format_info(d=None):
    """:func:`info` as aligned ``key : value`` lines.

    Parameters
    ----------
    d : dict, optional
        What :func:`info` returned; by default it is called.

    Returns
    -------
    str
    """
    d = info() if d is None else d
    width = max(map(len, d))
    return "\n".join(f"{k.ljust(width)} : {'not installed' if v is None else v}" for k, v in d.items())
