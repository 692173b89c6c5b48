"""Caller's end of speech → first bot audio, side by side in one run: today's listening (Deepgram Nova endpointing),
preemptive generation, Deepgram Flux, and Flux with eager end-of-turn; with the LLM requests each needs per turn.

    .venv/bin/python scripts/bench_turns.py [--turns 8] [--json build/bench/turns.json]
        [--only NAME] [--scenario NAME] [--repeat N] [--baseline DIR]

One process runs the emulated providers (with the latency model below) and the simulated caller; the bot runs as
its own process (``python -m voicebot``), one configuration after the other. Each configuration gets two calls of
``--turns`` turns: a caller who says a whole sentence, and one who pauses mid-sentence (a 280 ms gap, shorter than
the 300 ms endpointing: "I'd like to book a table … for Friday."), which is where a wrong early guess costs an
extra LLM request, and where an early answer would be a half sentence (counted: it must stay 0).

In the configurations that do not speculate it also measures the server's two hops from outside, every turn
including each process's first: STT end of turn sent → LLM request received, and the LLM token that completes the
reply's first segment written → TTS request received. ``--baseline DIR`` runs each configuration a second time,
interleaved, with the ``voicebot`` package found in DIR (``git archive main voicebot config | tar -x -C DIR``).

Latency model (the emulators' defaults, EmulatorConfig()): STT results 50 ms after the audio that triggers them;
Nova endpointing 300 ms of silence (the bot's default); Flux end-of-turn confidence rising linearly to 1.0 over
500 ms of silence after a whole sentence (1000 ms mid-sentence), so EndOfTurn (0.7) after 350 ms, EagerEndOfTurn
(0.4) after 200 ms; LLM first token 300 ms, then 40 tokens/s; TTS first byte 150 ms, then 4× real time. The caller
speaks the recorded clips at real time and streams silence between them, as Twilio does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from voicebot.caller import CallResult, HangUp, Say, Silence, SimulatedCaller, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import Step
from voicebot.emulators import EmulatorConfig, Emulators, running_emulators
from voicebot.emulators.log import Event
from voicebot.emulators.openai_chat import tokenize

PUBLIC_URL = "https://voicebot.bench"
AUTH_TOKEN = "bench-auth-token"
ACCOUNT_SID = "AC" + "b" * 32
WAIT_S = 20.0
STARTUP_S = 20.0
REPLY = "Sure, we can do that for you."
WHOLE = "When are you open on Friday?"
PAUSED = "I'd like to book a table | for Friday."
PAUSE_MS = 60
"""Silence between the two clips; with the clips' own padding the caller is silent for about 280 ms."""
MODES: dict[str, dict[str, str]] = {
    "today (Nova, endpointing 300 ms)": {"VOICEBOT_PREEMPTIVE_GENERATION": "false"},
    "preemptive (Nova, early Finalize after 60 ms)": {
        "VOICEBOT_PREEMPTIVE_GENERATION": "true",
        "VOICEBOT_PREEMPTIVE_SILENCE_MS": "60",
    },
    "preemptive (Nova, early Finalize after 40 ms)": {
        "VOICEBOT_PREEMPTIVE_GENERATION": "true",
        "VOICEBOT_PREEMPTIVE_SILENCE_MS": "40",
    },
    "preemptive (Nova, early Finalize after 120 ms)": {
        "VOICEBOT_PREEMPTIVE_GENERATION": "true",
        "VOICEBOT_PREEMPTIVE_SILENCE_MS": "120",
    },
    "Flux (eot 0.7)": {"DEEPGRAM_STT_MODEL": "flux-general-en"},
    "Flux + eager (eot 0.7, eager 0.4)": {
        "DEEPGRAM_STT_MODEL": "flux-general-en",
        "DEEPGRAM_EAGER_EOT_THRESHOLD": "0.4",
    },
}


@dataclass
class Scenario:
    name: str
    transcript: str
    steps: list[Step]


SCENARIOS = [
    Scenario("whole sentence", WHOLE, [Say("hours")]),
    Scenario("pause mid-sentence", PAUSED, [Say("hours"), Silence(PAUSE_MS), Say("okay")]),
]


