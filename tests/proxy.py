"""Debian's Caddy or nginx in front of a test bot: the shipped edge (deploy/) on loopback ports.

The site is ``voicebot.test:PORT``; clients resolve that name to 127.0.0.1 with :class:`StaticResolver` (what DNS
does on a VPS) and trust the edge's certificate explicitly, never the system store: Caddy's local root
(``tls internal``, ``skip_install_trust``) or a throwaway self-signed certificate that openssl makes for nginx.
:func:`whole_call` and :func:`check_exposure` drive the same call and the same probes through either edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.conftest import AUTH_TOKEN
from tests.world import World
from voicebot.caller import Say, SayWhileBotSpeaks, SimulatedCaller, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.twiml import webhook_params
from voicebot.emulators import LlmReply, ToolCall
from voicebot.twilio.security import twilio_signature

REPO = Path(__file__).resolve().parent.parent
CADDYFILE = REPO / "deploy" / "Caddyfile"
NGINX_SITE = REPO / "deploy" / "nginx-voicebot.conf"
SHIPPED_DOMAIN = "bot.example.com"
SITE_NAME = "voicebot.test"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CADDY = shutil.which("caddy")
NGINX = shutil.which("nginx")
OPENSSL = shutil.which("openssl")

NUMBER = "+15550100002"
CALLEE = "+15550109999"
WAIT_S = 15.0
CALL_S = 40.0
LONG_REPLY = (
    "Our opening hours are nine to six on every weekday. On Saturdays we open at ten and close at four. "
    "On Sundays and public holidays we are closed all day. You can also reach us by email at any time."
)


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
class Edge:
    """A proxy serving ``https://voicebot.test:PORT`` and the one certificate a client trusts to reach it."""

    public_url: str
    trusted_cert: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.trusted_cert))

    def connector(self) -> Callable[[], aiohttp.BaseConnector]:
        """A factory of connectors that reach the site the way Twilio would: by name, over verified TLS."""
        context = self.ssl_context()
        return lambda: aiohttp.TCPConnector(ssl=context, resolver=StaticResolver({SITE_NAME: "127.0.0.1"}))


@dataclass
class Caddy(Edge):
    log: list[dict[str, object]] = field(default_factory=list)


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
        await _stop(proc)
        await reader


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


def self_signed_certificate(directory: Path, name: str) -> Path:
    """A throwaway certificate for ``name``, its own trust anchor, where certbot puts one: ``fullchain.pem`` and
    ``privkey.pem`` in ``directory``. Returns the certificate (the file a client trusts)."""
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        [OPENSSL or "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True,
    )  # fmt: skip
    return cert


def nginx_conf(workdir: Path, site: Path) -> Path:
    """``nginx.conf`` for an unprivileged nginx: the site included inside ``http {}`` as Debian's nginx.conf does,
    and every file nginx writes (pid, temp files; the error log is ``-e``) under ``workdir``."""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"pid {workdir}/nginx.pid;\nworker_processes 1;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {site};\n}}\n"
    )
    return conf


def nginx_site_for(upstream_port: int, https_port: int, http_port: int, cert_dir: Path) -> str:
    """deploy/nginx-voicebot.conf with the domain, the listen and upstream ports and the certificate filled in."""
    site = NGINX_SITE.read_text()
    for old, new in [
        ("    listen [::]:80;\n", ""), ("    listen [::]:443 ssl;\n", ""),  # loopback only: no wildcard ports here
        ("listen 80;", f"listen 127.0.0.1:{http_port};"), ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (f"/etc/letsencrypt/live/{SHIPPED_DOMAIN}/", f"{cert_dir}/"), (SHIPPED_DOMAIN, SITE_NAME),
        ("proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://127.0.0.1:{upstream_port};"),
    ]:  # fmt: skip
        assert old in site, f"deploy/nginx-voicebot.conf no longer has {old!r}: update nginx_site_for"
        site = site.replace(old, new)
    return site


@dataclass
class Nginx(Edge):
    http_url: str
    error_log: Path


