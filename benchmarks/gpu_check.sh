#!/usr/bin/env bash
# One prepared run for the device tool's H200 (python3 3.12, torch 2.11 + CUDA 13.0, nvcc, no network):
# build the CUDA kernels, run the CUDA tests, then every benchmark at a grid that fits, all in < 8 min.
# Results land in $OUT (at most 8 files come back): logs, a tarball of benchmarks/results/<gpu>/, summary.
#   device run: bash benchmarks/gpu_check.sh     (timeout_s 540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gru4rec_gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
summary="$OUT/summary.txt"
: > "$summary"
stage() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$summary"; }
t0=$(date +%s)

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$summary"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee -a "$summary"
git rev-parse HEAD 2>/dev/null | tee -a "$summary" || echo "commit: $GRU4REC_COMMIT" | tee -a "$summary"

stage "build"
timeout 240 "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc ($(( $(date +%s) - t0 )) s)" | tee -a "$summary"
if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; exit 1; fi
"$PY" -c 'import gru4rec_ext._extension as e; print("build_info", e.build_info())' | tee -a "$summary"

stage "CUDA tests"
timeout 150 "$PY" -m pytest -q -x -k cuda -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
echo "tests rc=$? ($(( $(date +%s) - t0 )) s)" | tee -a "$summary"
tail -5 "$OUT/tests.log" | tee -a "$summary"

stage "benchmarks"
RES="$OUT/results"
mkdir -p "$RES"
{
  timeout 90 "$PY" benchmarks/bench_gru.py --device cuda --grid full --dtypes float32 bfloat16 --min-time 0.05 --out "$RES"
  timeout 90 "$PY" benchmarks/bench_loss.py --device cuda --grid full --dtypes float32 bfloat16 --min-time 0.05 --out "$RES"
  timeout 90 "$PY" benchmarks/bench_train.py --device cuda --out "$RES"
} > "$OUT/bench.log" 2>&1
echo "benchmarks done ($(( $(date +%s) - t0 )) s)" | tee -a "$summary"
tar -czf "$OUT/results.tar.gz" -C "$RES" . && rm -rf "$RES"
grep -A200 -E "^(session GRU|sampled loss|training)" "$OUT/bench.log" | tail -120
