"""GPU benchmark: normkit's numba.cuda kernels vs PyTorch CUDA, timed with CUDA events, with
effective GB/s against a device-to-device copy measured in the same run.

    python benchmarks/gpu_bench.py [--markdown results.md] [--repeats 20] [--host-params]

Needs a GPU, numba-cuda and (for the comparison) torch with CUDA. Inputs are device arrays, so
no host transfer of x, y or dy is timed; each call is timed whole (host work included, as a
user sees it), one call between two events. Weights, biases and running statistics are device
arrays too, as PyTorch's are: normkit updates the running statistics on the device and leaves
dweight/dbias there. With ``--host-params`` they are NumPy arrays instead: then the training
forward waits for the batch statistics to update the host's running statistics, and the
backward for dweight/dbias (what normkit's layers do today).
"""

import argparse
import statistics
import sys

import numpy as np
from numba import cuda

from normkit import functional as F

CASES = [
    ("layer_norm", (4096, 1024), None), ("layer_norm", (8192, 768), None),
    ("layer_norm", (256, 8192), None), ("layer_norm", (1 << 20, 64), None),
    ("layer_norm", (16384, 1024), None), ("layer_norm", (65536, 1024), None),
    ("layer_norm", (262144, 256), None),  # rows narrower than a warp's 16-byte loads (session 14)
    ("batch_norm", (65536, 256), 1), ("batch_norm", (32, 64, 56, 56), 1),
    ("batch_norm", (128, 64, 56, 56), 1), ("batch_norm", (128, 56, 56, 64), -1),
    ("batch_norm", (256, 8192), 1), ("batch_norm", (262144, 256), 1),
]


def event_time(fn, repeats, calls=1):
    """Median over ``repeats`` of the milliseconds per call of ``calls`` back-to-back fn() calls
    between two CUDA events, after two warm-up calls. calls=1: the latency of a call, host work
    included whenever it exceeds the GPU's. calls=10: the throughput of a loop, where host work
    overlaps the GPU's except where a call waits for the GPU (normkit's copies of running
    statistics and gradients)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop) / calls)
    return statistics.median(times)


def torch_calls(op, x, dy, c, axis):
    import torch
    tf = torch.nn.functional
    xt = torch.as_tensor(x, device="cuda")
    dyt = torch.as_tensor(dy, device="cuda")
    w = torch.ones(c, device="cuda")
    b = torch.zeros(c, device="cuda")
    if op == "batch_norm" and axis == -1:
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)  # channels_last memory
    xg = xt.detach().clone().requires_grad_(True) if axis != -1 else \
        xt.detach().clone(memory_format=torch.channels_last).requires_grad_(True)
    wg, bg = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    if op == "layer_norm":
        y = tf.layer_norm(xg, (c,), wg, bg)
        calls = {"forward": lambda: tf.layer_norm(xt, (c,), w, b)}
    else:
        rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
        y = tf.batch_norm(xg, rm.clone(), rv.clone(), wg, bg, training=True)
        calls = {"forward": lambda: tf.batch_norm(xt, rm, rv, w, b, training=True),
                 "eval": lambda: tf.batch_norm(xt, rm, rv, w, b, training=False)}
    calls["backward"] = lambda: torch.autograd.grad(y, (xg, wg, bg), dyt, retain_graph=True)
    return calls  # PyTorch and numba both launch on the legacy default stream: events time both


def normkit_calls(op, xd, dyd, c, axis, host_params=False):
    put = (lambda a: a) if host_params else cuda.to_device
    w, b = put(np.ones(c, np.float32)), put(np.zeros(c, np.float32))
    if op == "layer_norm":
        _, saved = F.layer_norm(xd, c, w, b)
        return {"forward": lambda: F.layer_norm(xd, c, w, b),
                "backward": lambda: F.layer_norm_backward(dyd, saved)}
    rm, rv = put(np.zeros(c, np.float32)), put(np.ones(c, np.float32))
    _, saved = F.batch_norm(xd, rm, rv, w, b, training=True, axis=axis)
    return {"forward": lambda: F.batch_norm(xd, rm, rv, w, b, training=True, axis=axis),
            "eval": lambda: F.batch_norm(xd, rm, rv, w, b, training=False, axis=axis),
            "backward": lambda: F.batch_norm_backward(dyd, saved)}


def copy_gbs(nbytes, repeats, have_torch):
    """The faster of numba's device-to-device copy and PyTorch's ``copy_`` (on an H200 numba's
    reached 1.5-2.0 TB/s and PyTorch's 4.0 TB/s: the honest reference is the faster one)."""
    src = cuda.device_array(nbytes // 4, np.float32)
    dst = cuda.device_array_like(src)
    ms = event_time(lambda: dst.copy_to_device(src), repeats)
    if have_torch:
        import torch
        ts, td = torch.as_tensor(src, device="cuda"), torch.as_tensor(dst, device="cuda")
        ms = min(ms, event_time(lambda: td.copy_(ts), repeats))
    return 2 * nbytes / ms / 1e6


def _ms(t):
    return "-" if t is None else f"{t:.3f}"


def _ratio(theirs, ours):
    return "-" if theirs is None else f"{theirs / ours:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--markdown")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--host-params", action="store_true",
                        help="normkit's weights and running statistics as NumPy arrays")
    args = parser.parse_args(argv)
    have_torch = False
    if not args.no_torch:
        try:
            import torch
            have_torch = torch.cuda.is_available()
        except ImportError:
            pass
    dev = cuda.get_current_device()
    copy = copy_gbs(256 << 20, args.repeats, have_torch)
    lines = [f"GPU: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}; "
             f"device-to-device copy (256 MB): {copy:.0f} GB/s (bytes read + written).", "",
             "One call: latency of a single call (host work included); stream: per call in a loop of "
             "10 back-to-back calls. GB/s and % of copy from the stream time. normkit's weights "
             "and running statistics: " + ("NumPy arrays." if args.host_params else "device arrays."), "",
             "| case | pass | MB | one call: normkit ms | PyTorch ms | vs PyTorch | stream: normkit ms "
             "| PyTorch ms | vs PyTorch | normkit GB/s | of copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rng = np.random.default_rng(0)
    for op, shape, axis in CASES:
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        c = shape[-1] if op == "layer_norm" else shape[axis]
        xd, dyd = cuda.to_device(x), cuda.to_device(dy)
        ours = normkit_calls(op, xd, dyd, c, axis, args.host_params)
        theirs = torch_calls(op, xd, dyd, c, axis) if have_torch else {}
        for pass_, fn in ours.items():
            ms = event_time(fn, args.repeats)
            sms = event_time(fn, args.repeats, calls=10)
            tms = tsms = None
            if pass_ in theirs:
                tms = event_time(theirs[pass_], args.repeats)
                tsms = event_time(theirs[pass_], args.repeats, calls=10)
            gbs = (3 if pass_ == "backward" else 2) * x.nbytes / sms / 1e6
            name = f"{'LN' if op == 'layer_norm' else 'BN'} {'x'.join(map(str, shape))}" + \
                   (" axis=-1" if axis == -1 else "")
            line = (f"| {name} | {pass_} | {x.nbytes / 2**20:.0f} | {ms:.3f} | {_ms(tms)} | {_ratio(tms, ms)} | "
                    f"{sms:.3f} | {_ms(tsms)} | {_ratio(tsms, sms)} | {gbs:.0f} | {100 * gbs / copy:.0f}% |")
            lines.append(line)
            print(line, flush=True)
        del xd, dyd, ours, theirs
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
