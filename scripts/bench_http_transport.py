"""httpx's own transport or aiohttp under the provider SDKs? The client's CPU per Aura REST sentence and per streamed
OpenAI reply, through the bot's own provider classes, against the emulators in another process; and the same reply
read through the SDK's per-chunk models (``stream=True``), as the bot did before it parsed the lines itself.

    .venv/bin/python scripts/bench_http_transport.py [--rounds 15] [--concurrency 20] [--uvloop] [--tts-chunk-bytes N]

TTS is paced as in ``make bench`` (4x real time in 800-byte chunks, so each chunk is a read of its own), LLM tokens
at 100 per second; ``--concurrency`` streams run at once, so the loop interleaves them as under load. Variants
alternate round by round and each figure is the median over rounds (the machine is shared). CPU is this process's
(the client's) only: the emulators run in their own. Two runs with ``--tts-chunk-bytes`` 800 and 8000 separate the
cost per request from the cost per chunk read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import httpx2
import openai
import uvloop
from deepgram import DeepgramClientEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_procs import paced_emulators  # noqa: E402

from voicebot.providers import pools  # noqa: E402
from voicebot.providers.base import Message  # noqa: E402
from voicebot.providers.deepgram_client import deepgram_client  # noqa: E402
from voicebot.providers.deepgram_tts import DeepgramTts  # noqa: E402
from voicebot.providers.openai_llm import OpenAiChat  # noqa: E402

TEXT = "Sure, we are open Monday to Friday, from nine in the morning to six in the evening."
KEY = "bench"
VARIANTS = ("httpx", "aiohttp")


async def clients(variant: str, base: str, stack: AsyncExitStack) -> tuple[DeepgramTts, OpenAiChat, openai.AsyncOpenAI]:
    tts_use, llm_use = pools.PoolUse("tts", 64), pools.PoolUse("llm", 64)
    if variant == "httpx":
        # httpx's and httpx2's own transports (httpcore on anyio), as voicebot used them before
        limits: dict[str, Any] = {"max_connections": 64, "max_keepalive_connections": 64, "keepalive_expiry": 120.0}
        dg_transport: Any = pools.CountedTransport(httpx.AsyncHTTPTransport(limits=httpx.Limits(**limits)), tts_use)
        oa_transport: Any = pools.CountedTransport(httpx2.AsyncHTTPTransport(limits=httpx2.Limits(**limits)), llm_use)
    else:
        dg_transport = pools.aiohttp_httpx_transport(tts_use, 120.0)
        oa_transport = pools.aiohttp_httpx2_transport(llm_use, 120.0)
    dg_http = await stack.enter_async_context(httpx.AsyncClient(transport=dg_transport))
    env = DeepgramClientEnvironment(base=base, production=base, agent=base, agent_rest=base)
    tts = DeepgramTts(deepgram_client(api_key=KEY, environment=env, httpx_client=dg_http), model="aura-2-thalia-en")
    oa = openai.AsyncOpenAI(
        api_key=KEY, base_url=base + "/v1", http_client=openai.DefaultAsyncHttpxClient(transport=oa_transport)
    )
    stack.push_async_callback(oa.close)
    return tts, OpenAiChat(oa, model="gpt-4o-mini", temperature=0.6, max_tokens=120), oa


async def one_sentence(tts: DeepgramTts) -> int:
    size = 0
    async with tts.synthesize(TEXT) as chunks:
        async for chunk in chunks:
            size += len(chunk)
    return size


async def one_reply(llm: OpenAiChat) -> int:
    history: list[Message] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When?"}]
    events = 0
    async with llm.stream(history, ()) as stream:
        async for _ in stream:
            events += 1
    return events


async def one_reply_sdk_models(oa: openai.AsyncOpenAI) -> int:
    """The same reply read as voicebot did before 2c69246: ``stream=True``, one pydantic chunk per token."""
    history: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When?"}]
    events = 0
    stream = await oa.chat.completions.create(model="gpt-4o-mini", messages=history, stream=True)
    async for _ in stream:
        events += 1
    return events


async def one_sentence_aiohttp_only(session: aiohttp.ClientSession, base: str) -> int:
    """The same request read with aiohttp alone (no SDK, no httpx): what reading the chunks costs by itself."""
    query = "model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000&container=none"
    headers = {"Authorization": f"Token {KEY}"}
    size = 0
    async with session.post(f"{base}/v1/speak?{query}", json={"text": TEXT}, headers=headers) as response:
        async for chunk in response.content.iter_any():
            size += len(chunk)
    return size


async def cpu_per_item(n: int, concurrency: int, one: Callable[[], Awaitable[int]]) -> float:
    """ms of this process's CPU per item, ``n`` items with ``concurrency`` at once."""
    await asyncio.gather(*(one() for _ in range(concurrency)))  # warm: connections open, lazy paths built
    cpu0 = time.process_time()
    for _ in range(max(1, n // concurrency)):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return (time.process_time() - cpu0) / (max(1, n // concurrency) * concurrency) * 1000


async def run(base: str, rounds: int, per_round: int, concurrency: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {v: {"tts": [], "llm": [], "llm_models": []} for v in VARIANTS}
    out["aiohttp_only"] = {"tts": []}
    for _ in range(rounds):
        async with aiohttp.ClientSession() as session:
            floor = partial(one_sentence_aiohttp_only, session, base)
            out["aiohttp_only"]["tts"].append(await cpu_per_item(per_round, concurrency, floor))
        for variant in VARIANTS:
            async with AsyncExitStack() as stack:
                tts, llm, oa = await clients(variant, base, stack)
                out[variant]["tts"].append(await cpu_per_item(per_round, concurrency, partial(one_sentence, tts)))
                out[variant]["llm"].append(await cpu_per_item(per_round, concurrency, partial(one_reply, llm)))
                models = partial(one_reply_sdk_models, oa)
                out[variant]["llm_models"].append(await cpu_per_item(per_round, concurrency, models))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--per-round", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--port", type=int, default=18795)
    p.add_argument("--tts-chunk-bytes", type=int, default=800, help="the emulator's TTS chunk (800 = make bench's)")
    p.add_argument("--uvloop", action="store_true", help="run the clients on uvloop, as the bot does")
    args = p.parse_args()
    with paced_emulators(args.port, KEY, tts_chunk_bytes=args.tts_chunk_bytes) as base_url:
        runner = uvloop.run if args.uvloop else asyncio.run
        results = runner(run(base_url, args.rounds, args.per_round, args.concurrency))
    print(f"client CPU per item, ms (median of {args.rounds} rounds; {args.concurrency} streams at once; "
          f"load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    base = {k: statistics.median(v) for k, v in results["httpx"].items()}
    for variant in VARIANTS:
        row = {k: statistics.median(v) for k, v in results[variant].items()}
        ratios = ", ".join(f"{k} {row[k] / base[k]:.2f}x" for k in row)
        print(f"{variant:8} Aura REST sentence {row['tts']:.3f} ms | OpenAI streamed reply {row['llm']:.3f} ms"
              f" (read as SDK chunk models: {row['llm_models']:.3f} ms) | vs httpx: {ratios}")  # fmt: skip
    floor = statistics.median(results["aiohttp_only"]["tts"])
    print(f"aiohttp alone (no SDK, no httpx) Aura REST sentence {floor:.3f} ms: reading the chunks by itself")


if __name__ == "__main__":
    main()