@dataclass
class Outcome:
    mode: str
    scenario: str
    latencies_ms: list[float] = field(default_factory=list)
    turns: int = 0
    llm_requests: int = 0
    half_answers: int = 0
    finalizes: int = 0
    """Finalize messages the bot sent (each early one forces the recogniser to finalise the audio so far)."""
    stt_final_to_llm_ms: list[float] = field(default_factory=list)
    segment_to_tts_ms: list[float] = field(default_factory=list)
    load_average: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def caller_script(scenario: Scenario, turns: int) -> list[Step]:
    steps: list[Step] = [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400)]
    for _ in range(turns):
        steps += [*scenario.steps, WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400)]
    return [*steps, HangUp()]


def turn_latencies(result: CallResult) -> list[float]:
    """Per bot reply after the greeting: its first audio at the caller minus the caller's last speech end."""
    ends = [e.t for e in result.events_of("caller_speech_end")]
    out = []
    for start in result.events_of("bot_audio_start")[1:]:
        before = [t for t in ends if t <= start.t]
        if before:
            out.append((start.t - before[-1]) * 1000)
    return out


async def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"voicebot exited with {proc.returncode}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if (await resp.json())["status"] == "ok":
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("voicebot did not become healthy")
            await asyncio.sleep(0.1)


def server_env(emu: Emulators, port: int, transcripts: Path, mode: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "VOICEBOT_PORT": str(port),
        "VOICEBOT_PUBLIC_URL": PUBLIC_URL,
        "VOICEBOT_LOG_LEVEL": "warning",
        "VOICEBOT_LOG_FORMAT": "json",
        "VOICEBOT_TRANSCRIPT_DIR": str(transcripts),
        "VOICEBOT_IDLE_TIMEOUT_S": "30",
        "DEEPGRAM_API_KEY": "bench-key",
        "OPENAI_API_KEY": "bench-key",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "DEEPGRAM_BASE_URL": emu.base_url,
        "OPENAI_BASE_URL": emu.base_url + "/v1",
        "TWILIO_API_BASE_URL": emu.base_url,
        **mode,
    }


def stt_finals(emu: Emulators, since: int) -> list[float]:
    """When the STT emulator sent each end of the caller's turn (Nova speech_final, Flux EndOfTurn)."""
    out = []
    for event in emu.select("stt", since=since):
        nova_end = event.kind == "results" and event.data["speech_final"]
        flux_end = event.kind == "turn_info" and event.data["event"] == "EndOfTurn"
        if (nova_end or flux_end) and event.data["transcript"]:
            out.append(event.t)
    return out


