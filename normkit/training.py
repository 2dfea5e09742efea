"""A minimal training loop: :func:`fit`, :func:`predict` and :func:`evaluate`."""

import math
import sys
import time

import numpy as np

from . import _checks, random
from .kernels.cpu.optim import all_finite
from .losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss

NAN_POLICIES = ("raise", "propagate")


class StopTraining(Exception):
    """Raised by a :func:`fit` callback to end training after the current epoch; ``fit`` then
    returns the history so far."""


class History(dict):
    """Per-epoch lists: ``loss``, ``accuracy``, ``epoch_time`` and, with validation data,
    ``val_loss`` and ``val_accuracy``. Accuracy is None for regression losses."""

    def epochs_to(self, key, target):
        """The first epoch at which a metric reached a target.

        Parameters
        ----------
        key : str
            A metric, such as ``"val_accuracy"``.
        target : float

        Returns
        -------
        int or None
            The first epoch (1-based) with ``history[key] >= target``; None if there is none.
        """
        for i, v in enumerate(self.get(key, [])):
            if v is not None and v >= target:
                return i + 1
        return None


def accuracy(pred, target, loss):
    """Classification accuracy, read the way ``loss`` reads predictions.

    Parameters
    ----------
    pred : ndarray
        Model outputs: logits (N, K) for CrossEntropyLoss, probabilities (BCELoss) or logits
        (BCEWithLogitsLoss) of shape (N, 1).
    target : ndarray
        Class labels (N,), or 0/1 values (N, 1) for the BCE losses.
    loss : loss object

    Returns
    -------
    float or None
        The fraction of correct predictions; None for a regression loss (MSELoss).
    """
    if isinstance(loss, CrossEntropyLoss):
        return float(np.mean(np.argmax(pred, axis=1) == np.asarray(target)))
    if isinstance(loss, (BCELoss, BCEWithLogitsLoss)):
        threshold = 0.5 if isinstance(loss, BCELoss) else 0.0
        labels = np.asarray(target).reshape(pred.shape) > 0.5
        return float(np.mean((pred > threshold) == labels))
    return None


def _batches(n, batch_size, order, min_last=2):
    starts = list(range(0, n, batch_size))
    # A last batch of one sample would make BatchNorm fail ("more than 1 value per channel"),
    # and with several processes each needs a sample: fold a short last batch into the previous.
    if len(starts) > 1 and n - starts[-1] < min_last:
        starts.pop()
    ends = starts[1:] + [n]
    return [order[s:e] for s, e in zip(starts, ends)]


def _samples(X, op, name="X"):
    """``X`` (an array or anything NumPy reads as one, such as nested lists) as an ndarray of at
    least one sample along its first axis."""
    X = np.asarray(X)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"{op}: {name} must hold samples along its first axis, got shape {X.shape}")
    return X


def predict(model, X, batch_size=1024):
    """Model outputs for ``X``, computed in eval mode (the model's mode is restored afterwards).

    Parameters
    ----------
    model : Module
    X : array_like
        Inputs, samples along the first axis.
    batch_size : int
        Samples per forward call.

    Returns
    -------
    ndarray
        The outputs of all samples, concatenated.
    """
    X = _samples(X, "predict")
    batch_size = _checks.positive_int(batch_size, "predict", "batch_size")
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model, X, y, loss, batch_size=1024):
    """Loss and accuracy of a model on a data set, in eval mode.

    Parameters
    ----------
    model : Module
    X, y : array_like
        Inputs and targets.
    loss : loss object
    batch_size : int
        Samples per forward call.

    Returns
    -------
    (float, float or None)
        The mean loss and the accuracy (None for a regression loss).
    """
    pred = predict(model, X, batch_size)
    y = _samples(y, "evaluate", "y")
    if len(y) != len(pred):
        raise ValueError(f"evaluate: X has {len(pred)} samples but y has {len(y)}")
    return loss(pred, y), accuracy(pred, y, loss)


