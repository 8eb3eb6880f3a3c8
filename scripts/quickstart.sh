#!/usr/bin/env bash
# Quickstart: set up (.venv with torch, gru4rec-ext built from this checkout), then train GRU4Rec with
# the published rsc15 hyperparameters on the shipped rsc15_100k sample and evaluate it on its test
# split, printing the metrics table. Training + evaluation take about 20 s on one CPU thread.
#   VENV     virtual environment (default .venv)
#   OUT      where the trained model goes (default quickstart-model.pt)
#   THREADS  torch CPU threads (default 1: fastest on a small, busy machine)
#   FORCE_CUDA default here: 0 when no GPU is visible (the quickstart trains on the CPU; compiling
#            the CUDA kernels would take minutes); scripts/test.sh and CI build them with FORCE_CUDA=1
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${FORCE_CUDA:-}" ] && ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
  export FORCE_CUDA=0
fi
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/python" -m gru4rec_ext --threads "${THREADS:-1}" train data/rsc15_100k/train.tsv.xz \
  --test data/rsc15_100k/test.tsv.xz --preset rsc15 --save-model "${OUT:-quickstart-model.pt}" \
  -m 1 5 10 20 -e standard
