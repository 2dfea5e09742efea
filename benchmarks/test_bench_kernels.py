"""normkit vs the NumPy reference vs PyTorch CPU, one group per case and pass, so that
pytest-benchmark's table puts the peers side by side."""

import pytest

from normkit.benchmark import CASES, make_inputs, normkit_calls, numpy_calls, torch_available, torch_calls

IMPLS = {"normkit": normkit_calls, "numpy": numpy_calls}
if torch_available():
    IMPLS["torch"] = torch_calls

PARAMS = [pytest.param(case, pass_, impl, id=f"{case.name.replace(' ', '-')}-{pass_}-{impl}")
          for case in CASES for pass_ in case.passes for impl in IMPLS]

_inputs = {}


def _calls(case, impl):
    key = (case, impl)
    if key not in _inputs:
        _inputs.clear()  # keep one case's arrays alive at a time
        _inputs[key] = IMPLS[impl](case, *make_inputs(case))
    return _inputs[key]


@pytest.mark.parametrize("case,pass_,impl", PARAMS)
def test_kernel(benchmark, timed, case, pass_, impl):
    benchmark.group = f"{case.name} {pass_}"
    benchmark.extra_info.update(bytes=case.nbytes * (3 if pass_ == "backward" else 2))
    timed(_calls(case, impl)[pass_], rounds=3 if impl == "numpy" else 10)