async def run_one(
    emu: Emulators, mode: str, scenario: Scenario, turns: int, work: Path, code: Path | None = None
) -> Outcome:
    """One call of ``turns`` turns against a fresh bot process; ``code``: run the voicebot package found in that
    directory instead of this checkout (the ``--baseline`` comparison)."""
    port = free_port()
    transcripts = work / f"t{port}"
    emu.stt.script[:] = [scenario.transcript] * (turns + 2)
    emu.llm.script[:] = [REPLY] * (4 * turns + 4)
    env = server_env(emu, port, transcripts, MODES[mode])
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once per configuration, outside any measurement)
        [sys.executable, "-m", "voicebot"],
        env=env,
        cwd=code,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await wait_healthy(port, proc)
        await asyncio.sleep(1.0)  # the fixed phrases are synthesised in the background after startup
        since = emu.mark()
        caller = SimulatedCaller(
            f"http://127.0.0.1:{port}", caller_script(scenario, turns), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
        )
        result = await caller.run(timeout=turns * 15.0 + 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not result.ok:
        print(result.format_timeline(), file=sys.stderr)
        raise RuntimeError(f"{mode} / {scenario.name}: the call failed")
    label = mode if code is None else f"{mode} [baseline]"
    outcome = Outcome(label, scenario.name, turn_latencies(result), turns=turns)
    requests = emu.select("llm", "request", since=since)
    outcome.llm_requests = len(requests)
    controls = emu.select("stt", "control", since=since)
    outcome.finalizes = sum(1 for e in controls if e.data["type"] == "Finalize")
    whole = " ".join(scenario.transcript.replace("|", " ").split())
    aborted = {e.data["request_id"] for e in emu.select("llm", "abort", since=since)}
    outcome.half_answers = sum(
        1
        for r in requests
        if r.data["request_id"] not in aborted and r.data["messages"][-1]["content"].strip() != whole
    )
    if MODES[mode].get("VOICEBOT_PREEMPTIVE_GENERATION") != "true" and "EAGER" not in " ".join(MODES[mode]):
        finals = stt_finals(emu, since)
        for final, request in zip(finals, requests, strict=False):
            outcome.stt_final_to_llm_ms.append((request.t - final) * 1000)
        outcome.segment_to_tts_ms = segment_hops(emu, requests, since)
    outcome.load_average = os.getloadavg()[0]
    return outcome


def segment_hops(emu: Emulators, requests: list[Event], since: int) -> list[float]:
    """Per LLM request: the TTS request of its first segment minus when the emulator wrote the token that completed
    that segment (the reply's tokens are known: the emulator streams REPLY)."""
    tokens = tokenize(REPLY)
    complete = {e.data["request_id"]: e.data["sent_at"] for e in emu.select("llm", "complete", since=since)}
    tts = emu.select("tts", "request", since=since)
    out = []
    for request in requests:
        sent_at = complete.get(request.data["request_id"])
        after = [e for e in tts if e.t > request.t]
        if not sent_at or not after:
            continue
        text = after[0].data["text"].strip()
        index = next(i for i in range(len(tokens)) if len("".join(tokens[: i + 1]).strip()) >= len(text))
        out.append((after[0].t - sent_at[index]) * 1000)
    return out


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| configuration | caller | speech end → first bot audio, ms (p50 / p90 / max, n) | vs today (p50) "
        "| LLM requests per turn | Finalize per turn | half-sentence answers |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {
        o.scenario: statistics.median(o.latencies_ms)
        for o in outcomes
        if o.mode.startswith("today") and not o.mode.endswith("[baseline]")
    }
    for o in outcomes:
        lat = o.latencies_ms
        p50 = statistics.median(lat)
        delta = p50 - baseline[o.scenario]
        rows.append(
            f"| {o.mode} | {o.scenario} | {p50:.0f} / {pct(lat, 0.9):.0f} / {max(lat):.0f} (n={len(lat)}) "
            f"| {delta:+.0f} | {o.llm_requests / o.turns:.2f} | {o.finalizes / o.turns:.2f} | {o.half_answers} |"
        )
    return "\n".join(rows)


def hop_summary(outcomes: list[Outcome]) -> str:
    """Both outside hops over the non-speculative configurations' turns, this code and the baseline apart."""
    rows: list[str] = []
    for code in ("", " [baseline]"):
        group = [o for o in outcomes if o.mode.endswith("[baseline]") == bool(code)]
        rows += hop_lines(group, code)
    loads = [o.load_average for o in outcomes]
    rows.append("")
    rows.append(f"Load average (1 min) after each call: {min(loads):.2f}-{max(loads):.2f}")
    return "\n".join(rows)


def hop_lines(outcomes: list[Outcome], code: str) -> list[str]:
    rows = []
    for label, attr in (
        ("STT end of turn sent → LLM request received", "stt_final_to_llm_ms"),
        ("LLM token completing the first segment sent → TTS request received", "segment_to_tts_ms"),
    ):
        hops = [v for o in outcomes for v in getattr(o, attr)]
        if not hops:
            continue
        firsts = [getattr(o, attr)[0] for o in outcomes if getattr(o, attr)]
        later = [v for o in outcomes for v in getattr(o, attr)[1:]]
        rows.append("")
        rows.append(
            f"Outside{code}, {label} (non-speculative configurations, {len(firsts)} processes): all turns p50 "
            f"{statistics.median(hops):.1f} / p99 {pct(hops, 0.99):.1f} / max {max(hops):.1f} ms (n={len(hops)}); "
            f"first turn of each process p50 {statistics.median(firsts):.1f} / max {max(firsts):.1f} ms; "
            f"later turns p50 {statistics.median(later) if later else 0:.1f} / max {max(later) if later else 0:.1f} ms"
        )
    return rows


