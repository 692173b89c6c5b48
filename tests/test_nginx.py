"""A real nginx (Debian's, the one deploy/nginx-voicebot.conf is written for) in front of the bot on loopback.

nginx runs unprivileged in the foreground with the shipped site changed only where a test machine differs from a
VPS: the domain, the listen and upstream ports, and a throwaway self-signed certificate for the test name that the
client trusts explicitly. Through it: one whole call with the simulated caller, the signature and exposure probes
that tests/test_caddy.py makes through Caddy, and the http-to-https redirect. Skipped only when nginx or openssl is
not installed (.ci/run installs them).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxy import NGINX, OPENSSL, SITE_NAME, Nginx, check_exposure, free_port, public_url, running_nginx
from tests.proxy import whole_call as run_whole_call
from tests.world import World

if (NGINX is None or OPENSSL is None) and os.environ.get("VOICEBOT_REQUIRE_DEPLOY_TOOLS"):  # .ci/run sets it
    raise RuntimeError("VOICEBOT_REQUIRE_DEPLOY_TOOLS is set but nginx or openssl is missing (scripts/install_edge.sh)")

pytestmark = [
    pytest.mark.skipif(NGINX is None or OPENSSL is None, reason="nginx or openssl is not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture
async def edge(start_world: Any, tmp_path: Path) -> AsyncIterator[tuple[World, Nginx]]:
    """The bot behind nginx; the bot's public URL is nginx's https site."""
    https_port = free_port()
    world: World = await start_world(public_url=public_url(https_port))
    port = world.server.server.port
    assert port is not None
    async with running_nginx(port, https_port, tmp_path / "nginx") as nginx:
        yield world, nginx
        assert nginx.error_log.read_text() == ""  # nothing nginx counts as an error (upstream resets, timeouts)


async def test_whole_call_through_nginx(edge: tuple[World, Nginx]) -> None:
    await run_whole_call(*edge)


async def test_only_signed_twilio_requests_get_through_nginx(edge: tuple[World, Nginx]) -> None:
    _, nginx = edge
    await check_exposure(nginx)
    async with (
        aiohttp.ClientSession(connector=nginx.connector()()) as http,
        http.get(nginx.http_url + "/voice", allow_redirects=False) as resp,
    ):
        assert resp.status == 301
        assert resp.headers["Location"] == f"https://{SITE_NAME}/voice"  # to 443: the port is this test's own
