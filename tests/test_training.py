"""Training on real data, reproducibility, losses and optimisers against PyTorch."""

import subprocess
import sys

import numpy as np
import pytest

import normkit as nk
from normkit import cli, datasets

from .gradcheck import numerical_grad

pytest.importorskip("sklearn")


def _train(name, norm="batch", epochs=8, seed=0, progress=False):
    X, y, Xv, yv = datasets.load(name)
    out = 1 if name == "breast_cancer" else 10
    nk.manual_seed(seed)
    model = nk.seed_model(X.shape[1], out, norm=norm)
    loss = nk.BCELoss() if out == 1 else nk.CrossEntropyLoss()
    hist = nk.fit(model, X, y, loss=loss, optimizer=nk.Adam(model.parameters(), lr=1e-3),
                  epochs=epochs, batch_size=32, validation=(Xv, yv), seed=seed, progress=progress)
    return model, hist


@pytest.mark.parametrize("name,target", [("breast_cancer", 0.95), ("digits", 0.93)])
def test_seed_model_with_batchnorm_learns_real_data(name, target):
    _, hist = _train(name)
    assert hist["val_accuracy"][-1] >= target, hist["val_accuracy"]
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert len(hist["loss"]) == len(hist["val_loss"]) == len(hist["epoch_time"]) == 8


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_seed_model_with_layernorm_or_none_trains(norm):
    _, hist = _train("breast_cancer", norm=norm, epochs=5)
    assert hist["val_accuracy"][-1] >= 0.93 and hist["loss"][-1] < hist["loss"][0]


def test_same_seed_same_history_other_seed_other_history():
    m1, h1 = _train("breast_cancer", epochs=3, seed=7)
    m2, h2 = _train("breast_cancer", epochs=3, seed=7)
    m3, h3 = _train("breast_cancer", epochs=3, seed=8)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h1[key] == h2[key]
    assert h1["loss"] != h3["loss"]
    for k, v in m1.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k])


def test_progress_lines(capsys):
    _train("breast_cancer", epochs=2, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "val_acc" in lines[1]
    _train("breast_cancer", epochs=2, progress=False)
    assert capsys.readouterr().out == ""


def test_last_batch_of_one_is_folded_into_the_previous():
    X, y = np.random.default_rng(0).standard_normal((65, 4)).astype(np.float32), np.zeros((65, 1), np.float32)
    model = nk.Sequential(nk.Linear(4, 3), nk.BatchNorm(3), nk.Linear(3, 1), nk.Sigmoid())
    nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1), epochs=1,
           batch_size=32, progress=False)
    assert model[1].num_batches_tracked == 2


@pytest.mark.parametrize("make_loss,target_kind", [
    (nk.BCELoss, "prob"), (nk.BCEWithLogitsLoss, "binary"), (nk.CrossEntropyLoss, "labels"), (nk.MSELoss, "real")])