@contextlib.asynccontextmanager
async def running_nginx(upstream_port: int, https_port: int, workdir: Path) -> AsyncIterator[Nginx]:
    """Debian's nginx, unprivileged and in the foreground, serving deploy/nginx-voicebot.conf on
    ``https://voicebot.test:https_port`` (and its redirect on an http port) in front of ``127.0.0.1:upstream_port``."""
    assert NGINX is not None
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    cert = await asyncio.to_thread(self_signed_certificate, workdir, SITE_NAME)
    site = workdir / "site.conf"
    site.write_text(nginx_site_for(upstream_port, https_port, http_port, workdir))
    edge = Nginx(public_url(https_port), cert, f"http://{SITE_NAME}:{http_port}", workdir / "error.log")
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", f"{workdir}/", "-e", str(edge.error_log), "-c", str(nginx_conf(workdir, site)),
        "-g", "daemon off;", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        serving = asyncio.ensure_future(_tls_ready(https_port, edge.ssl_context()))
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({serving, exited}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for task in (serving, exited):
            task.cancel()
        await asyncio.gather(serving, exited, return_exceptions=True)
        if serving not in done:
            log = edge.error_log.read_text() if edge.error_log.exists() else ""
            raise RuntimeError(f"nginx is not serving {edge.public_url} (exit {proc.returncode}): {log[-2000:]}")
        yield edge
    finally:
        await _stop(proc)


async def post_voice(edge: Edge, signed_url: str, token: str = AUTH_TOKEN) -> int:
    """POST an inbound-call webhook to the edge's ``/voice``, signed over ``signed_url`` with ``token``."""
    params = webhook_params(call_sid="CA" + "7" * 32, account_sid="AC" + "0" * 32, from_number=CALLEE, to_number=NUMBER)
    headers = {"X-Twilio-Signature": twilio_signature(token, signed_url, params)}
    async with (
        aiohttp.ClientSession(connector=edge.connector()()) as http,
        http.post(edge.public_url + "/voice", data=params, headers=headers) as resp,
    ):
        return resp.status


async def check_exposure(edge: Edge) -> None:
    """Through the edge only Twilio gets in: the webhook answers when signed with the auth token over the public
    https URL; a forged signature, one computed over ``http://``, an unsigned stream or status callback get 403;
    metrics, health detail and the dev page are not there (404)."""
    assert await post_voice(edge, edge.public_url + "/voice") == 200
    assert await post_voice(edge, edge.public_url + "/voice", token="forged-" + AUTH_TOKEN) == 403
    http_url = edge.public_url.replace("https://", "http://") + "/voice"
    assert await post_voice(edge, http_url) == 403  # signed over http:// while the public URL is https://
    async with aiohttp.ClientSession(connector=edge.connector()()) as http:
        for method, path, status in [
            ("GET", "/metrics", 404), ("GET", "/healthz", 404), ("GET", "/", 404), ("GET", "/static/app.js", 404),
            ("POST", "/dev/call", 404), ("POST", "/twilio/status", 403),
        ]:  # fmt: skip
            async with http.request(method, edge.public_url + path, headers={"X-Voicebot-Dev": "1"}) as resp:
                assert resp.status == status, (method, path, resp.status)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(edge.public_url.replace("https://", "wss://") + "/media")
        assert info.value.status == 403  # only Twilio opens streams, and it signs the upgrade


async def whole_call(world: World, edge: Edge) -> None:
    """One inbound call through the edge with the simulated caller: the webhook over https signed on the public
    URL, TwiML pointing at ``wss://`` on the edge, media, marks, a clear from a barge-in, the bot's hang-up."""
    emu = world.emu
    emu.stt.script.extend(["When are you open?", "Wait, stop. Thanks, that is all, goodbye."])
    emu.llm.script.extend(
        [LONG_REPLY, LlmReply("Goodbye!", (ToolCall("end_call", {"reason": "caller said goodbye"}),))]
    )
    emu.llm.config.tokens_per_second = 10.0  # the long reply is still playing when the caller cuts in
    emu.tts.config.bytes_per_second = 16000.0
    script = [
        WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, 400),  # the greeting
        Say("hours"), WaitForBotAudio(WAIT_S),
        SayWhileBotSpeaks("question", after_ms=1500),  # cuts the long reply; the STT script says goodbye
    ]  # fmt: skip
    caller = SimulatedCaller(
        edge.public_url, script, auth_token=AUTH_TOKEN, public_url=edge.public_url, connector=edge.connector()
    )
    result = await caller.run(timeout=CALL_S)
    assert result.ok, result.format_timeline()
    assert result.stream_url == edge.public_url.replace("https://", "wss://") + "/media"
    assert result.events_of("ws_open")[0].detail == result.stream_url  # straight to the proxy, over TLS
    assert len(result.events_of("clear_received")) == 1
    assert len(result.events_of("mark_echoed")) >= 3
    assert result.ended_by == "server_closed"  # the bot hung up: REST first, then the socket, through the proxy
    assert [u.data["form"] for u in emu.twilio.updates] == [{"Status": "completed"}]