async def main_async(
    turns: int, json_path: Path | None, only: str, repeat: int, scenarios: str, baseline: Path | None
) -> int:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-turns-") as tmp:
        async with running_emulators(EmulatorConfig()) as emu:
            for _ in range(repeat):
                for mode in MODES:
                    if only and only not in mode and not mode.startswith("today"):
                        continue
                    for scenario in SCENARIOS:
                        if scenarios and scenarios not in scenario.name:
                            continue
                        for code in (None, baseline) if baseline is not None else (None,):
                            outcome = await run_one(emu, mode, scenario, turns, Path(tmp), code)
                            report(outcome)
                            outcomes.append(outcome)
    print()
    print(table(merge(outcomes)))
    print(hop_summary(outcomes))
    if repeat > 1 or baseline is not None:
        print()
        print(hop_table(outcomes))

    if json_path is not None:
        write_json(json_path, outcomes)
    return 0


def report(outcome: Outcome) -> None:
    print(
        f"{outcome.mode} / {outcome.scenario}: p50 {statistics.median(outcome.latencies_ms):.0f} ms, "
        f"requests {outcome.llm_requests}/{outcome.turns}, finalizes {outcome.finalizes}, "
        f"hops {[round(v, 1) for v in outcome.stt_final_to_llm_ms]} "
        f"{[round(v, 1) for v in outcome.segment_to_tts_ms]}, load {outcome.load_average:.2f}",
        flush=True,
    )


def merge(outcomes: list[Outcome]) -> list[Outcome]:
    """One outcome per configuration and caller, the repeats' turns pooled (each repeat's first turn kept apart)."""
    merged: dict[tuple[str, str], Outcome] = {}
    for o in outcomes:
        m = merged.setdefault((o.mode, o.scenario), Outcome(o.mode, o.scenario))
        m.latencies_ms += o.latencies_ms
        m.turns += o.turns
        m.llm_requests += o.llm_requests
        m.half_answers += o.half_answers
        m.finalizes += o.finalizes
        m.load_average = max(m.load_average, o.load_average)
    return list(merged.values())


def hop_table(outcomes: list[Outcome]) -> str:
    """Per repeat (one fresh bot process per configuration and caller): each hop's p50 and p99 and its first turn."""
    rows = [
        "| configuration | caller | STT end → LLM request: first turn / p50 / p99 ms "
        "| segment token → TTS request: first turn / p50 / p99 ms | load average |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        cells = []
        for values in (o.stt_final_to_llm_ms, o.segment_to_tts_ms):
            if values:
                cells.append(f"{values[0]:.1f} / {statistics.median(values):.1f} / {pct(values, 0.99):.1f}")
            else:
                cells.append("")
        rows.append(f"| {o.mode} | {o.scenario} | {cells[0]} | {cells[1]} | {o.load_average:.2f} |")
    return "\n".join(rows)


def write_json(path: Path, outcomes: list[Outcome]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps([vars(o) for o in outcomes], option=orjson.OPT_INDENT_2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=8, help="turns per call (default 8)")
    parser.add_argument("--json", type=Path, default=Path("build/bench/turns.json"))
    parser.add_argument("--only", default="", help="run today's configuration and those whose name contains this")
    parser.add_argument("--repeat", type=int, default=1, help="run the configurations this many times, interleaved")
    parser.add_argument("--scenario", default="", help="only the callers whose name contains this")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a directory holding another voicebot package (e.g. `git archive main voicebot | tar -x -C DIR`): "
        "each configuration also runs with that code, interleaved, labelled [baseline]",
    )
    args = parser.parse_args()
    baseline = args.baseline.resolve() if args.baseline is not None else None
    return asyncio.run(main_async(args.turns, args.json, args.only, args.repeat, args.scenario, baseline))


if __name__ == "__main__":
    sys.exit(main())
