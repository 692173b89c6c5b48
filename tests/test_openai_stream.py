"""The chat stream read line by line (not through the SDK's per-chunk models): what the real openai client receives
from a loopback server is turned into the same events, errors stay ProviderErrors, and the connection is reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from voicebot.errors import ProviderError
from voicebot.providers.base import LlmEvent, TextDelta, TextDone, ToolCall
from voicebot.providers.openai_llm import OpenAiChat
from voicebot.providers.pools import PoolUse, aiohttp_httpx2_transport

Body = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(**fields: Any) -> bytes:
    return event({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": fields}]})


REPLY = [
    delta(role="assistant", content=""),
    delta(content="Sure, "),
    delta(content="one moment."),
    delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": ""}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"day": '}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '"friday"}'}}]),
    event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}),
    b"data: [DONE]\n\n",
]


class Server:
    def __init__(self, body: Body) -> None:
        self.body = body
        self.peers: list[object] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await self.body(request, resp)
        return resp


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Body], Awaitable[tuple[Server, OpenAiChat]]]]:
    made: list[tuple[TestServer, openai.AsyncOpenAI]] = []

    async def start(body: Body) -> tuple[Server, OpenAiChat]:
        server = Server(body)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server.chat)
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        http = openai.DefaultAsyncHttpxClient(transport=aiohttp_httpx2_transport(PoolUse("llm", 4), 30.0))
        client = openai.AsyncOpenAI(
            api_key="k", base_url=str(test_server.make_url("/v1")), http_client=http, max_retries=0
        )
        made.append((test_server, client))
        return server, OpenAiChat(client, model="m", temperature=0.5, max_tokens=50)

    yield start
    for test_server, client in made:
        await client.close()
        await test_server.close()


async def events_of(llm: OpenAiChat) -> list[LlmEvent]:
    async with llm.stream([{"role": "user", "content": "Hi"}], ()) as stream:
        return [e async for e in stream]


async def test_text_tool_calls_and_the_end_of_text_as_events_on_one_kept_connection(serve: Any) -> None:
    async def body(_: web.Request, resp: web.StreamResponse) -> None:
        for line in REPLY:
            await resp.write(line)
        await asyncio.sleep(0.05)  # the body ends a moment after [DONE], as a real server's may

    server, llm = await serve(body)
    expected = [
        TextDelta("Sure, "),
        TextDelta("one moment."),
        TextDone(),
        ToolCall(id="call_1", name="look", arguments={"day": "friday"}),
    ]
    assert await events_of(llm) == expected
    assert await events_of(llm) == expected
    assert len(server.peers) == 2 and server.peers[0] == server.peers[1]  # read to the end: the connection is reused


async def test_an_error_event_mid_stream_is_a_provider_error_after_what_came_before(serve: Any) -> None:
    async def body(_: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(delta(content="Hello"))
        await resp.write(event({"error": {"message": "The server had an error", "type": "server_error"}}))

    _, llm = await serve(body)
    seen: list[LlmEvent] = []

    async def consume() -> None:
        async with llm.stream([{"role": "user", "content": "Hi"}], ()) as stream:
            async for e in stream:
                seen.append(e)

    with pytest.raises(ProviderError, match="stream error: server_error") as info:
        await consume()
    assert seen == [TextDelta("Hello")]
    assert info.value.transient


async def test_a_malformed_line_and_a_body_cut_short_are_provider_errors(serve: Any) -> None:
    async def malformed(_: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(b"data: {not json\n\n")

    _, llm = await serve(malformed)
    with pytest.raises(ProviderError, match="malformed stream event"):
        await events_of(llm)

    async def cut(request: web.Request, resp: web.StreamResponse) -> None:
        await resp.write(delta(content="Hel"))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the connection drops in the middle of the chunked body

    _, llm = await serve(cut)
    with pytest.raises(ProviderError, match="stream broken") as info:
        await events_of(llm)
    assert info.value.transient
