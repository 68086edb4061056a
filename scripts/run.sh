#!/usr/bin/env bash
# Install (idempotent) and run the main job on the embedded defaults: the voice
# agent server. Open the printed address in a browser and press "Call".
# Extra arguments go to the server (e.g. --port 9000); PARLEY_* variables configure it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m signaling "$@"
