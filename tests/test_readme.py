"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    if "datasets" in BLOCKS[index]:
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)  # examples may write files (model.npz)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
