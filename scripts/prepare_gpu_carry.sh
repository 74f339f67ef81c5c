#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what scripts/gpu_checks.sh needs on a lent GPU machine that
# cannot reach any package registry:
#   .gpu_carry/py/mamba_ssm   mamba-ssm's Triton SSD ops only (the package's own __init__ imports
#                             its compiled CUDA extensions, which a source copy does not have)
#   build/libhieramamba_plugins.so   built by scripts/setup.sh with the CUDA objects (nvcc here)
# Usage: bash scripts/prepare_gpu_carry.sh MAMBA_GIT_DIR
#   MAMBA_GIT_DIR: a git directory of github.com/state-spaces/mamba (e.g. a bare mirror).
# Then run on the device: carry [".gpu_carry", "build/libhieramamba_plugins.so"],
#   command "bash scripts/gpu_checks.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
mamba_git=${1:?usage: bash scripts/prepare_gpu_carry.sh MAMBA_GIT_DIR}

lib=build/libhieramamba_plugins.so
if [ ! -f "$lib" ]; then
    echo "error: $lib not built; run bash scripts/setup.sh first" >&2
    exit 1
fi
# A stale library would test yesterday's kernel on the GPU: bring the build up to date first.
cmake --build build -j2 >/dev/null
python3 - "$lib" <<'EOF'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
if not lib.hm_has_cuda():
    sys.exit(f"error: {sys.argv[1]} was built without the CUDA kernel (nvcc not found at configure time)")
EOF

rm -rf .gpu_carry && mkdir -p .gpu_carry/py
git --git-dir="$mamba_git" archive HEAD mamba_ssm/ops/__init__.py mamba_ssm/ops/triton mamba_ssm/utils \
    | tar -x -C .gpu_carry/py
version=$(git --git-dir="$mamba_git" show HEAD:mamba_ssm/__init__.py | sed -n 's/^__version__ = //p')
commit=$(git --git-dir="$mamba_git" rev-parse HEAD)
printf '# Triton SSD ops of mamba-ssm %s (commit %s) only; see scripts/prepare_gpu_carry.sh\n__version__ = %s\n' \
    "$version" "$commit" "$version" > .gpu_carry/py/mamba_ssm/__init__.py

# Keep the carry folder out of git (it travels through the device tool's `carry`).
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu_carry/' "$exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$exclude"
du -sh .gpu_carry "$lib"
echo "ready: carry .gpu_carry and $lib; run bash scripts/gpu_checks.sh on the device"
