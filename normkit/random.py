"""normkit's global random generator, used by layers created or run without an explicit ``rng``.

``normkit.manual_seed(s)`` makes model construction (weight init) and dropout reproducible, like
``torch.manual_seed``. :func:`normkit.fit` runs with :func:`seeded` so that its shuffling and
dropout masks follow its ``seed`` argument alone.
"""

import contextlib

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Re-seed normkit's global generator (Dropout masks, Linear initialisation).

    Parameters
    ----------
    seed : int, sequence of int or None
        Anything :func:`numpy.random.default_rng` takes; None seeds from the OS.

    Returns
    -------
    numpy.random.Generator
        The new global generator.
    """
    global _generator
    _generator = generator_from(seed, "manual_seed")
    return _generator


def generator_from(seed, op):
    """``np.random.default_rng(seed)``, with an error naming ``op`` for a seed it refuses."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{op}: seed must be an int >= 0, a sequence of them or None, "
                        f"got {seed!r}") from exc


def generator():
    """The global generator (a ``numpy.random.Generator``)."""
    return _generator


@contextlib.contextmanager
def seeded(seed):
    """Temporarily replace the global generator by one seeded with ``seed``."""
    global _generator
    saved = _generator
    _generator = generator_from(seed, "seeded")
    try:
        yield _generator
    finally:
        _generator = saved
