#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (idempotent; needs root and apt).
# Playwright's own browser download is not used: the test drives /usr/bin/chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: cannot install chromium here (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "install_browser: installed $(chromium --version)" >&2
