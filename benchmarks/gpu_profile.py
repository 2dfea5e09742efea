"""Where a normkit CUDA call's time goes: host time per call, and the GPU time of each kernel.

    python benchmarks/gpu_profile.py [--host-params] [--cprofile out.txt]

Needs a GPU, numba-cuda and torch with CUDA: kernel times come from CUPTI through
``torch.profiler``, which sees numba's kernels too. "host" is the time a call takes to return
without waiting for the GPU (200 calls in a row, then one synchronisation); when it exceeds the
kernels' time, the call is host-bound and a loop of calls cannot hide it. Inputs, weights and
running statistics are device arrays unless ``--host-params``.
"""

import argparse
import cProfile
import io
import pstats
import sys
import time

import numpy as np
from numba import cuda

from gpu_bench import normkit_calls  # benchmarks/, this script's folder

CASES = [("layer_norm", (4096, 1024), None), ("layer_norm", (65536, 1024), None),
         ("layer_norm", (256, 8192), None), ("layer_norm", (1 << 20, 64), None),
         ("layer_norm", (262144, 256), None), ("batch_norm", (65536, 256), 1),
         ("batch_norm", (32, 64, 56, 56), 1), ("batch_norm", (128, 56, 56, 64), -1),
         ("batch_norm", (256, 8192), 1)]


def host_us(fn, n=200):
    """Microseconds per call until it returns (the GPU catches up after the loop)."""
    for _ in range(3):
        fn()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    cuda.synchronize()
    return elapsed / n * 1e6


def kernel_us(fn, n=20):
    """{kernel name: median microseconds per call} of the GPU work of fn()."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        cuda.synchronize()
    times = {}
    for event in prof.events():
        if event.device_type.name == "CUDA":
            name = event.name.split("[")[0].split("::")[-1][:40]
            times.setdefault(name, []).append(event.device_time)
    return {k: float(np.median(v)) * len(v) / n for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host-params", action="store_true",
                        help="weights and running statistics as NumPy arrays")
    parser.add_argument("--cprofile", help="write a cProfile of each call's host path here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    profiles = io.StringIO()
    print("| case | pass | host us/call | GPU us/call | kernels (us) |\n|---|---|---:|---:|---|")
    for op, shape, axis in CASES:
        xd = cuda.to_device(rng.standard_normal(shape, dtype=np.float32))
        dyd = cuda.to_device(rng.standard_normal(shape, dtype=np.float32))
        c = shape[-1] if op == "layer_norm" else shape[axis]
        for name, fn in normkit_calls(op, xd, dyd, c, axis, args.host_params).items():
            host = host_us(fn)
            kernels = kernel_us(fn)
            detail = ", ".join(f"{k} {v:.1f}" for k, v in kernels.items())
            case = f"{'LN' if op == 'layer_norm' else 'BN'} {'x'.join(map(str, shape))}"
            print(f"| {case} | {name} | {host:.1f} | {sum(kernels.values()):.1f} | {detail} |",
                  flush=True)
            if args.cprofile:
                profiler = cProfile.Profile()
                profiler.runcall(lambda: [fn() for _ in range(300)])
                cuda.synchronize()
                profiles.write(f"\n===== {case} {name} (300 calls) =====\n")
                pstats.Stats(profiler, stream=profiles).sort_stats("cumtime").print_stats(25)
    if args.cprofile:
        with open(args.cprofile, "w") as f:
            f.write(profiles.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
