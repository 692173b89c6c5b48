"""The provider clients' connection pools: a wait for a connection is counted, and a burst of calls up to the call
limit never waits for one (no segment skipped, no apology, every reply whole)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.world import World, audio_of, segments_of
from voicebot.call.services import LLM_REQUESTS_PER_CALL, SOCKETS_PER_CALL, TTS_REQUESTS_PER_CALL, pool_limits
from voicebot.caller import HangUp, Say, WaitForBotAudio, WaitForBotSilence
from voicebot.providers.pools import PoolUse, aiohttp_httpx2_transport, aiohttp_httpx_transport

WAIT_S = 15.0
BURST_CALLS = 6
BURST_SPACING_S = 0.02
"""Calls start this far apart: a burst, as when a campaign or a shared number brings callers in at once."""
REPLY = (
    "Sure, we are open today. "
    "We open at nine in the morning and close at six. "
    "On Saturdays we open at ten and close at four in the afternoon."
)


@pytest.fixture
async def held_server() -> AsyncIterator[tuple[TestServer, asyncio.Event]]:
    """A loopback HTTP server whose responses send their headers, then hold the body until ``release`` is set."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await release.wait()
        await resp.write(b"done")
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, release
    finally:
        release.set()
        await server.close()


Client = httpx.AsyncClient | httpx2.AsyncClient


@pytest.mark.parametrize(
    "make_client",
    [
        lambda use: httpx.AsyncClient(transport=aiohttp_httpx_transport(use, 5.0)),
        lambda use: httpx2.AsyncClient(transport=aiohttp_httpx2_transport(use, 5.0)),
    ],
    ids=["httpx-on-aiohttp", "httpx2-on-aiohttp"],
)
async def test_a_request_that_finds_the_pool_full_is_counted_as_waiting(
    held_server: tuple[TestServer, asyncio.Event], make_client: Callable[[PoolUse], Client]
) -> None:
    server, release = held_server
    use = PoolUse("test", limit=1)
    client: Any = make_client(use)
    url = str(server.make_url("/"))
    async with client:
        first = await client.send(client.build_request("GET", url), stream=True)  # holds the only connection
        assert (use.in_use, use.waiting, use.waited) == (1, 0, 0)
        second = asyncio.create_task(client.get(url))
        while use.in_flight < 2:  # the counter has no event to wait on: one loop turn at a time
            await asyncio.sleep(0)
        assert (use.in_use, use.waiting, use.waited) == (1, 1, 1)
        release.set()
        await first.aread()
        await first.aclose()
        assert (await second).content == b"done"
    assert (use.in_flight, use.waited, use.peak) == (0, 1, 2)


def test_pools_are_sized_from_the_call_limit() -> None:
    tts, llm, rest, sockets = pool_limits(100)
    assert tts.limit >= 100 * TTS_REQUESTS_PER_CALL
    assert llm.limit >= 100 * LLM_REQUESTS_PER_CALL
    assert rest.limit >= 100
    assert sockets.limit >= 100 * SOCKETS_PER_CALL


async def test_metrics_export_each_pool(start_world: Any) -> None:
    world: World = await start_world(max_calls=7)
    async with httpx.AsyncClient() as http:
        text = (await http.get(world.server.url("/metrics"))).text
    for pool in world.services.pools:
        for family in ("limit", "in_use", "waiting"):
            assert f'voicebot_provider_pool_{family}{{pool="{pool.name}"}}' in text
        assert f'voicebot_provider_pool_waits_total{{pool="{pool.name}"}} 0.0' in text
    assert f'voicebot_provider_pool_limit{{pool="deepgram_tts"}} {pool_limits(7)[0].limit}.0' in text


async def test_a_burst_up_to_the_call_limit_never_waits_for_a_connection(start_world: Any) -> None:
    world: World = await start_world(max_calls=BURST_CALLS)
    segments = segments_of(REPLY)
    assert len(segments) >= 3, segments  # the turn synthesises several segments at once
    world.emu.tts.config.ttfb_ms = 200.0  # every segment's request is open at the same time, in every call
    world.emu.stt.script.extend(["When are you open?"] * BURST_CALLS)
    world.emu.llm.script.extend([REPLY] * BURST_CALLS)
    script = [
        WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400), Say("hours"), WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=800), HangUp(),
    ]  # fmt: skip

    async def one(i: int) -> Any:
        await asyncio.sleep(i * BURST_SPACING_S)
        return await world.call(script, timeout=60)

    results = await asyncio.gather(*(one(i) for i in range(BURST_CALLS)))
    whole = audio_of(world.server.settings.greeting) + b"".join(audio_of(s) for s in segments)
    for result in results:
        assert result.ok, result.format_timeline()
        # Every segment, in order, nothing skipped, no apology: exactly the greeting and the whole reply.
        assert b"".join(m.payload for m in result.media) == whole
    tts = next(p for p in world.services.pools if p.name == "deepgram_tts")
    # The burst really had more than one TTS request per call open at once ...
    assert tts.peak > BURST_CALLS
    # ... and still nothing waited for a connection, in any pool.
    assert [(p.name, p.waited) for p in world.services.pools] == [(p.name, 0) for p in world.services.pools]
    assert all(p.in_flight == 0 for p in world.services.pools)
