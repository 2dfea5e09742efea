"""The benchmark report machinery (timing itself is not asserted: it lives in the reports)."""

import json

from normkit import benchmark


def test_quick_report_has_every_case_and_pass(tmp_path):
    result = benchmark.run(benchmark.QUICK_CASES, repeats=1, numpy_repeats=1, startup=False)
    expected = sum(len(c.passes) for c in benchmark.QUICK_CASES)
    assert len(result["rows"]) == expected
    for row in result["rows"]:
        assert row["normkit_ms"] > 0 and row["numpy_ms"] > 0 and row["gbs"] > 0
        assert row["speedup_vs_numpy"] == row["numpy_ms"] / row["normkit_ms"]
        assert row["same_size_copy_fraction"] == row["gbs"] / row["same_size_copy_gbs"] > 0
    assert result["copy_gbs"] > 0
    benchmark.save(result, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["case"] == result["rows"][0]["case"]
    md = (tmp_path / "r.md").read_text()
    assert md.count("\n| ") == expected + 1 and "Geometric mean" in md


def test_case_bytes_and_names():
    case = benchmark.Case("batch_norm", (32, 56, 56, 64), axis=-1)
    assert case.nbytes == 32 * 56 * 56 * 64 * 4 and case.channels == 64
    assert case.name == "BN 32x56x56x64 axis=-1 float32"
    assert benchmark.Case("layer_norm", (8, 4)).passes == ("forward", "backward")


def test_startup_costs_take_each_figure_at_its_fastest(monkeypatch):
    """Import time and first-call time are minimised separately: the run that compiled what an
    edit left stale may have imported fastest (a min over (import, call) pairs reported 1.3 s)."""
    import subprocess
    outputs = iter(["0.10", "0.11", "0.12",                # import numpy, numba
                    "0.15 1.30", "0.25 0.12", "0.20 0.14",  # first call, warm cache
                    "0.30 3.00"])                           # first call, cold cache

    class Done:
        def __init__(self):
            self.stdout = next(outputs)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: Done())
    costs = benchmark.startup_costs()
    assert costs["numba_import_s"] == 0.10
    assert abs(costs["normkit_import_beyond_numba_s"] - 0.05) < 1e-12
    assert costs["first_call_warm_cache_s"] == 0.12 and costs["first_call_cold_cache_s"] == 3.00
