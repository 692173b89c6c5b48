"""OpenAI streaming chat completions through the ``openai`` SDK, as a :class:`LanguageModel`.

Three costs of the SDK are kept off the caller's turn (measured in BENCHMARKS.md, "No SDK tax"):

- per request, ``chat.completions.create()`` walks every message and tool through its TypedDict transform (about
  1 ms for a short history, growing with it); our messages are plain JSON already, so the request goes through the
  SDK's documented generic ``client.post()`` with the body serialised by orjson (``content``): the SDK still adds
  the auth and default headers, applies the timeouts and retries, and raises its status errors;
- per streamed chunk (one per token), ``stream=True`` builds a pydantic ``ChatCompletionChunk``: 65 us of CPU each
  on this machine, against 0.7 us for ``orjson.loads`` of the same line. ``client.post(cast_to=httpx2.Response,
  stream=True)`` hands back the raw response instead, and the ``data:`` lines of the event stream (PROVIDERS.md §3)
  are decoded here with the SDK's rules (a ``data: {"error": ...}`` line is an error; after ``[DONE]`` the body is
  still read to its end, so the connection goes back to the pool);
- once per process, the first streamed request opens the connection and builds the SDK's lazy request path (tens
  of ms): :meth:`OpenAiChat.warm_up` does that at startup with a one-token request, and :meth:`OpenAiChat.keep_warm`
  keeps the connection from expiring between calls with a free ``GET /models``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import orjson

from voicebot.errors import ProviderError
from voicebot.providers.base import LlmEvent, Message, TextDelta, TextDone, ToolCall

PROVIDER = "openai"
CHAT_PATH = "/chat/completions"
JSON: Any = {"headers": {"Content-Type": "application/json"}}
"""Request options for a body we serialise ourselves (``content``)."""
WARMUP_USER = "voicebot-warmup"
"""The ``user`` of the startup request, so a provider's logs (and our emulator) can tell it from a caller's turn."""


def _chunk(data: str) -> dict[str, Any]:
    """One ``data:`` payload; a malformed line or an error event (``{"error": {...}}``, sent mid-stream by the
    provider) is a :class:`ProviderError`, as the SDK's own stream raises ``APIError`` for it."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProviderError(PROVIDER, "malformed stream event", transient=True) from None
    if not isinstance(chunk, dict):
        raise ProviderError(PROVIDER, "malformed stream event", transient=True)
    if "error" in chunk:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        kind = str(error.get("type") or error.get("code") or "error")[:40]
        raise ProviderError(PROVIDER, f"stream error: {kind}", transient=kind in ("server_error", "rate_limit_error"))
    return chunk


def _translate(exc: openai.OpenAIError) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return ProviderError(
            PROVIDER, f"HTTP {status}", transient=status >= 500 or status in (408, 409, 429), status=status
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(PROVIDER, "timed out", transient=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(PROVIDER, "connection failed", transient=True)
    return ProviderError(PROVIDER, type(exc).__name__, transient=False)


class _ToolCallBuffer:
    """Reassembles streamed tool-call deltas: the first carries id and name, later ones argument fragments."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: dict[str, Any]) -> None:
        call = self.calls.setdefault(delta.get("index", 0), {"id": "", "name": "", "arguments": []})
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function")
        if function:
            if function.get("name"):
                call["name"] = function["name"]
            if function.get("arguments"):
                call["arguments"].append(function["arguments"])

    def complete(self) -> list[ToolCall]:
        out = []
        for index in sorted(self.calls):
            call = self.calls[index]
            raw = "".join(call["arguments"]) or "{}"
            try:
                arguments = orjson.loads(raw)
            except orjson.JSONDecodeError:
                arguments = {"_unparsed": raw[:500]}
            out.append(
                ToolCall(id=call["id"], name=call["name"], arguments=arguments if isinstance(arguments, dict) else {})
            )
        return out


class OpenAiChat:
    """Streams chat completions; any OpenAI-compatible base URL works."""

    def __init__(self, client: openai.AsyncOpenAI, *, model: str, temperature: float, max_tokens: int) -> None:
        self._client = client
        self._model = model
        self._temperature = temperature
        self._max_tokens = max_tokens

    @asynccontextmanager
    async def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[AsyncIterator[LlmEvent]]:
        body: dict[str, Any] = {
            "messages": list(messages),
            "stream_options": {"include_usage": True},
            "temperature": self._temperature,
            "max_completion_tokens": self._max_tokens,
        }
        if tools:
            body |= {"tools": list(tools), "tool_choice": "auto"}
        async with self._open(body) as response:
            yield self._events(response)

    @asynccontextmanager
    async def _open(self, body: dict[str, Any], client: openai.AsyncOpenAI | None = None) -> AsyncIterator[Any]:
        """The streamed response, its status checked by the SDK; closed on the way out (on barge-in the provider
        sees the stream end at once)."""
        content = orjson.dumps({"model": self._model, "stream": True, **body})
        try:
            response = await (client or self._client).post(
                CHAT_PATH, cast_to=httpx2.Response, content=content, options=JSON, stream=True
            )
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        try:
            yield response
        finally:
            await response.aclose()

    async def warm_up(self) -> None:
        """Open the connection and build the SDK's lazy paths with a one-token streamed request (ProviderError if
        the provider cannot be reached)."""
        body = {
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_completion_tokens": 1,
            "user": WARMUP_USER,
            "stream_options": {"include_usage": True},
        }
        # No retry: an unreachable provider must not hold the server's startup back.
        async with self._open(body, self._client.with_options(max_retries=0)) as response:
            async for _ in self._events(response):
                pass

    async def keep_warm(self) -> None:
        """A free request on the pooled connection, so it does not expire between calls."""
        try:
            await self._client.models.list()
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc

    async def _events(self, response: Any) -> AsyncIterator[LlmEvent]:
        tools = _ToolCallBuffer()
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, and event/id fields (chat streams send none)
                data = line[5:].lstrip()
                if data == "[DONE]":
                    continue  # read on to the end of the body, so the connection is reused
                chunk = _chunk(data)
                choices = chunk.get("choices")
                if not choices:
                    continue  # the usage-only chunk at the end
                choice = choices[0]
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield TextDelta(delta["content"])
                for call in delta.get("tool_calls") or ():
                    tools.add(call)
                if choice.get("finish_reason") is not None:
                    yield TextDone()
        except httpx2.HTTPError as exc:  # the body broke off or stalled (the transport maps aiohttp's errors)
            raise ProviderError(PROVIDER, f"stream broken: {type(exc).__name__}", transient=True) from exc
        for call in tools.complete():
            yield call
