#!/usr/bin/env bash
# Install (idempotent) and run the over-the-wire benchmark (bench/wire): the server on
# 127.0.0.1 with the embedded defaults, aiortc caller peers over loopback WebRTC, and
# bench/results/<date>.json, <date>.md and <date>-*.png as the output.
#
#   scripts/bench.sh              full run (~40 min on 2 cores, the cloud scenario included)
#   scripts/bench.sh --quick      smoke run (~3 min)
#   scripts/bench.sh --profile --scenarios v2v,turns --set turn.end_of_turn_silence_ms=450 --tag eot450
#   scripts/bench.sh --scenarios v2v,pipecat   Parley and the Pipecat reference line, one run
#
# Extra arguments go to `python -m bench.wire` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# Benchmark-only tools (the HTTP client, plots, the sampling profiler), locked and
# hash-checked like everything else (requirements/bench.lock, same pins as test.lock).
stamp=".venv/.parley-bench-$(sha256sum requirements/bench.lock | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --require-hashes -r requirements/bench.lock
  touch "$stamp"
fi
# A second voice family for the caller (optional: Piper alone is used without it).
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; } \
      || echo "bench: espeak-ng unavailable; caller questions use Piper only" >&2
  else
    echo "bench: espeak-ng not installed (needs root and apt); caller questions use Piper only" >&2
  fi
fi
# The Pipecat reference line runs in a venv of its own, outside the repository.
case " $* " in
  *pipecat*) bench/pipecat_ref/install.sh ;;
esac
exec .venv/bin/python -m bench.wire "$@"
