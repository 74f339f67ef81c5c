#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run sized for one device call (8-10 min on an H200;
# steps run in order of priority, so the device call's 600 s cap only cuts the last ones):
# the CUDA HydraScan kernel vs the float64 oracle and under compute-sanitizer (racecheck,
# synccheck), real CUDA-graph capture of the runtime's stages, the scan benchmark (reference /
# CUDA kernel / mamba-ssm Triton / copy bandwidth), the eager vs fused vs CUDA-graph latency
# comparison, the per-NVTX-range breakdown with CUDA events, then the whole test suite. A failing
# step is logged and the next one runs.
#
# Prepare here first: bash scripts/setup.sh && bash scripts/prepare_gpu_carry.sh MAMBA_GIT_DIR
# Device call: carry [".gpu_carry", "build/libhieramamba_plugins.so"], command
#   "bash scripts/gpu_checks.sh", timeout_s 600. Results: $OUT/gpu_checks.log, $OUT/ego4d/bench.*,
#   $OUT/profile_ego4d.json (at most 8 files come back).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hieramamba-gpu-checks}
mkdir -p "$OUT"
LOG=$OUT/gpu_checks.log
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu_carry/py${PYTHONPATH:+:$PYTHONPATH}"
export HIERAMAMBA_PLUGIN_LIB="$PWD/build/libhieramamba_plugins.so"

step() {  # step NAME SECONDS CMD...: run with a time limit, log output, status and duration
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    t0=$(date +%s)
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

: >"$LOG"
step environment 60 bash -c 'date -u; nvidia-smi -L; nvcc --version | tail -2; python3 -c "
import sys, torch, onnxruntime
print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))
print(\"onnxruntime\", onnxruntime.__version__)
try:
    import triton; print(\"triton\", triton.__version__)
except ImportError as e: print(\"triton missing:\", e)
try:
    import mamba_ssm; print(\"mamba_ssm (carried)\", mamba_ssm.__version__)
except ImportError as e: print(\"mamba_ssm missing:\", e)
"'
step install 180 python3 -m pip install -q --no-deps --no-build-isolation -e .
step library 30 python3 -c "
from hieramamba.native_library import load_native_library, loaded_library_path
lib = load_native_library(required=True)
print(loaded_library_path(), 'has_cuda', bool(lib.hm_has_cuda()))"

# Correctness first: the GPU-only tests.
step gpu_tests 240 python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_native_scan.py tests/test_runtime_cuda_graphs.py -k "cuda or real"

# Speed (quiet machine: nothing else runs meanwhile).
step bench_scan_fp16 180 python3 benchmarks/bench_scan.py --device cuda --dtype float16 --tiles-per-chunk 1,2,4
step bench_scan_fp32 90 python3 benchmarks/bench_scan.py --device cuda --dtype float32 --lengths 1024,16384

# Shared-memory races and barrier misuse in the CUDA scan kernel (the host emulation cannot see
# them); a few small calls, each checked against the CPU kernel.
if command -v compute-sanitizer >/dev/null 2>&1; then
    step sanitize_racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 \
        python3 scripts/cuda_scan_smoke.py
    step sanitize_synccheck 90 compute-sanitizer --tool synccheck --error-exitcode 3 \
        python3 scripts/cuda_scan_smoke.py
else
    echo "=== sanitize: compute-sanitizer not on PATH; plain run instead" | tee -a "$LOG"
    step scan_smoke 60 python3 scripts/cuda_scan_smoke.py
fi

# The model: eager vs fused kernel vs CUDA graphs, then the per-range profile.
step bench_ego4d 240 python3 -m hieramamba.cli bench --config ego4d --device cuda --clips 2304,16384 \
    --queries 1,8 --warmup 2 --repeats 5 --no-memory --paths \
    eager_fp32,eager_fp16,eager_fused,eager_cuda_graphs,runtime_chunked,runtime_chunked_cuda_graphs \
    --out "$OUT/ego4d"
step profile_ego4d 90 python3 -m hieramamba.cli profile --config ego4d --device cuda --clips 2304 \
    --dtype float16 --mode record --out "$OUT/profile_ego4d.json"

# Last, with what time is left: everything else on this machine's Python/torch.
step all_tests 200 python3 -m pytest -q -x -p no:cacheprovider tests/
echo "done; summary:" | tee -a "$LOG"
grep "^=== .*rc=" "$LOG"
