"""The README's Python examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    if "datasets" in BLOCKS[index]:
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # examples may write files (model.npz)
    if "from numba import cuda" in BLOCKS[index]:
        # GPU examples: under Numba's CUDA simulator, which must be chosen before numba is
        # imported, so in a process of their own (on a GPU machine they run as written).
        pytest.importorskip("numba.cuda")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        done = subprocess.run([sys.executable, "-c", BLOCKS[index]], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
