#!/usr/bin/env bash
# Install the headless browser that tests/test_browser.py drives: Debian's Chromium (no Playwright download:
# the test speaks the DevTools protocol itself). Idempotent; .ci/run calls it before `make test`.
set -euo pipefail

CHROMIUM="${VOICEBOT_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_browser.sh: need root or sudo to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