def test_loss_values_and_gradients(rng, make_loss, target_kind):
    torch = pytest.importorskip("torch")
    loss = make_loss()
    if target_kind == "labels":
        pred, target = rng.standard_normal((9, 4)), rng.integers(0, 4, 9)
        want = torch.nn.functional.cross_entropy(torch.from_numpy(pred), torch.from_numpy(target)).item()
    elif target_kind == "prob":
        pred, target = rng.uniform(0.05, 0.95, (9, 1)), rng.integers(0, 2, (9, 1)).astype(float)
        want = torch.nn.functional.binary_cross_entropy(torch.from_numpy(pred), torch.from_numpy(target)).item()
    elif target_kind == "binary":
        pred, target = rng.standard_normal((9, 1)) * 30, rng.integers(0, 2, (9, 1)).astype(float)  # saturated
        want = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(pred), torch.from_numpy(target)).item()
    else:
        pred, target = rng.standard_normal((9, 2)), rng.standard_normal((9, 2))
        want = torch.nn.functional.mse_loss(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert loss(pred, target) == pytest.approx(want, rel=1e-10)
    if target_kind == "binary":  # the value is checked saturated; the gradient at moderate logits
        pred = pred / 10
        loss(pred, target)
    grad = loss.backward()
    # central differences: truncation ~h^2, round-off ~1e-16 * |loss| / h, both far below atol
    idx, num = numerical_grad(lambda: np.array(loss(pred, target)), pred, 1.0, h=1e-6)
    np.testing.assert_allclose(grad.reshape(-1)[idx], num, rtol=1e-5, atol=1e-8)


def test_loss_errors():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        nk.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="pred has shape"):
        nk.MSELoss()(np.zeros((2, 3)), np.zeros(5))
    with pytest.raises(RuntimeError, match="before the loss"):
        nk.MSELoss().backward()
    with pytest.raises(ValueError, match=r"BCELoss: pred must be probabilities in \[0, 1\].*-0.25"):
        nk.BCELoss()(np.array([[0.5], [-0.25]]), np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"BCELoss: pred must be probabilities.*1.5"):
        nk.BCELoss()(np.array([[1.5], [1.0]]), np.ones((2, 1)))
    # a diverged model's NaN output gives a NaN loss (to be seen in the history), not an error
    assert np.isnan(nk.BCELoss()(np.array([[np.nan], [0.5]]), np.ones((2, 1))))
    with pytest.raises(TypeError, match="BCEWithLogitsLoss: target must hold real numbers, got dtype complex128"):
        nk.BCEWithLogitsLoss()(np.zeros((2, 1)), np.ones((2, 1), complex))
    with pytest.raises(ValueError, match=r"expected logits \(N, K\) and labels \(N,\), got \(4,\) and \(4,\)"):
        nk.CrossEntropyLoss()(np.zeros(4), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"expected logits \(N, K\) and labels \(N,\), got \(4, 3\) and \(5,\)"):
        nk.CrossEntropyLoss()(np.zeros((4, 3)), np.zeros(5, int))
    # without the predictions' shape, check_target checks what it can: label values and dtype
    nk.CrossEntropyLoss().check_target(np.array([0, 7, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got \[0, 7\]"):
        nk.CrossEntropyLoss().check_target(np.array([0, 7, 2]), (3, 3))


@pytest.mark.parametrize("make_loss", [nk.BCELoss, nk.BCEWithLogitsLoss])
@pytest.mark.parametrize("bad", [-1.0, 2.0, np.nan])
def test_binary_losses_take_targets_in_0_1_only(make_loss, bad):
    loss = make_loss()
    pred = np.full((3, 1), 0.5)
    assert np.isfinite(loss(pred, np.array([[0.0], [0.3], [1.0]])))  # soft labels are fine
    with pytest.raises(ValueError, match=rf"{make_loss.__name__}: target must hold probabilities "
                                         rf"in \[0, 1\].*{bad}"):
        loss(pred, np.array([[0.0], [bad], [1.0]]))


def _with_bad_last_sample(y, bad):
    y = y.astype(np.result_type(y, type(bad)))  # (a copy)
    y[-1] = bad
    return y


@pytest.mark.parametrize("make_loss, bad, message", [
    (nk.BCELoss, 2.0, r"BCELoss: target must hold probabilities in \[0, 1\].*2\.0"),
    (nk.BCEWithLogitsLoss, 0.5 + 1j, r"BCEWithLogitsLoss: target must hold real numbers"),
    # (fit's own check of all data finds a NaN target first)
    (nk.BCEWithLogitsLoss, np.nan, r"fit: y(_val)? has NaN or inf values in 1 of 40 samples, "
                                   r"the first at index 39"),
    (nk.CrossEntropyLoss, -1, "CrossEntropyLoss: labels must be >= 0, got -1"),
    (nk.CrossEntropyLoss, 0.5, "CrossEntropyLoss: labels must be integers"),
    # the model has 2 outputs: only a forward tells fit that label 2 is out of range
    (nk.CrossEntropyLoss, 2, r"CrossEntropyLoss: labels must be in \[0, 2\), got \[0, 2\]")])
@pytest.mark.parametrize("where", ["y", "y_val"])
def test_fit_checks_every_target_before_training(make_loss, bad, message, where):
    # a bad target in the last batch must not leave the model trained on the batches before it
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 4))
    if make_loss is nk.CrossEntropyLoss:
        model = nk.Sequential(nk.Linear(4, 3, rng=rng), nk.BatchNorm(3), nk.Linear(3, 2, rng=rng))
        y = rng.integers(0, 2, 40)
    else:
        model = nk.Sequential(nk.Linear(4, 3, rng=rng), nk.BatchNorm(3), nk.Linear(3, 1, rng=rng))
        y = rng.integers(0, 2, (40, 1)).astype(float)
    y_bad = _with_bad_last_sample(y, bad)
    y_fit, y_val = (y_bad, y) if where == "y" else (y, y_bad)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=message):
        nk.fit(model, X, y_fit, loss=make_loss(), optimizer=nk.SGD(model.parameters(), lr=0.1),
               epochs=1, batch_size=8, validation=(X, y_val), progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("make_loss, outputs, y_shape, message", [
    (nk.BCELoss, 2, (40, 1), r"BCELoss: pred has shape \(40, 2\) but target has shape \(40, 1\)"),
    (nk.MSELoss, 1, (40, 3), r"MSELoss: pred has shape \(40, 1\) but target has shape \(40, 3\)"),
    (nk.CrossEntropyLoss, 1, (40, 2), r"CrossEntropyLoss: expected labels \(N,\), got shape \(40, 2\)")])
@pytest.mark.parametrize("where", ["y", "y_val"])
def test_fit_checks_targets_against_the_model_output_before_training(make_loss, outputs, y_shape,
                                                                      message, where):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 4))
    model = nk.Sequential(nk.Linear(4, 3, rng=rng), nk.BatchNorm(3), nk.Dropout(0.5),
                          nk.Linear(3, outputs, rng=rng))
    if make_loss is nk.CrossEntropyLoss:
        good = rng.integers(0, outputs, 40)
    else:
        good = rng.integers(0, 2, (40, outputs)).astype(float)
    bad = rng.integers(0, 2, y_shape)
    y_fit, y_val = (bad, good) if where == "y" else (good, bad)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        nk.fit(model, X, y_fit, loss=make_loss(), optimizer=nk.SGD(model.parameters(), lr=0.1),
               epochs=1, batch_size=8, validation=(X, y_val), progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.training


def _small_problem(n=40):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((n, 4)), (rng.random((n, 1)) > 0.5).astype(float)
    model = nk.Sequential(nk.Linear(4, 3, rng=rng), nk.BatchNorm(3), nk.Linear(3, 1, rng=rng), nk.Sigmoid())
    return model, X, y


def test_evaluate_is_what_fit_reports_for_validation():
    model, X, y = _small_problem()
    Xv, yv = X[:20], y[:20]
    hist = nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1),
                  epochs=2, batch_size=8, validation=(Xv, yv), progress=False)
    loss, acc = nk.evaluate(model, Xv, yv, nk.BCELoss(), batch_size=7)  # in several batches
    assert (loss, acc) == (hist["val_loss"][-1], hist["val_accuracy"][-1])
    assert model.training  # eval mode only for the call
    model.eval()
    pred = model(Xv)
    assert loss == pytest.approx(-np.mean(yv * np.log(pred) + (1 - yv) * np.log(1 - pred)), rel=1e-6)
    assert acc == np.mean((pred > 0.5) == (yv > 0.5))
    with pytest.raises(ValueError, match="evaluate: X has 20 samples but y has 19"):
        nk.evaluate(model, Xv, yv[:19], nk.BCELoss())


