#!/usr/bin/env bash
# Install the reverse proxy that tests/test_caddy.py runs in front of the bot: Debian's Caddy (2.6.2 on Debian 12),
# the one deploy/Caddyfile is written for. Idempotent; .ci/run calls it before `make test`.
set -euo pipefail

if command -v caddy >/dev/null; then
    echo "caddy: $(caddy version 2>/dev/null | head -n1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_caddy.sh: need root or sudo to apt-get install caddy" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq caddy >/dev/null
echo "caddy: $(caddy version 2>/dev/null | head -n1)"
