"""``python -m voicebot doctor``: what stands between this configuration and a working phone call, in plain words.

It reads the same settings as the server and checks, in order: the provider keys, the public URL Twilio must
reach (https, not a private address), request signatures, where the bot listens, whether the public URL really
reaches the bot through the proxy (the webhook and a WebSocket upgrade), and the Twilio account: credentials, the
caller id, and which numbers send their calls here. Exit status 0 when nothing would stop a call, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import urlsplit

import aiohttp

from voicebot.settings import Settings, SettingsError, load_settings
from voicebot.twilio.account import TwilioAccount, TwilioApiError, explain
from voicebot.twilio.cli import ConnectorFactory, bot_urls, number_overrides, public_url_problem
from voicebot.twilio.security import twilio_signature

PROBE_TIMEOUT_S = 5.0
Level = Literal["ok", "warning", "PROBLEM"]


@dataclass
class Report:
    lines: list[tuple[Level, str]] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def warn(self, text: str) -> None:
        self.lines.append(("warning", text))

    def problem(self, text: str) -> None:
        self.lines.append(("PROBLEM", text))

    @property
    def problems(self) -> int:
        return sum(1 for level, _ in self.lines if level == "PROBLEM")


def _private_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith((".local", ".internal", ".lan")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


def check_settings(settings: Settings, report: Report) -> bool:
    """The checks that need no network; True if the public URL is worth probing."""
    if missing := settings.missing():
        report.problem(
            f"{' and '.join(missing)} not set: every call would hear 'not configured yet' and hang up. "
            "Put the keys in the secrets file (/etc/voicebot/voicebot.env) or .env"
        )
    else:
        report.ok("Deepgram and OpenAI keys are set")
    try:
        settings.check_startup()
    except SettingsError as exc:
        report.problem(f"the bot refuses to start with these settings: {exc}")
    probe = True
    parts = urlsplit(settings.public_url)
    if (problem := public_url_problem(settings)) is not None:
        report.problem(problem)
        probe = False
    elif _private_host(parts.hostname or ""):
        report.problem(
            f"VOICEBOT_PUBLIC_URL {settings.public_url} is a local or private address: Twilio, on the internet, "
            "cannot reach it. Use your domain (DNS pointing at this machine)"
        )
    else:
        report.ok(f"public URL {settings.public_url}: Twilio posts to /voice and streams from /media there")
    if settings.twilio_auth_token is None:
        report.problem(
            "TWILIO_AUTH_TOKEN not set: the bot cannot tell Twilio's requests from anyone else's, status callbacks "
            "are refused and outbound calls lose their context. Copy it from the Twilio console"
        )
    elif settings.allow_unsigned:
        report.warn("VOICEBOT_ALLOW_UNSIGNED=true: fine only if something in front checks Twilio's signatures")
    else:
        report.ok("Twilio signatures are checked against the public URL")
    if not settings.is_loopback and parts.scheme == "https":
        report.warn(
            f"the bot listens on {settings.host}: behind a proxy set VOICEBOT_HOST=127.0.0.1 so only the proxy "
            "reaches it"
        )
    return probe


async def check_listening(settings: Settings, http: aiohttp.ClientSession, report: Report) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.port}/healthz"
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.problem(
            f"nothing answers on {settings.host}:{settings.port} ({type(exc).__name__}): start the bot "
            "(sudo systemctl start voicebot; journalctl -u voicebot says why it stopped)"
        )
        return
    report.ok(f"the bot answers on {settings.host}:{settings.port} (healthz: HTTP {status})")


async def check_public_url(settings: Settings, http: aiohttp.ClientSession, report: Report) -> None:
    """What Twilio would meet: an unsigned webhook must get 403 (so it reaches the bot, which checks signatures),
    and the proxy must pass a (signed) WebSocket upgrade on /media; the probe stream closes before ``start``."""
    voice, _ = bot_urls(settings)
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with http.post(voice, data={}, timeout=timeout) as resp:
            status = resp.status
    except aiohttp.ClientConnectorCertificateError as exc:
        report.problem(f"{voice}: certificate not trusted ({exc.certificate_error}); Twilio fails with 31910/11237")
        return
    except (aiohttp.ClientError, ssl.SSLError, TimeoutError) as exc:
        report.problem(
            f"cannot reach {voice} ({type(exc).__name__}): check DNS, ports 80/443 and the proxy; Twilio would "
            "fail with error 11200"
        )
        return
    if status == 403 and settings.twilio_auth_token is not None:
        report.ok(f"{voice} reaches the bot through the proxy, and an unsigned request is refused (403)")
    elif status in (404, 502, 503, 504):
        report.problem(f"{voice} answered HTTP {status}: the proxy does not pass /voice to the bot (error 11200)")
        return
    else:
        report.warn(f"{voice} answered HTTP {status} to an unsigned request (403 expected with TWILIO_AUTH_TOKEN)")
    headers = {}
    if settings.twilio_auth_token is not None:  # signed as Twilio signs it: the bot refuses unsigned streams
        headers["X-Twilio-Signature"] = twilio_signature(
            settings.twilio_auth_token.get_secret_value(), settings.stream_url, {}
        )
    try:
        ws = await http.ws_connect(
            settings.stream_url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=PROBE_TIMEOUT_S)
        )
    except aiohttp.WSServerHandshakeError as exc:
        report.problem(
            f"{settings.stream_url}: WebSocket upgrade refused (HTTP {exc.status}); Twilio fails with 31920: the proxy "
            "must pass Upgrade/Connection on /media"
        )
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.problem(f"{settings.stream_url}: WebSocket failed ({type(exc).__name__}); Twilio fails with 31920")
        return
    await ws.close()
    report.ok(f"{settings.stream_url} accepts the WebSocket upgrade")


async def check_account(settings: Settings, http: aiohttp.ClientSession, report: Report) -> None:
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        report.problem("TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN not set: the bot cannot hang up, transfer or call out")
        return
    account = TwilioAccount(
        http, base_url=settings.twilio_api_base_url, account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
    )  # fmt: skip
    try:
        numbers = await account.numbers()
    except TwilioApiError as exc:
        report.problem(f"Twilio account: {explain(exc)}")
        return
    report.ok(f"Twilio account {settings.twilio_account_sid} answers ({len(numbers)} number(s))")
    owned = {n.get("phone_number") for n in numbers}
    if settings.twilio_from_number and settings.twilio_from_number not in owned:
        report.warn(
            f"TWILIO_FROM_NUMBER {settings.twilio_from_number} is not a number on this account: outbound calls need "
            "it to be one, or a verified caller id"
        )
    voice, status_url = bot_urls(settings)
    ours = [n for n in numbers if n.get("voice_url") == voice]
    for number in numbers:
        where = number.get("voice_url") or "nowhere"
        if number in ours:
            overrides = number_overrides(number)
            for text in overrides:
                report.problem(f"{number.get('phone_number')}: {text}")
            if not overrides:
                report.ok(f"{number.get('phone_number')} sends its calls to this bot")
            if number.get("status_callback") != status_url:
                report.warn(f"{number.get('phone_number')}: status callbacks do not come here ({status_url})")
        else:
            report.warn(f"{number.get('phone_number')} sends its calls elsewhere: {where}")
    if not ours:
        report.problem(
            f"no number sends its calls to {voice}: run `python -m voicebot twilio connect +1NNN` with one of yours"
        )


async def diagnose(settings: Settings, connector: ConnectorFactory | None = None) -> Report:
    report = Report()
    probe = check_settings(settings, report)
    async with aiohttp.ClientSession(connector=connector() if connector else None) as http:
        await check_listening(settings, http, report)
        if probe:
            await check_public_url(settings, http, report)
        await check_account(settings, http, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voicebot doctor",
        description="Explain what stands between this configuration and a working call: keys, the public URL, "
        "signatures, where the bot listens, the proxy, and the Twilio number. Exit status 1 if a call would fail.",
    )
    parser.add_argument("--config", type=Path, help="alternative TOML settings file (VOICEBOT_CONFIG)")
    return parser


async def run(
    argv: Sequence[str], *, settings: Settings | None = None, connector: ConnectorFactory | None = None,
    out: TextIO | None = None,
) -> int:  # fmt: skip
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        settings = settings or load_settings(config_path=args.config)
    except SettingsError as exc:
        out.write(f"PROBLEM  the settings do not load: {exc}\n")
        return 1
    report = await diagnose(settings, connector)
    for level, text in report.lines:
        out.write(f"{level:<8} {text}\n")
    if report.problems:
        out.write(f"{report.problems} problem(s): a call would fail until they are fixed.\n")
        return 1
    out.write("No problems found: call your number, or `python -m voicebot twilio call +1NNN`.\n")
    return 0


def main() -> None:
    sys.exit(asyncio.run(run(sys.argv[1:])))
