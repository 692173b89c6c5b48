#!/usr/bin/env bash
# Install the reverse proxy that tests/test_caddy.py runs in front of the bot: Debian's Caddy (2.6.2 on Debian 12),
# the one deploy/Caddyfile is written for. Idempotent; .ci/run calls it before `make test`.
set -euo pipefail

if command -v caddy >/dev/null; then
    echo "caddy: $(caddy version 2>/dev/null | head -n1)"
    exit 0
fi

bash "$(dirname "$0")/apt_install.sh" caddy
echo "caddy: $(caddy version 2>/dev/null | head -n1)"
