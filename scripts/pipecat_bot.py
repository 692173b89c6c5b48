"""A minimal Pipecat phone bot equivalent to voicebot, for benchmarking against the same local emulators.

Runs in its own virtualenv (scripts/install_pipecat.sh makes .venv-pipecat); never import it from voicebot.

    scripts/install_pipecat.sh
    .venv/bin/python -m voicebot.emulators --port 8765 --fast &
    .venv-pipecat/bin/python scripts/pipecat_bot.py --port 8081 --emulator-url http://127.0.0.1:8765 \
        --public-url https://127.0.0.1:8081
    .venv/bin/python -m voicebot.caller --server http://127.0.0.1:8081 --public-url https://127.0.0.1:8081 --say hours

With an https ``--public-url`` the TwiML says ``wss://`` as Twilio requires, and the caller (given the same public
URL) connects to this server over plain ws://; with the default http URL the TwiML says ``ws://`` and the caller
still completes the call but reports Twilio error 31910 and exits 1 (as it does for voicebot
run with an http public URL).

It follows Pipecat's own Twilio example (pipecat-examples twilio-chatbot/inbound): FastAPI + uvicorn,
``parse_telephony_websocket`` for ``connected``/``start``, ``FastAPIWebsocketTransport`` with
``TwilioFrameSerializer``, Silero VAD in the user aggregator and the default user-turn strategies (Silero start,
Smart Turn v3 stop; ``--turn speech-timeout`` swaps in Pipecat's plain silence timeout). Providers are Deepgram
live STT, OpenAI chat completions and Deepgram REST TTS, all pointed at ``--emulator-url``.

Two adapters keep the provider traffic the same as voicebot's: Pipecat's pipeline audio is 16-bit PCM, while the
emulators (like voicebot) speak raw mu-law 8 kHz both ways. So STT re-encodes the pipeline's PCM to mu-law
before ``send_media`` and asks Deepgram for ``encoding=mulaw``, and TTS asks for ``encoding=mulaw`` and decodes the
body to PCM before Pipecat's framing (the serializer then encodes it back to mu-law for Twilio). Against real
Deepgram one would instead send/request ``linear16``; the CPU of a mu-law <-> PCM table conversion is negligible.
"""

from __future__ import annotations

import argparse
import audioop
import contextlib
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import quoteattr

import aiohttp
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import ErrorFrame, Frame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramHttpTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transcriptions.language import Language
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

SAMPLE_RATE = 8000
REPO = Path(__file__).resolve().parent.parent
# voicebot's defaults (voicebot/settings.py), so both bots make the same provider requests.
GREETING = "Hello! Thanks for calling. How can I help you today?"
STT_MODEL = "nova-3"
TTS_VOICE = "aura-2-asteria-en"
LLM_MODEL = "gpt-4o-mini"
FALLBACK_PROMPT = "You are a friendly, concise phone assistant. Answer in one to three short sentences."


class MulawDeepgramSTTService(DeepgramSTTService):
    """Deepgram live STT that sends mu-law (the pipeline hands it 16-bit PCM at 8 kHz)."""

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        async for frame in super().run_stt(audioop.lin2ulaw(audio, 2)):
            yield frame


class MulawDeepgramHttpTTSService(DeepgramHttpTTSService):
    """Deepgram REST TTS that requests raw mu-law and hands the pipeline 16-bit PCM.

    ``run_tts`` mirrors ``DeepgramHttpTTSService.run_tts`` (pipecat-ai 1.14.0) with one change: the response body
    is decoded from mu-law before Pipecat cuts it into ``TTSAudioRawFrame``s.
    """

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        params: dict[str, str | int | float] = {
            "model": str(self._settings.voice),
            "encoding": self._encoding,
            "sample_rate": self.sample_rate,
            "container": "none",
        }
        headers = {"Authorization": f"Token {self._api_key}", "Content-Type": "application/json"}
        try:
            await self.start_ttfb_metrics()
            async with self._session.post(
                f"{self._base_url}/v1/speak", headers=headers, json={"text": text}, params=params
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                await self.start_tts_usage_metrics(text)
                async for frame in self._stream_audio_frames_from_iterator(
                    _ulaw_to_pcm(response.content.iter_chunked(self.chunk_size)), context_id=context_id
                ):
                    await self.stop_ttfb_metrics()
                    yield frame
        except Exception as exc:
            yield ErrorFrame(f"Error getting audio: {exc}")


async def _ulaw_to_pcm(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield audioop.ulaw2lin(chunk, 2)


def load_prompt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return FALLBACK_PROMPT


def ws_url(http_url: str) -> str:
    parts = urlsplit(http_url)
    return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path, "", ""))


