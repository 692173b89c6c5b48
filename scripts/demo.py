"""``make demo``: the emulated providers, the bot, an example tool service and two scripted phone calls, all on
this machine.

The first call: greeting → a question → a backchannel ("uh-huh") while the bot answers (it pauses, then resumes) →
a second question → a barge-in with real words (the bot stops and answers the new question) → goodbye (the model
calls ``end_call``; the bot says goodbye and hangs up through the emulated Twilio REST API).

The second call books a table: the model calls ``book_table`` (config/tools.example.toml, served by
scripts/example_tool_service.py); the booking takes 1.5 s, so the bot says the tool's filler phrase, then the
answer.

Prints each call's timeline, the per-turn latency table and the server's own share of it. Exits 0 on success.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from voicebot.call.services import SERVICES
from voicebot.caller import (
    CallResult,
    Say,
    SayWhileBotSpeaks,
    SimulatedCaller,
    WaitForBotAudio,
    WaitForBotSilence,
)
from voicebot.emulators import EmulatorConfig, LlmReply, ToolCall, running_emulators
from voicebot.logs import configure_logging
from voicebot.server import create_app
from voicebot.settings import load_settings

sys.path.insert(0, str(Path(__file__).parent))
from example_tool_service import make_app as make_tool_service  # a script next to this one

PUBLIC_URL = "https://voicebot.demo"
AUTH_TOKEN = "demo-auth-token"
ACCOUNT_SID = "AC" + "d" * 32
WAIT_S = 20.0
CALL_TIMEOUT_S = 120.0

STT_SCRIPT = [
    "What are your opening hours?",
    "uh-huh",
    "Can you tell me about the pricing plans?",
    "Sorry, what about weekends?",
    "Thanks, goodbye.",
]
LLM_SCRIPT: list[str | LlmReply] = [
    "We are open Monday to Friday, from nine in the morning until six in the evening. "
    "On public holidays we close at noon.",
    "We have three plans. The basic plan is ten dollars a month for one line. "
    "The business plan is thirty dollars a month for five lines, with voicemail and call recording. "
    "The enterprise plan is priced per seat and comes with a dedicated account manager.",
    "On Saturdays we open from ten until two, and we are closed on Sundays.",
    LlmReply(tool_calls=(ToolCall("end_call", {"reason": "the caller said goodbye"}),)),
]
BOOKING_STT = ["Can I book a table for two at seven tonight?", "No, that's all. Bye."]
BOOKING_LLM: list[str | LlmReply] = [
    LlmReply(tool_calls=(ToolCall("book_table", {"time": "19:00", "people": 2}),)),
    "You're all set: a table for two at seven tonight. Anything else?",
    LlmReply(tool_calls=(ToolCall("end_call", {"reason": "the caller said goodbye"}),)),
]
BOOKING_DELAY_S = 1.5
EXAMPLE_TOOLS = Path(__file__).parent.parent / "config" / "tools.example.toml"
EXAMPLE_BASE_URL = "http://127.0.0.1:8091"
TOOLS_SECRET = "demo-tools-secret"
STAGES = ("stt_final", "llm_request", "first_token", "first_segment", "tts_request", "tts_first_byte", "first_media")


def script() -> list[Any]:
    return [
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=500),
        Say("hours"),
        WaitForBotAudio(WAIT_S),
        SayWhileBotSpeaks("uh_huh", after_ms=1500),
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=800),
        Say("question"),
        WaitForBotAudio(WAIT_S),
        SayWhileBotSpeaks("hours", after_ms=2500, label="barge-in"),
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=800),
        Say("goodbye"),
    ]


def booking_script() -> list[Any]:
    return [
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=500),
        Say("question", label="book a table"),
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=800),
        Say("goodbye"),
    ]


def spoken_and_tools(transcript: Path) -> str:
    """What the caller heard and each tool call, from the call's transcript."""
    lines = []
    for line in map(orjson.loads, transcript.read_bytes().splitlines()):
        if line["kind"] in ("user", "assistant") and line.get("text"):
            lines.append(f"{line['kind']:>9}: {line['text']}")
        elif line["kind"] == "tool_call" and "outcome" in line:
            lines.append(
                f"     tool: {line['name']}({orjson.dumps(line['arguments']).decode()}) → {line['outcome']} "
                f"in {line['duration_ms']:.0f} ms: {line['result']}"
            )
    return "\n".join(lines)