def fit(model, X, y, *, loss, optimizer, epochs, batch_size, validation=None, shuffle=True,
        seed=0, progress=True, callbacks=(), nan_policy="raise", comm=None):
    """Train ``model`` with mini-batches; returns a :class:`History`.

    Parameters
    ----------
    model : Module
    X, y : array_like
        Training inputs and targets (labels for CrossEntropyLoss, 0/1 values or probabilities
        for the BCE losses). Before anything trains, two samples of X (and of X_val) go
        through the model in eval mode, and all targets, the validation ones too, are checked
        against the loss and the shape of the model's output (``loss.check_target(target,
        pred_shape)``, where a loss defines it): inputs or targets that do not fit raise before
        any state changes.
    loss : loss object (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss)
    optimizer : SGD or Adam over ``model.parameters()``
    epochs, batch_size : int
    validation : (X_val, y_val), optional
        Evaluated in eval mode after every epoch.
    shuffle : bool
        Reshuffle the training set every epoch.
    seed : int
        Seeds the shuffling and the dropout masks (normkit's global generator is replaced by a
        seeded one for the duration of the call): same seed, same model state, same history.
    progress : bool
        Print one line per epoch.
    callbacks : iterable of callables
        Each is called as ``callback(epoch, model, history)`` after every epoch (1-based epoch).
        One that raises :class:`StopTraining` ends training there (early stopping); the other
        callbacks of that epoch still run. With ``comm``, training stops on every process when
        a callback stops it on any.
    nan_policy : {"raise", "propagate"}
        ``"raise"``: NaN or inf in X, y or the validation data raise a ValueError before anything
        trains, and a batch whose loss or parameter gradients are NaN or inf (training diverged:
        a learning rate too high, say) raises a ``FloatingPointError`` before the optimiser's
        step, so the parameters keep the values of the last step made (BatchNorm's running
        statistics have taken that batch, where its statistics were finite). The error's
        ``history`` attribute holds the epochs completed before it. With ``comm``, the loss and
        gradients checked are the whole batch's, so every process raises. ``"propagate"``:
        train on regardless, as PyTorch does; one NaN then spreads to every parameter.
    comm : mpi4py communicator, optional
        Data-parallel training: every process passes the same X, y, seed and settings (sizes,
        settings and parameter shapes are compared before training); each batch is split
        into one contiguous slice per process, the upstream gradient is weighted by the slice's
        share of the batch, and the parameter gradients are summed across processes with one
        Allreduce per step, so the update equals single-process training on the whole batch
        (exactly so with SyncBatchNorm, see :func:`normkit.convert_sync_batchnorm`; plain
        BatchNorm layers normalise each slice on its own). Every process needs at least one
        sample of every batch, two with plain BatchNorm layers: a ``batch_size`` or sample count
        too small for that raises before anything trains. A step that fails on one process
        raises on all of them. Parameters start from rank 0's; losses and accuracies are those
        of the whole batch; only rank 0 prints progress.
    """
    X, y = _samples(X, "fit"), _samples(y, "fit", "y")
    if len(X) != len(y):
        raise ValueError(f"fit: X has {len(X)} samples but y has {len(y)}")
    batch_size = _checks.int_at_least(batch_size, 2, "fit", "batch_size")  # BatchNorm needs 2
    epochs = _checks.int_at_least(epochs, 0, "fit", "epochs")
    random.generator_from(seed, "fit")  # a seed NumPy refuses raises here, before any change
    if validation is not None:  # checked now rather than after the first epoch's training
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise ValueError("fit: validation must be a pair (X_val, y_val)")
        validation = _samples(validation[0], "fit", "X_val"), _samples(validation[1], "fit", "y_val")
        if len(validation[0]) != len(validation[1]):
            raise ValueError(f"fit: X_val has {len(validation[0])} samples but y_val has "
                             f"{len(validation[1])}")
    callbacks = _callables(callbacks)
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"fit: nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    data = {"X": X, "y": y}
    if validation is not None:
        data.update(X_val=validation[0], y_val=validation[1])
    bad_data = _non_finite_data(data) if nan_policy == "raise" else None
    size = 1 if comm is None else comm.Get_size()
    if size == 1 and bad_data:
        raise ValueError(f"fit: {bad_data}")
    if size > 1:
        _same_on_every_process(comm, bad_data, samples=len(X), sample_shape=X.shape[1:],
                               batch_size=batch_size, epochs=epochs, shuffle=bool(shuffle),
                               seed=seed, nan_policy=nan_policy,
                               parameters=[p.data.shape for p in model.parameters()])
    min_slice = _min_slice(model, batch_size, len(X), size)
    # One forward of two samples of each input, in eval mode (which updates no running
    # statistics and draws no dropout), finds inputs the model cannot take and the shape of its
    # output (the number of classes, say) before anything trains.
    output_shape = _probe(model, X, "X")  # of one sample
    if validation is not None:
        _probe(model, validation[0], "X_val")
    check_target = getattr(loss, "check_target", None)  # (custom loss objects may lack it)
    if check_target is not None:
        check_target(y, (len(y),) + output_shape)
        if validation is not None:
            check_target(validation[1], (len(validation[1]),) + output_shape)
    history = History(loss=[], accuracy=[], epoch_time=[])
    if validation is not None:
        history.update(val_loss=[], val_accuracy=[])
    n = len(X)
    parameters = model.named_parameters()
    rank, sync = 0, None
    if size > 1:
        from .distributed import GradientSync
        rank = comm.Get_rank()
        sync = GradientSync(model.parameters(), comm)
        sync.broadcast_parameters()
        progress = progress and rank == 0
    with random.seeded(seed) as gen:
        shuffler = np.random.default_rng(gen.integers(2**63))
        if rank:  # different dropout masks per process, shuffling shared by all
            random.manual_seed([seed, rank])
        model.train()
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            order = shuffler.permutation(n) if shuffle else np.arange(n)
            total_loss = 0.0
            correct = 0.0
            batches = _batches(n, batch_size, order, min_last=max(2, min_slice * size))
            for number, batch in enumerate(batches, start=1):
                idx = np.array_split(batch, size)[rank] if size > 1 else batch
                xb, yb = X[idx], y[idx]
                optimizer.zero_grad()
                if sync is None:
                    pred, batch_loss, batch_correct, dpred = _forward(model, loss, xb, yb)
                    model.backward(dpred)
                else:
                    pred, batch_loss, batch_correct = _data_parallel_step(
                        model, loss, xb, yb, len(idx) / len(batch), comm, sync)
                # (with comm, the loss and the gradients are the whole batch's on every process,
                # so all of them raise here, or none)
                problem = nan_policy == "raise" and _non_finite(batch_loss / len(batch), parameters)
                if problem:
                    error = FloatingPointError(
                        f"fit: training diverged in epoch {epoch}, batch {number} of "
                        f"{len(batches)}: {problem}. That batch's update was not made, so the "
                        "parameters are those of the step before; a smaller learning rate often "
                        "helps (nan_policy='propagate' trains on regardless)")
                    error.history = history
                    raise error
                optimizer.step()
                total_loss += batch_loss
                correct += batch_correct
            history["epoch_time"].append(time.perf_counter() - start)
            history["loss"].append(total_loss / n)
            history["accuracy"].append(None if accuracy(pred, yb, loss) is None else correct / n)
            if validation is not None:
                val_loss, val_acc = evaluate(model, *validation, loss)
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_acc)
            stop = False
            for callback in callbacks:
                try:
                    callback(epoch, model, history)
                except StopTraining:
                    stop = True
            if progress:
                print(_progress_line(epoch, epochs, history), file=sys.stdout, flush=True)
            if sync is not None:  # every process stops at the same epoch, or none waits alone
                stop = comm.allreduce(int(stop)) > 0
            if stop:
                break
    return history


