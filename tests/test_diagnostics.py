"""The activation recorder and the experiments (quick mode)."""

import numpy as np
import pytest

import normkit as nk
from normkit import diagnostics

pytest.importorskip("sklearn")


def test_recorder_matches_a_direct_computation(rng):
    model = nk.seed_model(6, 3, norm="batch", rng=rng, dtype=np.float64)
    probe = rng.standard_normal((40, 6))
    rec = diagnostics.ActivationRecorder(probe, {"l2": 4, "first": 0}, units=(1, 5))
    model(rng.standard_normal((16, 6)))  # move the running statistics away from their start
    rec.record(model, 3)
    assert model.training  # the mode is restored
    model.eval()
    h = probe
    for layer in model.layers[:4]:
        h = layer(h)
    by_layer = {r["layer"]: r for r in rec.records}
    assert by_layer["l2"]["epoch"] == 3
    assert by_layer["l2"]["mean"] == pytest.approx(h.mean(), rel=1e-12)
    assert by_layer["l2"]["std"] == pytest.approx(h.std(), rel=1e-12)
    np.testing.assert_allclose(by_layer["l2"]["unit_percentiles"], np.percentile(h[:, [1, 5]], [15, 50, 85], axis=0).T)
    np.testing.assert_allclose(by_layer["first"]["mean"], probe.mean())


def test_recorder_as_a_fit_callback(rng):
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = (X[:, :1] > 0).astype(np.float32)
    model = nk.seed_model(5, norm="none", hidden=8, rng=rng)
    rec = diagnostics.ActivationRecorder(X[:10], {"l2": 3})
    nk.fit(model, X, y, loss=nk.BCELoss(), optimizer=nk.SGD(model.parameters(), lr=0.1), epochs=3,
           batch_size=16, progress=False, callbacks=[rec])
    epochs, means = rec.series("l2", "mean")
    assert list(epochs) == [1, 2, 3] and means.shape == (3,)


def _trained_a_little(rng, axis=1):
    """A model whose running statistics have moved (three training-mode batches) but are not
    the population statistics of anything."""
    model = nk.Sequential(nk.Linear(6, 5, rng=rng, dtype=np.float64), nk.BatchNorm(5, dtype=np.float64),
                          nk.ReLU(), nk.Dropout(0.5, rng=rng), nk.Linear(5, 4, rng=rng, dtype=np.float64),
                          nk.BatchNorm(4, dtype=np.float64), nk.Linear(4, 2, rng=rng, dtype=np.float64))
    for _ in range(3):
        model(rng.standard_normal((8, 6)) * 2 + 1)
    return model


def _bn_inputs_directly(model, X):
    model.eval()
    inputs, h = [], X
    for layer in model:
        if isinstance(layer, nk.BatchNorm):
            inputs.append((layer, h))
        h = layer(h)
    model.train()
    return inputs


def test_running_stats_gap_matches_a_direct_computation(rng):
    model = _trained_a_little(rng)
    X = rng.standard_normal((50, 6))
    gaps = diagnostics.running_stats_gap(model, X)
    assert model.training  # the mode is restored
    direct = _bn_inputs_directly(model, X)
    assert len(gaps) == len(direct) == 2
    for (mean_gap, var_ratio), (bn, h) in zip(gaps, direct):
        mean, var = h.mean(axis=0), h.var(axis=0, ddof=1)
        assert mean_gap == pytest.approx(np.mean(np.abs(bn.running_mean - mean) / np.sqrt(var)), rel=1e-12)
        assert var_ratio == pytest.approx(np.prod(bn.running_var / var) ** (1 / len(var)), rel=1e-12)
        assert mean_gap > 0.01 and abs(np.log(var_ratio)) > 0.01  # far from the population: a real test


