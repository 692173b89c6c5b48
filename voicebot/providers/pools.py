"""The provider clients' connection pools: an explicit limit each, and a count of what is in use and waiting.

Every HTTP client keeps one pool per process, and all of them are aiohttp's: Twilio REST directly, and the
Deepgram and openai SDKs through ``httpx-aiohttp`` (their httpx/httpx2 clients on an aiohttp transport: a streamed
Aura sentence costs the client 3.7x less CPU than on httpx's own transport, a streamed reply 1.8x less;
``scripts/bench_http_transport.py``). A request that finds all of a pool's connections busy waits inside our
process, and that wait is charged to the provider's first-byte deadline: a segment skipped or an apology played for
no fault of the provider. So each limit is sized (in :mod:`voicebot.call.services`) from the call limit so that every
call at its busiest has a connection, and the counts here are exported in ``/metrics`` so that a wait shows instead
of hiding in a timeout.

The counting does not read the pools' private state: a request is *in flight* from the moment it is handed to the
pool until its response body is closed; an HTTP/1.1 pool serves one request per connection and queues the rest,
so a request that finds ``limit`` others in flight waits. (The Deepgram recogniser needs no pool: each call opens
its own WebSocket.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import httpx2
import httpx_aiohttp
import httpx_aiohttp.httpx2


@dataclass
class PoolUse:
    """One pool's limit and live counts; ``waited`` counts every request that had to queue."""

    name: str
    limit: int
    in_flight: int = 0
    waited: int = 0
    peak: int = 0

    @property
    def in_use(self) -> int:
        return min(self.in_flight, self.limit)

    @property
    def waiting(self) -> int:
        return max(0, self.in_flight - self.limit)

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            self.waited += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def exit(self) -> None:
        self.in_flight -= 1


class _Released(httpx.AsyncByteStream, httpx2.AsyncByteStream):
    """A response body that gives its pool slot back when it is closed (read to the end or aborted); the clients
    check that a transport's body is their ``AsyncByteStream``."""

    def __init__(self, stream: Any, use: PoolUse) -> None:
        self._stream = stream
        self._use: PoolUse | None = use

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._stream)  # the inner iterator itself: no generator of ours to step through per chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._use is not None:
                self._use.exit()
                self._use = None


class CountedTransport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
    """Wraps an httpx or httpx2 transport and keeps its :class:`PoolUse` current (the two share this API)."""

    def __init__(self, inner: Any, use: PoolUse) -> None:
        self._inner = inner
        self.use = use

    async def handle_async_request(self, request: Any) -> Any:
        self.use.enter()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self.use.exit()
            raise
        response.stream = _Released(response.stream, self.use)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _connector(use: PoolUse, keepalive_s: float) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=use.limit, limit_per_host=use.limit, keepalive_timeout=keepalive_s)


def aiohttp_httpx_transport(use: PoolUse, keepalive_s: float) -> CountedTransport:
    """The Deepgram SDK's httpx client on aiohttp (``httpx-aiohttp``), ``use.limit`` connections, all kept alive."""
    session = aiohttp.ClientSession(connector=_connector(use, keepalive_s))
    return CountedTransport(httpx_aiohttp.AiohttpTransport(client=session), use)


def aiohttp_httpx2_transport(use: PoolUse, keepalive_s: float) -> CountedTransport:
    """The openai SDK's httpx2 client on aiohttp (the transport ``openai.DefaultAioHttpClient`` uses)."""
    session = aiohttp.ClientSession(connector=_connector(use, keepalive_s))
    return CountedTransport(httpx_aiohttp.httpx2.AiohttpTransport(client=session), use)


def aiohttp_session(use: PoolUse) -> aiohttp.ClientSession:
    """An aiohttp session whose connector allows ``use.limit`` connections, counted by request trace signals."""

    async def started(_s: aiohttp.ClientSession, _ctx: SimpleNamespace, _p: Any) -> None:
        use.enter()

    async def ended(_s: aiohttp.ClientSession, _ctx: SimpleNamespace, _p: Any) -> None:
        use.exit()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(ended)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=use.limit), trace_configs=[trace])