def _forward(model, loss, xb, yb):
    """One batch's forward and loss: (the model's output, the loss summed over the batch, the
    number of correct predictions, the loss's gradient with respect to the output)."""
    pred = model(xb)
    batch_loss = loss(pred, yb) * len(xb)
    dpred = loss.backward()
    acc = accuracy(pred, yb, loss)
    return pred, batch_loss, 0.0 if acc is None else acc * len(xb), dpred


def _probe(model, X, name):
    """The shape of the model's output for one sample of ``X``, from its first two samples in
    eval mode; a model that cannot take them raises its error with ``X``'s own shape, not that
    of the two samples."""
    try:
        return predict(model, X[:2]).shape[1:]
    except (TypeError, ValueError) as exc:
        if type(exc) not in (TypeError, ValueError):  # subclasses may take other arguments
            raise
        raise type(exc)(f"fit: the model cannot take {name} of shape {X.shape} "
                        f"(tried its first samples): {exc}") from exc


def _data_parallel_step(model, loss, xb, yb, share, comm, sync):
    """:func:`_forward` and the backward on this process's slice (``share`` of the batch), then
    the whole batch's loss, number correct and parameter gradients, summed across ``comm``.
    A process whose forward, loss or backward fails still joins these collectives, and then
    every process raises: none is left waiting for it. (Not so for a failure inside a layer
    before a SyncBatchNorm reached by the others, which agree in its own exchange; the checks
    fit makes before training rule out the failures that inputs can cause.)"""
    from .distributed import agree
    error, pred, batch_loss, batch_correct = None, None, 0.0, 0.0
    try:
        pred, batch_loss, batch_correct, dpred = _forward(model, loss, xb, yb)
    except Exception as exc:
        error = exc
    batch_loss, batch_correct, failures = comm.allreduce(
        np.array([batch_loss, batch_correct, error is not None]))
    if failures:
        agree(comm, error, "fit")
    try:
        # the local loss is a mean over this slice's samples; the batch's over the whole batch
        model.backward(dpred * np.asarray(share, dtype=dpred.dtype))
    except Exception as exc:
        error = exc
    if sync(failed=error is not None):
        agree(comm, error, "fit")
    return pred, batch_loss, batch_correct


