#!/usr/bin/env bash
# Regenerate the caller's speech clips in voicebot/clips/ as raw mu-law, 8000 Hz, mono (Twilio's format).
#
# espeak-ng speaks each text to a 22.05 kHz WAV; sox band-limits it to the telephone band, trims the leading and
# trailing silence, normalises, pads ~100 ms of silence on each side and writes headerless mu-law. The texts
# must match CLIP_TEXTS in voicebot/clips/__init__.py (checked by tests/test_caller.py).
# Requires: espeak-ng, sox (apt-get install -y espeak-ng sox). Output is deterministic (sox -R).
set -euo pipefail

OUT="$(cd "$(dirname "$0")/.." && pwd)/voicebot/clips"
VOICE="${VOICE:-en-us}"
RATE_WPM="${RATE_WPM:-165}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

declare -A TEXTS=(
  [hours]="What are your opening hours?"
  [question]="Can you tell me about the pricing plans?"
  [interrupt]="Wait, stop, I have a different question."
  [uh_huh]="uh-huh"
  [okay]="okay"
  [goodbye]="Thanks, goodbye."
)

to_ulaw=(-R -D -t wav - -r 8000 -c 1 -e mu-law -t raw)
shape=(sinc 200-3400 silence 1 0.02 1% reverse silence 1 0.02 1% reverse norm -3 pad 0.1 0.1)

for name in "${!TEXTS[@]}"; do
  espeak-ng -v "$VOICE" -s "$RATE_WPM" -w "$TMP/$name.wav" "${TEXTS[$name]}"
  sox -R "$TMP/$name.wav" -t wav - | sox "${to_ulaw[@]}" "$OUT/$name.ulaw" "${shape[@]}"
  echo "$name: $(stat -c %s "$OUT/$name.ulaw") bytes"
done

# Non-speech: 300 ms of brown noise at about the level of the speech clips, same padding.
sox -R -D -n -r 8000 -c 1 -e mu-law -t raw "$OUT/noise.ulaw" synth 0.3 brownnoise vol 0.2 pad 0.1 0.1
echo "noise: $(stat -c %s "$OUT/noise.ulaw") bytes"
