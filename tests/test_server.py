"""The HTTP surface and the call lifecycle, through a real server on loopback."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import WSCloseCode

from tests.conftest import AUTH_TOKEN, ServerFactory
from tests.fake_twilio import answered_call, new_call_sid, open_media, post_voice
from voicebot.logs import configure_logging
from voicebot.twilio.security import twilio_signature


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _metric(http: aiohttp.ClientSession, url: str, line_prefix: str) -> float:
    async with http.get(url) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in /metrics")


async def test_healthz_reports_status_and_active_calls(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    async with http.get(server.url("/healthz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "active_calls": 0, "missing": []}
    sock = await answered_call(http, server)
    await sock.media()
    async with http.get(server.url("/healthz")) as resp:
        assert (await resp.json())["active_calls"] == 1
    await sock.stop()
    await sock.closed()


async def test_voice_returns_connect_stream_with_token(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    answer = await post_voice(http, server, new_call_sid())
    assert answer.status == 200
    assert answer.stream_url == "wss://voicebot.test/media"
    assert answer.token and answer.token.startswith("vbt1.")
    assert answer.body.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url=')


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl"])
async def test_voice_requires_a_valid_signature(
    start_server: ServerFactory, http: aiohttp.ClientSession, signature: str | None
) -> None:
    server = await start_server()
    if signature is None:
        answer = await post_voice(http, server, new_call_sid(), sign_with=None)
    else:
        answer = await post_voice(http, server, new_call_sid(), signature=signature)
    assert answer.status == 403
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_rejected_total{reason="bad_signature"}') == 1


async def test_voice_signed_with_another_token_is_refused(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    assert (await post_voice(http, server, new_call_sid(), sign_with="not-the-token")).status == 403


async def test_voice_without_auth_token_needs_no_signature(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(twilio_auth_token=None)
    answer = await post_voice(http, server, new_call_sid(), sign_with=None)
    assert answer.status == 200
    assert answer.token


async def test_voice_without_call_sid_is_a_bad_request(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(twilio_auth_token=None)
    async with http.post(server.url("/voice"), data={"From": "+1"}) as resp:
        assert resp.status == 400


async def test_missing_keys_give_a_spoken_refusal_and_health_says_what(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(openai_api_key=None)
    answer = await post_voice(http, server, new_call_sid())
    assert answer.status == 200
    assert answer.say and "not configured" in answer.say
    assert "<Hangup />" in answer.body
    async with http.get(server.url("/healthz")) as resp:
        assert await resp.json() == {"status": "degraded", "active_calls": 0, "missing": ["OPENAI_API_KEY"]}


async def test_capacity_limit_gives_a_polite_refusal(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(max_calls=1)
    sock = await answered_call(http, server)
    await sock.media()
    await _wait_active(http, server.url("/healthz"), 1)
    answer = await post_voice(http, server, new_call_sid())
    assert answer.say and "busy" in answer.say
    assert answer.stream_url is None
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_rejected_total{reason="capacity"}') == 1
    await sock.stop()
    await sock.closed()


async def _wait_active(http: aiohttp.ClientSession, url: str, n: int) -> None:
    async with asyncio.timeout(10):
        while True:
            async with http.get(url) as resp:
                if (await resp.json())["active_calls"] == n:
                    return
            await asyncio.sleep(0.01)


def _call_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def test_full_call_lifecycle_leaves_no_task_behind(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    before = _call_tasks()
    sock = await answered_call(http, server)
    for _ in range(10):
        await sock.media()
    await _wait_active(http, server.url("/healthz"), 1)
    during = _call_tasks() - before
    assert during, "the call should run tasks of its own"
    await sock.stop()
    code, _received = await sock.closed()
    assert code == WSCloseCode.OK
    await _wait_active(http, server.url("/healthz"), 0)
    await asyncio.sleep(0)  # let the handler task finish its own return
    assert {t.get_coro().__qualname__ for t in during} >= {"CallSession._receive_loop", "CallSession._watchdog"}
    # aiohttp keeps the keep-alive HTTP connections of /healthz open; only the call's own tasks must be gone.
    still_running = [t for t in during if not t.done() and t.get_coro().__qualname__.startswith("CallSession.")]
    assert not still_running, still_running
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_total{end_reason="stop"}') == 1
    assert await _metric(http, server.url("/metrics"), "voicebot_active_calls") == 0


@pytest.mark.parametrize("case", ["missing", "forged", "other_call", "reused", "expired"])
async def test_bad_stream_token_closes_with_nothing_sent(
    start_server: ServerFactory, http: aiohttp.ClientSession, case: str
) -> None:
    server = await start_server()
    call_sid = new_call_sid()
    answer = await post_voice(http, server, call_sid)
    assert answer.token
    token: str | None = answer.token
    if case == "missing":
        token = None
    elif case == "forged":
        head, _, _mac = answer.token.rpartition(".")
        token = head + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    elif case == "other_call":
        token = (await post_voice(http, server, new_call_sid())).token
    elif case == "reused":
        first = await open_media(http, server, call_sid)
        await first.connected()
        await first.start(answer.token)
        await first.media()
        await first.stop()
        await first.closed()
    elif case == "expired":
        token = server.state.tokens.mint(call_sid, now=0.0)
    sock = await open_media(http, server, call_sid)
    await sock.connected()
    await sock.start(token)
    code, received = await sock.closed()
    assert code == WSCloseCode.POLICY_VIOLATION
    assert received == []
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_rejected_total{reason="bad_token"}') == 1


async def test_media_socket_signature_header_is_validated(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    good = twilio_signature(AUTH_TOKEN, "wss://voicebot.test/media", {})
    sock = await open_media(http, server, new_call_sid(), headers={"X-Twilio-Signature": good})
    await sock.ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await open_media(http, server, new_call_sid(), headers={"X-Twilio-Signature": "Zm9yZ2Vk"})
    assert info.value.status == 403
    # Signed on the address the server sees instead of the public URL: refused too.
    wrong_url = twilio_signature(AUTH_TOKEN, server.ws_url("/media"), {})
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await open_media(http, server, new_call_sid(), headers={"X-Twilio-Signature": wrong_url})


@pytest.mark.parametrize("first", ["media", "binary", "garbage", "stop"])
async def test_anything_but_start_first_closes_the_stream(
    start_server: ServerFactory, http: aiohttp.ClientSession, first: str
) -> None:
    server = await start_server()
    sock = await open_media(http, server, new_call_sid())
    await sock.connected()
    if first == "media":
        await sock.media()
    elif first == "binary":
        await sock.ws.send_bytes(b"\x00\x01")
    elif first == "garbage":
        await sock.ws.send_str("{not json")
    else:
        await sock.stop()
    code, received = await sock.closed()
    assert code == WSCloseCode.POLICY_VIOLATION
    assert received == []


async def test_no_start_in_time_closes_the_stream(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(start_timeout_s=0.2)
    sock = await open_media(http, server, new_call_sid())
    await sock.connected()
    code, _ = await sock.closed()
    assert code == WSCloseCode.POLICY_VIOLATION
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_rejected_total{reason="no_start"}') == 1


async def test_oversized_message_ends_the_call(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(max_message_bytes=4096)
    sock = await answered_call(http, server)
    await sock.media()
    await sock.send("x" * 10_000)
    code, _ = await sock.closed()
    assert code == WSCloseCode.MESSAGE_TOO_BIG


async def test_idle_media_timeout_ends_the_call(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(idle_media_timeout_s=0.3)
    sock = await answered_call(http, server)
    code, _ = await sock.closed()
    assert code == WSCloseCode.OK
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_total{end_reason="media_timeout"}') == 1


async def test_max_call_duration_ends_the_call(start_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await start_server(max_call_duration_s=0.5, idle_media_timeout_s=60)
    sock = await answered_call(http, server)
    code, _ = await sock.closed()
    assert code == WSCloseCode.OK
    assert await _metric(http, server.url("/metrics"), 'voicebot_calls_total{end_reason="max_duration"}') == 1


async def test_shutdown_drains_then_closes_live_calls_with_1001(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(drain_timeout_s=0.2)
    sock = await answered_call(http, server)
    await sock.media()
    await _wait_active(http, server.url("/healthz"), 1)
    shutdown = asyncio.ensure_future(server.server.runner.shutdown())  # type: ignore[union-attr]
    code, _ = await sock.closed()
    await shutdown
    assert code == WSCloseCode.GOING_AWAY
    assert server.state.draining
    assert not server.state.sessions


async def test_every_call_log_line_carries_call_and_stream_sid(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", secrets=[AUTH_TOKEN], stream=stream)
    try:
        server = await start_server()
        sock = await answered_call(http, server)
        await sock.send('{"event": "bogus"}')
        await sock.media()
        await sock.stop()
        await sock.closed()
        await _wait_active(http, server.url("/healthz"), 0)
    finally:
        logging.getLogger().handlers.clear()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    call_lines = [line for line in lines if line["event"] in ("call_started", "protocol_error", "call_ended")]
    assert [line["event"] for line in call_lines] == ["call_started", "protocol_error", "call_ended"]
    for line in call_lines:
        assert line["call_sid"] == sock.call_sid
        assert line["stream_sid"] == sock.stream_sid
    assert AUTH_TOKEN not in stream.getvalue()
    assert "vbt1." not in stream.getvalue()
