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
