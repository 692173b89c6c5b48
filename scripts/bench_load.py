"""The load side of ``scripts/bench.py``: emulators with a small control API, and a pool of simulated callers.

Two subcommands, each run as its own process (the benchmark pins them to the core the server does not use):

    python scripts/bench_load.py emulators --port 18711
    python scripts/bench_load.py callers --server http://127.0.0.1:18712 --calls 100 --duration-s 50 \
        --script talk --out calls.json

``emulators`` serves :mod:`voicebot.emulators` (realistic latency) plus ``POST /bench/config`` (reply length,
LLM token rate, TTS byte rate) and ``GET /bench/events`` (the compact event log since the last fetch, and the
process's own event-loop lag). Every utterance gets a unique *code* (``xabcd``): the STT transcript says it, the
LLM reply repeats it at the start, so its first TTS request carries it too. The code ties one turn's events
together across the STT, LLM and TTS emulators without any help from the bot under test.

``callers`` places N :class:`~voicebot.caller.SimulatedCaller` calls, started ``--spacing-s`` apart, prints
``LIVE`` once every call has sent ``start``, and writes one JSON summary per call (utterance times, first bot
media after each, clears) when all have ended. Everything is bounded by ``--duration-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web

from voicebot.caller import (
    CallResult,
    Say,
    SayWhileBotSpeaks,
    Silence,
    SimulatedCaller,
    Step,
    WaitForBotAudio,
    WaitForBotSilence,
)
from voicebot.caller.timeline import CallerError
from voicebot.emulators import EmulatorConfig, Emulators, Event, LlmReply, deepgram_tts
from voicebot.emulators.openai_chat import default_reply

CODE = re.compile(r"\bx[a-z]{4}\b", re.IGNORECASE)
REPLIES = {
    "short": "Sure {code}, we open at nine.",
    "hours": "Sure {code}, we are open Monday to Friday, from nine in the morning to six in the evening.",
    "long": (
        "Sure {code}, let me explain our pricing plans in detail for you. "
        "The basic plan costs ten dollars a month and covers one phone line. "
        "The business plan costs thirty dollars and includes five lines and voicemail. "
        "The enterprise plan is priced per seat and comes with a dedicated account manager."
    ),
}
MAX_EVENTS = 400_000
"""Events kept between two fetches; later ones are counted and dropped (bounded memory)."""
LAG_PERIOD_S = 0.05
SHUTDOWN_TIMEOUT_S = 2.0
START_TIMEOUT_S = 20.0
CALL_GRACE_S = 30.0


_synthesize = deepgram_tts.synthesize


def _synthesize_shared(text: str, model: str = deepgram_tts.DEFAULT_TTS_MODEL, ms_per_char: float = 60.0) -> bytes:
    """The emulator's TTS with the code masked: every call's reply then hits the emulator's synthesis cache (the
    synthesis is pure Python, ~1.5 us per sample; uncached it would load the load-generator core, not the bot)."""
    return _synthesize(CODE.sub("xcode", text), model, ms_per_char)


def code_for(n: int) -> str:
    """``x`` + four letters: a word no reply or clip contains, unique for 456,976 utterances."""
    letters = []
    for _ in range(4):
        n, digit = divmod(n, 26)
        letters.append(chr(ord("a") + digit))
    return "x" + "".join(reversed(letters))


def last_code(text: str) -> str | None:
    found = CODE.findall(text)
    return found[-1].lower() if found else None


class LagProbe:
    """How late a periodic timer fires: the event-loop lag of this process."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PERIOD_S
            await asyncio.sleep(LAG_PERIOD_S)
            if len(self.samples) < MAX_EVENTS:
                self.samples.append(max(0.0, loop.time() - due))

    def take(self) -> list[float]:
        out, self.samples = self.samples, []
        return out


# --- emulators ----------------------------------------------------------------------------------------------


