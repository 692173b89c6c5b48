"""The floor for ``scripts/bench.py``: the least a Twilio-to-Deepgram server must do per call, and nothing more.

An aiohttp server on uvloop that answers ``POST /voice`` with ``<Connect><Stream>`` TwiML and, per ``/media``
WebSocket, opens one Deepgram live STT WebSocket (aiohttp client, no compression, voicebot's query), then for each
Twilio message: parse the JSON, base64-decode the ``media`` payload, and send the audio to STT in messages of
``--batch-frames`` 20 ms frames (default 3, 60 ms: what voicebot sends, so the relay pays no more socket writes than
the bot; 1 = a message per Twilio frame, the relay of the rounds before 2026-12-02 evening). STT results are read and
dropped. No VAD, no turn-taking, no LLM, no TTS, no logging. The bot's CPU per call divided by this relay's is how
far the bot is from the floor on the same machine with the same callers.

    python scripts/bench_relay.py --port 18713 --emulator-url http://127.0.0.1:18711 \
        --public-url https://127.0.0.1:18713
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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


async def voice(request: web.Request) -> web.Response:
    stream_url = quoteattr(request.app[STREAM_URL])
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url={stream_url}><Parameter name="token" value="x"/></Stream></Connect></Response>'
    )
    return web.Response(text=twiml, content_type="application/xml")


async def media(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    stt: aiohttp.ClientWebSocketResponse | None = None
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
                    tg.create_task(_drain(stt))
                elif event == "stop":
                    break
            if stt is not None:
                await stt.close()
    finally:
        if stt is not None and not stt.closed:
            await stt.close()
    return ws


async def _drain(stt: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in stt:  # results are read and dropped
        pass


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    emulator = args.emulator_url.rstrip("/")
    app[STT_URL] = emulator.replace("http", "ws", 1) + "/v1/listen?" + urlencode(STT_QUERY)
    public = args.public_url.rstrip("/")
    app[STREAM_URL] = public.replace("https://", "wss://").replace("http://", "ws://") + "/media"
    app[BATCH_FRAMES] = args.batch_frames
    app.router.add_post("/voice", voice)
    app.router.add_get("/media", media)
    async with aiohttp.ClientSession() as http:
        app[HTTP] = http
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
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
