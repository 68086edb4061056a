#!/usr/bin/env bash
# Install the human-speech test audio: Debian's Asterisk core prompts (English).
#
#   asterisk-core-sounds-en-wav  ~550 prompts recorded by a human speaker, 8 kHz WAV
#   asterisk-core-sounds-en      the transcripts (core-sounds-en.txt.gz)
#
# Used by bench/human_speech.py (STT word error rate on real speech). The
# recordings are CC-BY-SA-3.0. Idempotent: does nothing when both packages are
# already installed. Must run as root (or through sudo when it is available).
set -euo pipefail

PACKAGES=(asterisk-core-sounds-en-wav asterisk-core-sounds-en)
TRANSCRIPTS=/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "test audio already installed (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "error: run as root to install ${missing[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know the packages yet.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -q
fi
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

if [ ! -f "$TRANSCRIPTS" ]; then
    # Slim images often exclude /usr/share/doc via dpkg path-exclude rules.
    echo "warning: $TRANSCRIPTS is missing (is /usr/share/doc excluded by dpkg?)" >&2
    exit 1
fi
echo "installed ${missing[*]}"
