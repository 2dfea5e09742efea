"""Compile normkit's CUDA kernels to PTX for a real GPU, without one (run by
tests/test_cuda_simulator.py, in its own process: NUMBA_ENABLE_CUDASIM must be unset).

    python compile_for_gpu.py LAUNCHES MAJOR.MINOR

LAUNCHES is the pickled list of (module, kernel name, argument types) that tests/cuda/conftest.py
recorded under the simulator; each is compiled for compute capability MAJOR.MINOR with the
kernel's own options, as numba-cuda's dispatcher would compile it on first launch; the
``*_vec4_*`` kernels must load and store 16 bytes at a time, and those whose last block
finishes a reduction must fence, count blocks atomically and read past L1. Also checks that
every kernel (every ``@cuda.jit`` function but device functions) in normkit's CUDA modules was
launched.
Prints one line per signature and ``compiled N signatures of K kernels``; exits non-zero if a
kernel does not compile or was never launched, and with NO_COMPILER (77) if numba-cuda's GPU
compiler (NVVM and NVRTC: ``pip install "numba-cuda[cu13]"``) is not installed.
"""

import importlib
import pickle
import sys
import types

import numba.cuda.dispatcher as cuda_dispatcher
from numba import cuda

NO_COMPILER = 77
MODULES = ["normkit.kernels.cuda.batchnorm", "normkit.kernels.cuda.layernorm",
           "normkit.kernels.cuda._strided"]
# kernels whose last block to finish reads what the others wrote
LAST_BLOCK_KERNELS = {"wide_shifted_sums_kernel", "runs_shifted_sums_kernel",
                      "wide_grad_sums_kernel", "runs_grad_sums_kernel", "param_grad_kernel"}


def kernels_defined():
    """{(module, name)} of the kernels (not device functions) defined in MODULES."""
    found = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (isinstance(value, cuda_dispatcher.CUDADispatcher)
                    and not value.targetoptions.get("device")
                    and value.py_func.__module__ == name):
                found.add((name, attr))
    return found


def compiler_missing():
    """Why numba-cuda cannot compile for a GPU here, or None."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        for library in ("nvvm", "nvrtc"):
            load_nvidia_dynamic_lib(library)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def main(record_file, cc_text):
    missing = compiler_missing()
    if missing:
        print(f"no GPU compiler: {missing}")
        return NO_COMPILER
    cc = tuple(int(p) for p in cc_text.split("."))
    # Device functions called by a kernel are compiled for the current device's compute
    # capability, which needs a driver: stand in a device of the target's.
    cuda_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    with open(record_file, "rb") as f:
        launches = pickle.load(f)
    failures = []
    compiled = set()
    for module, name, argtypes in launches:
        kernel = getattr(importlib.import_module(module), name)
        options = kernel.targetoptions
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc, debug=options["debug"],
                                      lineinfo=options["lineinfo"], fastmath=options["fastmath"],
                                      opt=options["opt"])
            assert ".entry" in ptx, "no kernel entry point in the PTX"
            if "vec4" in name:  # what these kernels exist for (normkit/kernels/cuda/_vector_io.py)
                assert "ld.global.v4" in ptx and "st.global.v4" in ptx, "no 16-byte loads and stores"
            if name in LAST_BLOCK_KERNELS:  # see normkit/kernels/cuda/_reduce.last_to_arrive
                assert all(op in ptx for op in ("membar.gl", "atom.global.add", "ld.global.cg")), \
                    "no fence, block counter or L2 loads for the last block's step"
            compiled.add((module, name))
            print(f"ok      {module}.{name}{argtypes}")
        except Exception as exc:
            failures.append(f"{module}.{name}{argtypes}: {type(exc).__name__}: {exc}")
            print(f"FAILED  {module}.{name}{argtypes}: {type(exc).__name__}: {exc}")
    never_launched = sorted(kernels_defined() - {(m, n) for m, n, _ in launches})
    for module, name in never_launched:
        print(f"NEVER LAUNCHED by the simulator tests: {module}.{name}")
    print(f"compiled {len(launches) - len(failures)} signatures of {len(compiled)} kernels "
          f"for compute capability {cc_text}")
    return 1 if failures or never_launched or not launches else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