class BenchEmulators:
    """Hooks the emulators' transcript and reply choice, and keeps a compact copy of the events that matter."""

    def __init__(self, emu: Emulators) -> None:
        self.emu = emu
        self.reply = "hours"
        self.utterances = 0
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self.lag = LagProbe()
        emu.stt.next_transcript = self.next_transcript  # type: ignore[method-assign]
        emu.llm.next_reply = self.next_reply  # type: ignore[method-assign]
        emu.log.listeners.append(self.on_event)

    def next_transcript(self) -> str:
        code = code_for(self.utterances)
        self.utterances += 1
        return f"What are your opening hours, caller {code}?"

    def next_reply(self, messages: Sequence[Any]) -> LlmReply:
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        content = user.get("content") if user is not None else None
        code = last_code(content) if isinstance(content, str) else None
        if code is None:
            return default_reply(messages)
        return LlmReply(REPLIES[self.reply].format(code=code))

    def on_event(self, event: Event) -> None:
        compact = _compact(event)
        if compact is not None:
            if len(self.events) < MAX_EVENTS:
                self.events.append(compact)
            else:
                self.dropped += 1
        # The emulators' own log keeps every event forever; nothing here reads it, so keep it short.
        if len(self.emu.log.events) > 10_000:
            del self.emu.log.events[:5_000]

    async def configure(self, request: web.Request) -> web.Response:
        body = await request.json()
        cfg = self.emu.config
        if "reply" in body:
            if body["reply"] not in REPLIES:
                return web.json_response({"error": f"reply must be one of {sorted(REPLIES)}"}, status=400)
            self.reply = body["reply"]
        if "llm_tokens_per_second" in body:
            cfg.llm.tokens_per_second = body["llm_tokens_per_second"]
        if "tts_bytes_per_second" in body:
            cfg.tts.bytes_per_second = body["tts_bytes_per_second"]
        if "llm_ttft_ms" in body:
            cfg.llm.ttft_ms = body["llm_ttft_ms"]
        if "tts_ttfb_ms" in body:
            cfg.tts.ttfb_ms = body["tts_ttfb_ms"]
        if "tts_chunk_bytes" in body:
            cfg.tts.chunk_bytes = body["tts_chunk_bytes"]
        return web.json_response({"reply": self.reply, "llm_tps": cfg.llm.tokens_per_second})

    async def fetch(self, _request: web.Request) -> web.Response:
        events, self.events = self.events, []
        body = {"events": events, "dropped": self.dropped, "lag_s": self.lag.take(), "cpu_s": _cpu_s()}
        self.dropped = 0
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def _compact(event: Event) -> dict[str, Any] | None:
    """The fields the benchmark reads, or None for events it never reads (interims, keep-alives, ...)."""
    data = event.data
    out: dict[str, Any] = {"t": event.t, "s": event.service, "k": event.kind, "id": data.get("request_id")}
    match event.service, event.kind:
        case "stt", "results":
            if not data.get("is_final"):
                return None
            out["text"] = data.get("transcript", "")
            out["speech_final"] = bool(data.get("speech_final"))
        case "llm", "request":
            user = next((m for m in reversed(data.get("messages") or []) if m.get("role") == "user"), {})
            content = user.get("content")
            out["text"] = content if isinstance(content, str) else orjson.dumps(content).decode()
        case "tts", "request":
            out["text"] = data.get("text", "")
        case ("stt", "open" | "close" | "abort" | "speech_started") | ("llm" | "tts", "first_token" | "first_byte"):
            pass
        case ("llm" | "tts", "complete" | "abort" | "rejected" | "drop") | ("stt", "rejected" | "drop"):
            pass
        case _:
            return None
    return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def serve_emulators(args: argparse.Namespace) -> None:
    deepgram_tts.synthesize = _synthesize_shared  # the handler looks the name up at call time
    config = EmulatorConfig()
    config.llm.tokens_per_second = None  # tokens unpaced: LLM first token -> TTS request is then the bot's own time
    emu = Emulators(config)
    bench = BenchEmulators(emu)
    emu.app.router.add_post("/bench/config", bench.configure)
    emu.app.router.add_get("/bench/events", bench.fetch)
    # As voicebot.emulators.running_emulators, plus the two routes above (added before the app is frozen).
    runner = web.AppRunner(emu.app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"emulators listening on 127.0.0.1:{args.port}", flush=True)
        probe = asyncio.create_task(bench.lag.run())
        try:
            await asyncio.sleep(args.max_s)  # a forgotten process ends on its own
        finally:
            probe.cancel()
    finally:
        await runner.cleanup()


# --- callers ------------------------------------------------------------------------------------------------


