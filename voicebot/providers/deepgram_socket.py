"""deepgram-sdk's WebSockets on aiohttp: the SDK's documented ``transport_factory`` hook, installed for every client.

deepgram-sdk 7.x opens its sockets (``listen.v1`` live STT, ``listen.v2`` Flux, ``speak.v1`` Aura) with the
``websockets`` library's legacy client. On this path, per call, that costs (BENCHMARKS.md, "Round 5"):

- a new default SSL context for every ``wss://`` connection (uvloop builds one when it is given ``ssl=True``):
  ~24 ms of CPU on this machine, during which the event loop serves no other call;
- permessage-deflate offered on every socket: if the server accepts, every 60 ms audio message is deflated
  (mu-law audio does not compress) and every result inflated;
- per message sent, a frame built in Python with a mask from ``os.urandom`` (a system call), and per message received
  a frame parsed in Python and handed over through the legacy protocol's queue.

:class:`AiohttpSocket` is the same socket on aiohttp's client WebSocket, which the rest of the process already uses:
one connector (its SSL context built once, a limit sized from the call limit and counted in ``/metrics``), no
compression, frames read by aiohttp's compiled reader. The SDK still builds the URL, the query and the headers and
gives us its socket client; only the bytes move differently.

What the SDK's code and ours expect of a socket is kept: a refused upgrade raises the SDK's ``ApiError`` with the
status (and, unlike the ``websockets`` path, the server's own reason in its body); a close frame with a code other
than 1000/1001 raises ``websockets.exceptions.ConnectionClosedError`` with the code and reason received, a lost
connection the same without them (``rcvd`` is None), and a normal close ends the iteration; a send after the close
raises ``ConnectionClosedError``. ``tests/test_emulator_stt.py``, ``test_emulator_flux.py`` and
``tests/test_deepgram_socket.py`` pin these through the real SDK against the emulators.

The hook is process-wide (the SDK patches its generated modules, and allows one factory per process), so it is
installed when this module is imported, before any client exists: every Deepgram socket in the process, ours and
the tests', goes the same way.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from deepgram.core.api_error import ApiError
from deepgram.transport import install_transport
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from voicebot.providers.pools import PoolUse

OPEN_TIMEOUT_S = 10.0
"""The handshake's bound (``websockets``' ``open_timeout``)."""
CLOSE_TIMEOUT_S = 5.0
"""How long a close waits for the server's close frame."""
HEARTBEAT_S = 20.0
"""A ping this often, and the socket fails if its pong is late: a dead connection is found (``websockets`` pings
every 20 s too)."""
MAX_MESSAGE_BYTES = 1 << 20
"""The largest message accepted (``websockets``' ``max_size``); Deepgram's results are a few kB."""
NORMAL_CLOSE = (1000, 1001)
"""Close codes that end the iteration instead of raising (``websockets``' ``ConnectionClosedOK``)."""


class _Binding:
    """The session (and its pool count) that the sockets opened on one event loop share."""

    def __init__(self, session: aiohttp.ClientSession, use: PoolUse | None) -> None:
        self.session = session
        self.use = use


_bindings: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Binding] = weakref.WeakKeyDictionary()


def use_session(session: aiohttp.ClientSession, use: PoolUse | None = None) -> None:
    """Open this event loop's Deepgram sockets on ``session`` (counted in ``use``). Without it, each socket opens
    a session of its own and closes it with the socket."""
    _bindings[asyncio.get_running_loop()] = _Binding(session, use)


def release_session(session: aiohttp.ClientSession) -> None:
    """Stop handing out ``session`` (before it is closed)."""
    loop = asyncio.get_running_loop()
    binding = _bindings.get(loop)
    if binding is not None and binding.session is session:
        del _bindings[loop]


def socket_connector(limit: int) -> aiohttp.TCPConnector:
    """A connector for the sockets: ``limit`` connections, none kept alive (a socket's connection ends with it)."""
    return aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=True)