def latency_table(transcript: Path) -> str:
    turns = [line for line in map(orjson.loads, transcript.read_bytes().splitlines()) if line["kind"] == "turn"]
    header = "| turn | " + " | ".join(STAGES) + " | server: final→LLM | server: segment→TTS | server: TTS byte→media |"
    rows = [header, "|" + "---|" * (len(STAGES) + 4)]
    for turn in turns:
        latency, hops = turn["latency_ms"], turn.get("server_hops_ms", {})
        cells = [str(latency.get(stage, "")) for stage in STAGES]
        cells += [
            str(hops.get(k, ""))
            for k in ("stt_final_to_llm_request", "segment_to_tts_request", "tts_first_byte_to_media")
        ]
        rows.append(f"| {turn['gen']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n(ms after the caller stopped speaking; server columns: the bot's own time per hop)"


def barge_in_report(result: CallResult) -> str:
    lines = []
    for clear in result.events_of("clear_received"):
        starts = [e for e in result.events_of("caller_speech_start") if e.t <= clear.t]
        if starts:
            onset = starts[-1]
            lines.append(f"caller speech onset ({onset.detail}) → clear received: {(clear.t - onset.t) * 1000:.0f} ms")
    return "\n".join(lines) or "no barge-in"


async def run_demo(realistic: bool) -> int:
    config = EmulatorConfig() if realistic else EmulatorConfig.fast()
    with tempfile.TemporaryDirectory(prefix="voicebot-demo-") as tmp:
        service = web.AppRunner(make_tool_service(booking_delay_s=BOOKING_DELAY_S, secret=TOOLS_SECRET))
        await service.setup()
        await web.TCPSite(service, "127.0.0.1", 0).start()
        tools_file = Path(tmp) / "tools.toml"
        service_url = f"http://127.0.0.1:{service.addresses[0][1]}"
        tools_file.write_text(EXAMPLE_TOOLS.read_text().replace(EXAMPLE_BASE_URL, service_url))
        try:
            return await _calls(config, Path(tmp), tools_file)
        finally:
            await service.cleanup()


async def _calls(config: EmulatorConfig, tmp: Path, tools_file: Path) -> int:
    async with running_emulators(config) as emu:
        emu.stt.script.extend(STT_SCRIPT)
        emu.llm.script.extend(LLM_SCRIPT)
        settings = load_settings(
            environ={},
            env_file=None,
            overrides={
                "port": 0,
                "public_url": PUBLIC_URL,
                "log_level": "warning",
                "deepgram_api_key": "demo-key",
                "openai_api_key": "demo-key",
                "twilio_account_sid": ACCOUNT_SID,
                "twilio_auth_token": AUTH_TOKEN,
                "deepgram_base_url": emu.base_url,
                "openai_base_url": emu.base_url + "/v1",
                "twilio_api_base_url": emu.base_url,
                "transcript_dir": tmp,
                "tools_file": tools_file,
                "tools_secret": TOOLS_SECRET,
            },
        )
        configure_logging("warning", "console", settings.secret_values())
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await asyncio.wait_for(app[SERVICES].phrases.warmed.wait(), WAIT_S)
            caller = SimulatedCaller(f"http://127.0.0.1:{port}", script(), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
            result = await caller.run(timeout=CALL_TIMEOUT_S)
            emu.stt.script.extend(BOOKING_STT)
            emu.llm.script.extend(BOOKING_LLM)
            booking_caller = SimulatedCaller(
                f"http://127.0.0.1:{port}", booking_script(), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
            )
            booking = await booking_caller.run(timeout=CALL_TIMEOUT_S)
        finally:
            await runner.cleanup()
        print("=== call 1: questions, a backchannel, a barge-in, goodbye ===")
        print(result.format_timeline())
        print()
        print(latency_table(tmp / f"{result.call_sid}.jsonl"))
        print()
        print(barge_in_report(result))
        hung_up = [u for u in emu.twilio.updates if u.data["form"] == {"Status": "completed"}]
        print(f"hang-up through Twilio REST: {'yes' if hung_up else 'no'}; call ended by: {result.ended_by}")
        print()
        print(f"=== call 2: a table booking (the booking takes {BOOKING_DELAY_S:g} s: listen for the filler) ===")
        print(booking.format_timeline())
        print()
        booking_transcript = spoken_and_tools(tmp / f"{booking.call_sid}.jsonl")
        print(booking_transcript)
        booked = "tool: book_table(" in booking_transcript and "→ ok" in booking_transcript
        print(f"booked: {'yes' if booked else 'no'}; call ended by: {booking.ended_by}")
        ok = result.ok and result.ended_by == "server_closed" and bool(hung_up)
        ok = ok and booking.ok and booking.ended_by == "server_closed" and booked
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="zero-latency providers (default: realistic latencies)")
    args = parser.parse_args()
    return asyncio.run(run_demo(realistic=not args.fast))


if __name__ == "__main__":
    sys.exit(main())
