"""The held LLM stream on its own: events held until adoption, then replayed and followed live; a failure kept for
the adopting turn; cancel closes the stream; a second round of the adopting turn goes to the real model. The
model here is an in-memory LanguageModel fed by the test (the end-to-end tests use the real SDK: test_preemptive)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from voicebot.call.speculation import AdoptedModel, Speculation
from voicebot.errors import ProviderError
from voicebot.providers.base import LlmEvent, Message, TextDelta, ToolCall

WAIT_S = 5.0


class FedModel:
    """A LanguageModel whose stream yields what the test puts in its queue (None ends it, an exception raises)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[LlmEvent | BaseException | None] = asyncio.Queue()
        self.opened: list[list[Message]] = []
        self.closed = asyncio.Event()

    @asynccontextmanager
    async def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[AsyncIterator[LlmEvent]]:
        self.opened.append(list(messages))
        try:
            yield self._events()
        finally:
            self.closed.set()

    async def _events(self) -> AsyncIterator[LlmEvent]:
        while (item := await self.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item


def user(text: str) -> list[Message]:
    return [{"role": "system", "content": "s"}, {"role": "user", "content": text}]


async def test_held_events_are_replayed_then_followed_live_and_a_later_round_goes_to_the_model() -> None:
    model = FedModel()
    spec = Speculation(model, user("Book a table."), [], "Book a table.")
    spec.task = asyncio.create_task(spec.run())
    call = ToolCall("c1", "lookup", {})
    for item in (TextDelta("Sure"), TextDelta(", one"), call):
        model.queue.put_nowait(item)
    await asyncio.sleep(0)
    assert spec.matches(user("book a table"))  # normalised words
    assert not spec.matches(user("Book a table for two."))
    adopted = AdoptedModel(spec, model)
    seen: list[LlmEvent] = []
    async with asyncio.timeout(WAIT_S), adopted.stream([], []) as events:
        async for event in events:
            seen.append(event)
            if event is call:
                model.queue.put_nowait(TextDelta(" moment."))
                model.queue.put_nowait(None)
    assert seen == [TextDelta("Sure"), TextDelta(", one"), call, TextDelta(" moment.")]
    assert spec.first_token is not None
    async with asyncio.timeout(WAIT_S), adopted.stream(user("after the tool"), []) as events:
        model.queue.put_nowait(None)
        assert [e async for e in events] == []
    assert model.opened[-1] == user("after the tool")
    await spec.task


async def test_a_provider_failure_is_raised_to_the_adopting_turn_and_cancel_closes_the_stream() -> None:
    model = FedModel()
    spec = Speculation(model, user("Hi."), [], "Hi.")
    spec.task = asyncio.create_task(spec.run())
    model.queue.put_nowait(TextDelta("Hel"))
    model.queue.put_nowait(ProviderError("openai", "HTTP 500", transient=True, status=500))
    await spec.task  # the failure is kept, not raised into the call's TaskGroup
    seen: list[LlmEvent] = []

    async def consume() -> None:
        async with AdoptedModel(spec, model).stream([], []) as events:
            async for event in events:
                seen.append(event)

    with pytest.raises(ProviderError, match="HTTP 500"):
        await consume()
    assert seen == [TextDelta("Hel")]
    dropped = Speculation(model, user("Hello"), [], "Hello")
    model.closed.clear()
    dropped.task = asyncio.create_task(dropped.run())
    await asyncio.sleep(0)
    dropped.cancel()
    async with asyncio.timeout(WAIT_S):
        await model.closed.wait()
    await asyncio.gather(dropped.task, return_exceptions=True)
    assert dropped.task.cancelled()
