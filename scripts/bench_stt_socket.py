"""What the recogniser socket costs the bot per message, and what aiohttp's client WebSocket would save.

The issue's candidate route for CPU was the Deepgram live socket on aiohttp (deepgram-sdk's process-wide
``transport_factory``) instead of the SDK's default ``websockets`` legacy client. This measures the two halves of that
path in this process, against the emulators in another:

- **send**: one 60 ms audio message (480 bytes, what the bot sends) through deepgram-sdk's ``send_media`` on its
  default socket, and the same bytes through ``aiohttp``'s ``ws_connect`` (no compression), ``--concurrency`` sockets
  at once, rounds interleaved, median per message;
- **receive**: the SDK's parse of one ``Results`` message (``json.loads`` + ``construct_type`` into its response
  union), which stays with any transport, since the SDK parses what the transport hands it.

    .venv/bin/python scripts/bench_stt_socket.py [--rounds 5] [--messages 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import httpx
import uvloop
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_relay import STT_QUERY  # noqa: E402  (the relay's query is voicebot's)

from voicebot.providers.deepgram_client import deepgram_client  # noqa: E402

KEY = "bench"
AUDIO = b"\xff" * 480
"""60 ms of mu-law silence: one of the bot's STT messages."""
WORDS = ["I", "would", "like", "to", "know", "your", "opening", "hours"]
RESULTS = json.dumps({
    "type": "Results", "channel_index": [0, 1], "duration": 1.02, "start": 3.5, "is_final": False,
    "speech_final": False, "from_finalize": False,
    "channel": {"alternatives": [{"transcript": " ".join(WORDS), "confidence": 0.98, "words": [
        {"word": w, "start": 1.0, "end": 1.2, "confidence": 0.9, "punctuated_word": w} for w in WORDS]}]},
    "metadata": {"request_id": "x", "model_info": {"name": "n", "version": "v", "arch": "a"}, "model_uuid": "u"},
})  # fmt: skip


async def sdk_socket(client: AsyncDeepgramClient, messages: int) -> None:
    async with client.listen.v1.connect(**STT_QUERY) as conn:  # type: ignore[arg-type]
        for _ in range(messages):
            await conn.send_media(AUDIO)
            await asyncio.sleep(0)  # let the loop run, as between the bot's messages


async def aiohttp_socket(session: aiohttp.ClientSession, base: str, messages: int) -> None:
    url = f"{base.replace('http', 'ws', 1)}/v1/listen?{urlencode(STT_QUERY)}"
    async with session.ws_connect(url, headers={"Authorization": f"Token {KEY}"}, compress=0) as ws:
        for _ in range(messages):
            await ws.send_bytes(AUDIO)
            await asyncio.sleep(0)


async def run(base: str, rounds: int, messages: int, concurrency: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sdk": [], "aiohttp": []}
    env = DeepgramClientEnvironment(base=base, production=base.replace("http", "ws", 1), agent=base, agent_rest=base)
    async with aiohttp.ClientSession() as session, httpx.AsyncClient() as http:
        client = deepgram_client(api_key=KEY, environment=env, httpx_client=http)  # one client, as in the bot
        for _ in range(rounds):
            for name in out:
                cpu0 = time.process_time()
                if name == "sdk":
                    await asyncio.gather(*(sdk_socket(client, messages) for _ in range(concurrency)))
                else:
                    await asyncio.gather(*(aiohttp_socket(session, base, messages) for _ in range(concurrency)))
                out[name].append((time.process_time() - cpu0) / (messages * concurrency) * 1e6)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=2000, help="per socket and round")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--port", type=int, default=18796)
    args = p.parse_args()
    argv = [sys.executable, "-m", "voicebot.emulators", "--port", str(args.port), "--quiet",
            "--deepgram-key", KEY, "--openai-key", KEY]  # fmt: skip
    emulators = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        sends = uvloop.run(run(f"http://127.0.0.1:{args.port}", args.rounds, args.messages, args.concurrency))
    finally:
        emulators.send_signal(signal.SIGTERM)
        emulators.wait(10)
    n = 2000
    parse_us = timeit.timeit(lambda: construct_type(type_=V1SocketClientResponse, object_=json.loads(RESULTS)),
                             number=n) / n * 1e6  # fmt: skip
    print(f"client CPU per STT message, us (median of {args.rounds} rounds; {args.concurrency} sockets at once; "
          f"load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    sdk, aio = statistics.median(sends["sdk"]), statistics.median(sends["aiohttp"])
    print(
        f"send 480 bytes: deepgram-sdk (websockets legacy) {sdk:.1f} | aiohttp ws_connect {aio:.1f} "
        f"| saved {sdk - aio:.1f} per message: {sdk - aio:.1f} ms per call-minute (1000 messages a minute)"
    )
    print(f"receive: the SDK's parse of one Results message (8 words) {parse_us:.1f} (any transport)")


if __name__ == "__main__":
    main()
