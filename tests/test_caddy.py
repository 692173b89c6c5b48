"""A real Caddy (Debian's, as in deploy/Caddyfile) in front of the bot, with ``tls internal`` on loopback.

Whole calls go through it: the webhook over https signed on the public https URL, TwiML pointing at ``wss://`` on
the proxy's host, media, marks, a clear and the hang-up; an outbound call placed by ``twilio call`` and its status
callbacks; ``doctor`` finding nothing wrong. A forged signature and a webhook signed over ``http://`` get 403, and
only Twilio's paths are reachable. Skipped only when ``caddy`` is not installed (.ci/run installs it).
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxy import (
    CADDY,
    CALL_S,
    CALLEE,
    LOOPBACK_HOST_SITE,
    NAIVE_SITE,
    NUMBER,
    Caddy,
    check_exposure,
    free_port,
    post_voice,
    public_url,
    running_caddy,
    whole_call,
)
from tests.world import World
from voicebot import doctor
from voicebot.emulators import EmulatedNumber, LlmReply, ToolCall
from voicebot.twilio import cli

if CADDY is None and os.environ.get("VOICEBOT_REQUIRE_DEPLOY_TOOLS"):  # .ci/run sets it: there the test must run
    raise RuntimeError("VOICEBOT_REQUIRE_DEPLOY_TOOLS is set but caddy is not installed (scripts/install_edge.sh)")

pytestmark = [
    pytest.mark.skipif(CADDY is None, reason="caddy is not installed (bash scripts/install_edge.sh)"),
    pytest.mark.timeout(120),
]


@pytest.fixture
async def edge(start_world: Any, tmp_path: Path) -> AsyncIterator[tuple[World, Caddy]]:
    """The bot behind Caddy; the bot's public URL is Caddy's https site."""
    https_port = free_port()
    world: World = await start_world(public_url=public_url(https_port))
    port = world.server.server.port
    assert port is not None
    async with running_caddy(port, https_port, tmp_path) as caddy:
        yield world, caddy


async def test_whole_call_through_caddy(edge: tuple[World, Caddy]) -> None:
    await whole_call(*edge)


async def test_signatures_through_caddy(edge: tuple[World, Caddy]) -> None:
    await check_exposure(edge[1])


async def test_outbound_call_and_doctor_through_caddy(edge: tuple[World, Caddy]) -> None:
    world, caddy = edge
    emu = world.emu
    emu.twilio.config.connector = caddy.connector()  # Twilio reaches the public URL through Caddy, trusting its CA
    emu.twilio.config.numbers = [EmulatedNumber(NUMBER)]
    settings = world.server.settings.model_copy(update={"twilio_from_number": NUMBER, "port": world.server.server.port})
    out, err = io.StringIO(), io.StringIO()
    assert await cli.run(["connect", NUMBER], settings=settings, out=out, err=err) == 0, err.getvalue()
    report = io.StringIO()
    assert await doctor.run([], settings=settings, connector=caddy.connector(), out=report) == 0, report.getvalue()
    assert f"ok       {caddy.public_url}/voice reaches the bot through the proxy" in report.getvalue()

    emu.stt.script.append("Thanks, goodbye.")
    emu.llm.script.append(LlmReply("Goodbye!", (ToolCall("end_call", {"reason": "done"}),)))
    assert await cli.run(["call", CALLEE, "--context", "Say hi."], settings=settings, out=out, err=err) == 0
    [created] = emu.select("twilio", "call_created")
    call_sid = created.data["call_sid"]
    ended = await emu.wait_for_kind("twilio", "call_ended", CALL_S, call_sid=call_sid)
    assert ended.data["failures"] == [], ended.data
    await emu.wait_for_kind("twilio", "callback", CALL_S, call_sid=call_sid, event="completed")
    callbacks = [c.data for c in emu.select("twilio", "callback") if c.data["call_sid"] == call_sid]
    assert [(c["call_status"], c["http_status"]) for c in callbacks] == [
        ("initiated", 204), ("ringing", 204), ("in-progress", 204), ("completed", 204),
    ]  # fmt: skip


@pytest.mark.parametrize("site", [NAIVE_SITE, LOOPBACK_HOST_SITE], ids=["every-path", "every-path-loopback-host"])
async def test_a_proxy_that_forwards_everything_reaches_only_twilios_endpoints(
    start_world: Any, tmp_path: Path, site: str
) -> None:
    """Issue 16 through a real proxy: the bot itself refuses the dev page, metrics and unsigned streams."""
    https_port = free_port()
    world: World = await start_world(public_url=public_url(https_port))
    port = world.server.server.port
    assert port is not None
    async with running_caddy(port, https_port, tmp_path, site=site) as caddy:
        async with aiohttp.ClientSession(connector=caddy.connector()()) as http:
            for method, path in [
                ("GET", "/"), ("GET", "/static/app.js"), ("POST", "/dev/call"),
                ("GET", "/dev/events?call_sid=CA" + "1" * 32), ("GET", "/metrics"),
            ]:  # fmt: skip
                headers = {"X-Voicebot-Dev": "1"}
                async with http.request(method, caddy.public_url + path, headers=headers) as resp:
                    assert resp.status == 404, (path, resp.status)
            async with http.get(caddy.public_url + "/healthz") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(caddy.public_url.replace("https://", "wss://") + "/media")
            assert info.value.status == 403
            assert await post_voice(caddy, caddy.public_url + "/voice") == 200  # Twilio's webhook still answers
        # Direct on the machine, the same server still serves its local tools.
        async with aiohttp.ClientSession() as http, http.get(world.server.url("/metrics")) as resp:
            assert resp.status == 200