class _HuberLoss:
    """A loss of the user's own: a call and a backward, no check_target."""

    def __call__(self, pred, target):
        self._diff = pred - np.asarray(target).reshape(pred.shape)
        return float(np.mean(np.where(np.abs(self._diff) < 1, 0.5 * self._diff ** 2, np.abs(self._diff) - 0.5)))

    def backward(self):
        return (np.clip(self._diff, -1, 1) / self._diff.size).astype(self._diff.dtype)


def test_fit_takes_a_loss_of_ones_own():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((64, 3))
    y = X @ np.array([[1.0], [-2.0], [0.5]])
    model = nk.Sequential(nk.Linear(3, 8, rng=rng), nk.BatchNorm(8), nk.ReLU(), nk.Linear(8, 1, rng=rng))
    hist = nk.fit(model, X, y, loss=_HuberLoss(), optimizer=nk.Adam(model.parameters(), lr=0.02),
                  epochs=30, batch_size=16, validation=(X, y), progress=False)
    assert hist["accuracy"] == [None] * 30 and hist["val_accuracy"] == [None] * 30
    assert hist["val_loss"][-1] < 0.2 * hist["val_loss"][0]  # it learns


def test_a_callback_stops_training_early():
    def train(epochs, callbacks=()):
        model, X, y = _small_problem()
        hist = nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1),
                      epochs=epochs, batch_size=8, validation=(X, y), progress=False,
                      callbacks=callbacks)
        return model, hist

    seen = []

    def stop_after_three(epoch, model, history):
        if epoch >= 3:
            raise nk.StopTraining

    stopped, hist = train(10, [stop_after_three, lambda epoch, *_: seen.append(epoch)])
    assert seen == [1, 2, 3]  # the callbacks after the stopping one still ran for its epoch
    assert all(len(v) == 3 for v in hist.values())
    three, hist3 = train(3)
    assert hist == hist3 | {"epoch_time": hist["epoch_time"]}
    for k, v in three.state_dict().items():
        np.testing.assert_array_equal(stopped.state_dict()[k], v, err_msg=k)


