#!/usr/bin/env bash
# Install (or upgrade) voicebot on Debian 12 / Ubuntu as a hardened systemd service. Idempotent: run it again to
# upgrade. It never overwrites /etc/voicebot/voicebot.env (your secrets) nor your edited settings or prompt.
#
#   sudo bash deploy/install.sh                 # from a checkout of the repository
#   bash deploy/install.sh --root /tmp/stage    # write everything under a staging root (no apt, no systemctl)
#
# What it writes (under --root, default /):
#   /opt/voicebot/venv                      the bot in its own virtualenv (pip install of this checkout)
#   /opt/voicebot/README.md                 the docs of the installed version
#   /etc/systemd/system/voicebot.service    the unit (deploy/voicebot.service; customise with `systemctl edit`)
#   /etc/voicebot/voicebot.toml             settings (copied once from config/voicebot.toml)
#   /etc/voicebot/system_prompt.md          the system prompt (copied once)
#   /etc/voicebot/voicebot.env              secrets template, mode 0600 (written once, never overwritten)
#   /usr/local/bin/voicebot                 runs `python -m voicebot ...` with the service's settings and secrets
set -euo pipefail

ROOT=/
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
APT=1
PIP_ARGS=()
usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --root DIR  --source DIR (default: this checkout)  --no-apt  --pip-arg ARG (repeatable)"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --source) SOURCE="$2"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --pip-arg) PIP_ARGS+=("$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
ROOT="${ROOT%/}"
LIVE=0
[ -z "$ROOT" ] && LIVE=1    # the real system: apt-get and systemctl too
if [ "$LIVE" = 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or use --root DIR for a staging install" >&2
    exit 1
fi
[ -f "$SOURCE/setup.cfg" ] && [ -d "$SOURCE/voicebot" ] || { echo "install.sh: $SOURCE is not a voicebot checkout" >&2; exit 1; }

say() { echo "install.sh: $*"; }

if [ "$LIVE" = 1 ] && [ "$APT" = 1 ]; then
    say "apt-get install python3 python3-venv caddy"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv caddy >/dev/null
fi

PREFIX="$ROOT/opt/voicebot"
ETC="$ROOT/etc/voicebot"
UNIT_DIR="$ROOT/etc/systemd/system"
BIN_DIR="$ROOT/usr/local/bin"
mkdir -p "$PREFIX" "$ETC" "$UNIT_DIR" "$BIN_DIR"

if [ ! -x "$PREFIX/venv/bin/python" ]; then
    say "creating $PREFIX/venv"
    python3 -m venv "$PREFIX/venv"
fi
say "installing voicebot from $SOURCE into $PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$SOURCE"
install -m 0644 "$SOURCE/README.md" "$PREFIX/README.md"

install -m 0644 "$SOURCE/deploy/voicebot.service" "$UNIT_DIR/voicebot.service"
say "wrote $UNIT_DIR/voicebot.service"

copy_once() {  # copy_once SRC DEST MODE: keep the user's file if there is one
    if [ -e "$2" ]; then
        say "kept $2 (exists)"
    else
        install -m "$3" "$1" "$2"
        say "wrote $2"
    fi
}
copy_once "$SOURCE/config/voicebot.toml" "$ETC/voicebot.toml" 0644
copy_once "$SOURCE/config/system_prompt.md" "$ETC/system_prompt.md" 0644

SECRETS="$ETC/voicebot.env"
if [ -e "$SECRETS" ]; then
    say "kept $SECRETS (exists; never overwritten)"
else
    (umask 077 && cat >"$SECRETS" <<'TEMPLATE'
# voicebot settings and secrets. Root-only (mode 0600): systemd hands this file to the service (LoadCredential).
# Uncomment and fill in each line, then: sudo systemctl restart voicebot && sudo voicebot doctor
# Any setting of /etc/voicebot/voicebot.toml can also be set here by its environment name.

# Deepgram (speech to text and text to speech): https://console.deepgram.com -> API keys
# DEEPGRAM_API_KEY=
# OpenAI (the replies): https://platform.openai.com/api-keys
# OPENAI_API_KEY=
# Twilio (console -> Account info): the auth token also turns on signature checks of every Twilio request
# TWILIO_ACCOUNT_SID=AC...
# TWILIO_AUTH_TOKEN=

# The public https:// address of this machine (your domain, served by Caddy). Twilio signs against it.
# VOICEBOT_PUBLIC_URL=https://bot.example.com
# Default caller id for `voicebot twilio call` (a number on your Twilio account, E.164).
# TWILIO_FROM_NUMBER=+15550100000
TEMPLATE
    )
    chmod 0600 "$SECRETS"
    say "wrote $SECRETS (template, mode 0600): fill it in"
fi

cat >"$BIN_DIR/voicebot.tmp" <<'WRAPPER'
#!/bin/sh
# `voicebot twilio numbers`, `voicebot doctor`, ...: python -m voicebot with the service's settings and secrets.
export CREDENTIALS_DIRECTORY=/etc/voicebot VOICEBOT_CONFIG=/etc/voicebot/voicebot.toml
export VOICEBOT_PROMPT_FILE=/etc/voicebot/system_prompt.md VOICEBOT_TRANSCRIPT_DIR=/var/lib/voicebot/transcripts
exec /opt/voicebot/venv/bin/python -m voicebot "$@"
WRAPPER
chmod 0755 "$BIN_DIR/voicebot.tmp"
mv "$BIN_DIR/voicebot.tmp" "$BIN_DIR/voicebot"
say "wrote $BIN_DIR/voicebot"

if [ "$LIVE" = 1 ]; then
    chown root:root "$SECRETS"
    systemctl daemon-reload
    systemctl enable voicebot.service >/dev/null
    say "enabled voicebot.service; after filling in $SECRETS: sudo systemctl restart voicebot"
else
    say "staging install in $ROOT done (no apt-get, no systemctl)"
fi
