"""Making Numba's parallel kernels safe to call from threads and from forked processes, and
fast beside NumPy's own threads.

Three facts measured with numba 0.68 shape this module:

* the ``workqueue`` threading layer aborts the whole process when two Python threads launch a
  parallel kernel at once ("Concurrent access has been detected");
* the ``omp`` layer (GNU OpenMP) kills a child created by ``fork()`` after the parent launched a
  parallel kernel, as soon as the child launches one too;
* with the ``omp`` layer's default wait policy (threads spin after a parallel region), a kernel
  launched right after a NumPy matrix product waited for cores held by OpenBLAS's threads, which
  also spin after their work: a BatchNorm eval call on (360, 256) took 3.9 ms after ``A @ W``
  instead of 50-70 us alone, and a training epoch of Linear -> BatchNorm -> ReLU blocks at batch
  256 took 310 ms instead of 24-38 ms (2 cores). PyTorch's BatchNorm suffers the same after a
  NumPy product (7.6 ms). With OpenMP's passive policy (idle threads sleep at once) it took
  60-100 us; a parallel launch that follows another one then costs 10-40 us more (the worker
  must be woken), which the serial threshold (``config.PARALLEL_MIN_ELEMENTS``) accounts for.

So every parallel launch takes a process-wide lock (a launch already uses every core, so little is
lost by queuing them); a process forked from a parent whose OpenMP runtime is live runs the
serial twins of the kernels, which never touch the threading layer; and the threading layer is
started by :func:`start` with ``OMP_WAIT_POLICY=PASSIVE`` unless the user set that variable. GNU
OpenMP reads it once, when it is loaded, so the variable is set only for that moment: child
processes and OpenMP runtimes loaded later keep the user's environment. (A library that links
``libgomp.so.1`` and is imported later, PyTorch among them, shares the runtime already loaded, and
with it the passive policy; imported first, PyTorch loads its own copy and Numba still gets the
system's.) The ``tbb`` layer (``pip install tbb``, which Numba then prefers) does not spin and
needs none of this.
"""

import os
import threading
import warnings

import numba

_launch_lock = threading.Lock()
_serial_only = False
_started = False
_start_lock = threading.Lock()
_policy_at_start = None  # how OMP_WAIT_POLICY was set when start() started the layer
WAIT_POLICY = "OMP_WAIT_POLICY"


def _reset_after_fork():
    # The fork may have happened while another thread held the lock; the child has no such thread.
    global _launch_lock, _start_lock, _serial_only
    _launch_lock = threading.Lock()
    _start_lock = threading.Lock()
    # (no layer started in the parent: the child may start its own runtime)
    if _layer() == "omp":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def start():
    """Start Numba's threading layer, if nothing has yet, with OpenMP threads that sleep when idle
    (see the module docstring). Call before the first parallel launch; cheap after it.

    If something else started it first (``numba.set_num_threads``, another library's parallel
    kernel), OpenMP has read its wait policy already: then a :class:`SpinningThreadsWarning`
    says so, once, when the layer is OpenMP and the user did not choose a policy."""
    global _started, _policy_at_start
    if _started:
        return
    with _start_lock:
        if _started:
            return
        user_set = WAIT_POLICY in os.environ
        try:
            from numba.np.ufunc import parallel  # numba's internals (0.5x-0.68)
            launch, started_by_others = parallel._launch_threads, parallel._is_initialized
        except (ImportError, AttributeError):  # other internals: the first launch starts it
            launch, started_by_others = None, True
        if started_by_others:
            _policy_at_start = None
        else:
            _policy_at_start = (f"{os.environ[WAIT_POLICY]} (from the environment)" if user_set
                                else "PASSIVE (set by normkit)")
            if not user_set:
                os.environ[WAIT_POLICY] = "PASSIVE"
            try:
                launch()
            finally:
                if not user_set:
                    del os.environ[WAIT_POLICY]
        _started = True
    if started_by_others and not user_set and _layer() == "omp":
        warnings.warn(
            "Numba's OpenMP threads were started before normkit's first parallel kernel (by "
            "numba.set_num_threads or another library), so their idle threads spin: a kernel "
            "right after a NumPy matrix product can run 50x slower. Call "
            "normkit.set_num_threads instead of numba's, or set OMP_WAIT_POLICY (PASSIVE, or "
            "ACTIVE to keep spinning) before the process starts OpenMP.", SpinningThreadsWarning,
            stacklevel=3)


class SpinningThreadsWarning(RuntimeWarning):
    """Numba's OpenMP threads spin when idle, which slows kernels next to NumPy's BLAS threads
    (see :func:`start`)."""


def _layer():
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def set_num_threads(n):
    """Use ``n`` threads in normkit's parallel CPU kernels (``numba.set_num_threads``, once
    :func:`start` has started the threading layer the way normkit wants it).

    Parameters
    ----------
    n : int
        From 1 to ``numba.config.NUMBA_NUM_THREADS`` (the cores, unless ``NUMBA_NUM_THREADS``
        says fewer).
    """
    start()
    numba.set_num_threads(n)


def get_num_threads():
    """The number of threads normkit's parallel CPU kernels use."""
    return numba.get_num_threads()


def launch_lock():
    """The lock every parallel kernel launch holds."""
    return _launch_lock


def serial_only():
    """True in a process forked from a parent whose OpenMP runtime was already running."""
    return _serial_only


def threading_layer():
    """The Numba threading layer normkit's parallel kernels use (started now if need be, but
    never in a process that must stay serial), or why there is none."""
    if not _serial_only:
        start()
    return _layer() or f"not started (configured: {numba.config.THREADING_LAYER})"


def openmp_wait_policy():
    """``OMP_WAIT_POLICY`` as Numba's OpenMP runtime read it, and where it came from; or why
    there is none (another threading layer, or none started)."""
    layer = _layer()
    if layer is None:
        return "none: no threading layer started"
    if layer != "omp":
        return f"none: the threading layer is {layer}"
    return _policy_at_start or "unknown: OpenMP was started before normkit could set it"