class AiohttpSocket:
    """One Deepgram WebSocket for the SDK's socket clients (``deepgram.transport_interface.AsyncTransport``).

    The SDK makes it synchronously (``factory(url, headers)``) when its ``connect()`` is entered; the handshake is
    :meth:`open`, which our providers await at once (:func:`opened`), and which the first send or receive awaits
    otherwise."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._url = url
        self._headers = dict(headers)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._own_session: aiohttp.ClientSession | None = None
        self._use: PoolUse | None = None
        self._closed = False
        self._rcvd: Close | None = None

    async def open(self) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is not None:
            return ws
        async with self._lock:
            if self._ws is None:
                if self._closed:
                    raise ConnectionClosedError(None, None)
                self._ws = await self._connect()
            return self._ws

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        binding = _bindings.get(asyncio.get_running_loop())
        if binding is not None and not binding.session.closed:
            session, use = binding.session, binding.use
        else:
            session = self._own_session = aiohttp.ClientSession(connector=socket_connector(1))
            use = None
        if use is not None:
            use.enter()
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                ws = await session.ws_connect(
                    self._url,
                    headers=self._headers,
                    compress=0,
                    autoping=True,
                    heartbeat=HEARTBEAT_S,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                )
        except aiohttp.WSServerHandshakeError as exc:
            await self._release()
            # The SDK's own path keeps only the status; Deepgram's reason (its dg-error header) is kept here.
            reason = (exc.headers.get("dg-error") if exc.headers else None) or exc.message
            raise ApiError(status_code=exc.status, headers={}, body=reason) from None
        except aiohttp.ClientError as exc:  # refused, reset, DNS, TLS, a bad URL: an OSError, as our providers expect
            await self._release()
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            await self._release()
            raise
        self._use = use
        return ws

    async def send(self, data: Any) -> None:
        ws = self._ws or await self.open()
        if ws.closed:
            raise self._ended(None)
        try:
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)
        except ConnectionResetError:  # aiohttp: the transport is closing
            raise self._ended(None) from None

    async def recv(self) -> str | bytes:
        ws = self._ws or await self.open()
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            data: str | bytes = msg.data
            return data
        raise self._ended(msg)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedOK:
                return

    def _ended(self, msg: aiohttp.WSMessage | None) -> ConnectionClosed:
        """What ``websockets`` raises once the socket is over: OK after a normal close frame (or our own close),
        an error with the code received otherwise, and without one (``rcvd`` None) when the connection was lost.
        (aiohttp reports a connection lost without a close frame as a close with 1000.)"""
        if msg is not None and msg.type is WSMsgType.CLOSE:
            self._rcvd = Close(int(msg.data), str(msg.extra or ""))
        rcvd = self._rcvd
        if rcvd is None:
            return ConnectionClosedOK(None, Close(1000, "")) if self._closed else ConnectionClosedError(None, None)
        if rcvd.code in NORMAL_CLOSE:
            return ConnectionClosedOK(rcvd, None)
        return ConnectionClosedError(rcvd, None)

    async def close(self) -> None:
        self._closed = True
        try:
            if self._ws is not None:
                await self._ws.close()
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._use is not None:
            self._use.exit()
            self._use = None
        if self._own_session is not None:
            session, self._own_session = self._own_session, None
            await session.close()


async def opened(conn: Any) -> None:
    """Open the socket behind an SDK socket client now, so a refused upgrade is raised by ``connect()``, as on the
    SDK's own path. (The SDK keeps the transport as ``_websocket`` in every socket client it generates;
    ``tests/test_deepgram_socket.py`` pins that.)"""
    socket = getattr(conn, "_websocket", None)
    if isinstance(socket, AiohttpSocket):
        await socket.open()


def raw_socket(conn: Any) -> AiohttpSocket | None:
    """The socket behind an SDK socket client, to read its messages without the SDK's per-message model building."""
    socket = getattr(conn, "_websocket", None)
    return socket if isinstance(socket, AiohttpSocket) else None


install_transport(async_factory=AiohttpSocket)
