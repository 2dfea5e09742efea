"""Benchmark cases and the ``normkit bench`` report: normkit vs the NumPy reference vs PyTorch CPU
at the same thread count, with effective GB/s against a parallel copy measured in the same run.

The pytest-benchmark suites in ``benchmarks/`` time the same cases (from :data:`CASES`).
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import _threading
from . import functional as F


@dataclass(frozen=True)
class Case:
    """One benchmark input: an operation on random data of one shape, layout and dtype."""

    op: str            # "layer_norm" or "batch_norm"
    shape: tuple
    axis: int = 1      # BatchNorm channel axis
    dtype: str = "float32"

    @property
    def name(self):
        """The row label of the report, e.g. ``"BN 32x56x56x64 axis=-1 float32"``."""
        layout = "" if self.op == "layer_norm" or self.axis == 1 else f" axis={self.axis}"
        return f"{'LN' if self.op == 'layer_norm' else 'BN'} {'x'.join(map(str, self.shape))}{layout} {self.dtype}"

    @property
    def channels(self):
        """LayerNorm's normalised size or BatchNorm's channel count."""
        return self.shape[-1] if self.op == "layer_norm" else self.shape[self.axis]

    @property
    def nbytes(self):
        """Bytes of one input array."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def passes(self):
        """The passes timed: forward and backward, and for BatchNorm the eval forward."""
        return ("forward", "backward") if self.op == "layer_norm" else ("forward", "eval", "backward")


CASES = [
    Case("layer_norm", (4096, 1024)),
    Case("layer_norm", (8192, 768)),
    Case("layer_norm", (256, 8192)),
    Case("layer_norm", (1 << 20, 64)),
    Case("layer_norm", (8192, 768), dtype="float64"),
    Case("batch_norm", (65536, 256)),
    Case("batch_norm", (32, 64, 56, 56)),
    Case("batch_norm", (32, 56, 56, 64), axis=-1),
    Case("batch_norm", (256, 8192)),
    Case("batch_norm", (65536, 256), dtype="float64"),
]

QUICK_CASES = [
    Case("layer_norm", (1024, 512)),
    Case("batch_norm", (8192, 128)),
    Case("batch_norm", (8, 32, 28, 28)),
]

BYTES_MOVED = {"forward": 2, "eval": 2, "backward": 3}  # x and y; x, dy and dx


def make_inputs(case, seed=0):
    """(x, dy, weight, bias) for a case; weight/bias float32/64 per the case's dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float32).astype(case.dtype)
    dy = rng.standard_normal(case.shape, dtype=np.float32).astype(case.dtype)
    pshape = (case.channels,)
    return x, dy, np.ones(pshape, case.dtype), np.zeros(pshape, case.dtype)


# ------------------------------------------------------------------------------------------------
# The callables that are timed: impl -> pass -> zero-argument function
# ------------------------------------------------------------------------------------------------

def normkit_calls(case, x, dy, w, b, backend="numba"):
    """{pass: zero-argument callable} running ``case`` with normkit's ``backend``."""
    if case.op == "layer_norm":
        _, saved = F.layer_norm(x, case.channels, w, b, backend=backend)
        return {"forward": lambda: F.layer_norm(x, case.channels, w, b, backend=backend),
                "backward": lambda: F.layer_norm_backward(dy, saved)}
    rm, rv = np.zeros(case.channels, case.dtype), np.ones(case.channels, case.dtype)
    _, saved = F.batch_norm(x, rm, rv, w, b, training=True, axis=case.axis, backend=backend)
    return {"forward": lambda: F.batch_norm(x, rm, rv, w, b, training=True, axis=case.axis, backend=backend),
            "eval": lambda: F.batch_norm(x, rm, rv, w, b, training=False, axis=case.axis, backend=backend),
            "backward": lambda: F.batch_norm_backward(dy, saved)}


