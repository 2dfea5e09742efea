#!/usr/bin/env bash
# Every GPU check of issue 6 in one command, for a session lent a GPU through the `device` tool
# (its machines hold numba, numba-cuda, PyTorch and pytest, and can fetch nothing: normkit runs
# from this checkout, uninstalled). In order: the CUDA tests on the GPU, the benchmark table
# (device parameters, then host parameters), the per-kernel profile and the host costs. Each
# step's log goes to OUT (default gpu-results), 7 files, within what the device tool sends back;
# a step that fails is reported and the next one runs.
#
#   bash benchmarks/gpu_checks.sh "$OUT"   # from the repository root; at most 7.7 minutes
#
# (the step limits add up to 460 s, inside the tool's 10 minutes a command: timeout_s=540)
#
# Then copy the tables into benchmarks/RESULTS.md.
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    echo "=== $name: exit status $rc"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

step machine 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
    python3 -c "import sys, numba, numba_cuda, numpy, torch; print(sys.version.split()[0],
    \"numba\", numba.__version__, \"numba-cuda\", numba_cuda.__version__, \"numpy\",
    numpy.__version__, \"torch\", torch.__version__, torch.cuda.get_device_name())"'
# (every test must run: without a GPU they would all be skipped, and pytest would still pass)
step tests 150 bash -c 'NORMKIT_CUDA_TESTS=1 python3 -m pytest -q -rs -p no:cacheprovider tests/cuda \
    > /tmp/normkit-gpu-tests.log 2>&1; rc=$?; cat /tmp/normkit-gpu-tests.log;
    [ $rc -eq 0 ] && ! grep -q skipped /tmp/normkit-gpu-tests.log'
step bench 100 python3 benchmarks/gpu_bench.py --markdown "$out/bench.md"
step bench_host_params 80 python3 benchmarks/gpu_bench.py --host-params
step profile 60 python3 benchmarks/gpu_profile.py
step host_costs 40 python3 benchmarks/gpu_host_costs.py

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
