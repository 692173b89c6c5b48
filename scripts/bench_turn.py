"""CPU per bot turn, alone: the real ``BotTurn`` (LLM stream, chunker, parallel Aura synthesis, ordered assembly,
paced media and marks) with the bot's own provider clients, against the emulators in another process, and a
caller that echoes each mark when its audio would have played. No Twilio socket, no STT, no turn-taking: what a
reply costs the bot by itself, without the noise of a 100-call load run.

    .venv/bin/python scripts/bench_turn.py [--rounds 5] [--concurrency 20] [--profile]

The emulators answer as in ``make bench`` (LLM first token at once, 100 tokens per second; Aura at 4x real time
in 800-byte chunks). Each round runs ``--concurrency`` turns at once, each to its final mark (playback runs in real
time, so a round lasts as long as the longest reply); CPU is this process's only. ``--profile`` adds cProfile
around the rounds and prints the functions with the most own time, by package; ``--no-read-timeout`` builds the
clients without their per-read timeout (aiohttp re-arms a timer on every network read); ``--socket`` speaks over
Aura's socket (one per simulated call, kept across rounds) instead of REST. BENCHMARKS.md, Round 7.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import pstats
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import openai
import uvloop
from deepgram import DeepgramClientEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_procs import paced_emulators  # noqa: E402

from voicebot.audio import BYTES_PER_SECOND  # noqa: E402
from voicebot.call.bot_turn import BotTurn  # noqa: E402
from voicebot.call.services import CONNECT_TIMEOUT_S, LLM_READ_TIMEOUT_S, TTS_READ_TIMEOUT_S  # noqa: E402
from voicebot.providers import pools  # noqa: E402
from voicebot.providers.base import Message, TextToSpeech, Voice  # noqa: E402
from voicebot.providers.deepgram_client import deepgram_client  # noqa: E402
from voicebot.providers.deepgram_tts import DeepgramTts  # noqa: E402
from voicebot.providers.deepgram_tts_ws import DeepgramSpeakVoice  # noqa: E402
from voicebot.providers.openai_llm import OpenAiChat  # noqa: E402

KEY = "bench"
HISTORY: list[Message] = [
    {"role": "system", "content": "You are a friendly, concise phone assistant."},
    {"role": "user", "content": "What are your opening hours on weekdays, and can I book a table for tonight?"},
]


class EchoOut:
    """The call's writer as the turn sees it; the caller plays audio at 8 bytes/ms and echoes each mark once the
    audio before it has played."""

    def __init__(self) -> None:
        self.turn: BotTurn | None = None
        self._sent = 0
        self._play_end = 0.0
        self.media = 0
        self.marks = 0

    def sent_bytes(self) -> int:
        return self._sent

    async def send_media(self, gen: int, audio: bytes) -> bool:
        now = time.monotonic()
        self._play_end = max(self._play_end, now) + len(audio) / BYTES_PER_SECOND
        self._sent += len(audio)
        self.media += 1
        return True

    async def send_mark(self, gen: int, name: str) -> bool:
        assert self.turn is not None
        now = time.monotonic()
        at = max(self._play_end, now)
        asyncio.get_running_loop().call_later(at - now, self.turn.mark_echoed, name, True, at)
        self.marks += 1
        return True


async def one_turn(tts: TextToSpeech, llm: OpenAiChat, counts: collections.Counter[str]) -> None:
    out = EchoOut()
    turn = BotTurn(1, out, tts=tts, llm=llm, messages=HISTORY)
    out.turn = turn
    result = await turn.run()
    counts["turns"] += 1
    counts["media"] += out.media
    counts["marks"] += out.marks
    counts["segments"] += len(turn.segments)
    counts["bytes"] += len(turn.timeline)
    counts["failures"] += len(result.provider_failures)


async def run(
    base: str, rounds: int, concurrency: int, profile: cProfile.Profile | None, read_timeout: bool, socket: bool
) -> None:
    async with AsyncExitStack() as stack:
        tts_use, llm_use = pools.PoolUse("tts", 256), pools.PoolUse("llm", 256)
        tts_read = TTS_READ_TIMEOUT_S if read_timeout else None
        llm_read = LLM_READ_TIMEOUT_S if read_timeout else None
        dg_http = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(TTS_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=tts_read),
                transport=pools.aiohttp_httpx_transport(tts_use, 120.0),
            )
        )
        env = DeepgramClientEnvironment(base=base, production=base, agent=base, agent_rest=base)
        deepgram = deepgram_client(api_key=KEY, environment=env, httpx_client=dg_http)
        rest = DeepgramTts(deepgram, model="aura-2-thalia-en")
        # One TTS per simulated call, kept across rounds as a call keeps its voice across turns (Aura's socket voice
        # opens its socket with the call, not per turn).
        voice: Voice = DeepgramSpeakVoice(deepgram, rest, model="aura-2-thalia-en") if socket else rest
        calls = [await stack.enter_async_context(voice.open_call()) for _ in range(concurrency)]
        oa = openai.AsyncOpenAI(
            api_key=KEY,
            base_url=base + "/v1",
            timeout=openai.Timeout(LLM_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=llm_read),
            http_client=openai.DefaultAsyncHttpxClient(transport=pools.aiohttp_httpx2_transport(llm_use, 120.0)),
        )
        stack.push_async_callback(oa.close)
        llm = OpenAiChat(oa, model="gpt-4o-mini", temperature=0.4, max_tokens=300)
        warm: collections.Counter[str] = collections.Counter()
        await asyncio.gather(*(one_turn(call.for_turn(), llm, warm) for call in calls))  # connections, lazy paths
        per_turn: list[float] = []
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(rounds):
            cpu0 = time.process_time()
            if profile is not None:
                profile.enable()
            await asyncio.gather(*(one_turn(call.for_turn(), llm, counts) for call in calls))
            if profile is not None:
                profile.disable()
            per_turn.append((time.process_time() - cpu0) / concurrency * 1000)
    n = counts["turns"]
    print(f"CPU per bot turn: {statistics.median(per_turn):.2f} ms (median of {rounds} rounds of {concurrency} "
          f"turns at once; rounds {', '.join(f'{x:.2f}' for x in per_turn)})")  # fmt: skip
    print(f"per turn: {counts['segments'] / n:.1f} segments, {counts['bytes'] / n / BYTES_PER_SECOND:.1f} s of audio, "
          f"{counts['media'] / n:.1f} media messages, {counts['marks'] / n:.1f} marks; "
          f"{counts['failures']} provider failures")  # fmt: skip


def report(profile: cProfile.Profile, turns: int) -> None:
    stats = pstats.Stats(profile, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    by_package: collections.Counter[str] = collections.Counter()
    rows = []
    for (path, line, name), (_cc, calls, own, _cum, _callers) in stats.items():
        if "site-packages/" in path:
            package = path.split("site-packages/")[1].split("/")[0]
        elif "/voicebot/" in path:
            package = "voicebot/" + path.split("/voicebot/")[1]
        elif path == "~":
            package = "builtins"
        else:
            package = "stdlib " + Path(path).name
        by_package[package] += own
        rows.append((own, calls, f"{package}:{line} {name}"))
    total = sum(by_package.values())
    print(f"\ncProfile own time per turn by package (ms; cProfile inflates Python calls): {total / turns * 1000:.2f}")
    for package, own in by_package.most_common(20):
        print(f"  {own / turns * 1000:7.3f}  {100 * own / total:5.1f} %  {package}")
    print("\nfunctions with the most own time (ms per turn, calls per turn):")
    for own, calls, where in sorted(rows, reverse=True)[:30]:
        print(f"  {own / turns * 1000:7.3f}  {calls / turns:7.1f}  {where}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--port", type=int, default=18797)
    p.add_argument("--profile", action="store_true", help="cProfile the rounds and print where the time goes")
    p.add_argument("--no-read-timeout", action="store_true", help="the clients without their per-read timeout")
    p.add_argument("--socket", action="store_true", help="Aura over its socket (one per call) instead of REST")
    args = p.parse_args()
    profile = cProfile.Profile() if args.profile else None
    with paced_emulators(args.port, KEY) as base_url:
        uvloop.run(run(base_url, args.rounds, args.concurrency, profile, not args.no_read_timeout, args.socket))
    if profile is not None:
        report(profile, args.rounds * args.concurrency)


if __name__ == "__main__":
    main()
