"""Run under mpiexec by tests/test_distributed.py: python mpi_check.py sync|fit|fault|eval|guards.

Every rank prints "OK <mode> rank <r>" when its checks pass; an assertion error exits non-zero.
"""

import sys

import numpy as np
from mpi4py import MPI

import normkit as nk
from normkit.distributed import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def slices(n_total):
    """Uneven contiguous slices, one of them a single sample."""
    sizes = [1] + [2 * k + 3 for k in range(1, size)]
    sizes[-1] += n_total - sum(sizes)
    bounds = np.cumsum([0] + sizes)
    return slice(bounds[rank], bounds[rank + 1])


def check_sync():
    rng = np.random.default_rng(0)  # same data on every rank
    for shape, axis in [((24, 5), 1), ((20, 3, 7), 1), ((22, 4, 4, 3), -1)]:
        x = rng.standard_normal(shape) * 3 + 2
        dy = rng.standard_normal(shape)
        c = shape[axis]
        w, b = rng.standard_normal(c), rng.standard_normal(c)
        plain = nk.BatchNorm(c, axis=axis, dtype=np.float64, momentum=0.3)
        sync = SyncBatchNorm(c, axis=axis, dtype=np.float64, momentum=0.3, comm=comm)
        for layer in (plain, sync):
            layer.weight.data[...] = w
            layer.bias.data[...] = b
        sl = slices(shape[0])
        for step in range(2):  # running statistics over two steps
            y_all = plain(x + step)
            y = sync((x + step)[sl])
            np.testing.assert_allclose(y, y_all[sl], atol=1e-10)
        dx_all = plain.backward(dy)
        dx = sync.backward(dy[sl])
        np.testing.assert_allclose(dx, dx_all[sl], atol=1e-10)
        for name in ("weight", "bias"):
            total = comm.allreduce(getattr(sync, name).grad)
            np.testing.assert_allclose(total, getattr(plain, name).grad, atol=1e-10)
        np.testing.assert_allclose(sync.running_mean, plain.running_mean, atol=1e-10)
        np.testing.assert_allclose(sync.running_var, plain.running_var, atol=1e-10)
        assert sync.num_batches_tracked == plain.num_batches_tracked == 2
        # eval after training: the same answer, locally
        plain.eval()
        sync.eval()
        np.testing.assert_allclose(sync(x[sl]), plain(x)[sl], atol=1e-10)
    # a dy of the other float dtype: dx in x's dtype, as BatchNorm's (it failed to compile)
    x, dy = rng.standard_normal((12, 4)), rng.standard_normal((12, 4)).astype(np.float32)
    plain = nk.BatchNorm(4, dtype=np.float64)
    sync = SyncBatchNorm(4, dtype=np.float64, comm=comm)
    sl = slices(12)
    plain(x)
    sync(x[sl])
    dx_all, dx = plain.backward(dy), sync.backward(dy[sl])
    assert dx.dtype == dx_all.dtype == np.float64
    np.testing.assert_allclose(dx, dx_all[sl], atol=1e-10)
    # conversion and back keep parameters and statistics
    model = nk.seed_model(5, norm="batch", dtype=np.float64, rng=np.random.default_rng(1))
    before = model.state_dict()
    convert_sync_batchnorm(model, comm)
    assert isinstance(model[1], SyncBatchNorm) and model[1].weight is not None
    revert_sync_batchnorm(model)
    assert type(model[1]) is nk.BatchNorm
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def check_fit():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((90, 6))
    y = (X[:, :2].sum(axis=1, keepdims=True) > 0).astype(np.float64)

    def train(comm_arg, sync):
        model = nk.seed_model(6, norm="batch", hidden=16, dropout=0.0, dtype=np.float64,
                              rng=np.random.default_rng(3))
        if sync:
            convert_sync_batchnorm(model, comm)
        opt = nk.SGD(model.parameters(), lr=0.1, momentum=0.9)
        hist = nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=opt, epochs=2, batch_size=32,
                      seed=5, progress=False, comm=comm_arg)
        return model, hist

    single, h1 = train(None, False)
    multi, h2 = train(comm, True)
    for k, v in single.state_dict().items():
        np.testing.assert_allclose(multi.state_dict()[k], v, rtol=1e-9, atol=1e-10, err_msg=k)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-9)
    # parameters are identical on every process
    mine = np.concatenate([p.data.ravel() for p in multi.parameters()])
    assert np.array_equal(comm.bcast(mine), mine)


def check_fault():
    layer = SyncBatchNorm(4, comm=comm, dtype=np.float64)
    x = np.ones((5, 3 if rank == 1 else 4))  # rank 1 has the wrong channel count
    try:
        layer(x)
    except ValueError as exc:
        assert rank == 1 and "4 channels" in str(exc), exc
    except RuntimeError as exc:
        assert rank != 1 and "rank 1 failed" in str(exc), exc
    else:
        raise AssertionError("no error raised")
    assert layer.num_batches_tracked == 0 and (layer.running_mean == 0).all()
    # and the collective is still usable afterwards
    assert comm.allreduce(1) == size


