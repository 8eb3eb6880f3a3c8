#!/usr/bin/env bash
# Configures and builds the CMake op library (CPU variant) against a CPU LibTorch taken from the
# torch 2.13.0 CPU wheel in its own venv, then loads it into that torch and checks the ops exist.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMAKE_VENV:-.venv-cmake}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 numpy
prefix=$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build build/cmake -j "${MAX_JOBS:-2}"
"$VENV/bin/python" - <<'PY'
import torch
torch.ops.load_library("build/cmake/libgru4rec_ops.so")
ops = [name for name in dir(torch.ops.gru4rec) if not name.startswith("_")]
print("cmake build: torch.ops.gru4rec has", ops)
assert ops, "the CMake-built library registered no gru4rec ops"
PY