def test_a_callback_can_schedule_the_learning_rate():
    def train(schedule=None):
        model, X, y = _small_problem()
        optimizer = nk.Adam(model.parameters(), lr=0.05)
        snapshots = []

        def snapshot(epoch, model, history):
            snapshots.append([p.data.copy() for p in model.parameters()])

        def decay(epoch, model, history):
            optimizer.lr = schedule(epoch)
        nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=optimizer, epochs=3, batch_size=8,
               progress=False, callbacks=[snapshot] + ([decay] if schedule else []))
        return optimizer, snapshots

    steady = train()[1]
    optimizer, decayed = train(lambda epoch: 0.05 * 10.0 ** (-3 * epoch))
    assert optimizer.lr == pytest.approx(5e-11)
    for a, b in zip(steady[0], decayed[0]):  # the same first epoch
        np.testing.assert_array_equal(a, b)

    def change(snapshots, epoch):  # the largest change of a value over an epoch
        return max(np.abs(a - b).max() for a, b in zip(snapshots[epoch], snapshots[epoch - 1]))
    # Adam moves a value by about lr a step whatever the gradient: at 5e-5 an epoch barely moves
    assert change(decayed, 1) < 1e-2 * change(steady, 1)


def test_fit_takes_nested_lists_as_arrays():
    model, X, y = _small_problem()
    h_arrays = nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1),
                      epochs=2, batch_size=8, validation=(X, y), progress=False)
    model, _, _ = _small_problem()
    h_lists = nk.fit(model, X.tolist(), y.tolist(), loss=nk.BCELoss(), progress=False,
                     optimizer=nk.SGD(model.parameters(), lr=0.1), epochs=2, batch_size=8,
                     validation=(X.tolist(), y.tolist()))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h_lists[key] == h_arrays[key]
    assert nk.predict(model, X.tolist()).shape == (40, 1)


