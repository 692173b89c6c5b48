"""The floor for ``scripts/bench.py``: the least a Twilio-to-Deepgram server must do per call, and nothing more.

An aiohttp server on uvloop that answers ``POST /voice`` with ``<Connect><Stream>`` TwiML and, per ``/media``
WebSocket, opens one Deepgram live STT WebSocket (aiohttp client, no compression, voicebot's query), then for each
Twilio message: parse the JSON, base64-decode the ``media`` payload, and send the audio to STT in messages of
``--batch-frames`` 20 ms frames (default 3, 60 ms: what voicebot sends, so the relay pays no more socket writes than
the bot; 1 = a message per Twilio frame, the relay of the rounds before 2026-12-02 evening). No VAD, no logging.

Both relays play the greeting (synthesised once at startup) at the start of each call, as the bot does, so a caller
that waits for it goes on. Without ``--turns``, STT results are read and dropped: no turn-taking, no LLM, no more TTS
(the floor of a call that only listens). With ``--turns`` the relay also answers, as cheaply as an honest bot can on
this stack: on each ``speech_final`` result one streamed chat completion (aiohttp,
the ``data:`` lines decoded with orjson, a two-message history), each clause of it synthesised by Aura REST in turn
(aiohttp), every read of the audio sent to the caller as one ``media`` message (read at most every 200 ms once a
second of audio is queued at the caller, as voicebot paces), and one ``mark`` after each reply. No parallel
synthesis, no barge-in, no marks per segment, no history, no SDKs. The bot's CPU per call divided by this relay's
(in the same run, with the same callers and script) is how far the bot is from the floor.

    python scripts/bench_relay.py --port 18713 --emulator-url http://127.0.0.1:18711 \
        --public-url https://127.0.0.1:18713
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Sequence
from urllib.parse import urlencode
from xml.sax.saxutils import quoteattr

import aiohttp
import orjson
import uvloop
from aiohttp import WSMsgType, web

STT_QUERY = {
    "model": "nova-3",
    "language": "en-US",
    "encoding": "mulaw",
    "sample_rate": "8000",
    "channels": "1",
    "interim_results": "true",
    "endpointing": "300",
    "utterance_end_ms": "1000",
    "vad_events": "true",
    "smart_format": "true",
    "punctuate": "true",
}
CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
MAX_MESSAGE_BYTES = 65536
FRAME_BYTES = 160
"""20 ms of mu-law at 8 kHz: one Twilio media message."""
HTTP = web.AppKey("http", aiohttp.ClientSession)
STT_URL = web.AppKey("stt_url", str)
STREAM_URL = web.AppKey("stream_url", str)
BATCH_FRAMES = web.AppKey("batch_frames", int)
MU_LAW_BYTES_PER_S = 8000
READ_AHEAD_S = 1.0
READ_PACE_S = 0.2
"""voicebot's pacing (``voicebot.call.bot_turn``): once a second of audio is queued, read every 200 ms."""
CLAUSE_END = re.compile(r"[.?!,;:](?:\s|$)")
SYSTEM = "You are a friendly, concise phone assistant. Answer in one to three short sentences."
GREETING = "Hello! Thanks for calling. How can I help you today?"


async def voice(request: web.Request) -> web.Response:
    stream_url = quoteattr(request.app[STREAM_URL])
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url={stream_url}><Parameter name="token" value="x"/></Stream></Connect></Response>'
    )
    return web.Response(text=twiml, content_type="application/xml")


class Turns:
    """The provider endpoints of the answering relay, and the greeting's audio."""

    def __init__(self, http: aiohttp.ClientSession, emulator: str) -> None:
        self.http = http
        self.llm_url = emulator + "/v1/chat/completions"
        self.tts_url = (
            emulator
            + "/v1/speak?"
            + urlencode({"model": "aura-2-thalia-en", "encoding": "mulaw", "sample_rate": "8000", "container": "none"})
        )
        self.greeting = b""

    async def synthesize(self, text: str) -> aiohttp.ClientResponse:
        headers = {"Authorization": "Token bench", "Content-Type": "application/json"}
        response = await self.http.post(self.tts_url, data=orjson.dumps({"text": text}), headers=headers)
        response.raise_for_status()
        return response


TURNS = web.AppKey("turns", Turns)
ANSWER = web.AppKey("answer", bool)
"""``--turns``: answer the caller after the greeting."""