async def run_call(websocket: WebSocket, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
    """One call: parse ``connected``/``start``, build the pipeline, run it until the caller hangs up."""
    _, call_data = await parse_telephony_websocket(websocket)
    emulator = args.emulator_url.rstrip("/")
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        account_sid=args.twilio_account_sid,
        auth_token=args.twilio_auth_token,
        base_url=emulator,  # auto hang-up POSTs {base_url}/2010-04-01/Accounts/{sid}/Calls/{sid}.json
        params=TwilioFrameSerializer.InputParams(auto_hang_up=not args.no_hang_up),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
        ),
    )
    stt = MulawDeepgramSTTService(
        api_key=args.deepgram_key,
        base_url=ws_url(emulator),  # -> DeepgramClientEnvironment(production=ws://..., base=http://...)
        encoding="mulaw",
        # voicebot's live-STT query (endpointing, utterance_end_ms, ...); Pipecat's defaults would omit
        # endpointing (Deepgram then uses 10 ms) and set language=en, smart_format=false.
        settings=DeepgramSTTService.Settings(
            model=STT_MODEL,
            language=Language.EN_US,
            endpointing=300,
            utterance_end_ms=1000,
            interim_results=True,
            punctuate=True,
            smart_format=True,
            extra={"vad_events": True},
        ),
    )
    llm = OpenAILLMService(
        api_key=args.openai_key,
        base_url=f"{emulator}/v1",
        settings=OpenAILLMService.Settings(
            model=LLM_MODEL, system_instruction=args.system_prompt, temperature=0.4, max_completion_tokens=300
        ),
    )
    tts = MulawDeepgramHttpTTSService(
        api_key=args.deepgram_key,
        aiohttp_session=session,
        base_url=emulator,
        encoding="mulaw",
        sample_rate=SAMPLE_RATE,
        settings=DeepgramHttpTTSService.Settings(voice=TTS_VOICE),
    )
    strategies = None  # Pipecat's default: VAD/transcription start, Smart Turn v3 stop
    if args.turn == "speech-timeout":
        strategies = UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy()])
    context = LLMContext()
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(), user_turn_strategies=strategies),
    )
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, transport.output(), assistant_aggregator])
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE, enable_metrics=args.metrics
        ),
        enable_rtvi=False if args.no_rtvi else None,  # None: Pipecat's default, RTVI processor + observer added
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport: FastAPIWebsocketTransport, client: object) -> None:
        await task.queue_frames([TTSSpeakFrame(GREETING)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: FastAPIWebsocketTransport, client: object) -> None:
        await task.cancel()

    logger.info(f"call {call_data['call_id']} stream {call_data['stream_id']} started")
    runner = WorkerRunner(handle_sigint=False)  # uvicorn owns the signals
    await runner.add_workers(task)
    await runner.run()
    logger.info(f"call {call_data['call_id']} ended")


def build_app(args: argparse.Namespace) -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:  # shared by every call's TTS, as in Pipecat's examples
            state["session"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/voice")
    async def voice(request: Request) -> Response:
        stream_url = quoteattr(f"{ws_url(args.public_url)}/media")
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url={stream_url}><Parameter name="token" value="x"/></Stream>'
            "</Connect></Response>"
        )
        return Response(content=twiml, media_type="application/xml")

    @app.websocket("/media")
    async def media(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await run_call(websocket, args, state["session"])
        except Exception:
            logger.exception("call failed")

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--emulator-url", default="http://127.0.0.1:8765", help="voicebot.emulators base URL")
    p.add_argument(
        "--public-url",
        help="URL written in the TwiML <Stream> (as wss:// for https, else ws://); default http://HOST:PORT. "
        "Give an https:// URL to get the wss:// Twilio requires (the caller maps it back to this server)",
    )
    p.add_argument("--prompt-file", type=Path, default=REPO / "config" / "system_prompt.md")
    p.add_argument("--turn", choices=["smart-turn", "speech-timeout"], default="smart-turn")
    p.add_argument("--no-hang-up", action="store_true", help="disable the serializer's REST auto hang-up")
    p.add_argument("--no-rtvi", action="store_true", help="do not add Pipecat's RTVI processor/observer")
    p.add_argument("--metrics", action="store_true", help="Pipecat TTFB/processing metrics (debug log)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--deepgram-key", default=os.environ.get("DEEPGRAM_API_KEY", "test-key"))
    p.add_argument("--openai-key", default=os.environ.get("OPENAI_API_KEY", "sk-test"))
    p.add_argument("--twilio-account-sid", default=os.environ.get("TWILIO_ACCOUNT_SID", "AC" + "0" * 32))
    p.add_argument("--twilio-auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN", "test-token"))
    args = p.parse_args(argv)
    args.public_url = (args.public_url or f"http://{args.host}:{args.port}").rstrip("/")
    args.system_prompt = load_prompt(args.prompt_file)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
