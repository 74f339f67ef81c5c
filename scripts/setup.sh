#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine (CPU): torch 2.13.0 (CPU build; any
# other torch spec pulls GB of CUDA wheels), the package with its export, dev, profiling, serve
# (Triton; numpy 1.26, see pyproject.toml) and corpus (Ray) extras, and the native plugin library
# (CPU kernel always, CUDA objects when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check -e ".[export,dev,profiling,serve,corpus]"
if [ -f CMakeLists.txt ] && command -v cmake >/dev/null 2>&1; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-cmake.log 2>&1 || { cat build-cmake.log; exit 1; }
  grep -E "hieramamba|skip|SKIP|not found" build-cmake.log || true
  cmake --build build -j2 >>build-cmake.log 2>&1 || { tail -50 build-cmake.log; exit 1; }
fi