class Call:
    """One call's outbound side: what is queued at the caller, and the reply being spoken."""

    def __init__(self, ws: web.WebSocketResponse, turns: Turns, tg: asyncio.TaskGroup) -> None:
        self.ws = ws
        self.turns = turns
        self.tg = tg
        self.stream_sid = ""
        self.audio_end = 0.0
        self.marks = 0
        self.reply: asyncio.Task[None] | None = None

    async def play(self, audio: bytes) -> None:
        now = time.monotonic()
        self.audio_end = max(self.audio_end, now) + len(audio) / MU_LAW_BYTES_PER_S
        payload = base64.b64encode(audio).decode()
        message = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)

    async def mark(self) -> None:
        self.marks += 1
        message = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": f"m{self.marks}"}}
        await self.ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)

    async def greet(self) -> None:
        greeting = self.turns.greeting
        for i in range(0, len(greeting), MU_LAW_BYTES_PER_S):
            await self.play(greeting[i : i + MU_LAW_BYTES_PER_S])
        await self.mark()

    def answer(self, text: str) -> None:
        if self.reply is not None:
            self.reply.cancel()
        self.reply = self.tg.create_task(self._answer(text))

    async def _answer(self, text: str) -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": messages})
        headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
        pending = ""
        async with self.turns.http.post(self.turns.llm_url, data=body, headers=headers) as response:
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                choices = orjson.loads(line[6:]).get("choices")
                if not choices:
                    continue
                pending += (choices[0].get("delta") or {}).get("content") or ""
                while (end := CLAUSE_END.search(pending)) is not None:
                    clause, pending = pending[: end.end()].strip(), pending[end.end() :]
                    if clause:
                        await self.speak(clause)
        if pending.strip():
            await self.speak(pending.strip())
        await self.mark()

    async def speak(self, text: str) -> None:
        response = await self.turns.synthesize(text)
        try:
            while True:
                if self.audio_end - time.monotonic() > READ_AHEAD_S:
                    await asyncio.sleep(READ_PACE_S)
                audio = await response.content.readany()
                if not audio:
                    return
                await self.play(audio)
        finally:
            response.release()


async def media(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    stt: aiohttp.ClientWebSocketResponse | None = None
    turns = request.app[TURNS]
    call: Call | None = None
    batch_bytes = request.app[BATCH_FRAMES] * FRAME_BYTES
    audio = bytearray()
    try:
        async with asyncio.TaskGroup() as tg:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                data = orjson.loads(msg.data)
                event = data.get("event")
                if event == "media" and stt is not None:
                    audio += base64.b64decode(data["media"]["payload"])
                    if len(audio) >= batch_bytes:
                        async with asyncio.timeout(SEND_TIMEOUT_S):
                            await stt.send_bytes(bytes(audio))
                        audio.clear()
                elif event == "start" and stt is None:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        stt = await request.app[HTTP].ws_connect(
                            request.app[STT_URL], headers={"Authorization": "Token bench"}, compress=0
                        )
                    call = Call(ws, turns, tg)
                    call.stream_sid = data["start"]["streamSid"]
                    tg.create_task(_listen(stt, call) if request.app[ANSWER] else _drain(stt))
                    tg.create_task(call.greet())
                elif event == "stop":
                    break
            if call is not None and call.reply is not None:
                call.reply.cancel()
            if stt is not None:
                await stt.close()
    finally:
        if stt is not None and not stt.closed:
            await stt.close()
    return ws


async def _drain(stt: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in stt:  # results are read and dropped
        pass


async def _listen(stt: aiohttp.ClientWebSocketResponse, call: Call) -> None:
    """Every result parsed; a ``speech_final`` with words is answered."""
    async for msg in stt:
        if msg.type is not WSMsgType.TEXT:
            continue
        result = orjson.loads(msg.data)
        if result.get("type") == "Results" and result.get("speech_final"):
            text = result["channel"]["alternatives"][0]["transcript"]
            if text:
                call.answer(text)


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    emulator = args.emulator_url.rstrip("/")
    app[STT_URL] = emulator.replace("http", "ws", 1) + "/v1/listen?" + urlencode(STT_QUERY)
    public = args.public_url.rstrip("/")
    app[STREAM_URL] = public.replace("https://", "wss://").replace("http://", "ws://") + "/media"
    app[BATCH_FRAMES] = args.batch_frames
    app.router.add_post("/voice", voice)
    app.router.add_get("/media", media)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        app[HTTP] = http
        turns = app[TURNS] = Turns(http, emulator)
        app[ANSWER] = args.turns
        response = await turns.synthesize(GREETING)
        turns.greeting = await response.read()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", args.port).start()
            print(f"relay listening on 127.0.0.1:{args.port}", flush=True)
            await asyncio.sleep(args.max_s)  # a forgotten process ends on its own
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--emulator-url", required=True)
    p.add_argument("--public-url", required=True)
    p.add_argument("--max-s", type=float, default=1800.0)
    p.add_argument("--batch-frames", type=int, default=3, help="20 ms frames per STT message (voicebot: 3)")
    p.add_argument("--turns", action="store_true", help="answer the caller (LLM, TTS, media out), as the bot does")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
