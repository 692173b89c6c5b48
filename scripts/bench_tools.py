"""Added latency of a tool round: the caller's end of speech → the first audio of the answer, with and without
one tool call, the tool service answering in 0 ms.

    .venv/bin/python scripts/bench_tools.py              # about 3 minutes: 12 turns of each kind, two set-ups
    .venv/bin/python scripts/bench_tools.py --turns 4    # a quick look

One process on this machine: the emulated providers, the bot, a tool service on loopback and one simulated caller
per set-up. Turns alternate (plain, tool, plain, tool, ...) in one call, so both kinds meet the same conditions.
A "tool" turn is the model calling ``opening_hours`` (a lookup, GET, declared in a tools file), the service
answering at once, and a second LLM request carrying the result; a "plain" turn is the same answer without it.
Both answers are the same text, so the difference is the tool round: one more LLM request (its time to first
token) plus the bot's own work around it. Set-ups: realistic provider latencies (the emulators' defaults: LLM
first token 300 ms, TTS first byte 150 ms, STT results +50 ms) and zero-latency providers (the bot's own cost).
Prints medians (and p90) in ms and the added latency; exits 1 if a turn went unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from voicebot.call.services import SERVICES
from voicebot.caller import HangUp, Say, SimulatedCaller, WaitForBotAudio, WaitForBotSilence
from voicebot.emulators import EmulatorConfig, LlmReply, ToolCall, running_emulators
from voicebot.logs import configure_logging
from voicebot.server import create_app
from voicebot.settings import load_settings

PUBLIC_URL = "https://voicebot.bench"
AUTH_TOKEN = "bench-auth-token"
ACCOUNT_SID = "AC" + "b" * 32
WAIT_S = 20.0
ANSWER = "We open at nine."
TOOLS = """
[[tool]]
name = "opening_hours"
description = "Opening hours for a day."
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }}, required = ["day"] }}
url = "{base}/hours"
method = "GET"
side_effects = false
"""


async def hours(_: web.Request) -> web.Response:
    return web.json_response({"day": "monday", "hours": "9:00 to 18:00"})  # 0 ms: no work, no wait


def llm_script(turns: int) -> list[str | LlmReply]:
    replies: list[str | LlmReply] = []
    for _ in range(turns):
        replies += [ANSWER, LlmReply(tool_calls=[ToolCall("opening_hours", {"day": "monday"})]), ANSWER]
    return replies


def caller_script(turns: int) -> list[Any]:
    steps: list[Any] = [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=500)]
    for _ in range(2 * turns):
        steps += [Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=500)]
    return [*steps, HangUp()]


async def measure(config: EmulatorConfig, turns: int, tmp: Path) -> tuple[list[float], list[float], list[float]]:
    """Caller-side latency (ms) of the plain turns and of the tool turns, and the bot's own HTTP round trip to the
    tool service (from the transcript's ``tool_call`` lines)."""
    service = web.Application()
    service.router.add_get("/hours", hours)
    service_runner = web.AppRunner(service, access_log=None)
    await service_runner.setup()
    await web.TCPSite(service_runner, "127.0.0.1", 0).start()
    tools_file = tmp / "tools.toml"
    tools_file.write_text(TOOLS.format(base=f"http://127.0.0.1:{service_runner.addresses[0][1]}"))
    try:
        async with running_emulators(config) as emu:
            emu.llm.script.extend(llm_script(turns))
            settings = load_settings(
                environ={},
                env_file=None,
                overrides={
                    "port": 0,
                    "public_url": PUBLIC_URL,
                    "log_level": "warning",
                    "deepgram_api_key": "bench-key",
                    "openai_api_key": "bench-key",
                    "twilio_account_sid": ACCOUNT_SID,
                    "twilio_auth_token": AUTH_TOKEN,
                    "deepgram_base_url": emu.base_url,
                    "openai_base_url": emu.base_url + "/v1",
                    "twilio_api_base_url": emu.base_url,
                    "transcript_dir": tmp,
                    "tools_file": tools_file,
                    "idle_timeout_s": 60.0,
                },
            )
            configure_logging("warning", "console", settings.secret_values())
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            try:
                await asyncio.wait_for(app[SERVICES].phrases.warmed.wait(), WAIT_S)
                url = f"http://127.0.0.1:{runner.addresses[0][1]}"
                caller = SimulatedCaller(url, caller_script(turns), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
                result = await caller.run(timeout=WAIT_S * 4 * turns)
            finally:
                await runner.cleanup()
    finally:
        await service_runner.cleanup()
    latencies = [t.latency_ms for t in result.turns()]
    if len(latencies) != 2 * turns or any(x is None for x in latencies) or not result.ok:
        print(result.format_timeline(), file=sys.stderr)
        raise SystemExit(f"expected {2 * turns} answered turns, got {latencies}")
    measured = [x for x in latencies if x is not None]
    transcript = tmp / f"{result.call_sid}.jsonl"
    lines = [orjson.loads(line) for line in transcript.read_bytes().splitlines()]
    tool_ms = [float(line["duration_ms"]) for line in lines if line["kind"] == "tool_call" and "outcome" in line]
    return measured[0::2], measured[1::2], tool_ms


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]


async def run(turns: int) -> None:
    rows = [
        "| set-up | plain turn p50 / p90 | tool turn p50 / p90 | added by the tool round (p50) | of which the tool "
        "HTTP call (p50, bot's view) | n (each) |",
        "|---|---|---|---|---|---|",
    ]
    for name, config in (("realistic providers", EmulatorConfig()), ("zero-latency providers", EmulatorConfig.fast())):
        with tempfile.TemporaryDirectory(prefix="voicebot-bench-tools-") as tmp:
            plain, tool, http = await measure(config, turns, Path(tmp))
        added = statistics.median(tool) - statistics.median(plain)
        rows.append(
            f"| {name} | {statistics.median(plain):.0f} / {p90(plain):.0f} | "
            f"{statistics.median(tool):.0f} / {p90(tool):.0f} | {added:+.0f} | {statistics.median(http):.1f} | "
            f"{len(plain)} |"
        )
        print(rows[-1], flush=True)
    print()
    print("caller's end of speech → first audio of the answer, ms (tool service answering in 0 ms)")
    print("\n".join(rows))
    print(f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; nproc {os.cpu_count()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=12, help="turns of each kind per set-up (default 12)")
    args = parser.parse_args()
    asyncio.run(run(args.turns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