def numpy_calls(case, x, dy, w, b):
    """{pass: callable} of the NumPy reference (``backend="numpy"``)."""
    return normkit_calls(case, x, dy, w, b, backend="numpy")


def torch_calls(case, x, dy, w, b):
    """{pass: callable} of PyTorch CPU on the same data (channels-last data as PyTorch's
    ``channels_last`` memory format); forwards without autograd, as normkit's."""
    import torch
    tf = torch.nn.functional
    if case.op == "batch_norm" and case.axis not in (1,):
        # channels-last data: PyTorch's NCHW view of NHWC memory (its channels_last format)
        perm = (0, x.ndim - 1, *range(1, x.ndim - 1))
        xt, dyt = torch.from_numpy(x).permute(perm), torch.from_numpy(dy).permute(perm)
    else:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    wt, bt = torch.from_numpy(w), torch.from_numpy(b)
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (xt, wt, bt))
    if case.op == "batch_norm" and case.axis not in (1,):
        xg = xt.detach().clone(memory_format=torch.channels_last).requires_grad_(True)
    if case.op == "layer_norm":
        y = tf.layer_norm(xg, (case.channels,), wg, bg)

        def forward():
            with torch.no_grad():
                return tf.layer_norm(xt, (case.channels,), wt, bt)
        calls = {"forward": forward}
    else:
        rm, rv = torch.zeros(case.channels, dtype=xt.dtype), torch.ones(case.channels, dtype=xt.dtype)
        y = tf.batch_norm(xg, rm.clone(), rv.clone(), wg, bg, training=True)

        def forward():
            with torch.no_grad():
                return tf.batch_norm(xt, rm, rv, wt, bt, training=True)

        def evaluate():
            with torch.no_grad():
                return tf.batch_norm(xt, rm, rv, wt, bt, training=False)
        calls = {"forward": forward, "eval": evaluate}
    calls["backward"] = lambda: torch.autograd.grad(y, (xg, wg, bg), dyt, retain_graph=True)
    return calls