def _same_on_every_process(comm, bad_data, **settings):
    """Raise on every process unless all passed the same ``settings`` and data without NaN
    (``bad_data``: None, or what :func:`_non_finite_data` found): each process computes the
    same sequence of batches and sums gradients of the same shapes, so a difference (a
    process given more samples, another seed) would leave some waiting for the others, or
    mix up their gradients. One allgather, before training."""
    everyone = comm.allgather((bad_data, settings))
    for rank, (problem, _) in enumerate(everyone):
        if problem:
            raise ValueError(f"fit: {problem}" if rank == comm.Get_rank() else
                             f"fit: rank {rank}'s {problem}")
    everyone = [theirs for _, theirs in everyone]
    for rank, theirs in enumerate(everyone[1:], start=1):
        differing = [k for k in settings if theirs[k] != everyone[0][k]]
        if differing:
            details = "; ".join(f"{k}: {everyone[0][k]} on rank 0, {theirs[k]} on rank {rank}"
                                for k in differing)
            raise ValueError(f"fit: every process must pass the same data size, settings and "
                             f"model, but {details}")


def _min_slice(model, batch_size, n, size):
    """The fewest samples each of ``size`` processes must get of every batch: 1, or 2 where a
    BatchNorm normalises each process's slice on its own (only a SyncBatchNorm takes the
    statistics of the whole batch). Raises, before anything trains, where ``batch_size`` or
    ``n`` samples are too few for that."""
    if size == 1:
        return 1
    from .distributed import SyncBatchNorm
    from .nn import BatchNorm
    per_process_bn = any(isinstance(m, BatchNorm) and not isinstance(m, SyncBatchNorm)
                         and not (m.frozen and m.track_running_stats)  # uses running stats
                         for m in model.modules())
    need = 2 if per_process_bn else 1
    why = ("the model's BatchNorm layers normalise each process's slice on their own, which "
           "takes two samples (convert_sync_batchnorm(model) normalises with the statistics of "
           "the whole batch and needs one)" if per_process_bn
           else "every process needs a sample of every batch")
    for count, name in ((batch_size, "batch_size"), (n, "X's sample count")):
        if count < need * size:
            raise ValueError(f"fit: {name} {count} is too small for {size} processes: {why}, "
                             f"so it must be at least {need * size}")
    return need


def _non_finite_data(arrays):
    """For the first of the named ``arrays`` that holds NaN or inf: which, how many samples and
    the first of them; None where all are finite."""
    for name, a in arrays.items():
        if a.dtype.kind not in "fc":  # integer labels, booleans: nothing to check
            continue
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            return (f"{name} has NaN or inf values in {int(bad.sum())} of {len(a)} samples, the "
                    f"first at index {int(np.argmax(bad))}; one such sample makes every gradient "
                    "of its batch NaN (remove or fill them, or pass nan_policy='propagate')")
    return None


def _non_finite(mean_loss, parameters):
    """What is not finite after a batch's backward: its mean loss, or a gradient of one of the
    named ``parameters``; None if everything is."""
    if not math.isfinite(mean_loss):
        return f"its loss is {mean_loss}"
    for name, p in parameters:
        if not all_finite(p.grad.reshape(-1)):
            return f"the gradient of {name} has NaN or inf values"
    return None


def _callables(callbacks):
    """``callbacks`` as a list, each checked to be callable (a mistake found after the first
    epoch had trained is found too late)."""
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(f"fit: callbacks must be a list of callables, got a "
                        f"{type(callbacks).__name__}") from None
    for i, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(f"fit: callbacks[{i}] is not callable, got {callback!r} (each is "
                            "called as callback(epoch, model, history))")
    return callbacks


def _progress_line(epoch, epochs, history):
    parts = [f"epoch {epoch:>{len(str(epochs))}}/{epochs}", f"loss {history['loss'][-1]:.4f}"]
    if history["accuracy"][-1] is not None:
        parts.append(f"acc {history['accuracy'][-1]:.4f}")
    if "val_loss" in history:
        parts.append(f"val_loss {history['val_loss'][-1]:.4f}")
        if history["val_accuracy"][-1] is not None:
            parts.append(f"val_acc {history['val_accuracy'][-1]:.4f}")
    parts.append(f"{history['epoch_time'][-1] * 1e3:.0f} ms")
    return "  ".join(parts)

