"""Who may reach what: only Twilio's signed endpoints answer anything that is not direct from this machine.

Through a proxy or tunnel every request arrives from a loopback peer, so these tests send what such a relay sends
(forwarding headers, the public Host, or a loopback Host behind forwarding headers) from a loopback client and
check that it is treated as the internet. The real proxy is in tests/test_proxy.py (Caddy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode

from tests.conftest import PUBLIC_URL, ServerFactory, make_settings
from tests.fake_twilio import STREAM_URL, new_call_sid, open_media, post_voice
from voicebot.access import has_forwarding_header, is_loopback_host
from voicebot.devpage.page import DEV_HEADER
from voicebot.settings import Settings, SettingsError

PUBLIC_HOST = PUBLIC_URL.removeprefix("https://")
FROM_OUTSIDE: list[dict[str, str]] = [
    {"X-Forwarded-For": "203.0.113.9"},  # ngrok, Caddy, nginx with the usual config
    {"X-Forwarded-Proto": "https"},
    {"Host": PUBLIC_HOST},  # a proxy that forwards the public Host and adds nothing
    {"Host": "127.0.0.1", "Forwarded": "for=203.0.113.9;proto=https"},  # loopback Host behind a proxy
    {"Host": "localhost", "X-Real-IP": "203.0.113.9"},
    {"CF-Connecting-IP": "203.0.113.9"},  # cloudflared
    {"Via": "1.1 caddy"},
    {"Host": "rebound.attacker.example"},  # a DNS-rebinding page
]
DEV = {DEV_HEADER: "1"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("127.0.0.1", True),
        ("127.3.4.5:80", True),
        ("[::1]:8080", True),
        ("::1", True),
        ("localhost.", True),
        ("voicebot.test", False),
        ("10.0.0.1:8080", False),
        ("[2001:db8::1]", False),
        ("localhost.attacker.example", False),
        ("", False),
    ],
)
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_forwarding_headers_are_recognised_case_insensitively() -> None:
    for headers in FROM_OUTSIDE:
        relayed = {k: v for k, v in headers.items() if k != "Host"}
        assert has_forwarding_header(relayed) is bool(relayed), headers
    assert has_forwarding_header({"x-forwarded-host": "a"})
    assert has_forwarding_header({"X-ORIGINAL-FORWARDED-FOR": "a"})
    assert not has_forwarding_header({"User-Agent": "curl", "Accept": "*/*", "Host": "localhost"})


async def _status(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]) -> int:
    async with http.request(method, url, headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("headers", FROM_OUTSIDE)
async def test_from_outside_only_twilios_endpoints_answer(
    start_server: ServerFactory, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    server = await start_server()  # bound to 127.0.0.1: the dev page is on for direct local requests
    for method, path, extra in [
        ("GET", "/", {}),
        ("GET", "/static/app.js", {}),
        ("POST", "/dev/call", DEV),
        ("GET", "/dev/events?call_sid=CA" + "1" * 32, {}),
        ("GET", "/metrics", {}),
    ]:
        assert await _status(http, method, server.url(path), {**headers, **extra}) == 404, (path, headers)
    async with http.get(server.url("/healthz"), headers=headers) as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}  # no counts, no key names
    # An unsigned stream upgrade from outside: 403 before anything is sent.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await open_media(http, server, new_call_sid(), headers=headers)
    assert info.value.status == 403
    # Twilio's own endpoints still answer from outside when signed.
    answer = await post_voice(http, server, new_call_sid())
    assert answer.status == 200 and answer.token is not None


async def test_from_outside_health_says_only_not_ok(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(deepgram_api_key=None)
    async with http.get(server.url("/healthz"), headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
        assert resp.status == 503 and await resp.json() == {"status": "not ok"}
    async with http.get(server.url("/healthz")) as resp:  # direct: the detail
        assert (await resp.json())["missing"] == ["DEEPGRAM_API_KEY"]


async def test_direct_local_requests_reach_everything(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server()
    assert await _status(http, "GET", server.url("/"), {}) == 200
    assert await _status(http, "GET", server.url("/metrics"), {}) == 200
    for host in ("localhost", f"127.0.0.1:{server.server.port}", "[::1]"):
        assert await _status(http, "GET", server.url("/"), {"Host": host}) == 200, host
    async with http.post(server.url("/dev/call"), headers=DEV) as resp:
        assert resp.status == 200 and (await resp.json())["token"]
    async with http.get(server.url("/healthz")) as resp:
        assert set(await resp.json()) == {"status", "active_calls", "missing"}


async def test_metrics_token_lets_a_remote_scraper_in(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(metrics_token="scrape-secret-123")
    remote = {"X-Forwarded-For": "198.51.100.7"}
    assert await _status(http, "GET", server.url("/metrics"), remote) == 404
    assert await _status(http, "GET", server.url("/metrics"), {**remote, "Authorization": "Bearer wrong"}) == 404
    assert await _status(http, "GET", server.url("/metrics"), {**remote, "Authorization": "Basic c2NyYXBl"}) == 404
    authorised = {**remote, "Authorization": "Bearer scrape-secret-123"}
    async with http.get(server.url("/metrics"), headers=authorised) as resp:
        assert resp.status == 200 and "voicebot_active_calls" in await resp.text()


async def test_forced_dev_page_serves_the_page_but_mints_no_remote_token(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    relayed = {"X-Forwarded-For": "203.0.113.9", "Host": PUBLIC_HOST}
    server = await start_server(dev_page=True)
    assert await _status(http, "GET", server.url("/"), relayed) == 200
    assert await _status(http, "POST", server.url("/dev/call"), {**relayed, **DEV}) == 404
    assert await _status(http, "POST", server.url("/dev/call"), DEV) == 200  # direct still works
    opened = await start_server(dev_page=True, dev_remote_calls=True)
    async with http.post(opened.url("/dev/call"), headers={**relayed, **DEV}) as resp:
        assert resp.status == 200 and (await resp.json())["stream_url"] == STREAM_URL
    # Even opened, a Host we do not serve under is refused (DNS rebinding).
    rebound = {**relayed, **DEV, "Host": "rebound.attacker.example"}
    assert await _status(http, "POST", opened.url("/dev/call"), rebound) == 403


async def test_direct_unsigned_stream_is_only_for_the_dev_pages_calls(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    # A token from the signed webhook, replayed on an unsigned local upgrade: refused with nothing sent.
    call_sid = new_call_sid()
    answer = await post_voice(http, server, call_sid)
    assert answer.token is not None
    sock = await open_media(http, server, call_sid, headers={})
    await sock.connected()
    await sock.start(answer.token)
    code, received = await sock.closed()
    assert code == WSCloseCode.POLICY_VIOLATION and received == []
    # The dev page's own call, unsigned and direct: accepted (the handshake passes, the call starts).
    async with http.post(server.url("/dev/call"), headers=DEV) as resp:
        dev = await resp.json()
    sock = await open_media(http, server, dev["call_sid"], headers={})
    await sock.connected()
    await sock.start(dev["token"])
    await sock.stop()
    code, _ = await sock.closed()
    assert code == WSCloseCode.OK
    async with http.get(server.url("/metrics")) as resp:
        text = await resp.text()
    assert 'voicebot_calls_rejected_total{reason="bad_token"} 1.0' in text


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"public_url": "https://bot.example.com"}, True),
        ({"public_url": "https://bot.example.com", "allow_unsigned": True}, False),
        ({"public_url": "https://bot.example.com", "twilio_auth_token": "t0ken-value"}, False),
        ({"public_url": "http://127.0.0.1:8080"}, False),
        ({"public_url": "http://localhost:8080"}, False),
        ({}, False),
    ],
)
def test_a_public_url_without_auth_token_is_a_startup_error(overrides: dict[str, Any], refused: bool) -> None:
    settings = Settings.model_validate(overrides)
    if refused:
        with pytest.raises(SettingsError, match=r"VOICEBOT_PUBLIC_URL.*TWILIO_AUTH_TOKEN"):
            settings.check_startup()
    else:
        settings.check_startup()


def test_metrics_token_is_a_secret() -> None:
    settings = make_settings(metrics_token="scrape-secret-123")
    assert "scrape-secret-123" in settings.secret_values()
    assert settings.redacted()["VOICEBOT_METRICS_TOKEN"] == "<set>"