@pytest.mark.parametrize("where", ["X", "y", "X_val", "y_val"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_refuses_non_finite_data_before_training(where, bad):
    model, X, y = _small_problem()
    y = y * 0.5  # (MSELoss: its targets take any real number but NaN and inf)
    data = {"X": X.copy(), "y": y.copy(), "X_val": X[:12].copy(), "y_val": y[:12].copy()}
    data[where][7, 0] = bad
    data[where][9, -1] = bad
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"fit: {where} has NaN or inf values in 2 of "
                                         rf"{len(data[where])} samples, the first at index 7"):
        nk.fit(model, data["X"], data["y"], loss=nk.MSELoss(), epochs=1, batch_size=8,
               optimizer=nk.SGD(model.parameters(), lr=0.1),
               validation=(data["X_val"], data["y_val"]), progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


class _Snapshots(nk.SGD):
    """SGD that keeps a copy of the model's state after every step."""

    def __init__(self, model, lr):
        super().__init__(model.parameters(), lr=lr)
        self.model, self.states = model, []

    def step(self):
        super().step()
        self.states.append({k: v.copy() for k, v in self.model.state_dict().items()})


def _diverging_run():
    """A model, its optimiser and a function training it with plain SGD at a learning rate far
    too high: the loss becomes NaN within a few batches."""
    X, y, _, _ = datasets.load_digits()
    nk.manual_seed(0)
    model = nk.seed_model(X.shape[1], 10, norm="none")
    optimizer = _Snapshots(model, lr=3.0)

    def train(nan_policy="raise"):
        with np.errstate(all="ignore"):
            return nk.fit(model, X, y, loss=nk.CrossEntropyLoss(), optimizer=optimizer, epochs=2,
                          batch_size=32, progress=False, nan_policy=nan_policy)
    return model, optimizer, train


def test_fit_stops_before_a_diverged_batch_changes_the_parameters():
    model, optimizer, train = _diverging_run()
    with pytest.raises(FloatingPointError, match=r"fit: training diverged in epoch 1, batch \d+ "
                                                 r"of 45: its loss is nan\. That batch's update") as info:
        train()
    assert info.value.history["loss"] == []  # no epoch completed
    # the parameters are as the last step that was made left them, and finite
    assert optimizer.states
    for k, p in model.named_parameters():
        assert np.isfinite(p.data).all(), k
        np.testing.assert_array_equal(p.data, optimizer.states[-1][k], err_msg=k)
    # without the policy the NaN reaches every parameter
    model, _, train = _diverging_run()
    hist = train("propagate")
    assert np.isnan(hist["loss"]).all()
    assert all(np.isnan(p.data).all() for p in model.parameters())


class _InfiniteGradient(nk.Module):
    """Passes its input on; the gradient of its own parameter is inf from a given step on."""

    def __init__(self, from_step):
        super().__init__()
        self.scale = nk.Parameter(np.zeros(1))
        self.from_step, self.steps = from_step, 0

    def forward(self, x):
        return x

    def backward(self, dy):
        self.steps += 1
        self.scale.grad += np.inf if self.steps >= self.from_step else 1.0
        return dy


def test_fit_stops_at_a_gradient_that_is_not_finite_even_where_the_loss_is():
    model, X, y = _small_problem()
    model = nk.Sequential(*model, _InfiniteGradient(from_step=8))
    optimizer = _Snapshots(model, lr=0.1)
    with pytest.raises(FloatingPointError, match=r"fit: training diverged in epoch 2, batch 3 of 5: "
                                                 r"the gradient of 4\.scale has NaN or inf values") as info:
        nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=optimizer, epochs=3, batch_size=8,
               progress=False)
    assert len(info.value.history["loss"]) == 1 and len(optimizer.states) == 7
    # (the running statistics took that batch's forward, which was finite)
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, optimizer.states[-1][k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 64, 1001])
def test_the_gradient_check_finds_every_non_finite_value(rng, dtype, size):
    from normkit.kernels.cpu.optim import all_finite
    a = (rng.standard_normal(size) * 1e30).astype(dtype)
    assert all_finite(a)
    assert all_finite(np.full(size, np.finfo(dtype).max, dtype))  # large is not infinite
    for bad in (np.nan, np.inf, -np.inf):
        for i in {0, size // 2, size - 1}:
            b = a.copy()
            b[i] = bad
            assert not all_finite(b), (bad, i)


@pytest.mark.parametrize("kwargs,message", [
    (dict(epochs=-1), "fit: epochs must be an int >= 0, got -1"),
    (dict(epochs=1.5), "fit: epochs must be an int >= 0, got 1.5"),
    (dict(batch_size=1), "fit: batch_size must be an int >= 2, got 1"),
    (dict(batch_size=None), "fit: batch_size must be an int >= 2, got None"),
    (dict(validation=np.zeros((3, 4))), r"fit: validation must be a pair \(X_val, y_val\)"),
    (dict(validation=(np.zeros((3, 4)), np.zeros((2, 1)))), "fit: X_val has 3 samples but y_val has 2"),
    (dict(X=np.zeros((0, 4)), y=np.zeros((0, 1))), r"fit: X must hold samples along its first axis, got shape \(0, 4\)"),
    (dict(y=np.float64(1.0)), r"fit: y must hold samples along its first axis, got shape \(\)"),
    (dict(y=np.zeros((39, 1))), "fit: X has 40 samples but y has 39"),
    # found by a forward of two samples before training, not after the first epoch
    (dict(validation=(np.zeros((10, 5)), np.zeros((10, 1)))),
     r"fit: the model cannot take X_val of shape \(10, 5\) \(tried its first samples\): "
     r"Linear: expected input with 4 features on the last axis, got shape \(2, 5\)"),
    (dict(X=np.zeros(40)), r"fit: the model cannot take X of shape \(40,\)"),
    (dict(seed=-1), r"fit: seed must be an int >= 0, a sequence of them or None, got -1"),
    (dict(seed="a"), r"fit: seed must be an int >= 0, a sequence of them or None, got 'a'"),
    (dict(callbacks=[print, 1]), r"fit: callbacks\[1\] is not callable, got 1"),
    (dict(callbacks=print), r"fit: callbacks must be a list of callables, got a builtin_function"),
    (dict(nan_policy="omit"), r"fit: nan_policy must be one of \('raise', 'propagate'\), got 'omit'"),
])
def test_fit_settings_and_data_are_checked_before_training(kwargs, message):
    model, X, y = _small_problem()
    before = model.state_dict()
    args = dict(X=X, y=y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1), epochs=2,
                batch_size=8, progress=False)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        nk.fit(model, args.pop("X"), args.pop("y"), **args)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_manual_seed_names_itself_for_a_seed_numpy_refuses():
    for bad in (-1, 2.5, "a"):
        with pytest.raises((TypeError, ValueError), match=r"manual_seed: seed must be an int >= 0"):
            nk.manual_seed(bad)
    assert nk.manual_seed(0).random() == np.random.default_rng(0).random()


