#!/usr/bin/env bash
# Follow README "Deploy on a VPS" on a clean checkout into a staging root, offline, and print every command's output.
#
#   bash scripts/rehearse_deploy.sh [STAGE_DIR]      # default /tmp/voicebot-rehearsal; needs caddy, git, root for :443
#
# Each README step is run as written, except where a VPS differs from this machine (each marked DIFFERS below):
#   DNS        the domain is `localhost` (Caddy then issues from its local CA; clients trust its root through
#              SSL_CERT_FILE) instead of an A record;
#   install    `deploy/install.sh --root $STAGE/root` (no apt-get, no systemctl), pip from the configured index;
#   Caddy      the README's sed output, with a global block prepended (skip_install_trust, storage in the stage)
#              so nothing touches this machine's trust store; run in the foreground instead of `systemctl`;
#   systemd    no PID 1 here: the unit's ExecStart runs with the unit's Environment= lines and
#              CREDENTIALS_DIRECTORY=$STAGE/root/etc/voicebot (what LoadCredential provides);
#   wrapper    /usr/local/bin/voicebot's environment, with the staged paths;
#   providers  the voicebot.env points Deepgram, OpenAI and Twilio at the emulators (python -m voicebot.emulators),
#              whose Twilio places the outbound call and answers it with a simulated callee.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
STAGE="${1:-/tmp/voicebot-rehearsal}"
DOMAIN=localhost                  # DIFFERS: a real domain on a VPS
NUMBER=+15550100002               # the emulated account's number
MOBILE=+15550109999               # the emulated callee
EMU_PORT=8090
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*"; }
wait_http() { for _ in $(seq 1 100); do curl -sk -o /dev/null "$1" && return 0; sleep 0.2; done; echo "no answer from $1" >&2; return 1; }

rm -rf "$STAGE" && mkdir -p "$STAGE"
step "clean checkout of $(git -C "$SRC" rev-parse --short HEAD)"
git clone -q "$SRC" "$STAGE/voicebot"
cd "$STAGE/voicebot"
ROOT="$STAGE/root"

step "2. install (DIFFERS: --root)"
bash deploy/install.sh --root "$ROOT"
mkdir -p "$ROOT/etc/caddy" "$ROOT/var/lib/voicebot"
sed "s/bot.example.com/$DOMAIN/g" deploy/Caddyfile > "$ROOT/etc/caddy/Caddyfile"
printf '{\n\tskip_install_trust\n\tstorage file_system {\n\t\troot %s\n\t}\n}\n\n' "$STAGE/caddy-data" \
    | cat - "$ROOT/etc/caddy/Caddyfile" > "$STAGE/Caddyfile.run"        # DIFFERS: the global block
caddy run --config "$STAGE/Caddyfile.run" --adapter caddyfile >"$STAGE/caddy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -f "$STAGE/caddy-data/pki/authorities/local/root.crt" ] && break; sleep 0.2; done
export SSL_CERT_FILE="$STAGE/caddy-data/pki/authorities/local/root.crt"   # DIFFERS: trust Caddy's local CA

step "3. secrets (DIFFERS: providers are the emulators)"
cat >>"$ROOT/etc/voicebot/voicebot.env" <<ENV
DEEPGRAM_API_KEY=dg-rehearsal
OPENAI_API_KEY=sk-rehearsal
TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000
TWILIO_AUTH_TOKEN=rehearsal-auth-token
VOICEBOT_PUBLIC_URL=https://$DOMAIN
TWILIO_FROM_NUMBER=$NUMBER
DEEPGRAM_BASE_URL=http://127.0.0.1:$EMU_PORT
OPENAI_BASE_URL=http://127.0.0.1:$EMU_PORT/v1
TWILIO_API_BASE_URL=http://127.0.0.1:$EMU_PORT
ENV
cat >"$STAGE/emulator-script.json" <<'JSON'
{"stt": ["When are you open?", "Thanks, goodbye."],
 "llm": ["We are open from nine to six.", {"text": "Goodbye!", "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}}]}]}
JSON
"$ROOT/opt/voicebot/venv/bin/python" -m voicebot.emulators --port "$EMU_PORT" --script "$STAGE/emulator-script.json" \
    >"$STAGE/emulators.log" 2>&1 &
PIDS+=($!)

step "4. start (DIFFERS: the unit's ExecStart and Environment= by hand)"
(
    cd "$ROOT/var/lib/voicebot"
    export CREDENTIALS_DIRECTORY="$ROOT/etc/voicebot" VOICEBOT_CONFIG="$ROOT/etc/voicebot/voicebot.toml"
    export VOICEBOT_PROMPT_FILE="$ROOT/etc/voicebot/system_prompt.md"
    export VOICEBOT_TRANSCRIPT_DIR="$ROOT/var/lib/voicebot/transcripts" VOICEBOT_LOG_FORMAT=json
    exec "$ROOT/opt/voicebot/venv/bin/python" -m voicebot
) >"$STAGE/voicebot.log" 2>&1 &
PIDS+=($!)
wait_http http://127.0.0.1:8080/healthz
wait_http "http://127.0.0.1:$EMU_PORT/"
voicebot() {  # DIFFERS: /usr/local/bin/voicebot with the staged paths
    CREDENTIALS_DIRECTORY="$ROOT/etc/voicebot" VOICEBOT_CONFIG="$ROOT/etc/voicebot/voicebot.toml" \
    VOICEBOT_PROMPT_FILE="$ROOT/etc/voicebot/system_prompt.md" \
    "$ROOT/opt/voicebot/venv/bin/python" -m voicebot "$@"
}
step "voicebot doctor"; voicebot doctor || echo "(exit $?)"

step "5. connect the number"
step "voicebot twilio numbers"; voicebot twilio numbers
step "voicebot twilio connect $NUMBER"; voicebot twilio connect "$NUMBER"
step "voicebot doctor"; voicebot doctor || echo "(exit $?)"

step "6. test calls: inbound (the simulated caller through Caddy), then outbound"
"$ROOT/opt/voicebot/venv/bin/python" -m voicebot.caller --server "https://$DOMAIN" --public-url "https://$DOMAIN" \
    --auth-token rehearsal-auth-token --say hours
step "voicebot twilio call $MOBILE --context ..."
voicebot twilio call "$MOBILE" --context "This is a test call: ask how my day is going."
for _ in $(seq 1 150); do grep -q '"status": *"completed"' "$ROOT"/var/lib/voicebot/transcripts/*.jsonl 2>/dev/null && break; sleep 0.2; done

step "logs, transcripts, metrics"
ls "$ROOT/var/lib/voicebot/transcripts/"
for f in "$ROOT"/var/lib/voicebot/transcripts/*.jsonl; do echo "--- $(basename "$f")"; cut -c1-160 "$f"; done
curl -s 127.0.0.1:8080/metrics | grep -E '^voicebot_(active_calls|calls_total|twilio_status_callbacks_total)'
curl -s 127.0.0.1:8080/healthz; echo
step "the edge from outside: only Twilio's paths"
for path in /metrics /healthz /; do printf '%s -> ' "$path"; curl -s --cacert "$SSL_CERT_FILE" -o /dev/null -w '%{http_code}\n' "https://$DOMAIN$path"; done
