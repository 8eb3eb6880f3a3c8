#!/usr/bin/env bash
# Sets up a virtual environment (.venv, or $VENV) with torch and gru4rec-ext built from this checkout.
#   TORCH_SPEC   which torch to install (default torch==2.14.1, the CUDA 13.0 build; torch==2.13.0 is a CPU build)
#   FORCE_CUDA   1: build the CUDA kernels even without a GPU (default: 1 when torch is a CUDA build and nvcc exists)
#   MAX_JOBS     parallel compile jobs (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" numpy pandas pyarrow tqdm matplotlib \
  optuna pybind11 ninja pytest setuptools wheel
if [ -z "${FORCE_CUDA:-}" ]; then
  if command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
    export FORCE_CUDA=1
  fi
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ "${FORCE_CUDA:-0}" = "1" ]; then
  echo "gru4rec-ext: building (FORCE_CUDA=1, MAX_JOBS=$MAX_JOBS); compiling the CUDA kernels takes a few minutes"
else
  echo "gru4rec-ext: building (FORCE_CUDA=${FORCE_CUDA:-unset}: CUDA kernels only if a GPU is visible, MAX_JOBS=$MAX_JOBS)"
fi
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
"$PY" -c 'import gru4rec_ext._extension as e; print("gru4rec-ext built:", e.build_info())'