class CountingComm:
    """A communicator that counts the calls made through it."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def Get_size(self):
        return self.inner.Get_size()

    def __getattr__(self, name):
        self.calls += 1
        return getattr(self.inner, name)


def check_eval():
    counting = CountingComm(comm)
    layer = SyncBatchNorm(3, comm=counting, dtype=np.float64)
    x = np.random.default_rng(rank).standard_normal((6, 3))
    layer(x)
    layer.backward(np.ones_like(x))
    assert counting.calls > 0
    counting.calls = 0
    layer.eval()
    layer(x)
    layer.backward(np.ones_like(x))
    assert counting.calls == 0, counting.calls
    single = CountingComm(MPI.COMM_SELF)
    alone = SyncBatchNorm(3, comm=single, dtype=np.float64)
    alone(x)
    alone.backward(np.ones_like(x))
    assert single.calls == 0


def check_fit_guards():
    """fit refuses, on every process and before anything trains, processes given different
    data sizes or settings, NaN in one process's data and batches that would leave a process
    too few samples; a step that fails on one process raises on every process, and so does a
    gradient that is not finite on one; a callback that stops training on one process stops
    it on all."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 5))
    y = (X[:, :1] > 0).astype(np.float64)
    model = nk.seed_model(5, norm="batch", hidden=8, dtype=np.float64, rng=np.random.default_rng(3))
    before = {k: v.copy() for k, v in model.state_dict().items()}

    def fit(batch_size, samples=30, **kwargs):
        settings = dict(loss=nk.BCELoss(), epochs=1, progress=False, comm=comm) | kwargs
        return nk.fit(model, X[:samples], y[:samples], batch_size=batch_size,
                      optimizer=nk.SGD(model.parameters(), lr=0.1), **settings)

    def refused(message, *args, **kwargs):
        try:
            fit(*args, **kwargs)
        except ValueError as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"fit{args, kwargs} trained")
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)

    # every process must pass the same data size, settings and model
    refused(f"samples: 30 on rank 0, 29 on rank {size - 1}", 2 * size,
            samples=29 if rank == size - 1 else 30)
    refused("seed: 0 on rank 0, 1 on rank 1", 2 * size, seed=rank)
    # NaN in one process's data: refused on all, the others told which rank
    value = X[7, 2]
    X[7, 2] = np.nan if rank == size - 1 else value
    refused(("fit: X" if rank == size - 1 else f"fit: rank {size - 1}'s X")
            + " has NaN or inf values in 1 of 30 samples, the first at index 7", 2 * size)
    X[7, 2] = value
    # plain BatchNorm normalises each slice alone: two samples a process, in every batch
    refused(f"batch_size {2 * size - 1} is too small for {size} processes", 2 * size - 1)
    refused(f"X's sample count {2 * size - 1} is too small", 2 * size, samples=2 * size - 1)
    fit(2 * size)  # the last batch of 30 is merged into the one before if it is short
    for layer in model.layers:  # frozen BatchNorm layers use their running statistics
        if isinstance(layer, nk.BatchNorm):
            layer.freeze()
    fit(size)
    for layer in model.layers:
        if isinstance(layer, nk.BatchNorm):
            layer.unfreeze()
    # SyncBatchNorm: one sample a process is enough, none is not
    convert_sync_batchnorm(model, comm)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    if size > 2:
        refused("every process needs a sample of every batch", size - 1)
    fit(size)

    class FailsOnTheLastRank(nk.BCELoss):
        calls = 0

        def __call__(self, pred, target):
            self.calls += 1
            if rank == size - 1 and self.calls == 3:
                raise FloatingPointError("a loss that fails on one process")
            return super().__call__(pred, target)

    class FailsInBackwardOnTheLastRank(nk.nn.Module):  # before every layer: its backward is last
        calls = 0

        def forward(self, x):
            return x

        def backward(self, dy):
            self.calls += 1
            if rank == size - 1 and self.calls == 2:
                raise FloatingPointError("a backward that fails on one process")
            return dy

    for failing in ("loss", "backward"):
        try:
            if failing == "loss":
                fit(size, loss=FailsOnTheLastRank())
            else:
                model = nk.Sequential(FailsInBackwardOnTheLastRank(), *model.layers)
                fit(size)
        except FloatingPointError:
            assert rank == size - 1
        except RuntimeError as exc:
            assert rank != size - 1 and f"rank {size - 1} failed" in str(exc), exc
        else:
            raise AssertionError(f"no error raised by a failing {failing}")
        assert comm.allreduce(1) == size  # and nobody is left inside a collective

    class InfiniteGradientOnTheLastRank(nk.nn.Module):
        """Adds inf to its parameter's gradient at its second backward, on the last rank only:
        the sum of the processes' gradients is inf on every process, so all of them stop."""

        def __init__(self):
            super().__init__()
            self.scale = nk.Parameter(np.zeros(1))
            self.calls = 0

        def forward(self, x):
            return x

        def backward(self, dy):
            self.calls += 1
            if rank == size - 1 and self.calls == 2:
                self.scale.grad += np.inf
            return dy

    model = nk.Sequential(InfiniteGradientOnTheLastRank(), *model.layers)
    before = {k: p.data.copy() for k, p in model.named_parameters()}
    try:
        fit(size, epochs=2)  # (the first step changes the parameters, the second does not)
    except FloatingPointError as exc:
        assert "batch 2 of" in str(exc) and "the gradient of 0.scale has NaN or inf" in str(exc), exc
    else:
        raise AssertionError("a gradient that is inf on one process did not stop training")
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    assert any((p.data != before[k]).any() for k, p in model.named_parameters())
    assert comm.allreduce(1) == size

    def stop_on_rank_0(epoch, model, history):
        if rank == 0 and epoch == 2:
            raise nk.StopTraining

    hist = fit(size, epochs=5, callbacks=[stop_on_rank_0])
    assert len(hist["loss"]) == 2
    assert comm.allreduce(1) == size


if __name__ == "__main__":
    mode = sys.argv[1]
    {"sync": check_sync, "fit": check_fit, "fault": check_fault, "eval": check_eval,
     "guards": check_fit_guards}[mode]()
    print(f"OK {mode} rank {rank}", flush=True)
