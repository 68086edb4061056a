#!/usr/bin/env bash
# Install (idempotent) and run the main job on the embedded defaults:
# a demo call with two spoken questions through the offline pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p data/demo
if [ ! -f data/demo/caller.wav ]; then
  .venv/bin/python -m agent say "What is the capital of France?" \
    "Can you tell me a fun fact about the ocean?" --gap 6 --out data/demo/caller.wav
fi
.venv/bin/python -m agent call data/demo/caller.wav --out data/demo/agent.wav "$@"
echo "run: the agent's audio is in data/demo/agent.wav" >&2
