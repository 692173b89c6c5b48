"""Debian's Caddy in front of a test bot: deploy/Caddyfile with ``tls internal`` on a loopback port.

The site is ``voicebot.test:PORT``; clients resolve that name to 127.0.0.1 with :class:`StaticResolver` (what DNS
does on a VPS) and trust Caddy's local root certificate explicitly (never the system store: ``skip_install_trust``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

REPO = Path(__file__).resolve().parent.parent
CADDYFILE = REPO / "deploy" / "Caddyfile"
SITE_NAME = "voicebot.test"
READY_TIMEOUT_S = 30.0
CADDY = shutil.which("caddy")


class StaticResolver(AbstractResolver):
    """Resolves the names in ``hosts`` to fixed addresses (like /etc/hosts); nothing else resolves."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.hosts.get(host, host)
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST
            )
        ]

    async def close(self) -> None:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def public_url(https_port: int) -> str:
    return f"https://{SITE_NAME}:{https_port}"


NAIVE_SITE = "bot.example.com {\n\treverse_proxy 127.0.0.1:8080\n}\n"
"""What many operators write instead of deploy/Caddyfile: every path proxied. The bot must defend itself."""
LOOPBACK_HOST_SITE = "bot.example.com {\n\treverse_proxy 127.0.0.1:8080 {\n\t\theader_up Host 127.0.0.1\n\t}\n}\n"
"""Every path proxied with a loopback Host: only the forwarding headers Caddy adds give the internet away."""


def caddyfile_for(upstream_port: int, https_port: int, http_port: int, data_dir: Path, site: str | None = None) -> str:
    """deploy/Caddyfile (or ``site``) with the domain, the upstream port and ``tls internal`` filled in."""
    site = CADDYFILE.read_text() if site is None else site
    assert "bot.example.com {" in site and "reverse_proxy 127.0.0.1:8080" in site
    site = site.replace("bot.example.com {", f"{SITE_NAME}:{https_port} {{\n\ttls internal", 1)
    site = site.replace("reverse_proxy 127.0.0.1:8080", f"reverse_proxy 127.0.0.1:{upstream_port}", 1)
    options = (
        "{\n\tadmin off\n\tskip_install_trust\n\tauto_https disable_redirects\n"
        f"\thttp_port {http_port}\n\thttps_port {https_port}\n"
        f"\tstorage file_system {{\n\t\troot {data_dir}\n\t}}\n}}\n\n"
    )
    return options + site


@dataclass
class Caddy:
    public_url: str
    root_cert: Path
    log: list[dict[str, object]] = field(default_factory=list)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_cert))

    def connector(self) -> Callable[[], aiohttp.BaseConnector]:
        """A factory of connectors that reach the site the way Twilio would: by name, over verified TLS."""
        context = self.ssl_context()
        return lambda: aiohttp.TCPConnector(ssl=context, resolver=StaticResolver({SITE_NAME: "127.0.0.1"}))


async def _tls_ready(https_port: int, context: ssl.SSLContext) -> None:
    """Wait until a handshake succeeds: Caddy logs the certificate a moment before it serves it (seen here:
    a handshake right after the log line can fail with a TLS internal-error alert)."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", https_port, ssl=context, server_hostname=SITE_NAME)
        except (ssl.SSLError, OSError):
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def running_caddy(
    upstream_port: int, https_port: int, workdir: Path, site: str | None = None
) -> AsyncIterator[Caddy]:
    """Caddy serving ``https://voicebot.test:https_port`` in front of ``127.0.0.1:upstream_port``."""
    assert CADDY is not None
    http_port = free_port()
    data_dir = workdir / "caddy-data"
    config = workdir / "Caddyfile"
    config.write_text(caddyfile_for(upstream_port, https_port, http_port, data_dir, site))
    env = {**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir)}
    proc = await asyncio.create_subprocess_exec(
        CADDY, "run", "--config", str(config), "--adapter", "caddyfile",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    caddy = Caddy(public_url(https_port), data_dir / "pki/authorities/local/root.crt")
    ready = asyncio.get_running_loop().create_future()

    async def read_log() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                caddy.log.append(entry)
                if entry.get("msg") == "certificate obtained successfully" and not ready.done():
                    ready.set_result(None)
        if not ready.done():
            ready.set_exception(RuntimeError(f"caddy exited: {caddy.log[-3:]}"))

    reader = asyncio.create_task(read_log())
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await ready
            await _tls_ready(https_port, caddy.ssl_context())
        yield caddy
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await reader