def script_for(name: str) -> list[Step]:
    """The caller's script; long enough for any duration (the call's timeout ends it)."""
    greeting: list[Step] = [WaitForBotAudio(15.0), WaitForBotSilence(15.0, quiet_ms=400)]
    if name == "talk":  # a question every ~7 s, the bot answers for ~4.5 s: both sides talk
        return greeting + [Say("hours"), WaitForBotAudio(10.0), WaitForBotSilence(15.0, 400), Silence(1000)] * 40
    if name == "short":  # short turns, to get many samples from one call
        return greeting + [Say("okay"), WaitForBotAudio(10.0), WaitForBotSilence(15.0, 300), Silence(200)] * 100
    if name == "barge":  # interrupt every reply one second into its audio
        return [*greeting, Say("hours"), *[SayWhileBotSpeaks("question", after_ms=1000, timeout=10.0)] * 30]
    if name == "listen":  # silent after the greeting: what a call costs per inbound frame, without turns
        return [*greeting, Silence(3_600_000)]
    raise ValueError(f"unknown script {name!r}")


def summarise(result: CallResult) -> dict[str, Any]:
    """The Twilio-side times the benchmark needs from one call."""
    events = result.events
    starts = [e.t for e in events if e.kind == "caller_speech_start"]
    ends = [e.t for e in events if e.kind == "caller_speech_end"]
    media = [e.t for e in events if e.kind == "media_received"]
    utterances = []
    for start, end in zip(starts, ends, strict=False):
        first = next((t for t in media if t > end), None)
        utterances.append([start, end, first])
    first_event = result.first("start_sent")
    return {
        "call_sid": result.call_sid,
        "ok": result.ok,
        "failures": result.failures[:5],
        "n_failures": len(result.failures),
        "ended_by": result.ended_by,
        "start_sent": first_event.t if first_event else None,
        "ended_at": result.ended_at,
        "frames_sent": result.frames_sent,
        "utterances": utterances,
        "clears": [e.t for e in events if e.kind == "clear_received"],
        "media_messages": len(media),
        "first_media": media[0] if media else None,
    }


async def run_callers(args: argparse.Namespace) -> dict[str, Any]:
    lag = LagProbe()
    settled = 0
    summaries: list[dict[str, Any]] = []
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    origin = loop.time()
    cpu0 = _cpu_s()

    async def one(index: int) -> None:
        nonlocal settled
        await asyncio.sleep(max(0.0, origin + args.offset_s + index * args.spacing_s - loop.time()))
        caller = SimulatedCaller(
            args.server, script_for(args.script), auth_token=args.auth_token, public_url=args.public_url
        )
        task = asyncio.create_task(caller.run(timeout=args.duration_s))
        try:
            await caller.wait_for("start_sent", START_TIMEOUT_S)
        except (TimeoutError, CallerError) as exc:
            errors.append(f"call {index} never started: {exc!r}")
        # Every call started or gave up: the window can begin (a call that never started shows in the results,
        # and the window counts only the calls live through it).
        settled += 1
        if settled == args.calls:
            print(f"LIVE {time.monotonic():.6f}", flush=True)
        try:
            summaries.append(summarise(await task))
        except CallerError as exc:
            errors.append(f"call {index}: {exc}")

    limit = args.duration_s + args.offset_s + args.calls * args.spacing_s + CALL_GRACE_S
    async with asyncio.timeout(limit), asyncio.TaskGroup() as tg:
        probe = tg.create_task(lag.run())
        calls = [tg.create_task(one(i)) for i in range(args.calls)]
        await asyncio.gather(*calls)
        probe.cancel()
    wall = loop.time() - origin
    return {"calls": summaries, "errors": errors, "lag_s": lag.take(), "cpu_s": _cpu_s() - cpu0, "wall_s": wall}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("emulators", help="serve the emulators with the benchmark hooks")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--max-s", type=float, default=1800.0, help="exit after this long in any case")
    c = sub.add_parser("callers", help="place N simulated calls and write their summaries")
    c.add_argument("--server", required=True)
    c.add_argument("--public-url")
    c.add_argument("--auth-token")
    c.add_argument("--calls", type=int, default=1)
    c.add_argument("--spacing-s", type=float, default=0.05, help="between call starts")
    c.add_argument("--offset-s", type=float, default=0.0, help="before the first call (callers in several processes)")
    c.add_argument("--duration-s", type=float, default=30.0, help="each call's length")
    c.add_argument("--script", choices=["talk", "short", "barge", "listen"], default="talk")
    c.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "emulators":
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_emulators(args))
        return
    out = uvloop.run(run_callers(args))
    Path(args.out).write_bytes(orjson.dumps(out))
    print(f"DONE {len(out['calls'])} calls", flush=True)


if __name__ == "__main__":
    main()
