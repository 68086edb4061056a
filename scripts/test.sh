#!/usr/bin/env bash
# Install (idempotent) and run the checks: ruff, mypy and the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
