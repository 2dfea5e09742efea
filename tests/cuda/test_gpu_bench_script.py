"""benchmarks/gpu_bench.py runs end to end on tiny cases, so that a change to normkit cannot break
the script a GPU session will run first (device time is scarce). Under the simulator, whose
events measure nothing and whose device has no name, the timing is one plain call and the name
is made up; on a GPU the script runs as it is."""

import sys
from pathlib import Path

import pytest

cuda = pytest.importorskip("numba.cuda")

from normkit._backend import cuda_available  # noqa: E402
from normkit.kernels.cuda import simulator  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no GPU and no simulator")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY_CASES = [("layer_norm", (6, 8), None), ("batch_norm", (5, 3, 2, 2), 1),
              ("batch_norm", (4, 2, 2, 3), -1)]


def _one_call(fn, repeats, calls=1):
    fn()
    return 1.0


@pytest.fixture
def gpu_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_bench
    monkeypatch.setattr(gpu_bench, "CASES", TINY_CASES)
    copy_gbs = gpu_bench.copy_gbs
    monkeypatch.setattr(gpu_bench, "copy_gbs", lambda nbytes, *args: copy_gbs(1 << 12, *args))
    if simulator():  # one call per timing: the simulator's calls are slow and time nothing
        monkeypatch.setattr(gpu_bench, "event_time", _one_call)
        monkeypatch.setattr(type(cuda.get_current_device()), "name", "simulator", raising=False)
    yield gpu_bench
    sys.modules.pop("gpu_bench", None)


def test_gpu_bench_prints_a_row_per_case_and_pass(gpu_bench, capsys, tmp_path):
    markdown = tmp_path / "gpu.md"
    assert gpu_bench.main(["--repeats", "1", "--no-torch", "--markdown", str(markdown)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| LN ")
            or line.startswith("| BN ")]
    assert len(rows) == 2 + 3 + 3  # LayerNorm forward/backward; BatchNorm forward/eval/backward
    assert "| BN 4x2x2x3 axis=-1 | backward |" in rows[-1]
    assert markdown.read_text().count("\n| ") == len(rows) + 1  # the rows and the header
