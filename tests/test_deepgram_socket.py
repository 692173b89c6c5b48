"""deepgram-sdk's sockets on aiohttp (voicebot/providers/deepgram_socket.py), through the real SDK.

The SDK's own behaviour on a socket (refused upgrades, close codes, a lost connection) is pinned through this
transport by ``test_emulator_stt.py``, ``test_emulator_flux.py`` and ``test_voices.py``; this file pins what the
transport adds: the SDK hands it to every socket client, it offers no compression, its sockets share one session
(one TLS context, a counted pool), and the recogniser's messages decoded without the SDK's models are the same
events as with them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import structlog.testing
from aiohttp import web
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v2.socket_client import V2SocketClientResponse
from deepgram.transport import install_transport, restore_transport
from websockets.exceptions import ConnectionClosedOK

from tests.emulator_fixtures import DEEPGRAM_KEY, EVENT_TIMEOUT_S, SdkClients, frames, tone, utterance
from tests.proxy import self_signed_certificate
from voicebot.audio import silence
from voicebot.emulators import Emulators
from voicebot.errors import ProviderError
from voicebot.providers import deepgram_flux as flux
from voicebot.providers.base import SpeechStarted, Transcript, TurnEvent, UtteranceEnd
from voicebot.providers.deepgram_socket import (
    AiohttpSocket,
    opened,
    raw_socket,
    release_session,
    socket_connector,
    use_session,
)
from voicebot.providers.deepgram_stt import DeepgramStt, _decoded, _from_sdk
from voicebot.providers.pools import PoolUse

LISTEN_KW: dict[str, Any] = {
    "model": "nova-3",
    "encoding": "mulaw",
    "sample_rate": 8000,
    "channels": 1,
    "interim_results": True,
    "endpointing": 300,
    "utterance_end_ms": 1000,
    "vad_events": True,
}
TLS_NAME = "localhost"


async def test_every_sdk_socket_client_is_given_our_socket(sdk: SdkClients) -> None:
    """The SDK keeps its transport as ``_websocket`` in each socket client it generates (read by ``opened`` and
    ``raw_socket``): a release that renames it fails here, not in a call."""
    client = sdk.deepgram()
    sockets = [
        client.listen.v1.connect(**LISTEN_KW),
        client.listen.v2.connect(model="flux-general-en", encoding="mulaw", sample_rate=8000),
        client.speak.v1.connect(model="aura-2-thalia-en", encoding="mulaw", sample_rate=8000),
    ]
    for connect in sockets:
        async with connect as conn:
            assert isinstance(raw_socket(conn), AiohttpSocket)
            await opened(conn)


async def test_without_opened_the_first_use_makes_the_handshake(emu: Emulators, sdk: SdkClients) -> None:
    """The SDK's hook makes the transport synchronously, so a refused upgrade shows at the first send or receive;
    our providers call ``opened()`` at once, so theirs show in ``connect()`` as on the SDK's own path."""
    async with sdk.deepgram(api_key="wrong").listen.v1.connect(**LISTEN_KW) as conn:
        assert not emu.select("stt", "rejected")
        with pytest.raises(ApiError) as caught:
            await conn.send_media(b"\xff" * 160)
    assert caught.value.status_code == 401
    assert "credentials" in str(caught.value.body).lower()  # the server's reason, which the SDK's path drops


async def test_a_normal_close_ends_the_messages_and_a_later_send_raises(sdk: SdkClients) -> None:
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        await opened(conn)
        await conn.send_close_stream()
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            messages = [m async for m in conn]  # ends (no exception) at the server's 1000
        assert [type(m).__name__ for m in messages] == ["ListenV1Metadata"]
        with pytest.raises(ConnectionClosedOK):
            await conn.send_media(b"\xff" * 160)


async def test_decoded_messages_are_the_events_the_sdks_parse_gives(sdk: SdkClients) -> None:
    """Every message of a real utterance (interims, finals, SpeechStarted, UtteranceEnd, Metadata): our decode
    and the SDK's parse give the same event."""
    raw: list[str | bytes] = []
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        await opened(conn)
        socket = raw_socket(conn)
        assert socket is not None
        for frame in frames(utterance(200, 1200, 1600)):
            await conn.send_media(frame)
        await conn.send_close_stream()
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            raw = [m async for m in socket]
    ours = [_decoded(m) for m in raw]
    theirs = [_from_sdk(construct_type(type_=V1SocketClientResponse, object_=json.loads(m))) for m in raw]
    assert ours == theirs
    kinds = {type(e) for e in ours}
    assert {Transcript, SpeechStarted, UtteranceEnd} <= kinds, kinds
    assert any(isinstance(e, Transcript) and e.is_final and e.text for e in ours)
    assert ours[-1] is None  # Metadata, before the close


