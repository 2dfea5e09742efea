"""numba.cuda kernels (``batchnorm.py``, ``layernorm.py``) and their host-side launchers
(``launch.py``). Importing this package imports ``numba.cuda`` (the numba-cuda package)."""
