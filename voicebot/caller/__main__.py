"""Place one simulated Twilio call against a running voicebot server and print the Twilio-side timeline.

    python -m voicebot.caller --server http://127.0.0.1:8080 --say hours --say goodbye --wav heard.wav

The default script waits for the greeting to finish, then for each ``--say`` speaks it and waits for the reply
to finish, then hangs up. ``--say`` takes a clip name (see ``--list-clips``) or an 8 kHz mono 16-bit WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from voicebot import clips
from voicebot.caller.client import DEFAULT_CALL_TIMEOUT_S, SimulatedCaller
from voicebot.caller.script import HangUp, Say, Step, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.timeline import CallerError
from voicebot.caller.wavio import WavFormatError, read_wav

DEFAULT_REPLY_TIMEOUT_S = 20.0
DEFAULT_QUIET_MS = 700
"""A reply is over once the bot has been silent this long (TTS may leave short gaps between sentences)."""


def load_utterance(spec: str) -> Say:
    """A ``--say`` value: a clip name, or a path to an 8 kHz mono 16-bit PCM WAV file."""
    if spec in clips.CLIP_TEXTS:
        return Say(spec)
    path = Path(spec)
    if path.suffix.lower() == ".wav" or path.exists():
        return Say(read_wav(path), label=path.name)
    raise ValueError(f"--say {spec!r} is neither a clip ({', '.join(clips.names())}) nor a WAV file")


def default_script(utterances: Sequence[Say], *, reply_timeout: float, quiet_ms: int) -> list[Step]:
    """Wait out the greeting; for each utterance, say it and wait out the reply; hang up."""
    steps: list[Step] = [WaitForBotAudio(reply_timeout), WaitForBotSilence(reply_timeout, quiet_ms)]
    for say in utterances:
        steps += [say, WaitForBotAudio(reply_timeout), WaitForBotSilence(reply_timeout, quiet_ms)]
    steps.append(HangUp())
    return steps


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m voicebot.caller", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="address to connect to")
    parser.add_argument("--public-url", help="public URL the server signs and writes in TwiML (default: --server)")
    parser.add_argument(
        "--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"), help="sign requests (default $TWILIO_AUTH_TOKEN)"
    )
    parser.add_argument("--say", action="append", default=[], metavar="CLIP_OR_WAV", help="repeatable; default hours")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra customParameters")
    parser.add_argument("--wav", type=Path, help="write what the caller heard to this WAV file")
    parser.add_argument("--timeout", type=float, default=DEFAULT_CALL_TIMEOUT_S, help="whole call, seconds")
    parser.add_argument("--reply-timeout", type=float, default=DEFAULT_REPLY_TIMEOUT_S, help="per reply, seconds")
    parser.add_argument("--quiet-ms", type=int, default=DEFAULT_QUIET_MS, help="silence that ends a reply")
    parser.add_argument("--list-clips", action="store_true", help="list the shipped clips and exit")
    return parser.parse_args(argv)


async def amain(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 if the call went as scripted)."""
    args = parse_args(argv)
    if args.list_clips:
        for name in clips.names():
            print(f"{name:<10} {clips.text(name) or '(non-speech)'}")
        return 0
    try:
        utterances = [load_utterance(spec) for spec in args.say or ["hours"]]
        if bad := [item for item in args.param if "=" not in item]:
            raise ValueError(f"--param needs KEY=VALUE, got {bad[0]!r}")
        extra = dict(item.split("=", 1) for item in args.param)
    except (ValueError, WavFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    script = default_script(utterances, reply_timeout=args.reply_timeout, quiet_ms=args.quiet_ms)
    caller = SimulatedCaller(
        args.server, script, auth_token=args.auth_token, public_url=args.public_url, extra_parameters=extra
    )
    try:
        result = await caller.run(timeout=args.timeout)
    except CallerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.format_timeline())
    if result.rejected:
        print(f"rejected: {result.say_text!r}")
    if args.wav is not None:
        result.write_wav(args.wav)
        print(f"wrote {args.wav} ({len(result.heard) / 8000:.1f} s)")
    return 0 if result.ok else 1


def main() -> None:
    sys.exit(asyncio.run(amain()))


if __name__ == "__main__":
    main()