@pytest.mark.parametrize("opt_name,kwargs", [
    ("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
])
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-10, 1e-12), (np.float32, 2e-6, 2e-6)])
def test_optimisers_match_torch(rng, opt_name, kwargs, dtype, rtol, atol):
    """Both compute in the parameter's dtype; float32 agrees to a few ulp over steps."""
    torch = pytest.importorskip("torch")
    w0 = rng.standard_normal((3, 40)).astype(dtype)
    p = nk.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = getattr(nk, opt_name)([p], **kwargs)
    topt = getattr(torch.optim, opt_name)([tp], **kwargs, foreach=False)
    for _ in range(5):
        g = rng.standard_normal((3, 40)).astype(dtype)
        opt.zero_grad()
        p.grad += g
        opt.step()
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=atol)
    # and the state a checkpoint keeps is PyTorch's, under its names
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert ours["step"] == 5 and ours["lr"] == theirs["param_groups"][0]["lr"]
    their_state = theirs["state"].get(0)  # (SGD without momentum keeps none)
    if their_state is not None:
        for name, value in their_state.items():
            if name != "step":
                np.testing.assert_allclose(ours[f"{name}.0"], value.numpy(), rtol=rtol, atol=atol)
        assert {k[:-2] for k in ours if k.endswith(".0")} == set(their_state) - {"step"}


def _steps(optimizer, grads):
    for g in grads:
        for p, gp in zip(optimizer.params, g):
            p.grad[...] = gp
        optimizer.step()


