"""Tunables read at call time, so that tests and users can change them on the fly.

``PARALLEL_MIN_ELEMENTS``
    Inputs with fewer elements than this run the serial twin of a CPU kernel: a parallel launch
    costs tens of microseconds, more than the whole work for a small batch. Set it to 0 to force
    the parallel kernels (the tests do, to cover both). Environment: ``NORMKIT_PARALLEL_MIN_ELEMENTS``.
"""

import os

PARALLEL_MIN_ELEMENTS = int(os.environ.get("NORMKIT_PARALLEL_MIN_ELEMENTS", 1 << 15))
