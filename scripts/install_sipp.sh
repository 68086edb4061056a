#!/usr/bin/env bash
# Install Debian's sip-tester (sipp 3.6.1) for the SIP tests (idempotent; needs root and apt).
# sipp is the real phone of the phone-call tests: it places calls, streams RTP and
# plays RFC 2833 DTMF from the pcaps it ships in /usr/share/sip-tester.
set -euo pipefail
if command -v sipp >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_sipp: cannot install sip-tester here (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends sip-tester >/dev/null
echo "install_sipp: installed $(sipp -v 2>&1 | grep -m1 -o 'SIPp v[0-9.]*[0-9]' || echo sipp)" >&2
