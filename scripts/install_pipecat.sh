#!/usr/bin/env bash
# Create .venv-pipecat: Pipecat and its providers, pinned, for scripts/pipecat_bot.py (the benchmark's reference
# bot). Kept apart from .venv on purpose: Pipecat must never be installed into voicebot's own environment.
#
#   scripts/install_pipecat.sh            # idempotent: does nothing when the pinned set is already installed
#   PYTHON=python3.11 PIPECAT_VENV=/tmp/pc scripts/install_pipecat.sh
#
# Needs only PyPI. Silero VAD and Smart Turn v3 models ship inside the pipecat-ai wheel (no download at run time).
# The pins are `pip freeze` of a working install on Python 3.11.7; deepgram-sdk, openai, websockets, aiohttp and
# httpx2 are the same versions as voicebot's .venv, so both bots use identical provider SDKs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${PIPECAT_VENV:-$ROOT/.venv-pipecat}"
STAMP="$VENV/.installed-pipecat"

LOCK="$(
  cat <<'EOF'
pipecat-ai[deepgram,openai,websocket]==1.14.0
uvicorn==0.54.0
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.18
cffi==2.1.1
click==8.5.1
deepgram-sdk==7.17.0
docopt==0.6.2
docstring_parser==0.18.0
fastapi==0.165.0
flatbuffers==25.12.19
frozenlist==1.8.0
h11==0.16.0
h2==4.4.1
hpack==4.2.0
httpcore==1.0.9
httpcore2==2.16.2
httpx==0.28.1
httpx2==2.16.2
hyperframe==6.1.0
idna==3.20
jiter==0.19.0
llvmlite==0.50.0
loguru==0.7.3
loudness==0.2.0
Markdown==3.11.3
multidict==7.2.1
num2words==0.5.14
numba==0.68.1
numpy==2.4.6
onnxruntime==1.31.1
openai==3.52.0
opentelemetry-api==1.45.2
packaging==26.3
pillow==13.0.0
propcache==0.5.4
protobuf==6.33.6
pycparser==3.12
pydantic==2.14.3
pydantic_core==2.50.4
python-dotenv==1.2.4
PyYAML==6.0.3
resampy==0.4.3
sentencex==1.0.32
sniffio==1.3.1
soundfile==0.13.1
soxr==1.0.0
starlette==1.10.0
truststore==0.10.5
typing-inspection==0.4.5
typing_extensions==4.16.0
wait_for2==0.4.1
websockets==17.4
yarl==1.25.1
EOF
)"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install_pipecat.sh: pipecat-ai 1.14.0 needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 1
fi

WANT="$(printf '%s\n%s\n' "$("$PYTHON" -V 2>&1)" "$LOCK" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c 'import pipecat' 2>/dev/null; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
printf '%s\n' "$LOCK" >"$VENV/requirements.lock"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$VENV/requirements.lock"

# Smoke test: every class pipecat_bot.py uses imports, and the VAD / turn models are in the wheel.
"$VENV/bin/python" -W ignore - <<'EOF'
from importlib import resources

import deepgram, openai, pipecat  # noqa: F401
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: F401
from pipecat.serializers.twilio import TwilioFrameSerializer  # noqa: F401
from pipecat.services.deepgram.stt import DeepgramSTTService  # noqa: F401
from pipecat.services.deepgram.tts import DeepgramHttpTTSService  # noqa: F401
from pipecat.services.openai.llm import OpenAILLMService  # noqa: F401
from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport  # noqa: F401

for package, name in [
    ("pipecat.audio.vad.data", "silero_vad.onnx"),
    ("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx"),
]:
    assert resources.files(package).joinpath(name).is_file(), f"{package}/{name} missing from the wheel"
EOF

echo "$WANT" >"$STAMP"
echo "install_pipecat.sh: $VENV ready ($("$VENV/bin/python" -c 'import pipecat; print("pipecat-ai", pipecat.__version__)' 2>/dev/null))"
