#!/usr/bin/env bash
# Install (idempotent) and run the checks: ruff, mypy and the pytest suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/install_browser.sh || echo "test: Chromium unavailable; the browser test will say why" >&2
scripts/install_sipp.sh || echo "test: sipp unavailable; the SIP tests will say why" >&2
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