async def _recognised(client: AsyncDeepgramClient) -> list[Any]:
    """The bot's recogniser (``DeepgramStt``) on ``client``: every event of one utterance, to the stream's end."""
    stt = DeepgramStt(client, model="nova-3", language="en-US", endpointing_ms=300, utterance_end_ms=1000)
    events: list[Any] = []

    async def read(stream: Any) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            async for event in stream.events():
                events.append(event)

    async with stt.connect() as stream:
        for frame in frames(utterance(200, 1200, 1600)):
            await stream.send_audio(frame)
        await stream._conn.send_close_stream()
        with pytest.raises(ProviderError, match="stream ended"):  # the server's close after CloseStream
            await read(stream)
    return events


async def test_on_the_sdks_own_socket_the_recogniser_gives_the_same_events(emu: Emulators, sdk: SdkClients) -> None:
    """Should the SDK stop handing us its transport, ``socket_events`` falls back to the SDK's parse: here the
    SDK's default ``websockets`` client (the hook undone for this test only) against ours, the same utterance."""
    ours = await _recognised(sdk.deepgram())
    restore_transport()
    try:
        env = DeepgramClientEnvironment(base=emu.base_url, production=emu.ws_url, agent=emu.ws_url,
                                        agent_rest=emu.base_url)  # fmt: skip
        async with httpx.AsyncClient() as http:
            default = AsyncDeepgramClient(api_key=DEEPGRAM_KEY, environment=env, httpx_client=http)
            async with default.listen.v1.connect(**LISTEN_KW) as conn:
                assert raw_socket(conn) is None  # really the SDK's own socket
            theirs = await _recognised(default)
    finally:
        install_transport(async_factory=AiohttpSocket)
    assert ours == theirs
    assert any(isinstance(e, Transcript) and e.is_final and e.text for e in ours)


async def test_decoded_flux_messages_are_the_events_the_sdks_parse_gives(emu: Emulators, sdk: SdkClients) -> None:
    """Every message of a real Flux turn with a pause (Connected, StartOfTurn, Updates, EagerEndOfTurn,
    TurnResumed, EndOfTurn): our decode and the SDK's parse give the same event."""
    emu.stt.script.append("Book a table | for two.")
    audio = silence(100) + tone(600) + silence(400) + tone(500) + silence(800)
    async with sdk.deepgram().listen.v2.connect(
        model="flux-general-en", encoding="mulaw", sample_rate=8000, eager_eot_threshold=0.3
    ) as conn:
        await opened(conn)
        socket = raw_socket(conn)
        assert socket is not None
        chunks = frames(audio)
        for i in range(0, len(chunks), 4):
            await conn.send_media(b"".join(chunks[i : i + 4]))
        await conn.send_close_stream()
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            raw = [m async for m in socket]
    ours = [flux._decoded(m) for m in raw]
    theirs = [flux._from_sdk(construct_type(type_=V2SocketClientResponse, object_=json.loads(m))) for m in raw]
    assert ours == theirs
    kinds = [e.event for e in ours if isinstance(e, TurnEvent)]
    assert {"start", "update", "eager_end", "resumed", "end"} <= set(kinds), kinds
    assert ours[0] is None  # Connected


@pytest.mark.parametrize(
    "message",
    ["not json", "[1, 2]", '{"type": "Results"}', '{"type": "Results", "channel": {"alternatives": [{}]}}',
     '{"type": "SpeechStarted", "timestamp": "soon"}', '{"no": "type"}'],
)  # fmt: skip
def test_a_message_of_another_shape_is_skipped_and_logged(message: str) -> None:
    with structlog.testing.capture_logs() as logs:
        assert _decoded(message) is None
    assert [entry["event"] for entry in logs] == ["stt_bad_message"]


