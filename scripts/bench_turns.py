"""Caller's end of speech → first bot audio, side by side in one run: today's listening (Deepgram Nova endpointing),
preemptive generation, Deepgram Flux, and Flux with eager end-of-turn; with the LLM requests each needs per turn.

    .venv/bin/python scripts/bench_turns.py [--turns 8] [--json build/bench/turns.json]

One process runs the emulated providers (with the latency model below) and the simulated caller; the bot runs as
its own process (``python -m voicebot``), one configuration after the other. Each configuration gets two calls of
``--turns`` turns: a caller who says a whole sentence, and one who pauses mid-sentence (a 280 ms gap, shorter than
the 300 ms endpointing: "I'd like to book a table … for Friday."), which is where a wrong early guess costs an
extra LLM request, and where an early answer would be a half sentence (counted: it must stay 0).

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
    stt_final_to_llm_ms: list[float] = field(default_factory=list)


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


async def run_one(emu: Emulators, mode: str, scenario: Scenario, turns: int, work: Path) -> Outcome:
    port = free_port()
    transcripts = work / f"t{port}"
    emu.stt.script[:] = [scenario.transcript] * (turns + 2)
    emu.llm.script[:] = [REPLY] * (4 * turns + 4)
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once per configuration, outside any measurement)
        [sys.executable, "-m", "voicebot"],
        env=server_env(emu, port, transcripts, MODES[mode]),
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
    outcome = Outcome(mode, scenario.name, turn_latencies(result), turns=turns)
    requests = emu.select("llm", "request", since=since)
    outcome.llm_requests = len(requests)
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
    return outcome


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| configuration | caller | speech end → first bot audio, ms (p50 / p90 / max, n) | vs today (p50) "
        "| LLM requests per turn | half-sentence answers |",
        "|---|---|---|---|---|---|",
    ]
    baseline = {o.scenario: statistics.median(o.latencies_ms) for o in outcomes if o.mode.startswith("today")}
    for o in outcomes:
        lat = o.latencies_ms
        p50 = statistics.median(lat)
        delta = p50 - baseline[o.scenario]
        rows.append(
            f"| {o.mode} | {o.scenario} | {p50:.0f} / {pct(lat, 0.9):.0f} / {max(lat):.0f} (n={len(lat)}) "
            f"| {delta:+.0f} | {o.llm_requests / o.turns:.2f} | {o.half_answers} |"
        )
    hops = [v for o in outcomes for v in o.stt_final_to_llm_ms]
    if hops:
        rows.append("")
        rows.append(
            f"Outside, STT end of turn sent → LLM request received (non-speculative configurations, first turn "
            f"included): p50 {statistics.median(hops):.1f} / p99 {pct(hops, 0.99):.1f} / max {max(hops):.1f} ms "
            f"(n={len(hops)})"
        )
    return "\n".join(rows)


async def main_async(turns: int, json_path: Path | None, only: str) -> int:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-turns-") as tmp:
        async with running_emulators(EmulatorConfig()) as emu:
            for mode in MODES:
                if only and only not in mode and not mode.startswith("today"):
                    continue
                for scenario in SCENARIOS:
                    outcome = await run_one(emu, mode, scenario, turns, Path(tmp))
                    print(f"{mode} / {scenario.name}: p50 {statistics.median(outcome.latencies_ms):.0f} ms", flush=True)
                    outcomes.append(outcome)
    print()
    print(table(outcomes))
    if json_path is not None:
        write_json(json_path, outcomes)
    return 0


def write_json(path: Path, outcomes: list[Outcome]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps([vars(o) for o in outcomes], option=orjson.OPT_INDENT_2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=8, help="turns per call (default 8)")
    parser.add_argument("--json", type=Path, default=Path("build/bench/turns.json"))
    parser.add_argument("--only", default="", help="run today's configuration and those whose name contains this")
    args = parser.parse_args()
    return asyncio.run(main_async(args.turns, args.json, args.only))


if __name__ == "__main__":
    sys.exit(main())
