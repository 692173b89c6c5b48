"""The provider clients' connection pools: an explicit limit each, and a count of what is in use and waiting.

Every HTTP client keeps one pool per process: httpx for Deepgram TTS, httpx2 inside the openai SDK, aiohttp for
Twilio REST. A request that finds all of a pool's connections busy waits inside our process, and that wait is
charged to the provider's first-byte deadline: a segment skipped or an apology played for no fault of the provider.
So each limit is sized (in :mod:`voicebot.call.services`) from the call limit so that every call at its busiest has a
connection, and the counts here are exported in ``/metrics`` so that a wait shows instead of hiding in a timeout.

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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

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


def httpx_transport(use: PoolUse, keepalive_s: float) -> CountedTransport:
    """An httpx transport (Deepgram SDK's client) limited to ``use.limit`` connections, all kept alive."""
    limits = httpx.Limits(max_connections=use.limit, max_keepalive_connections=use.limit, keepalive_expiry=keepalive_s)
    return CountedTransport(httpx.AsyncHTTPTransport(limits=limits), use)


def httpx2_transport(use: PoolUse, keepalive_s: float) -> CountedTransport:
    """An httpx2 transport (the openai SDK's client) limited to ``use.limit`` connections, all kept alive."""
    limits = httpx2.Limits(max_connections=use.limit, max_keepalive_connections=use.limit, keepalive_expiry=keepalive_s)
    return CountedTransport(httpx2.AsyncHTTPTransport(limits=limits), use)


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
