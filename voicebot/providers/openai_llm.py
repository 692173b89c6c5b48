"""OpenAI streaming chat completions through the ``openai`` SDK, as a :class:`LanguageModel`.

Two costs of the SDK are kept off the caller's turn (measured in BENCHMARKS.md, "No SDK tax"):

- per request, ``create()`` walks every message and tool through its TypedDict transform (about 1 ms for a short
  history and growing with it, under load several); our messages are plain JSON already, so the body goes in
  ``extra_body``, which the SDK sends as is (``messages=[]`` is only the required placeholder it replaces);
- once per process, the first streamed request builds the SDK's pydantic models and opens the connection (tens of
  ms): :meth:`OpenAiChat.warm_up` does that at startup with a one-token request, and :meth:`OpenAiChat.keep_warm`
  keeps the connection from expiring between calls with a free ``GET /models``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import openai
import orjson
from openai.types.chat import ChatCompletionChunk

from voicebot.errors import ProviderError
from voicebot.providers.base import LlmEvent, Message, TextDelta, ToolCall

PROVIDER = "openai"
WARMUP_USER = "voicebot-warmup"
"""The ``user`` of the startup request, so a provider's logs (and our emulator) can tell it from a caller's turn."""
_SAMPLE_CHUNK = {
    "id": "warmup",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "warmup",
    "choices": [
        {
            "index": 0,
            "delta": {
                "role": "assistant",
                "content": "Hi",
                "tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}],
            },
            "finish_reason": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


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

    def add(self, delta: Any) -> None:
        call = self.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": []})
        if delta.id:
            call["id"] = delta.id
        if delta.function is not None:
            if delta.function.name:
                call["name"] = delta.function.name
            if delta.function.arguments:
                call["arguments"].append(delta.function.arguments)

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
        stream = await self._create(body)
        try:
            yield self._events(stream)
        finally:
            # Closes the HTTP response: on barge-in the server sees the stream end at once.
            await stream.close()

    async def _create(self, body: dict[str, Any], client: openai.AsyncOpenAI | None = None) -> Any:
        try:
            return await (client or self._client).chat.completions.create(
                model=self._model, messages=[], stream=True, extra_body=body
            )
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc

    async def warm_up(self) -> None:
        """Open the connection and build the SDK's lazy paths with a one-token streamed request (ProviderError if
        the provider cannot be reached)."""
        ChatCompletionChunk.model_validate(_SAMPLE_CHUNK)  # the tool-call delta models too
        body = {
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_completion_tokens": 1,
            "user": WARMUP_USER,
            "stream_options": {"include_usage": True},
        }
        # No retry: an unreachable provider must not hold the server's startup back.
        stream = await self._create(body, self._client.with_options(max_retries=0))
        try:
            async for _ in self._events(stream):
                pass
        finally:
            await stream.close()

    async def keep_warm(self) -> None:
        """A free request on the pooled connection, so it does not expire between calls."""
        try:
            await self._client.models.list()
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc

    async def _events(self, stream: Any) -> AsyncIterator[LlmEvent]:
        tools = _ToolCallBuffer()
        try:
            async for chunk in stream:
                if not chunk.choices:
                    continue  # the usage-only chunk at the end
                delta = chunk.choices[0].delta
                if delta.content:
                    yield TextDelta(delta.content)
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        tools.add(call)
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        for call in tools.complete():
            yield call
