#!/usr/bin/env bash
# Configures and builds the CMake op library (CPU variant) against a CPU LibTorch taken from the
# torch 2.13.0 CPU wheel in its own venv, loads it into that torch and checks the ops exist, then runs
# the C++ example (autograd of session_gru and the sampled loss from C++, against finite differences).
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
ops = ["session_gru_forward", "session_gru_backward", "sampled_loss_forward", "sampled_loss_backward",
       "sparse_adagrad_", "sparse_adagrad_pair_", "dense_adagrad_", "unique_ids", "train_step_", "step_inputs_", "dropout_apply_"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gru4rec::{op}", "CPU")]
assert not missing, f"the CMake-built library has no CPU kernel for {missing}"
x = torch.randn(1, 3, 4); h0 = torch.zeros(3, 5)
out, h_n, _ = torch.ops.gru4rec.session_gru_forward(x, torch.zeros(1, 3, dtype=torch.bool), h0,
                                                     torch.randn(15, 4), torch.randn(15, 5), None, None, 0)
assert out.shape == (1, 3, 5) and torch.equal(out[0], h_n)
print("cmake build: CPU kernels registered for", ", ".join(ops), "and session_gru_forward runs")
PY
build/cmake/session_gru_autograd
