#!/usr/bin/env bash
# The test command of the README: set up (scripts/setup.sh) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k session_gru`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m pytest -q -ra "$@"
