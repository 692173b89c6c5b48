"""Run the emulators by hand: ``python -m voicebot.emulators --port 8765 [--fast] [--script FILE]``.

The script file is JSON: ``{"stt": ["What are your hours?", ""], "llm": ["Plain reply",
{"text": "Bye!", "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}}]}]}``. In an STT item,
``" | "`` marks a pause mid-sentence (``"I'd like to book | for Friday."``): the words after it exist only once
the caller speaks again. Deepgram's ``/v1/listen`` (Nova) and ``/v2/listen`` (Flux, TurnInfo events) both serve it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import orjson
import uvloop

from .app import running_emulators
from .config import EmulatorConfig
from .log import Event
from .openai_chat import LlmReply


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m voicebot.emulators", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--fast", action="store_true", help="zero latency, no pacing (as in tests)")
    p.add_argument("--script", type=Path, help="JSON file with 'stt' and/or 'llm' script lists")
    p.add_argument("--quiet", action="store_true", help="do not print events")
    p.add_argument("--deepgram-key", help="accepted Deepgram key (default: any)")
    p.add_argument("--openai-key", help="accepted OpenAI key (default: any)")
    p.add_argument("--twilio-account-sid", help="accepted Twilio account SID (default: any)")
    p.add_argument("--twilio-auth-token", help="accepted Twilio auth token (default: any)")
    p.add_argument("--stt-result-delay-ms", type=float)
    p.add_argument("--stt-idle-timeout-s", type=float)
    p.add_argument("--stt-rms-threshold", type=float)
    p.add_argument("--stt-transcript", help="default transcript once the script is used up")
    p.add_argument("--tts-ttfb-ms", type=float)
    p.add_argument("--tts-bytes-per-second", type=float, help="0: unpaced")
    p.add_argument("--tts-chunk-bytes", type=int)
    p.add_argument("--tts-ms-per-char", type=float)
    p.add_argument("--llm-ttft-ms", type=float)
    p.add_argument("--llm-tokens-per-second", type=float, help="0: unpaced")
    return p


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """The config the command line asks for."""
    config = EmulatorConfig.fast() if args.fast else EmulatorConfig()
    config.deepgram_key = args.deepgram_key
    config.openai_key = args.openai_key
    config.twilio_account_sid = args.twilio_account_sid
    config.twilio_auth_token = args.twilio_auth_token
    overrides: list[tuple[Any, str, Any]] = [
        (config.stt, "result_delay_ms", args.stt_result_delay_ms),
        (config.stt, "idle_timeout_s", args.stt_idle_timeout_s),
        (config.stt, "speech_rms_threshold", args.stt_rms_threshold),
        (config.stt, "default_transcript", args.stt_transcript),
        (config.tts, "ttfb_ms", args.tts_ttfb_ms),
        (config.tts, "chunk_bytes", args.tts_chunk_bytes),
        (config.tts, "ms_per_char", args.tts_ms_per_char),
        (config.llm, "ttft_ms", args.llm_ttft_ms),
    ]
    for target, name, value in overrides:
        if value is not None:
            setattr(target, name, value)
    if args.tts_bytes_per_second is not None:
        config.tts.bytes_per_second = args.tts_bytes_per_second or None
    if args.llm_tokens_per_second is not None:
        config.llm.tokens_per_second = args.llm_tokens_per_second or None
    return config


def load_script(path: Path) -> tuple[list[str], list[LlmReply]]:
    """``(stt transcripts, llm replies)`` from a JSON script file."""
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'stt' and/or 'llm' lists")
    stt = [str(item) for item in data.get("stt", [])]
    llm = [LlmReply.parse(item) for item in data.get("llm", [])]
    return stt, llm


def _print_event(event: Event) -> None:
    line = {"t": round(event.t, 6), "service": event.service, "kind": event.kind, **event.data}
    sys.stdout.write(orjson.dumps(line, default=str).decode() + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> None:
    config = build_config(args)
    async with running_emulators(config, args.host, args.port) as emu:
        if args.script is not None:
            stt, llm = load_script(args.script)
            emu.stt.script.extend(stt)
            emu.llm.script.extend(llm)
        if not args.quiet:
            emu.log.listeners.append(_print_event)
        print(f"emulators listening on {emu.base_url} (ws: {emu.ws_url})", file=sys.stderr, flush=True)
        await asyncio.Event().wait()  # until Ctrl-C cancels the run


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
