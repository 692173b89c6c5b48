"""Vendor SDK or aiohttp for ElevenLabs and Cartesia? The client's own CPU per synthesised sentence, its latency to
the first byte, and what importing it costs, against the emulators in another process (no pacing, no latency).

    .venv/bin/python -m pip install --target build/sdk --no-deps elevenlabs==2.78.0 'cartesia==4.2.0'
    PYTHONPATH=build/sdk .venv/bin/python scripts/bench_tts_clients.py --requests 300

The SDKs are not dependencies of voicebot (this script is how the choice was made; BENCHMARKS.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Sure, we are open Monday to Friday, from nine to six."
KEY = "bench"
VOICE = "voice"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(name: str, n: int, one: Callable[[], Awaitable[float]]) -> dict[str, Any]:
    for _ in range(10):  # warm up (connections, caches)
        await one()
    firsts = []
    cpu0, wall0 = time.process_time(), time.monotonic()
    for _ in range(n):
        firsts.append(await one())
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "client": name,
        "cpu_ms_per_sentence": round(cpu / n * 1000, 3),
        "first_byte_ms_p50": round(statistics.median(firsts) * 1000, 3),
        "wall_ms_per_sentence": round(wall / n * 1000, 3),
    }


async def first_byte_and_drain(open_stream: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]) -> float:
    t0 = time.monotonic()
    first = None
    async with open_stream() as chunks:
        async for chunk in chunks:
            if chunk and first is None:
                first = time.monotonic() - t0
    assert first is not None
    return first


async def run(base: str, n: int) -> list[dict[str, Any]]:
    from voicebot.providers.cartesia_tts import CartesiaTts
    from voicebot.providers.elevenlabs_tts import ElevenLabsTts
    from voicebot.providers.pools import PoolUse, aiohttp_session

    rows = []
    ws = base.replace("http://", "ws://")
    async with aiohttp_session(PoolUse("bench", 10)) as http:
        ours = ElevenLabsTts(http, base_url=base, api_key=KEY, voice_id=VOICE, model="eleven_flash_v2_5")
        rows.append(
            await measure(
                "elevenlabs: aiohttp (voicebot)", n, lambda: first_byte_and_drain(lambda: ours.synthesize(TEXT))
            )
        )
        cartesia = CartesiaTts(http, ws_url=ws + "/tts/websocket", api_key=KEY, voice_id=VOICE, model="sonic-2",
                               version="2025-04-16")  # fmt: skip
        async with cartesia.open_call() as call:
            rows.append(await measure("cartesia: aiohttp socket (voicebot)", n,
                                      lambda: first_byte_and_drain(lambda: call.synthesize(TEXT))))  # fmt: skip

    rss0 = rss_mib()
    try:
        elevenlabs = importlib.import_module("elevenlabs.client")
    except ImportError as exc:
        print(f"elevenlabs SDK not importable: {exc}", file=sys.stderr)
    else:
        rows.append({"client": "elevenlabs SDK import", "rss_mib_added": round(rss_mib() - rss0, 1)})
        client = elevenlabs.AsyncElevenLabs(api_key=KEY, base_url=base)

        class _SdkStream:
            async def __aenter__(self) -> AsyncIterator[bytes]:
                return client.text_to_speech.stream(  # type: ignore[no-any-return]
                    VOICE, text=TEXT, model_id="eleven_flash_v2_5", output_format="ulaw_8000"
                )

            async def __aexit__(self, *exc: object) -> None:
                return None

        rows.append(await measure("elevenlabs: SDK (httpx)", n, lambda: first_byte_and_drain(_SdkStream)))
    rss1 = rss_mib()
    try:
        cartesia_sdk = importlib.import_module("cartesia")
    except ImportError as exc:
        print(f"cartesia SDK not importable: {exc}", file=sys.stderr)
    else:
        rows.append({"client": "cartesia SDK import", "rss_mib_added": round(rss_mib() - rss1, 1)})
        sdk = cartesia_sdk.AsyncCartesia(api_key=KEY, base_url=base, websocket_base_url=ws)
        fmt = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}
        async with sdk.tts.websocket_connect() as conn:

            async def one() -> float:
                t0 = time.monotonic()
                first = None
                ctx = conn.context(model_id="sonic-2", voice={"mode": "id", "id": VOICE}, output_format=fmt)
                await ctx.push(TEXT)
                await ctx.no_more_inputs()
                async for event in ctx.receive():
                    if getattr(event, "type", None) == "chunk" and first is None:
                        first = time.monotonic() - t0
                assert first is not None
                return first

            rows.append(await measure("cartesia: SDK socket", n, one))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--port", type=int, default=18791)
    args = p.parse_args()
    emulators = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebot.emulators",
            "--port",
            str(args.port),
            "--tts-ttfb-ms",
            "0",
            "--tts-bytes-per-second",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.0)
        rows = asyncio.run(run(f"http://127.0.0.1:{args.port}", args.requests))
    finally:
        emulators.terminate()
        emulators.wait(10)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