@pytest.mark.parametrize("opt_name,kwargs", [("SGD", dict(lr=0.05, momentum=0.9)),
                                             ("Adam", dict(lr=0.01, betas=(0.8, 0.99)))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_checkpoint_resumes_training_bit_identically(rng, tmp_path, opt_name, kwargs, dtype):
    def make():
        model = nk.seed_model(6, norm="batch", hidden=16, dtype=dtype, rng=np.random.default_rng(1))
        return model, getattr(nk, opt_name)(model.parameters(), **kwargs)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in make()[0].parameters()]
             for _ in range(6)]
    straight, opt_straight = make()
    _steps(opt_straight, grads)
    first, opt_first = make()
    _steps(opt_first, grads[:2])
    nk.save(first, tmp_path / "checkpoint", opt_first)
    resumed, opt_resumed = make()
    nk.load_state(resumed, tmp_path / "checkpoint", opt_resumed)
    _steps(opt_resumed, grads[2:])
    for (k, p), q in zip(resumed.named_parameters(), straight.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)
    # the model alone loads from a checkpoint too
    model_only, _ = make()
    nk.load_state(model_only, tmp_path / "checkpoint")
    for p, q in zip(model_only.parameters(), first.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def _adam_after_two_steps(rng):
    model = nk.Sequential(nk.Linear(3, 4, rng=rng), nk.BatchNorm(4))
    optimizer = nk.Adam(model.parameters(), lr=0.01)
    _steps(optimizer, [[rng.standard_normal(p.shape) for p in model.parameters()] for _ in range(2)])
    return model, optimizer


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.pop("exp_avg_sq.3"), r"missing keys \['exp_avg_sq.3'\]"),
    (lambda s: s.update({"momentum_buffer.0": np.ones((4, 3))}), r"unexpected keys \['momentum_buffer.0'\]"),
    (lambda s: s.update({"exp_avg.1": np.ones(3)}), r"exp_avg.1: expected shape \(4,\), got \(3,\)"),
    (lambda s: s.update({"lr": np.array(-0.1)}), r"lr: Adam: lr must be a finite number > 0, got -0.1"),
    (lambda s: s.update({"betas": np.array([0.9, 1.5])}), r"betas: Adam: betas\[1\] must be a number in \[0, 1\)"),
    (lambda s: s.update({"step": np.array(-1)}), r"step: expected a count >= 0, got -1"),
    (lambda s: s.update({"step": np.array(2.5)}), r"step: expected whole numbers, got 2.5"),
    (lambda s: s["exp_avg.3"].__setitem__(0, np.nan), r"exp_avg.3: expected finite values"),
    (lambda s: s.update({"exp_avg.2": s["exp_avg.2"] + 1j}), r"exp_avg.2: expected real numbers"),
])
def test_bad_optimiser_states_raise_and_change_nothing(rng, edit, match):
    model, optimizer = _adam_after_two_steps(rng)
    # every entry differs, so that a partial load would show
    state = {k: v + (0.01 if k == "betas" else 1) for k, v in optimizer.state_dict().items()}
    edit(state)
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match=match):
        optimizer.load_state_dict(state)
    for k, v in optimizer.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_loading_a_checkpoint_checks_model_and_optimiser_before_changing_either(rng, tmp_path):
    model, optimizer = _adam_after_two_steps(rng)
    nk.save(model, tmp_path / "model.npz")
    with pytest.raises(ValueError, match="load_state: the file holds no optimiser state"):
        nk.load_state(model, tmp_path / "model.npz", optimizer)
    nk.save(model, tmp_path / "checkpoint.npz", optimizer)
    other, sgd = _adam_after_two_steps(rng)
    sgd = nk.SGD(other.parameters(), lr=0.1, momentum=0.9)  # not the optimiser saved
    before = other.state_dict() | {f"optimizer.{k}": v for k, v in sgd.state_dict().items()}
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: missing keys \['momentum', 'momentum_buffer.0'"):
        nk.load_state(other, tmp_path / "checkpoint.npz", sgd)
    after = other.state_dict() | {f"optimizer.{k}": v for k, v in sgd.state_dict().items()}
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


@pytest.mark.parametrize("opt_name,kwargs,message", [
    ("SGD", dict(lr=0), "lr must be a finite number > 0"),
    ("SGD", dict(lr=float("nan")), "lr must be a finite number > 0"),
    ("SGD", dict(lr=0.1, momentum=-0.5), r"momentum must be a number in \[0, inf\)"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "weight_decay must be"),
    ("Adam", dict(betas=(0.9, 1.0)), r"betas\[1\] must be a number in \[0, 1\)"),
    ("Adam", dict(betas=0.9), "betas must be a pair"),
    ("Adam", dict(eps=-1e-8), "eps must be"),
])
def test_optimiser_hyper_parameters_are_checked(opt_name, kwargs, message):
    with pytest.raises(ValueError, match=f"{opt_name}: {message}"):
        getattr(nk, opt_name)([nk.Parameter(np.zeros(3))], **kwargs)
    with pytest.raises(ValueError, match="no parameters"):
        getattr(nk, opt_name)([], **kwargs)


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_optimisers_take_each_parameter_once(opt_name):
    layer = nk.Linear(3, 2)
    with pytest.raises(ValueError, match=f"{opt_name}: a parameter is listed more than once"):
        getattr(nk, opt_name)(layer.parameters() + [layer.weight], lr=0.1)
    with pytest.raises(TypeError, match=rf"{opt_name}: params\[1\] is a ndarray, not a Parameter"):
        getattr(nk, opt_name)([layer.weight, layer.bias.data], lr=0.1)


@pytest.mark.parametrize("opt_name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1))])
@pytest.mark.parametrize("change,exc,message", [
    # a larger array in place of a parameter: the step would have written past the optimiser's
    # state (heap corruption, a crash later); now it raises and changes nothing
    (lambda p: setattr(p, "data", np.ones((40, 30), np.float32)), ValueError,
     r"params\[1\]\.data is now float32 of shape \(40, 30\), but the optimiser was made for float32 of "
     r"shape \(2, 3\): make a new optimiser"),
    (lambda p: setattr(p, "data", p.data.astype(np.float64)), ValueError, r"params\[1\]\.data is now float64"),
    (lambda p: setattr(p, "grad", np.ones(7, np.float32)), ValueError,
     r"params\[1\]\.grad is float32 of shape \(7,\), but its data has shape \(2, 3\)"),
    (lambda p: setattr(p, "grad", np.ones((2, 3), int)), TypeError, r"params\[1\]\.grad must be float32 or float64"),
    (lambda p: setattr(p, "data", np.ones((3, 2), np.float32).T), ValueError, "must be C-contiguous"),
])
def test_optimiser_step_checks_every_parameter_before_changing_any(opt_name, kwargs, change, exc, message):
    model = nk.Sequential(nk.Linear(2, 2), nk.Linear(3, 2))
    params = [model[0].weight, model[1].weight, model[0].bias, model[1].bias]
    optimizer = getattr(nk, opt_name)(params, **kwargs)
    for p in params:
        p.grad[...] = 1.0
    optimizer.step()  # a first step works
    change(params[1])
    before = [p.data.copy() for p in params]
    with pytest.raises(exc, match=message):
        optimizer.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)  # params[0] first in the list: not updated
    assert optimizer.state_dict()["step"] == 1


def test_datasets_are_standardised_splits():
    X, y, Xv, yv = datasets.load_breast_cancer()
    assert X.shape[1] == 30 and len(X) + len(Xv) == 569 and y.shape == (len(X), 1)
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-5)
    X, y, Xv, yv = datasets.load_digits()
    assert X.shape[1] == 64 and set(np.unique(y)) == set(range(10)) and y.dtype == np.int64
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("mnist")


