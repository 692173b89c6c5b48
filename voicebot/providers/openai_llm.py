"""OpenAI streaming chat completions through the ``openai`` SDK, as a :class:`LanguageModel`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import openai
import orjson

from voicebot.errors import ProviderError
from voicebot.providers.base import LlmEvent, Message, TextDelta, ToolCall

PROVIDER = "openai"


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
        params: dict[str, Any] = {
            "model": self._model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self._temperature,
            "max_completion_tokens": self._max_tokens,
        }
        if tools:
            params |= {"tools": list(tools), "tool_choice": "auto"}
        create: Any = self._client.chat.completions.create  # messages are plain dicts, not the SDK's TypedDicts
        try:
            stream = await create(**params)
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        try:
            yield self._events(stream)
        finally:
            # Closes the HTTP response: on barge-in the server sees the stream end at once.
            await stream.close()

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