def test_set_population_stats_gives_each_layer_its_input_statistics(rng):
    model = _trained_a_little(rng)
    X = rng.standard_normal((50, 6))
    weights = {k: v.copy() for k, v in model.state_dict().items() if "running" not in k}
    assert diagnostics.set_population_stats(model, X) is model and model.training
    # the second BN's input is computed with the first BN's new statistics
    for bn, h in _bn_inputs_directly(model, X):
        np.testing.assert_allclose(bn.running_mean, h.mean(axis=0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn.running_var, h.var(axis=0, ddof=1), rtol=1e-12)
    for mean_gap, var_ratio in diagnostics.running_stats_gap(model, X):
        assert mean_gap < 1e-12 and var_ratio == pytest.approx(1, abs=1e-12)
    for k, v in weights.items():  # nothing but the running statistics changed
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_population_stats_of_a_channels_last_batchnorm(rng):
    model = nk.Sequential(nk.BatchNorm(3, axis=-1, dtype=np.float64))
    X = rng.standard_normal((4, 5, 3)) * [1, 2, 3] + [0, 10, -10]
    diagnostics.set_population_stats(model, X)
    np.testing.assert_allclose(model[0].running_mean, X.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model[0].running_var, X.reshape(-1, 3).var(axis=0, ddof=1), rtol=1e-12)


class _Scale(nk.Module):
    """x * factor: with an infinite factor, the next layer's input is not finite."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor

    def backward(self, dy):
        return dy * self.factor


@pytest.mark.parametrize("where", ["first layer", "later layer", "one sample"])
def test_set_population_stats_changes_nothing_when_a_layer_cannot_take_them(rng, where):
    # NaN in the data (or after a layer) would have become NaN running statistics, which eval
    # mode turns into NaN outputs: refused, as a training batch with NaN statistics is, and the
    # layers before the bad one are put back too
    model = nk.Sequential(nk.BatchNorm(4, dtype=np.float64), _Scale(1.0), nk.BatchNorm(4, dtype=np.float64))
    X = rng.standard_normal((30, 4)) * 3 + 1
    model(X)  # running statistics away from their start
    before = {k: v.copy() for k, v in model.state_dict().items()}
    if where == "first layer":
        X[7, 2] = np.nan
        message = r"the input of layer 0 \(BatchNorm\) has NaN or inf statistics in 1 of 4 channels"
    elif where == "later layer":
        model[1].factor = np.inf
        message = r"the input of layer 2 \(BatchNorm\) has NaN or inf statistics in 4 of 4 channels"
    else:
        X = X[:1]
        message = "layer 0 \\(BatchNorm\\) sees one value per channel"
    with pytest.raises(ValueError, match=message):
        diagnostics.set_population_stats(model, X)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.training


def test_population_stats_reach_batchnorms_in_nested_sequentials(rng):
    flat = _trained_a_little(rng)
    nested = nk.Sequential(nk.Sequential(*flat.layers[:3]), nk.Sequential(nk.Sequential(*flat.layers[3:6])),
                           flat.layers[6])  # the same layer objects, grouped
    X = rng.standard_normal((50, 6))
    gaps = diagnostics.running_stats_gap(nested, X)
    assert len(gaps) == 2 and gaps == diagnostics.running_stats_gap(flat, X)
    diagnostics.set_population_stats(nested, X)
    for bn, h in _bn_inputs_directly(flat, X):
        np.testing.assert_allclose(bn.running_var, h.var(axis=0, ddof=1), rtol=1e-12)


class _Block(nk.Module):
    """A layer with its own forward around a BatchNorm: its input is out of reach."""

    def __init__(self):
        super().__init__()
        self.norm = nk.BatchNorm(6, dtype=np.float64)

    def children(self):
        return [("norm", self.norm)]

    def forward(self, x):
        return self.norm(x) * 2


def test_population_stats_refuse_a_batchnorm_they_cannot_reach(rng):
    model = nk.Sequential(nk.Linear(6, 6, rng=rng, dtype=np.float64), _Block())
    with pytest.raises(ValueError, match=r"layer 1 \(_Block\) holds a BatchNorm that is not reached"):
        diagnostics.running_stats_gap(model, rng.standard_normal((10, 6)))


def test_recorder_names_layers_and_units_the_model_does_not_have(rng):
    model = nk.seed_model(6, 3, norm="batch", hidden=8, rng=rng)
    probe = rng.standard_normal((10, 6)).astype(np.float32)
    assert len(model) == 13
    with pytest.raises(ValueError, match=r"the model has 13 layers, no layer 13 \(for 'last'\)"):
        diagnostics.ActivationRecorder(probe, {"first": 0, "last": 13}).record(model, 0)
    with pytest.raises(ValueError, match=r"units \(0, 8\) asked of layer 'l2', whose input has 8 units"):
        diagnostics.ActivationRecorder(probe, {"l2": 4}, units=(0, 8)).record(model, 0)
    assert model.training


@pytest.mark.parametrize("name", sorted(diagnostics.EXPERIMENTS))
def test_experiments_quick_table_and_figure(name, tmp_path):
    result = diagnostics.run(name, quick=True, seed=1)
    table = result.table()
    assert result.rows and all(len(r) == len(result.columns) for r in result.rows)
    assert result.columns[0] in table
    pytest.importorskip("matplotlib")
    path = diagnostics.plot(result, tmp_path / f"{name}.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_experiments_are_reproducible():
    a = diagnostics.run("small-batch", quick=True, seed=3)
    b = diagnostics.run("small-batch", quick=True, seed=3)
    assert a.rows == b.rows


def test_experiment_command(capsys, tmp_path):
    from normkit import cli
    assert cli.main(["experiment", "batch-size", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sd(batch mean)" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "batch-size.png").exists()
    with pytest.raises(SystemExit):
        cli.main(["experiment", "nope"])
    with pytest.raises(SystemExit):  # the help lists every experiment with what it measures
        cli.main(["experiment", "--help"])
    listed = capsys.readouterr().out.split("experiments:")[1]
    for name, run in diagnostics.EXPERIMENTS.items():
        assert f"{name} " in listed and run.__doc__.splitlines()[0].rstrip(".") in listed


def test_accuracy_with_batch_stats_normalises_each_batch_by_itself(rng):
    from normkit.diagnostics.experiments import _accuracy_with_batch_stats
    model = _trained_a_little(rng)
    before = model.state_dict()
    X, y = rng.standard_normal((21, 6)), rng.integers(0, 2, 21)
    got = _accuracy_with_batch_stats(model, X, y, 4)
    for k, v in model.state_dict().items():  # it works on a copy
        np.testing.assert_array_equal(v, before[k])
    # by hand: dropout off, each BatchNorm with the statistics of its batch of 4 (the last
    # sample folded into the batch before it)
    pred = []
    for a, b in ((0, 4), (4, 8), (8, 12), (12, 16), (16, 21)):
        h = X[a:b]
        for layer in model:
            if isinstance(layer, nk.BatchNorm):
                h = nk.functional.batch_norm(h, None, None, layer.weight.data, layer.bias.data,
                                             training=True, eps=layer.eps)[0]
            elif not isinstance(layer, nk.Dropout):
                h = layer(h)
        pred.append(h)
    assert got == np.mean(np.argmax(np.concatenate(pred), axis=1) == y)
