"""A real tool service for the tests: an aiohttp server on loopback that records every request it gets and
answers as each test scripts it (status, body, delay, or hold until released)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

Answer = Callable[["ToolRequest"], Awaitable[web.StreamResponse]]


@dataclass
class ToolRequest:
    path: str
    method: str
    headers: dict[str, str]
    query: dict[str, str]
    raw_query: str
    body: bytes
    received: float
    answered: float | None = None

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ToolService:
    """``answers[path]`` decides the answer; the default echoes the arguments as JSON."""

    base_url: str = ""
    requests: list[ToolRequest] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str) -> str:
        return self.base_url + path

    def on(self, path: str) -> list[ToolRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_for_requests(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = ToolRequest(
            request.path, request.method, dict(request.headers), dict(request.query), request.rel_url.raw_query_string,
            await request.read(),
            time.monotonic(),
        )  # fmt: skip
        self.requests.append(record)
        async with self.arrived:
            self.arrived.notify_all()
        answer = self.answers.get(request.path, echo)
        try:
            return await answer(record)
        finally:
            record.answered = time.monotonic()


async def echo(request: ToolRequest) -> web.Response:
    arguments = request.json()["arguments"] if request.body else request.query
    return web.json_response({"ok": True, "arguments": arguments})


def fixed(status: int = 200, text: str = "", *, delay_s: float = 0.0, content_type: str = "text/plain") -> Answer:
    async def answer(_: ToolRequest) -> web.Response:
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(status=status, text=text, content_type=content_type)

    return answer


def held(release: asyncio.Event, text: str, timeout_s: float = 20.0) -> Answer:
    """Answer ``text`` once the test sets ``release``."""

    async def answer(_: ToolRequest) -> web.Response:
        async with asyncio.timeout(timeout_s):
            await release.wait()
        return web.Response(text=text)

    return answer


@asynccontextmanager
async def running_tool_service() -> AsyncIterator[ToolService]:
    service = ToolService()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", service.handle)
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    service.base_url = str(server.make_url("")).rstrip("/")
    try:
        yield service
    finally:
        await server.close()
