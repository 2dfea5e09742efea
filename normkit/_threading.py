"""Making Numba's parallel kernels safe to call from threads and from forked processes.

Two facts measured with numba 0.68 shape this module:

* the ``workqueue`` threading layer aborts the whole process when two Python threads launch a
  parallel kernel at once ("Concurrent access has been detected");
* the ``omp`` layer (GNU OpenMP) kills a child created by ``fork()`` after the parent launched a
  parallel kernel, as soon as the child launches one too.

So every parallel launch takes a process-wide lock (a launch already uses every core, so little is
lost by queuing them), and a process forked from a parent whose OpenMP runtime is live runs the
serial twins of the kernels, which never touch the threading layer.
"""

import os
import threading

import numba

_launch_lock = threading.Lock()
_serial_only = False


def _reset_after_fork():
    # The fork may have happened while another thread held the lock; the child has no such thread.
    global _launch_lock, _serial_only
    _launch_lock = threading.Lock()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel ran in the parent: the child may start its own runtime
        layer = None
    if layer == "omp":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def launch_lock():
    """The lock every parallel kernel launch holds."""
    return _launch_lock


def serial_only():
    """True in a process forked from a parent whose OpenMP runtime was already running."""
    return _serial_only


def threading_layer():
    """The active Numba threading layer, or a description of the one that will be chosen."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"not started yet (configured: {numba.config.THREADING_LAYER})"
