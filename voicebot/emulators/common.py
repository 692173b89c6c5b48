"""Plumbing shared by the emulated services: handler ownership, auth, JSON answers, abrupt drops."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from aiohttp import web

from .log import EventLog, Service


class Runtime:
    """What every service shares: the event log and the set of running handler tasks.

    Handlers register their task so that shutdown can cancel them at once (a stalled handler would otherwise
    hold ``AppRunner.cleanup()`` for its whole shutdown timeout) and so that a cancellation caused by the
    client going away can be told apart from one caused by shutdown.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.closing = False
        self._handlers: set[asyncio.Task[Any]] = set()

    @contextmanager
    def handler(self) -> Iterator[None]:
        """Register the current request handler task for the duration of the block."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            yield
        finally:
            self._handlers.discard(task)

    async def shutdown(self) -> None:
        """Cancel every running handler and wait for them (aiohttp ``on_shutdown`` hook)."""
        self.closing = True
        tasks = [t for t in self._handlers if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        # The handlers are owned by aiohttp; we only wait for them to unwind, their results are aiohttp's.
        await asyncio.gather(*tasks, return_exceptions=True)

    def record_cancel(self, service: Service, **data: Any) -> None:
        """Log a client abort for a handler being cancelled, unless the cancellation is our shutdown."""
        if not self.closing:
            self.log.append(service, "abort", **data)


def new_request_id() -> str:
    """A fresh request id (a UUID, as Deepgram and Twilio use)."""
    return str(uuid.uuid4())


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def credential(request: web.Request, scheme: str) -> str | None:
    """The credential after ``scheme`` in the Authorization header (case-insensitive scheme), or None."""
    header = request.headers.get("Authorization", "")
    prefix, _, value = header.partition(" ")
    if prefix.lower() != scheme.lower():
        return None
    return value.strip() or None


def accepts(given: str | None, expected: str | None) -> bool:
    """A credential is accepted if present and, when one is configured, equal to it."""
    return given is not None and (expected is None or given == expected)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """``(user, password)`` from a Basic Authorization header, or None."""
    value = credential(request, "Basic")
    if value is None:
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def abort_connection(request: web.Request) -> None:
    """Drop the TCP connection without a proper end (no final chunk, no close frame)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def sleep_ms(ms: float) -> None:
    """Sleep for ``ms`` milliseconds if positive."""
    if ms > 0:
        await asyncio.sleep(ms / 1000)
