"""Many processes: SyncBatchNorm and data-parallel helpers over MPI (mpi4py).

Each process holds a slice of every batch. :class:`SyncBatchNorm` combines the slices' per-channel
counts, means and centred sums of squares across the communicator with Chan et al.'s exact merge,
so every process normalises with the statistics of the whole batch and keeps identical running
statistics; its backward combines the per-channel sums of dy and dy * (x - mean).

Failure behaviour: a bad input on one process is detected before any statistics are exchanged, and
every process raises (the others with a RuntimeError naming the failing rank), so none is left
waiting in a collective. If a process dies (killed, segfault), MPI's default error handler and
``mpiexec`` end the whole job; MPI cannot resume a collective with a missing member.
"""

import numpy as np

from . import _checks
from ._layout import batch_norm_layout
from ._running import update_running_stats
from .kernels.cpu import batchnorm as _bn_cpu
from .kernels.cpu.batchnorm import combine_moments
from .nn import BatchNorm, Sequential

MPI_INSTALL_HINT = "pip install 'normkit[mpi]' (mpi4py) and an MPI, e.g. pip install mpich"


def mpi():
    """The ``mpi4py.MPI`` module, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"normkit's distributed features need mpi4py: {MPI_INSTALL_HINT}") from None
    return MPI


def world():
    """``MPI.COMM_WORLD``: every process of the job (the default communicator)."""
    return mpi().COMM_WORLD


def agree(comm, error, op):
    """Collective: raise on every rank if any rank had an error, so that none waits forever in
    a later collective.

    Parameters
    ----------
    comm : mpi4py communicator
    error : Exception or None
        This rank's error, if any.
    op : str
        Names the operation in the other ranks' error.

    Raises
    ------
    Exception
        On a failing rank, its own ``error``; on the others, a RuntimeError naming the first
        failing rank and its message.
    """
    if comm.Get_size() == 1:
        if error is not None:
            raise error
        return
    messages = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if error is not None:
        raise error
    rank, message = failed[0]
    raise RuntimeError(f"{op}: rank {rank} failed, so every rank stops here: {message}")


class SyncBatchNorm(BatchNorm):
    """BatchNorm whose training statistics span every process of ``comm``.

    Parameters
    ----------
    num_features : int
        Channels, C.
    comm : mpi4py communicator, optional
        The processes whose slices make up a batch; default ``MPI.COMM_WORLD``.
    **kwargs
        Any other :class:`~normkit.BatchNorm` argument (axis, eps, momentum, ...).

    Notes
    -----
    Same behaviour as :class:`~normkit.BatchNorm` otherwise. Local slices may differ in size, down to one
    sample, as long as the whole batch has more than one value per channel. In eval mode, when
    frozen, and with a single process it communicates nothing. Weight and bias gradients are the
    local slice's contributions (sum them across processes, as :func:`normkit.fit` does with
    ``comm``); dx is the exact gradient of the whole batch.
    """

    def __init__(self, num_features, *, comm=None, **kwargs):
        super().__init__(num_features, **kwargs)
        self.comm = world() if comm is None else comm
        self._sync = None

    def _param(self, name):
        p = getattr(self, name)
        return None if p is None else p.data

    def forward(self, x):
        # Only training synchronises (as in PyTorch): eval mode without running statistics
        # normalises each process's slice with its own batch statistics.
        if self.comm.Get_size() == 1 or not self.training or self.frozen:
            self._sync = None
            return super().forward(x)
        op = "SyncBatchNorm"
        error, args = None, None
        try:
            self._check_channels(x)
            x = _checks.float_array(x, op)
            # the count check is global, below: a local slice may hold a single sample
            args = _checks.BatchNormArgs(x.shape, self.axis, self._param("weight"), self._param("bias"),
                                         self.running_mean,
                                         self.running_var, True, self.momentum, self.eps,
                                         self.num_batches_tracked, op, check_count=False)
        except Exception as exc:  # any local problem: tell the others before the collective
            error = exc
        agree(self.comm, error, op)

        layout = batch_norm_layout(x, args.axis)
        xk = layout.view(x)
        mean, var = _bn_cpu.batch_stats(xk, layout.group)
        local = np.stack([np.full(args.channels, float(args.count)), mean, var])   # (3, C)
        parts = np.empty((self.comm.Get_size(),) + local.shape)
        self.comm.Allgather(local, parts)
        counts = parts[:, 0, 0]
        total = int(counts.sum())
        if total <= 1:
            raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                             f"{total} over all processes")
        mean, var = combine_moments(counts, parts[:, 1], parts[:, 2])  # same order on every rank
        if self.track_running_stats:
            if update_running_stats(self.running_mean, self.running_var, mean, var, total,
                                    self.momentum, self.num_batches_tracked, op):
                self.num_batches_tracked += 1
        rstd, coefficients = _bn_cpu.forward_coefficients(mean, var, args.weight, args.bias,
                                                          args.eps, x.dtype, layout.group)
        yk, y = layout.empty(x.dtype, apart_from=(xk,),
                             line_offset=_bn_cpu.output_line_offset(xk))
        _bn_cpu.affine(xk, coefficients, yk)
        self._sync = dict(layout=layout, xk=xk, mean=mean, rstd=rstd, weight=args.weight,
                          total=total, shape=x.shape)
        self._saved = None
        return y

    def backward(self, dy):
        if self._sync is None:
            return super().backward(dy)
        op = "SyncBatchNorm.backward"
        s = self._sync
        error = None
        try:
            dy = _checks.float_array(dy, op, "dy")
            _checks.same_shape(dy, np.empty(s["shape"], dtype=bool), op, "dy", "the forward's input")
        except Exception as exc:
            error = exc
        agree(self.comm, error, op)
        layout = s["layout"]
        dyk = layout.view(dy.astype(s["xk"].dtype, copy=False))  # the kernels take one dtype
        local = np.stack(_bn_cpu.grad_sums(dyk, s["xk"], s["mean"], layout.group))   # (2, C)
        total = np.empty_like(local)
        self.comm.Allreduce(local, total)
        coefficients, _ = _bn_cpu.backward_coefficients(  # its dweight is the global one
            total[0], total[1], s["mean"], s["rstd"], s["weight"], s["total"], True, s["xk"].dtype,
            layout.group)
        dxk, dx = layout.empty(s["xk"].dtype, apart_from=(dyk, s["xk"]),
                               line_offset=_bn_cpu.output_line_offset(s["xk"], dyk))
        _bn_cpu.grad_input(dyk, s["xk"], coefficients, dxk)
        if self.weight is not None:  # the local share: the gradient sync adds the others'
            self.weight.grad += (local[1] * s["rstd"]).astype(self.weight.grad.dtype)
        if self.bias is not None:
            self.bias.grad += local[0].astype(self.bias.grad.dtype)
        return dx


def _copy_bn(src, cls, **extra):
    dst = cls.__new__(cls)
    dst.__dict__.update(src.__dict__)   # same Parameter objects and running-statistics arrays
    dst.__dict__.update(extra)
    dst._saved = None
    if cls is SyncBatchNorm:
        dst._sync = None
    else:
        dst.__dict__.pop("comm", None)
        dst.__dict__.pop("_sync", None)
    return dst


def convert_sync_batchnorm(model, comm=None):
    """Replace every BatchNorm in a model by a SyncBatchNorm holding the same parameters and
    statistics (the same arrays, not copies).

    Parameters
    ----------
    model : Module
        A BatchNorm, or a Sequential (nested ones too), whose BatchNorm layers are converted.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    Module
        A lone BatchNorm converted; a Sequential changed in place; any other layer as it is.
    """
    comm = world() if comm is None else comm
    if isinstance(model, BatchNorm) and not isinstance(model, SyncBatchNorm):
        return _copy_bn(model, SyncBatchNorm, comm=comm)
    if isinstance(model, Sequential):
        model.layers = [convert_sync_batchnorm(layer, comm) for layer in model.layers]
    return model


def revert_sync_batchnorm(model):
    """The way back from :func:`convert_sync_batchnorm`: every SyncBatchNorm becomes a plain
    BatchNorm with the same state.

    Parameters
    ----------
    model : Module

    Returns
    -------
    Module
        As :func:`convert_sync_batchnorm` returns it.
    """
    if isinstance(model, SyncBatchNorm):
        return _copy_bn(model, BatchNorm)
    if isinstance(model, Sequential):
        model.layers = [revert_sync_batchnorm(layer) for layer in model.layers]
    return model


class GradientSync:
    """Sums every parameter's gradient across ``comm`` with one Allreduce over one fused buffer
    per step (not one call per parameter)."""

    def __init__(self, params, comm):
        self.params = list(params)
        self.comm = comm
        self.sizes = [p.grad.size for p in self.params]
        # one more value: how many processes failed their step (so a failure costs no call)
        self.buffer = np.empty(sum(self.sizes) + 1)
        self.bytes_per_step = 2 * self.buffer.nbytes  # sent + received, ignoring the algorithm

    def __call__(self, failed=False):
        """Sum the gradients across processes; returns how many processes passed ``failed``
        (the gradients are then left as they were)."""
        offset = 0
        for p, n in zip(self.params, self.sizes):
            self.buffer[offset:offset + n] = p.grad.reshape(-1)
            offset += n
        self.buffer[-1] = bool(failed)
        self.comm.Allreduce(mpi().IN_PLACE, self.buffer)
        failures = int(self.buffer[-1])
        if failures:
            return failures
        offset = 0
        for p, n in zip(self.params, self.sizes):
            p.grad[...] = self.buffer[offset:offset + n].reshape(p.grad.shape)
            offset += n
        return 0

    def broadcast_parameters(self, root=0):
        """Make every process start from root's parameters."""
        for p in self.params:
            self.comm.Bcast(p.data, root=root)