def test_datasets_without_sklearn_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"normkit\[data\]"):
        datasets.load_digits()


def test_demo_command_prints_the_table(capsys):
    assert cli.main(["demo", "--dataset", "breast_cancer", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("BatchNorm", "LayerNorm", "none", "val acc", "epochs to target", "ms/epoch"):
        assert word in out


@pytest.mark.parametrize("argv,message", [
    (["demo", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["demo", "--batch-size", "1"], "argument --batch-size: must be at least 2, got 1"),
    (["demo", "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["demo", "--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    (["bench", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    # before minutes of timing, not after them
    (["bench", "--json", "{tmp}/missing/r.json"], "argument --json: cannot write {tmp}/missing/r.json: No such file"),
    (["bench", "--markdown", "{tmp}"], "argument --markdown: cannot write {tmp}: Is a directory"),
])
def test_bad_command_line_values_are_usage_errors(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_experiment_output_folder_is_checked_before_the_experiment_runs(capsys, tmp_path, monkeypatch):
    from normkit import diagnostics
    monkeypatch.setattr(diagnostics, "run", lambda *a, **k: pytest.fail("the experiment ran"))
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "figures"  # under a file: no folder can be made there
    assert cli.main(["experiment", "shift", "--quick", "--out", str(out)]) == 2
    assert f"cannot make the folder --out {out}: Not a directory" in capsys.readouterr().err


def test_demo_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "normkit", "demo", "--dataset", "digits", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("digits") == 3
