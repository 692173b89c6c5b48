"""The dev page's server side without a browser: the event hub, the page and its dev-only endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import ACCOUNT_SID, PUBLIC_URL, make_settings
from voicebot.call.state import STATE, AppState
from voicebot.devpage.page import CSP, DEV_HEADER, DEV_HUB, CallEventHub, add_dev_routes, dev_page_enabled
from voicebot.metrics import Metrics
from voicebot.settings import Settings
from voicebot.twilio.outbound import ContextSeal
from voicebot.twilio.security import StreamTokens

IO_TIMEOUT_S = 5.0
DEV = {DEV_HEADER: "1"}


# --- the hub ----------------------------------------------------------------------------------------------


async def next_event(hub_sub: Any) -> dict[str, Any] | None:
    async with asyncio.timeout(IO_TIMEOUT_S):
        item = await hub_sub.get()
    return None if item is None else orjson.loads(item.data)


async def test_hub_delivers_to_subscribers_of_that_call_only() -> None:
    hub = CallEventHub()
    hub.publish("CA1", {"type": "user", "text": "nobody listens", "final": True})  # no-op
    with hub.subscribe("CA1") as one, hub.subscribe("CA2") as two:
        assert hub.listening("CA1") and hub.listening("CA2")
        event: dict[str, Any] = {"type": "user", "text": "hello", "final": False}
        hub.publish("CA1", event)
        event["text"] = "changed after publishing"
        assert await next_event(one) == {"type": "user", "text": "hello", "final": False}
        hub.publish("CA2", {"type": "barge_in", "stage": "clear"})
        assert await next_event(two) == {"type": "barge_in", "stage": "clear"}
    assert not hub.listening("CA1") and not hub.listening("CA2")


async def test_hub_drops_the_oldest_event_when_a_subscriber_falls_behind() -> None:
    hub = CallEventHub(queue_events=3)
    with hub.subscribe("CA1") as sub:
        for i in range(5):
            hub.publish("CA1", {"type": "user", "text": str(i), "final": True})
        assert sub.dropped == 2
        assert [(await next_event(sub) or {})["text"] for _ in range(3)] == ["2", "3", "4"]


async def test_hub_close_ends_every_subscription() -> None:
    hub = CallEventHub()
    with hub.subscribe("CA1") as sub:
        waiter = asyncio.ensure_future(next_event(sub))
        await asyncio.sleep(0)
        hub.close()
        assert await waiter is None


def test_dev_calls_are_remembered_up_to_a_bound() -> None:
    hub = CallEventHub(max_dev_calls=2)
    for sid in ("CA1", "CA2", "CA3"):
        hub.register_dev_call(sid)
    assert not hub.is_dev_call("CA1") and hub.is_dev_call("CA2") and hub.is_dev_call("CA3")


@pytest.mark.parametrize(
    ("overrides", "enabled"),
    [({"host": "127.0.0.1"}, True), ({"host": "localhost"}, True), ({"host": "0.0.0.0"}, False)],
)
def test_dev_page_defaults_to_loopback_only(overrides: dict[str, Any], enabled: bool) -> None:
    assert dev_page_enabled(make_settings(**overrides)) is enabled


# --- the endpoints ----------------------------------------------------------------------------------------


class DevServer:
    def __init__(self, app: web.Application, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.server = server
        self.http = http

    @property
    def hub(self) -> CallEventHub:
        return self.app[DEV_HUB]

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def dev_server() -> AsyncIterator[Any]:
    servers: list[TestServer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IO_TIMEOUT_S)) as http:

        async def factory(settings: Settings | None = None) -> DevServer:
            settings = settings or make_settings()
            app = web.Application()
            app[STATE] = AppState(
                settings=settings,
                metrics=Metrics(),
                tokens=StreamTokens(b"test-secret"),
                seal=ContextSeal(b"test-secret"),
            )
            add_dev_routes(app, CallEventHub())
            server = TestServer(app, host="127.0.0.1", port=None)
            await server.start_server()
            servers.append(server)
            return DevServer(app, server, http)

        yield factory
        for server in servers:
            await server.close()


async def test_page_and_static_files_are_served_with_a_strict_policy(dev_server: Any) -> None:
    dev = await dev_server()
    async with dev.http.get(dev.url("/")) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"] == CSP
        assert '<script type="module" src="/static/app.js">' in await resp.text()
    for name in ("app.js", "capture-worklet.js", "playback-worklet.js", "mulaw.js", "resampler.js"):
        async with dev.http.get(dev.url(f"/static/{name}")) as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript", name
    async with dev.http.get(dev.url("/static/style.css")) as resp:
        assert resp.content_type == "text/css"
    for path in ("/static/nothing.js", "/static/..%2Fdevpage.py", "/static/__init__.py"):
        async with dev.http.get(dev.url(path)) as resp:
            assert resp.status == 404, path


async def test_dev_call_gives_a_call_sid_and_its_stream_token(dev_server: Any) -> None:
    dev = await dev_server()
    async with dev.http.post(dev.url("/dev/call"), headers=DEV) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body["call_sid"].startswith("CA") and len(body["call_sid"]) == 34
    assert body["account_sid"] == ACCOUNT_SID
    assert body["stream_url"] == f"ws://127.0.0.1:{dev.server.port}/media"
    assert dev.hub.is_dev_call(body["call_sid"])
    dev.state.tokens.redeem(body["token"], body["call_sid"])  # valid, for this call


async def test_dev_call_through_the_public_url_streams_to_it(dev_server: Any) -> None:
    # Only when the operator opened the page to remote clients (tests/test_access.py has the default: 404).
    dev = await dev_server(make_settings(dev_page=True, dev_remote_calls=True))
    host = PUBLIC_URL.removeprefix("https://")
    async with dev.http.post(dev.url("/dev/call"), headers={**DEV, "Host": host}) as resp:
        assert (await resp.json())["stream_url"] == f"wss://{host}/media"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 403), ({DEV_HEADER: "yes"}, 403), ({**DEV, "Host": "rebound.attacker.example"}, 404)],
)
async def test_dev_call_refuses_cross_site_and_rebound_requests(
    dev_server: Any, headers: dict[str, str], status: int
) -> None:
    dev = await dev_server()
    async with dev.http.post(dev.url("/dev/call"), headers=headers) as resp:
        assert resp.status == status


async def test_dev_call_explains_why_it_cannot_place_a_call(dev_server: Any) -> None:
    dev = await dev_server(make_settings(deepgram_api_key=None))
    async with dev.http.post(dev.url("/dev/call"), headers=DEV) as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": "not configured: set DEEPGRAM_API_KEY"}
    dev.state.draining = True
    async with dev.http.post(dev.url("/dev/call"), headers=DEV) as resp:
        assert resp.status == 503


async def test_events_stream_a_dev_call_until_it_ends(dev_server: Any) -> None:
    dev = await dev_server()
    async with dev.http.get(dev.url("/dev/events"), params={"call_sid": "CA" + "9" * 32}) as resp:
        assert resp.status == 404
    async with dev.http.post(dev.url("/dev/call"), headers=DEV) as resp:
        call_sid = (await resp.json())["call_sid"]
    events = [
        {"type": "user", "text": "hi", "final": True},
        {"type": "turn", "latency_ms": {"stt_final": 12.5}},
        {"type": "call_ended", "reason": "stop"},
    ]
    async with dev.http.get(dev.url("/dev/events"), params={"call_sid": call_sid}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert dev.hub.listening(call_sid)  # subscribed before the headers were sent
        for event in events:
            dev.hub.publish(call_sid, event)
        body = await resp.read()  # the stream ends after call_ended
    assert body == b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    assert not dev.hub.listening(call_sid)