def torch_available():
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------------
# Copy bandwidth and timing
# ------------------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _parallel_copy(src, dst):
    n = src.shape[0]
    chunk = 1 << 16
    for k in prange((n + chunk - 1) // chunk):
        dst[k * chunk:min((k + 1) * chunk, n)] = src[k * chunk:min((k + 1) * chunk, n)]


def copy_bandwidth(nbytes=64 << 20, repeats=20):
    """GB/s (bytes read + bytes written) of a Numba parallel copy of ``nbytes`` at the current
    thread count. 64 MiB is past this machine's share of L3; smaller copies run from cache."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    _threading.start()  # as normkit's kernels would: the copy must not start it otherwise
    _parallel_copy(src, dst)
    return 2 * nbytes / best_time(lambda: _parallel_copy(src, dst), repeats) / 1e9


def best_time(fn, repeats=10):
    """The fastest of ``repeats`` calls (after one warm-up call), in seconds."""
    return _interleaved_best({"fn": fn}, {}, repeats)["fn"]


def _interleaved_best(fns, repeats_for, repeats, budget_s=0.0):
    """Fastest call of each function, their calls taken in turn (round-robin) so that a noisy
    moment on this shared machine hits every implementation alike. ``repeats`` rounds, or more
    (up to 10x) where ``budget_s`` seconds per function allow: a short call's minimum needs more
    samples to settle on a shared machine. Functions in ``repeats_for`` get at most that many."""
    warm = {}
    for name, fn in fns.items():  # warm-up: compilation and caches
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    uncapped = [warm[name] for name in fns if name not in repeats_for]
    if budget_s and uncapped:
        repeats = max(repeats, min(10 * repeats, int(budget_s / max(max(uncapped), 1e-9))))
    best = {name: float("inf") for name in fns}
    for round_ in range(repeats):
        for name, fn in fns.items():
            if round_ < repeats_for.get(name, repeats):
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def run(cases=CASES, threads=2, repeats=10, numpy_repeats=3, with_torch=True, startup=True):
    """Time every case and pass of normkit, the NumPy reference and PyTorch, calls interleaved.

    Parameters
    ----------
    cases : sequence of Case
    threads : int
        Threads for every implementation (Numba's and PyTorch's).
    repeats : int
        Timed rounds per case and pass (short calls get more, up to ten times as many).
    numpy_repeats : int
        At most this many rounds of the (slow) NumPy reference.
    with_torch : bool
        Time PyTorch too, when it is installed.
    startup : bool
        Also measure import and first-call (compilation) times, in fresh processes.

    Returns
    -------
    dict
        ``environment`` (machine and versions), ``threads``, ``copy_gbs`` (a 64 MiB parallel
        copy), ``rows`` (one per case and pass: best times, GB/s, ratios) and, with
        ``startup``, ``startup``; :func:`format_markdown` and :func:`save` take it.
    """
    # PyTorch first: imported after Numba's OpenMP runtime started, it would share it (one
    # libgomp.so.1 per process) and run with normkit's wait policy rather than its own.
    with_torch = with_torch and torch_available()
    if with_torch:
        import torch
        torch.set_num_threads(threads)
    _threading.set_num_threads(threads)  # (numba's own would start OpenMP with spinning threads)
    copy_gbs = copy_bandwidth()
    rows = []
    for case in cases:
        x, dy, w, b = make_inputs(case)
        impls = {"normkit": normkit_calls(case, x, dy, w, b), "numpy": numpy_calls(case, x, dy, w, b)}
        if with_torch:
            impls["torch"] = torch_calls(case, x, dy, w, b)
        # The same-size copy runs under the kernels' conditions: an input that fits in L3
        # stays there between calls, so its bandwidth, not DRAM's, is the limit to compare with.
        same_size_copy_gbs = copy_bandwidth(case.nbytes, repeats)
        for pass_ in case.passes:
            t = _interleaved_best({name: calls[pass_] for name, calls in impls.items()},
                                  {"numpy": numpy_repeats}, repeats, budget_s=0.1)
            gbs = BYTES_MOVED[pass_] * case.nbytes / t["normkit"] / 1e9
            rows.append({
                "case": case.name, "pass": pass_, "mbytes": case.nbytes / 2**20,
                "normkit_ms": 1e3 * t["normkit"], "numpy_ms": 1e3 * t["numpy"],
                "torch_ms": 1e3 * t["torch"] if "torch" in t else None,
                "speedup_vs_torch": t["torch"] / t["normkit"] if "torch" in t else None,
                "speedup_vs_numpy": t["numpy"] / t["normkit"],
                "gbs": gbs, "copy_fraction": gbs / copy_gbs,
                "same_size_copy_gbs": same_size_copy_gbs,
                "same_size_copy_fraction": gbs / same_size_copy_gbs,
            })
        del impls, x, dy
    result = {"threads": threads, "copy_gbs": copy_gbs, "rows": rows, "environment": _environment()}
    result["summary"] = _summary(rows)
    if startup:
        result["startup"] = startup_costs()
    return result


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(statistics.fmean(map(math.log, values))) if values else None


def _summary(rows):
    return {"geomean_speedup_vs_torch": _geomean(r["speedup_vs_torch"] for r in rows),
            "geomean_speedup_vs_numpy": _geomean(r["speedup_vs_numpy"] for r in rows),
            "min_speedup_vs_torch": min((r["speedup_vs_torch"] for r in rows if r["speedup_vs_torch"]), default=None),
            "min_copy_fraction_16mb": min((r["copy_fraction"] for r in rows if r["mbytes"] >= 16), default=None),
            "min_same_size_copy_fraction_16mb": min((r["same_size_copy_fraction"] for r in rows
                                                     if r["mbytes"] >= 16), default=None)}


def _environment():
    from ._info import info
    d = info()
    d.update(cpu=_cpu_name(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    return d


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, normkit
t1 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
normkit.functional.batch_norm(x, None, None, training=True)
normkit.functional.layer_norm(x, 32)
print(t1 - t0, time.perf_counter() - t1)
"""


def startup_costs():
    """Import time of normkit beyond numba, and the first BN + LN call in a fresh process with a
    warm and with a cold Numba cache (seconds)."""
    def run_py(code, env=None):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, **(env or {})}).stdout.split()
        return [float(v) for v in out]

    numba_import = min(run_py("import time; t=time.perf_counter(); import numpy, numba; "
                              "print(time.perf_counter()-t)")[0] for _ in range(3))
    # each the fastest of three (the first may compile what an edit left stale in the cache)
    runs = [run_py(_FIRST_CALL) for _ in range(3)]
    normkit_import, warm = min(r[0] for r in runs), min(r[1] for r in runs)
    with tempfile.TemporaryDirectory() as cache:
        _, cold = run_py(_FIRST_CALL, {"NUMBA_CACHE_DIR": cache})
    return {"numba_import_s": numba_import, "normkit_import_beyond_numba_s": normkit_import - numba_import,
            "first_call_warm_cache_s": warm, "first_call_cold_cache_s": cold}


