"""Timestamped event log shared by every emulated service, with waiting helpers for tests.

Times are ``time.monotonic()`` so they share a clock with the bot and the simulated caller in the same process
(or on the same machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Service = Literal["stt", "tts", "llm", "twilio"]
Predicate = Callable[["Event"], bool]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing an emulator did or saw: ``kind`` is a snake_case name, ``data`` its fields."""

    t: float
    service: Service
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


class EventLog:
    """Append-only list of :class:`Event` with ``wait_for`` that wakes on each append (no polling)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.listeners: list[Callable[[Event], None]] = []
        """Called synchronously with each new event (e.g. to print it); must not block."""
        self._waiters: list[tuple[Predicate, int, asyncio.Future[Event]]] = []

    def append(self, service: Service, kind: str, **data: Any) -> Event:
        """Record an event now and wake the waiters whose predicate it satisfies."""
        event = Event(time.monotonic(), service, kind, data)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        if self._waiters:
            pending = []
            for waiter in self._waiters:
                predicate, _, future = waiter
                if future.done():
                    continue
                if predicate(event):
                    future.set_result(event)
                else:
                    pending.append(waiter)
            self._waiters = pending
        return event

    def mark(self) -> int:
        """An index for ``since=``: only events appended after this call will match."""
        return len(self.events)

    def select(self, service: Service | None = None, kind: str | None = None, since: int = 0) -> list[Event]:
        """Events filtered by service and/or kind, oldest first."""
        return [
            e
            for e in self.events[since:]
            if (service is None or e.service == service) and (kind is None or e.kind == kind)
        ]

    def first(self, predicate: Predicate, since: int = 0) -> Event | None:
        """The first recorded event matching ``predicate``, or None."""
        for event in self.events[since:]:
            if predicate(event):
                return event
        return None

    async def wait_for(self, predicate: Predicate, timeout: float, since: int = 0) -> Event:  # noqa: ASYNC109 (public API: tests must pass a bound)
        """Return the first event (already recorded after ``since``, or future) matching ``predicate``.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        found = self.first(predicate, since)
        if found is not None:
            return found
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (predicate, since, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def wait_for_kind(
        self,
        service: Service,
        kind: str,
        timeout: float,  # noqa: ASYNC109 (the lead's API; a bound is mandatory so tests cannot hang)
        since: int = 0,
        **match: Any,
    ) -> Event:
        """Wait for an event of ``service``/``kind`` whose data contains every ``match`` item."""

        def predicate(e: Event) -> bool:
            return (
                e.service == service and e.kind == kind and all(e.data.get(k, _MISSING) == v for k, v in match.items())
            )

        return await self.wait_for(predicate, timeout, since)


_MISSING = object()