@pytest.mark.parametrize(
    "message", ["not json", "[1]", '{"type": "TurnInfo", "event": "EndOfTurn"}', '{"type": "TurnInfo"}']
)
def test_a_flux_message_of_another_shape_is_skipped_and_logged(message: str) -> None:
    with structlog.testing.capture_logs() as logs:
        assert flux._decoded(message) is None
    assert [entry["event"] for entry in logs] == ["stt_bad_message"]


def test_a_flux_error_is_logged_not_an_event() -> None:
    with structlog.testing.capture_logs() as logs:
        assert flux._decoded('{"type": "Error", "code": "X", "description": "gone"}') is None
    assert (logs[0]["event"], logs[0]["code"], logs[0]["description"]) == ("stt_error_message", "X", "gone")


def test_an_error_message_is_logged_not_an_event() -> None:
    with structlog.testing.capture_logs() as logs:
        assert _decoded('{"type": "Error", "description": "bad thing", "message": "x"}') is None
    assert logs[0]["event"] == "stt_error_message"
    assert logs[0]["description"] == "bad thing"


@asynccontextmanager
async def tls_listen_server(cert_dir: Path) -> AsyncIterator[tuple[int, list[str | None], ssl.SSLContext]]:
    """A ``wss://`` endpoint for ``/v1/listen`` that records each upgrade's ``Sec-WebSocket-Extensions`` header;
    yields its port, the headers, and a client context that trusts its certificate."""
    cert = self_signed_certificate(cert_dir, TLS_NAME)
    offered: list[str | None] = []

    async def listen(request: web.Request) -> web.WebSocketResponse:
        offered.append(request.headers.get("Sec-WebSocket-Extensions"))
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, cert_dir / "privkey.pem")
    app = web.Application()
    app.router.add_get("/v1/listen", listen)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, offered, ssl.create_default_context(cafile=str(cert))
    finally:
        await runner.cleanup()


async def test_sockets_share_the_sessions_tls_context_and_pool_and_offer_no_compression(tmp_path: Path) -> None:
    """The SDK's own path builds a new default SSL context (the whole trust store read again: ~24 ms of CPU)
    for every ``wss://`` socket and offers permessage-deflate; ours use the session's connector, counted."""
    async with tls_listen_server(tmp_path) as (port, offered, context):
        use = PoolUse("deepgram_ws", 4)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=use.limit, force_close=True))
        use_session(session, use)
        try:
            env = DeepgramClientEnvironment(
                base=f"https://{TLS_NAME}:{port}", production=f"wss://{TLS_NAME}:{port}",
                agent=f"wss://{TLS_NAME}:{port}", agent_rest=f"https://{TLS_NAME}:{port}",
            )  # fmt: skip
            client = AsyncDeepgramClient(api_key="k", environment=env, transport_factory=AiohttpSocket)
            async with client.listen.v1.connect(**LISTEN_KW) as one, client.listen.v1.connect(**LISTEN_KW) as two:
                await opened(one)
                await opened(two)
                assert use.in_use == 2
                for conn in (one, two):
                    socket = raw_socket(conn)
                    assert socket is not None and socket._ws is not None
                    assert socket._ws.get_extra_info("sslcontext") is context
                    await conn.send_media(b"\xff" * 480)
            assert use.in_use == 0
            assert (use.peak, use.waited) == (2, 0)
        finally:
            release_session(session)
            await session.close()
    assert offered == [None, None]


async def test_a_socket_without_a_bound_session_opens_and_closes_its_own(emu: Emulators, sdk: SdkClients) -> None:
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        await opened(conn)
        socket = raw_socket(conn)
        assert socket is not None and socket._own_session is not None
        own = socket._own_session
        assert not own.closed
    assert own.closed


async def test_an_unreachable_recogniser_is_a_transient_provider_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    env = DeepgramClientEnvironment(base=url, production=url, agent=url, agent_rest=url)
    client = AsyncDeepgramClient(api_key="k", environment=env, transport_factory=AiohttpSocket)
    stt = DeepgramStt(client, model="nova-3", language="en-US", endpointing_ms=300, utterance_end_ms=1000)
    with pytest.raises(ProviderError) as caught:
        async with stt.connect():
            pass
    assert caught.value.transient
    assert "ConnectionError" in str(caught.value)


async def test_the_socket_pool_connector_keeps_no_connection_alive() -> None:
    connector = socket_connector(10)
    try:
        assert (connector.limit, connector.limit_per_host, connector.force_close) == (10, 10, True)
    finally:
        await connector.close()