def format_markdown(result):
    """The report of :func:`run` as Markdown: the setting, the table and the summary."""
    env = result["environment"]
    lines = [f"Machine: {env['cpu']}, {env['cores']} cores; {result['threads']} threads for every "
             f"implementation. normkit {env['normkit']}, numba {env['numba']}, numpy {env['numpy']}, "
             f"torch {env['torch']}; {env['date']}. Parallel copy of 64 MiB: {result['copy_gbs']:.1f} GB/s "
             "(\"of copy\"); \"of same-size copy\" compares with a copy of the case's own size, "
             "timed in the same run.",
             "",
             "| case | pass | MB | normkit ms | NumPy ms | PyTorch ms | vs PyTorch | vs NumPy | GB/s | of copy "
             "| of same-size copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        torch_ms = f"{r['torch_ms']:.2f}" if r["torch_ms"] is not None else "-"
        vs_torch = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] is not None else "-"
        lines.append(f"| {r['case']} | {r['pass']} | {r['mbytes']:.0f} | {r['normkit_ms']:.2f} | "
                     f"{r['numpy_ms']:.1f} | {torch_ms} | {vs_torch} | {r['speedup_vs_numpy']:.1f}x | "
                     f"{r['gbs']:.1f} | {100 * r['copy_fraction']:.0f}% | "
                     f"{100 * r['same_size_copy_fraction']:.0f}% |")
    s = result["summary"]
    lines += ["", "Geometric mean speed-up: "
              + (f"{s['geomean_speedup_vs_torch']:.2f}x vs PyTorch (lowest {s['min_speedup_vs_torch']:.2f}x), "
                 if s["geomean_speedup_vs_torch"] else "")
              + f"{s['geomean_speedup_vs_numpy']:.1f}x vs NumPy."
              + (f" Lowest fraction of copy bandwidth at >= 16 MB: {100 * s['min_copy_fraction_16mb']:.0f}% "
                 f"(of a same-size copy: {100 * s['min_same_size_copy_fraction_16mb']:.0f}%)."
                 if s["min_copy_fraction_16mb"] is not None else "")]
    if "startup" in result:
        st = result["startup"]
        lines += ["", f"Start-up: import numba {st['numba_import_s']:.2f} s; import normkit beyond that "
                  f"{st['normkit_import_beyond_numba_s']:.2f} s; first BN + LN call in a fresh process "
                  f"{st['first_call_warm_cache_s']:.2f} s with a warm Numba cache, "
                  f"{st['first_call_cold_cache_s']:.1f} s with a cold one."]
    return "\n".join(lines)


def save(result, json_path=None, markdown_path=None):
    """Write the result of :func:`run` as JSON and/or as Markdown, where paths are given."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(format_markdown(result) + "\n")
