"""Tunables read at call time, so that tests and users can change them on the fly.

``PARALLEL_MIN_ELEMENTS``
    Inputs with fewer elements than this (524288: a (2048, 256) float32 batch) run the serial
    twin of a CPU kernel: a parallel launch wakes sleeping threads (see ``normkit._threading``)
    and costs tens of microseconds, more than it saves on a small batch. Measured on 2 cores:
    serial calls 1.0-2x faster up to 262144 elements, the parallel ones 1.05-1.5x faster at
    524288 (but slower there right after a NumPy matrix product, whose threads hold the cores
    for a while). Machines with more cores may want it lower. Set it to 0 to force the parallel
    kernels (the tests do, to cover both). Environment: ``NORMKIT_PARALLEL_MIN_ELEMENTS``.

``OUTPUT_CACHE_BYTES``, ``OUTPUT_CACHE_MIN_BYTES``
    Freed normkit outputs of at least ``OUTPUT_CACHE_MIN_BYTES`` (32 MiB: glibc returns blocks
    that large to the OS, and a fresh one costs ~80 us per MiB in page faults) are kept for reuse,
    up to ``OUTPUT_CACHE_BYTES`` in all (512 MiB; 0 turns the cache off).
    :func:`normkit.empty_cache` releases them. Environment: ``NORMKIT_OUTPUT_CACHE_BYTES``.


``ONE_PASS_BYTES``
    The BatchNorm training forward and backward take their sums and write their output in one
    pass over each channel (or band of columns) when that task reads at most this many bytes
    (1 MiB: half the 2 MiB L2 cache per core of the machine measured; set it to about half of
    yours). 0 turns the one-pass kernels off. Environment: ``NORMKIT_ONE_PASS_BYTES``.

``STREAM_MIN_BYTES``
    CPU kernels write outputs of at least this many bytes (8 MiB) with streaming stores, past the
    cache: 1.35-1.5x faster elementwise passes from 8 MiB on the machine measured, where an output
    that large would not have stayed in the L2 caches anyway (see
    ``normkit/kernels/cpu/_streaming.py``). 0 turns them off. Environment:
    ``NORMKIT_STREAM_MIN_BYTES``.

``DEVICE_CACHE_BYTES``
    Freed device buffers of normkit's CUDA outputs and scratch arrays are kept for reuse, up to
    this many bytes (2 GiB; 0 turns the cache off): numba-cuda's allocation costs 24-135 us of
    host time per array, more than a 64 MB kernel. :func:`normkit.empty_cache` releases them.
    Environment: ``NORMKIT_DEVICE_CACHE_BYTES``.
"""

import os


def _from_environment(name, default):
    """The integer >= 0 in environment variable ``name``, or ``default`` where it is unset; a
    ValueError naming the variable for anything else (int() alone would not say which)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"normkit: environment variable {name} must be an integer >= 0, got {text!r}")
    return value


PARALLEL_MIN_ELEMENTS = _from_environment("NORMKIT_PARALLEL_MIN_ELEMENTS", 1 << 19)
OUTPUT_CACHE_BYTES = _from_environment("NORMKIT_OUTPUT_CACHE_BYTES", 512 << 20)
OUTPUT_CACHE_MIN_BYTES = 32 << 20
ONE_PASS_BYTES = _from_environment("NORMKIT_ONE_PASS_BYTES", 1 << 20)
STREAM_MIN_BYTES = _from_environment("NORMKIT_STREAM_MIN_BYTES", 8 << 20)
DEVICE_CACHE_BYTES = _from_environment("NORMKIT_DEVICE_CACHE_BYTES", 2 << 30)
