"""``make bench-voices``: the voices side by side in one run (Aura over REST and over its socket, ElevenLabs,
Cartesia), each against its emulator with the same latency model.

    .venv/bin/python scripts/bench_voices.py              # about 6 minutes on 2 cores
    .venv/bin/python scripts/bench_voices.py --smoke      # checks the harness (about 2 minutes)
    .venv/bin/python scripts/bench_voices.py --calls 50 --voices deepgram_rest,cartesia

For each voice, the server (pinned to core 0) is started with that voice, then: one call (the ``talk`` script) and
``--calls`` concurrent calls, each with a measured window (CPU, RSS) while every call is live. Per voice it reports:
TTS request → first byte as the bot sees it (from its own turn timing: the first segment's request to its first
audio byte, queueing on a socket included), the caller's end of speech → first audio (the whole turn as heard),
server CPU per call-minute and RSS per call at 1 and N calls. Harness: scripts/bench.py (processes, phases).

Latency model (the emulators, the same for every voice): LLM first token 300 ms, then the whole reply at once;
TTS first byte 150 ms after the request (REST, Cartesia context) or after the Flush (Aura socket, which synthesises
one Flush at a time), then audio at 4x real time; STT results 50 ms after the audio. So differences between voices
here are the transports' own costs, not the vendors' model speeds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from bench import DEFAULT, LOADED, SMOKE, Bench, Timing
from bench_analysis import Phase, caller_latency, pct
from bench_procs import LOAD_CORE, ROOT
from bench_report import cpu_per_call_minute, environment, fmt

VOICES: dict[str, dict[str, str]] = {
    "deepgram_rest": {},
    "deepgram_websocket": {"DEEPGRAM_TTS_TRANSPORT": "websocket"},
    "elevenlabs": {"VOICEBOT_TTS_PROVIDER": "elevenlabs", "ELEVENLABS_API_KEY": "bench", "ELEVENLABS_VOICE_ID": "v"},
    "cartesia": {"VOICEBOT_TTS_PROVIDER": "cartesia", "CARTESIA_API_KEY": "bench", "CARTESIA_VOICE_ID": "v"},
}


def tts_first_byte_ms(transcripts: Path, call_sids: Sequence[str]) -> list[float]:
    """Per turn, the bot's own first-segment TTS request → first audio byte (ms), from its transcript lines."""
    out = []
    for sid in call_sids:
        path = transcripts / f"{sid}.jsonl"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line)
            latency = rec.get("latency_ms") or {}
            if rec.get("kind") == "turn" and "tts_request" in latency and "tts_first_byte" in latency:
                out.append(latency["tts_first_byte"] - latency["tts_request"])
    return out


def row(name: str, one: Phase, many: Phase, transcripts: Path) -> dict[str, Any]:
    def rss_per_call(phase: Phase) -> float | None:
        w = phase.window
        if w is None or not w.live_calls:
            return None
        return (w.rss_mib - w.rss_idle_mib) / w.live_calls

    sids = [c["call_sid"] for p in (one, many) for c in p.calls if c.get("call_sid")]
    ttfb = tts_first_byte_ms(transcripts, sids)
    return {
        "voice": name,
        "tts_first_byte_ms_p50": pct(ttfb, 50),
        "tts_first_byte_ms_p90": pct(ttfb, 90),
        "turn_ms_1_p50": pct(caller_latency(one), 50),
        "turn_ms_n_p50": pct(caller_latency(many), 50),
        "turn_ms_n_p90": pct(caller_latency(many), 90),
        "cpu_s_per_call_min_1": cpu_per_call_minute(one),
        "cpu_s_per_call_min_n": cpu_per_call_minute(many),
        "rss_mib_per_call_n": rss_per_call(many),
        "rss_mib_1": one.window.rss_mib if one.window else None,
        "live_n": many.window.live_calls if many.window else 0,
        "failed_calls": sum(1 for p in (one, many) for c in p.calls if not c.get("ok")),
        "turns": len(caller_latency(one)) + len(caller_latency(many)),
    }


