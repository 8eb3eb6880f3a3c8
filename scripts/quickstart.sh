#!/usr/bin/env bash
# Quickstart: set up (.venv with torch, gru4rec-ext built from this checkout), then train GRU4Rec with
# the published rsc15 hyperparameters on the shipped rsc15_100k sample and evaluate it on its test
# split, printing the metrics table. Training + evaluation take about 20 s on one CPU thread.
#   VENV     virtual environment (default .venv)
#   OUT      where the trained model goes (default quickstart-model.pt)
#   THREADS  torch CPU threads (default 1: fastest on a small, busy machine)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/python" -m gru4rec_ext --threads "${THREADS:-1}" train data/rsc15_100k/train.tsv.xz \
  --test data/rsc15_100k/test.tsv.xz --preset rsc15 --save-model "${OUT:-quickstart-model.pt}" \
  -m 1 5 10 20 -e standard
