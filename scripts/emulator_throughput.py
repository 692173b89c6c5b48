"""How much load one emulator process sustains on loopback (tells the benchmarks how far to trust it).

Starts ``python -m voicebot.emulators --fast --quiet`` as a child process on 127.0.0.1, then measures:

- STT: 160-byte mu-law frames per second over many concurrent ``/v1/listen`` WebSockets (plain aiohttp
  clients sending as fast as the server reads), counted by the server (``Metadata.duration`` after CloseStream);
- TTS: audio bytes per second over concurrent unpaced ``POST /v1/speak`` streams.

Also reports the child's CPU use during each phase. Bounded: about 20 s in all.

    .venv/bin/python scripts/emulator_throughput.py [--connections 50] [--stt-seconds 8] [--tts-seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvloop

from voicebot.audio import FRAME_BYTES, SAMPLE_RATE, pcm16_to_ulaw, silence

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
WINDOW_S = 3.0
"""Audio a client may send ahead of what the server has reported processing."""
FRAME_S = FRAME_BYTES / SAMPLE_RATE
TTS_TEXT = "Thanks for calling. We are open Monday to Friday, from nine in the morning to six in the evening."
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    name: str
    amount: float
    seconds: float
    cpu_s: float

    def rate(self) -> float:
        return self.amount / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def speech_pattern() -> list[bytes]:
    """One second of 'speech' then one of silence, as 20 ms frames: the engine detects, interims, endpoints."""
    import array
    import math

    n = SAMPLE_RATE
    pcm = array.array("h", (int(8000 * math.sin(2 * math.pi * 300 * i / SAMPLE_RATE)) for i in range(n)))
    audio = pcm16_to_ulaw(pcm.tobytes()) + silence(1000)
    return [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


class _Progress:
    """How far (audio seconds) the server has processed, from the timestamps in its messages."""

    def __init__(self) -> None:
        self.acked = 0.0
        self.changed = asyncio.Event()

    def update(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "Results":
            at = float(data["start"]) + float(data["duration"])
        elif kind == "SpeechStarted":
            at = float(data["timestamp"])
        elif kind == "UtteranceEnd":
            at = float(data["last_word_end"])
        else:
            return
        if at > self.acked:
            self.acked = at
            self.changed.set()


async def stt_connection(session: aiohttp.ClientSession, url: str, stop_at: float, pattern: list[bytes]) -> float:
    """Send frames until ``stop_at``, at most WINDOW_S ahead of the server; returns the audio seconds processed.

    The window keeps the backlog in socket buffers bounded, so what is counted is what the server processed.
    """
    progress = _Progress()
    async with session.ws_connect(url, headers={"Authorization": "Token bench"}, compress=0) as ws:

        async def read() -> float:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data = orjson.loads(msg.data)
                    if data.get("type") == "Metadata":
                        return float(data["duration"])
                    progress.update(data)
            return 0.0

        reader = asyncio.create_task(read())
        try:
            loop = asyncio.get_running_loop()
            sent = 0
            while loop.time() < stop_at:
                while sent * FRAME_S - progress.acked > WINDOW_S:
                    progress.changed.clear()
                    await progress.changed.wait()
                await ws.send_bytes(pattern[sent % len(pattern)])
                sent += 1
            await ws.send_str('{"type": "CloseStream"}')
            return await asyncio.wait_for(reader, CLOSE_TIMEOUT_S)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def measure_stt(base_ws: str, pid: int, connections: int, seconds: float) -> Phase:
    pattern = speech_pattern()
    query = "encoding=mulaw&sample_rate=8000&interim_results=true&endpointing=300&utterance_end_ms=1000"
    url = f"{base_ws}/v1/listen?{query}&vad_events=true&model=nova-3"
    async with aiohttp.ClientSession() as session:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        stop_at = asyncio.get_running_loop().time() + seconds
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(stt_connection(session, url, stop_at, pattern)) for _ in range(connections)]
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    audio_s = sum(t.result() for t in tasks)
    return Phase("stt", audio_s * 1000 / 20, elapsed, cpu)


async def tts_worker(session: aiohttp.ClientSession, url: str, stop_at: float) -> int:
    total = 0
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        async with session.post(url, json={"text": TTS_TEXT}, headers={"Authorization": "Token bench"}) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_any():
                total += len(chunk)
    return total


async def measure_tts(base: str, pid: int, concurrency: int, seconds: float) -> Phase:
    url = f"{base}/v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000&container=none"
    async with aiohttp.ClientSession() as session:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        stop_at = asyncio.get_running_loop().time() + seconds
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(tts_worker(session, url, stop_at)) for _ in range(concurrency)]
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    return Phase("tts", sum(t.result() for t in tasks), elapsed, cpu)


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot.emulators",
        "--fast",
        "--quiet",
        "--host",
        HOST,
        "--port",
        str(port),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), STARTUP_TIMEOUT_S)
        if b"listening" not in line:
            raise RuntimeError(f"emulators did not start: {line!r}")
        stt = await measure_stt(f"ws://{HOST}:{port}", proc.pid, args.connections, args.stt_seconds)
        tts = await measure_tts(f"http://{HOST}:{port}", proc.pid, args.tts_concurrency, args.tts_seconds)
    finally:
        proc.terminate()
        await proc.wait()
    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}  (emulator child process, uvloop)")
    print(
        f"STT: {stt.rate():,.0f} frames/s of 160 B over {args.connections} connections"
        f"  = {stt.rate() / 50:,.0f} real-time streams; server CPU {stt.cpu_s / stt.seconds:.0%} of a core"
    )
    print(
        f"TTS: {tts.rate() / 1e6:,.2f} MB/s over {args.tts_concurrency} streams"
        f"  = {tts.rate() / SAMPLE_RATE:,.0f}x real time; server CPU {tts.cpu_s / tts.seconds:.0%} of a core"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--stt-seconds", type=float, default=8.0)
    p.add_argument("--tts-concurrency", type=int, default=8)
    p.add_argument("--tts-seconds", type=float, default=6.0)
    return p.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
