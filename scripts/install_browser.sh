#!/usr/bin/env bash
# Install the headless browser that tests/test_browser.py drives: Debian's Chromium (no Playwright download:
# the test speaks the DevTools protocol itself). Idempotent; .ci/run calls it before `make test`.
set -euo pipefail

CHROMIUM="${VOICEBOT_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
    exit 0
fi

bash "$(dirname "$0")/apt_install.sh" chromium
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