def markdown(rows: list[dict[str, Any]], calls: int, started: float) -> str:
    base = rows[0]
    lines = [
        f"### Voices side by side ({calls} calls, `scripts/bench_voices.py`, {time.strftime('%Y-%m-%d')})",
        "",
        "| voice | TTS request → first byte p50 / p90 ms | caller end of speech → first audio p50 ms, 1 call | "
        f"… at {calls} calls p50 / p90 | CPU s per call-minute, 1 / {calls} calls | RSS MiB per call at {calls} | "
        "turns | failed calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = ""
        if r is not base and r["cpu_s_per_call_min_n"] and base["cpu_s_per_call_min_n"]:
            ratio = f" ({r['cpu_s_per_call_min_n'] / base['cpu_s_per_call_min_n']:.2f}× REST)"
        lines.append(
            f"| {r['voice']} | {fmt(r['tts_first_byte_ms_p50'])} / {fmt(r['tts_first_byte_ms_p90'])} | "
            f"{fmt(r['turn_ms_1_p50'])} | {fmt(r['turn_ms_n_p50'])} / {fmt(r['turn_ms_n_p90'])} | "
            f"{fmt(r['cpu_s_per_call_min_1'], 3)} / {fmt(r['cpu_s_per_call_min_n'], 3)}{ratio} | "
            f"{fmt(r['rss_mib_per_call_n'], 2)} | {r['turns']} | {r['failed_calls']} |"
        )
    lines += ["", f"Run took {time.monotonic() - started:.0f} s. " + " ".join(environment())]
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    timing: Timing = SMOKE if args.smoke else DEFAULT
    rows = []
    bench = Bench(args, work)
    try:
        await bench.start_emulators()
        await bench.configure(LOADED)
        urls = {"ELEVENLABS_BASE_URL": bench.emu_url, "CARTESIA_BASE_URL": bench.emu_url}
        for name in args.voices:
            # bench.py's server environment is fixed; the voice's settings ride on os.environ, which the child
            # process inherits (the harness passes its env as additions).
            voice_env = {**VOICES[name], **urls}
            saved = {k: os.environ.get(k) for k in voice_env}
            os.environ.update(voice_env)
            try:
                await bench.start_server("voicebot")
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            one_s = args.spacing_s + timing.settle_s + timing.window_s + 3
            one = await bench.run_phase(f"{name}_1", "voicebot", calls=1, script="talk", duration_s=one_s,
                                        measure=timing)  # fmt: skip
            n = args.calls
            many_s = n * args.spacing_s + timing.settle_s + timing.window_s + 3
            many = await bench.run_phase(f"{name}_n", "voicebot", calls=n, script="talk", duration_s=many_s,
                                         measure=timing)  # fmt: skip
            await bench.procs.stop("voicebot")
            rows.append(row(name, one, many, bench.transcripts))
            print(f"bench-voices: {name}: {rows[-1]}", file=sys.stderr)
    finally:
        await bench.procs.stop_all()
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny windows: checks the harness")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--voices", default=",".join(VOICES), type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--spacing-s", type=float, default=0.05)
    p.add_argument("--calls-per-process", type=int, default=25)
    p.add_argument("--base-port", type=int, default=18731)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "voices.md")
    args = p.parse_args(argv)
    unknown = [v for v in args.voices if v not in VOICES]
    if unknown:
        p.error(f"unknown voice(s) {unknown}; choose from {list(VOICES)}")
    # What bench.Bench reads and this run does not use.
    args.full, args.sweep, args.baseline, args.keep, args.skip_pipecat = False, False, None, False, True
    return args


async def amain(args: argparse.Namespace) -> int:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="voicebot-bench-voices-"))
    started = time.monotonic()
    try:
        rows = await run(args, work)
    finally:
        for name in ("voicebot.log", "emulators.log"):
            if (work / name).exists():
                shutil.copy(work / name, args.out.parent / f"voices-{name}")
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, args.calls, started)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_bytes(orjson.dumps(rows))
    print(text)
    return 0


def main() -> None:
    sys.exit(asyncio.run(amain(parse_args())))


if __name__ == "__main__":
    main()
