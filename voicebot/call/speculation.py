"""A speculative reply: an LLM stream that runs before the caller's turn is confirmed, with its output held.

DESIGN.md "A speculative turn": nothing of a held reply reaches TTS, the socket, the history or a tool until the
turn-taking machine adopts it (same words, end of turn confirmed); a dropped one is aborted at once, which closes
its HTTP stream. Adoption costs nothing: :class:`AdoptedModel` is a :class:`LanguageModel` whose one stream replays
the held events and then follows the live ones, so the bot turn consumes them as if they had just arrived. Tool
calls are events like any other, so a speculative reply's tool call runs only after adoption, or never.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from voicebot.call.turns import normalize
from voicebot.errors import ProviderError
from voicebot.providers.base import LanguageModel, LlmEvent, Message, TextDelta

SPECULATION_TIMEOUT_S = 30.0
"""A held stream that is neither adopted nor dropped by then is abandoned (every caller turn ends in one or the
other, so this only bounds a stuck provider)."""


class Speculation:
    """One held LLM stream. ``run()`` is its task's body (owned by the call's TaskGroup); it never raises but
    ``CancelledError``: a provider failure is kept and re-raised to the bot turn that adopts it."""

    def __init__(self, llm: LanguageModel, messages: list[Message], tools: Sequence[dict[str, Any]], text: str) -> None:
        self.text = text
        # A snapshot: a tool message in the history is updated in place when its side effect lands, and the held
        # request was made with what the history said then.
        self.messages = [dict(message) for message in messages]
        self._llm = llm
        self._tools = tools
        self.started = time.monotonic()
        self.first_token: float | None = None
        self._events: list[LlmEvent] = []  # bounded by the request's max_completion_tokens
        self._error: ProviderError | None = None
        self._done = False
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def matches(self, messages: list[Message]) -> bool:
        """Same history and the same caller words (normalised): the held reply answers ``messages``."""
        mine, theirs = self.messages, messages
        if len(mine) != len(theirs) or mine[:-1] != theirs[:-1]:
            return False
        return normalize(str(mine[-1].get("content", ""))) == normalize(str(theirs[-1].get("content", "")))

    async def run(self) -> None:
        try:
            async with asyncio.timeout(SPECULATION_TIMEOUT_S), self._llm.stream(self.messages, self._tools) as events:
                async for event in events:
                    if self.first_token is None and isinstance(event, TextDelta):
                        self.first_token = time.monotonic()
                    self._events.append(event)
                    self._changed.set()
        except ProviderError as exc:
            self._error = exc
        except TimeoutError:
            self._error = ProviderError("openai", "speculative stream timed out", transient=True)
        finally:
            self._done = True
            self._changed.set()

    def cancel(self) -> None:
        """Abort the stream (closing its HTTP response); the owner's TaskGroup reaps the task."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def replay(self) -> AsyncIterator[LlmEvent]:
        """The held events, then the live ones as they arrive; a provider failure is raised where it happened."""
        index = 0
        while True:
            self._changed.clear()
            while index < len(self._events):
                yield self._events[index]
                index += 1
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            await self._changed.wait()


class AdoptedModel:
    """The :class:`LanguageModel` of an adopted speculation: its first stream is the held one; any later stream of
    the same bot turn (a second round after a tool call) goes to ``llm`` as usual."""

    def __init__(self, speculation: Speculation, llm: LanguageModel) -> None:
        self._speculation: Speculation | None = speculation
        self._llm = llm

    @asynccontextmanager
    async def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AsyncIterator[AsyncIterator[LlmEvent]]:
        speculation, self._speculation = self._speculation, None
        if speculation is None:
            async with self._llm.stream(messages, tools) as events:
                yield events
            return
        try:
            yield speculation.replay()
        finally:
            # The turn is done with it, or cancelled (barge-in): close the HTTP stream if it still runs.
            speculation.cancel()
