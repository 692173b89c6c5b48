"""``python -m voicebot twilio numbers | connect +1NNN | call +1NNN``: wire a number to this bot and place calls.

Every command reads the same settings as the server (config/voicebot.toml, .env, the environment):
TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_API_BASE_URL, VOICEBOT_PUBLIC_URL and TWILIO_FROM_NUMBER. Each exits
0 on success and 1 (2 for a usage or settings problem) with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from voicebot.settings import E164, Settings, SettingsError, load_settings
from voicebot.twilio import outbound
from voicebot.twilio.account import TwilioAccount, TwilioApiError, explain
from voicebot.twilio.status import PATH as STATUS_PATH

ConnectorFactory = Callable[[], aiohttp.BaseConnector]
CALL_EVENTS = ("initiated", "ringing", "answered", "completed")
DEFAULT_RING_TIMEOUT_S = 30


class CommandError(Exception):
    """A reason to stop, for stderr; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        self.status = status
        super().__init__(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voicebot twilio",
        description="Wire a Twilio number to this bot and place calls. Uses TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "
        "TWILIO_API_BASE_URL, VOICEBOT_PUBLIC_URL and TWILIO_FROM_NUMBER from the bot's settings.",
    )
    parser.add_argument("--config", type=Path, help="alternative TOML settings file (VOICEBOT_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "numbers", help="list the account's numbers and where each one's voice webhook points",
        description="List the account's phone numbers and where each one's voice webhook points.",
    )  # fmt: skip
    connect = sub.add_parser(
        "connect", help="point a number's voice webhook and status callback at this bot",
        description="Set the number's VoiceUrl (POST) to VOICEBOT_PUBLIC_URL/voice and its status callback to "
        "VOICEBOT_PUBLIC_URL/twilio/status. Prints the number's configuration before and after.",
    )  # fmt: skip
    connect.add_argument("number", help="the number, E.164 (+15551234567)")
    connect.add_argument("--force", action="store_true", help="accept a public URL that is not https://")
    call = sub.add_parser(
        "call", help="have the bot call a number",
        description="Place an outbound call: Twilio calls NUMBER and, once answered, the bot runs the same "
        "conversation as for an incoming call.",
    )  # fmt: skip
    call.add_argument("number", help="the number to call, E.164 (+15551234567)")
    call.add_argument("--from", dest="from_number", help="caller id, a number on the account (TWILIO_FROM_NUMBER)")
    call.add_argument(
        "--amd", action="store_true",
        help="answering-machine detection: a machine hears VOICEBOT_MACHINE_MESSAGE and the call ends",
    )  # fmt: skip
    call.add_argument(
        "--context", metavar="TEXT",
        help=f"what the call is about, for the model (at most {outbound.MAX_CONTEXT_CHARS} characters), e.g. "
        "'remind Ana about her 3 pm appointment'",
    )  # fmt: skip
    call.add_argument(
        "--ring-timeout", type=int, default=DEFAULT_RING_TIMEOUT_S, metavar="S",
        help=f"seconds to let it ring (default {DEFAULT_RING_TIMEOUT_S}, at most 600)",
    )  # fmt: skip
    call.add_argument("--force", action="store_true", help="accept a public URL that is not https://")
    return parser


def public_url_problem(settings: Settings) -> str | None:
    """Why Twilio could not use VOICEBOT_PUBLIC_URL for a call, or None."""
    parts = urlsplit(settings.public_url)
    if parts.scheme not in ("https", "wss"):
        return (
            f"VOICEBOT_PUBLIC_URL is {settings.public_url}: Twilio needs an https:// address (the media stream must "
            "be wss://, Twilio errors 31920/31922); put the bot behind HTTPS (deploy/Caddyfile)"
        )
    return None


def _phone(value: str, what: str) -> str:
    if not E164.fullmatch(value):
        raise CommandError(f"{what} {value!r} is not an E.164 phone number like +15551234567", status=2)
    return value


def _account(settings: Settings, http: aiohttp.ClientSession) -> TwilioAccount:
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        raise CommandError("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (Twilio console -> Account info)", status=2)
    return TwilioAccount(
        http, base_url=settings.twilio_api_base_url, account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
    )  # fmt: skip


def bot_urls(settings: Settings) -> tuple[str, str]:
    """This bot's voice webhook and status callback URLs."""
    return settings.public_http_url("/voice"), settings.public_http_url(STATUS_PATH)


def describe_number(number: dict[str, Any], settings: Settings) -> list[str]:
    """Lines saying where a number's calls go."""
    voice, status_url = bot_urls(settings)
    url = number.get("voice_url") or ""
    mark = "  <- this bot" if url == voice else ""
    lines = [f"{number.get('phone_number')}  {number.get('sid')}  {number.get('friendly_name') or ''}".rstrip()]
    lines.append(f"    voice webhook:   {number.get('voice_method') or 'POST'} {url or '(none)'}{mark}")
    callback = number.get("status_callback") or ""
    lines.append(f"    status callback: {callback or '(none)'}{'  <- this bot' if callback == status_url else ''}")
    lines += [f"    ! {warning}" for warning in number_overrides(number)]
    return lines


