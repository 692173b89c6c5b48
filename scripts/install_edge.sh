#!/usr/bin/env bash
# Install what the deployment-kit tests run (Debian 12's own versions, the ones deploy/ is written for):
#   caddy            tests/test_caddy.py puts a real Caddy (2.6.2) in front of the bot
#   nginx, openssl   tests/test_nginx.py puts a real nginx (1.22.1) with deploy/nginx-voicebot.conf in front of the
#                    bot (a throwaway openssl certificate); tests/test_deploy.py runs `nginx -t` on the site
#   systemd          tests/test_deploy.py runs `systemd-analyze verify` and `security --offline=yes` on the unit
# Nothing is started. Idempotent; .ci/run calls it before `make test`.
set -euo pipefail

need=()
command -v caddy >/dev/null || need+=(caddy)
command -v nginx >/dev/null || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    bash "$(dirname "$0")/apt_install.sh" "${need[@]}"
fi
echo "caddy: $(caddy version 2>/dev/null | head -n1); $(nginx -v 2>&1); $(systemd-analyze --version | head -n1)"
