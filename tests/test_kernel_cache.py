"""Numba's on-disk cache and helpers defined in other files.

Numba invalidates a cached build only when the file of the compiled function itself changes,
not when a helper it calls from another file does (numba/numba#8396). normkit's kernels call
helpers from other files of ``normkit/kernels/cpu``, so it stamps every cached build with a
digest of all of them; without that, an edit to a helper would be ignored by every kernel
cached before it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import normkit

PROBE = '''
from ._compile import helper
from ._probe_helper import plus


@helper
def probe(x):
    return plus(x)
'''


def _run_probe(root):
    """Call the probe in a fresh process (loading its cached build when there is one)."""
    code = "from normkit.kernels.cpu._probe import probe; print(probe(1))"
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("NUMBA_CACHE_DIR", None)  # the cache next to the sources, as for a user
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_an_edit_to_a_helper_in_another_file_recompiles_its_callers(tmp_path):
    package = tmp_path / "normkit"
    shutil.copytree(Path(normkit.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    kernels = package / "kernels" / "cpu"
    (kernels / "_probe.py").write_text(PROBE)
    helper_file = kernels / "_probe_helper.py"
    helper_file.write_text("from ._compile import helper\n\n\n@helper\ndef plus(x):\n    return x + 1\n")
    assert _run_probe(tmp_path) == 2
    assert list((kernels / "__pycache__").glob("_probe.probe-*.nbi"))  # it was cached
    helper_file.write_text(helper_file.read_text().replace("x + 1", "x + 2"))
    assert _run_probe(tmp_path) == 3


def test_every_cached_cpu_kernel_carries_the_sources_digest():
    """A kernel compiled with ``njit(cache=True)`` directly, not through ``_compile``, would
    miss the digest and could run a stale helper: this lists any."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import normkit.kernels.cpu as package
    from normkit.kernels.cpu import _compile

    stamped, missing = 0, []
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, _compile.Kernel):
                builds = (obj.parallel, obj.serial)
            elif isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
                builds = (obj,)
            else:
                continue
            for build in builds:
                if type(getattr(build, "_cache", None)).__name__ == "NullCache":
                    continue  # not cached (the inlined row helpers): nothing to go stale
                stamp = build._cache._cache_file._source_stamp
                if isinstance(stamp, tuple) and stamp[-1] == _compile.SOURCES_DIGEST:
                    stamped += 1
                else:
                    missing.append(f"{module_info.name}.{name}")
    assert missing == [] and stamped > 50