def number_overrides(number: dict[str, Any]) -> list[str]:
    """What makes Twilio ignore the number's VoiceUrl (PROVIDERS-2.md §6)."""
    out = []
    if number.get("voice_application_sid"):
        out.append(
            f"voice application {number['voice_application_sid']} is set: Twilio ignores the voice webhook; "
            "remove it in the console (Phone number -> Voice configuration -> Configure with: Webhook)"
        )
    if number.get("trunk_sid"):
        out.append(
            f"SIP trunk {number['trunk_sid']} is set: Twilio routes calls to the trunk and ignores the voice webhook"
        )
    return out


async def cmd_numbers(settings: Settings, http: aiohttp.ClientSession, out: TextIO) -> None:
    numbers = await _account(settings, http).numbers()
    if not numbers:
        out.write(f"no phone numbers on account {settings.twilio_account_sid} (buy one in the Twilio console)\n")
    for number in numbers:
        out.write("\n".join(describe_number(number, settings)) + "\n")


async def cmd_connect(
    args: argparse.Namespace, settings: Settings, http: aiohttp.ClientSession, out: TextIO, err: TextIO
) -> None:
    phone = _phone(args.number, "number")
    if (problem := public_url_problem(settings)) and not args.force:
        raise CommandError(problem + " (--force to connect anyway)")
    account = _account(settings, http)
    found = await account.numbers(phone)
    if not found:
        raise CommandError(f"no number {phone} on account {settings.twilio_account_sid} (see `twilio numbers`)")
    number = found[0]
    out.write("before:\n" + "\n".join(describe_number(number, settings)) + "\n")
    voice, status_url = bot_urls(settings)
    form = {"VoiceUrl": voice, "VoiceMethod": "POST", "StatusCallback": status_url, "StatusCallbackMethod": "POST"}
    updated = await account.update_number(number["sid"], form)
    out.write("after:\n" + "\n".join(describe_number(updated, settings)) + "\n")
    for warning in number_overrides(updated):
        err.write(f"warning: {warning}\n")


async def cmd_call(args: argparse.Namespace, settings: Settings, http: aiohttp.ClientSession, out: TextIO) -> None:
    to = _phone(args.number, "number")
    from_ = args.from_number or settings.twilio_from_number
    if not from_:
        raise CommandError("no caller id: set TWILIO_FROM_NUMBER or pass --from +1NNN (a number on the account)", 2)
    _phone(from_, "--from")
    if not 1 <= args.ring_timeout <= 600:
        raise CommandError("--ring-timeout must be between 1 and 600 seconds", status=2)
    if (problem := public_url_problem(settings)) and not args.force:
        raise CommandError(problem + " (--force to call anyway)")
    try:
        url = outbound.voice_url(settings.public_http_url(""), args.context)
    except outbound.ContextError as exc:
        raise CommandError(f"--context: {exc}", status=2) from None
    _, status_url = bot_urls(settings)
    form = [
        ("To", to), ("From", from_), ("Url", url), ("Method", "POST"), ("StatusCallback", status_url),
        ("StatusCallbackMethod", "POST"), ("Timeout", str(args.ring_timeout)),
        *(("StatusCallbackEvent", event) for event in CALL_EVENTS),
    ]  # fmt: skip
    if args.amd:
        form.append(("MachineDetection", "DetectMessageEnd"))
    call = await _account(settings, http).create_call(form)
    extras = [
        s for s in ("answering-machine detection" if args.amd else "", "with context" if args.context else "") if s
    ]
    out.write(f"calling {to} from {from_}: {call.get('sid')} ({call.get('status')})")
    out.write(f", {', '.join(extras)}\n" if extras else "\n")


async def run(
    argv: Sequence[str], *, settings: Settings | None = None, connector: ConnectorFactory | None = None,
    out: TextIO | None = None, err: TextIO | None = None,
) -> int:  # fmt: skip
    """Run one command; return its exit status. ``settings``/``connector`` let tests skip loading and DNS."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        settings = settings or load_settings(config_path=args.config)
    except SettingsError as exc:
        err.write(f"voicebot twilio: {exc}\n")
        return 2
    try:
        async with aiohttp.ClientSession(connector=connector() if connector else None) as http:
            if args.command == "numbers":
                await cmd_numbers(settings, http, out)
            elif args.command == "connect":
                await cmd_connect(args, settings, http, out, err)
            else:
                await cmd_call(args, settings, http, out)
    except CommandError as exc:
        err.write(f"voicebot twilio {args.command}: {exc}\n")
        return exc.status
    except TwilioApiError as exc:
        err.write(f"voicebot twilio {args.command}: {explain(exc)}\n")
        return 1
    return 0
