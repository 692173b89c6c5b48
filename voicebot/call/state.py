"""What every call of one application shares: settings, metrics, stream tokens, the live calls, the event sink.

It lives below the session, the server and the dev page so that all three can use it without importing each
other: the server owns it, a session reads it, the dev page reads it through ``app[STATE]``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from voicebot.metrics import Metrics
from voicebot.settings import Settings
from voicebot.twilio.outbound import ContextSeal
from voicebot.twilio.security import StreamTokens


class LiveCall(Protocol):
    """What the application needs of a running call (``CallSession`` is one): wait for it, or end it."""

    @property
    def finished(self) -> asyncio.Event: ...

    def shut_down(self) -> None: ...


@dataclass
class AppState:
    """Process-wide state shared by every call of one application."""

    settings: Settings
    metrics: Metrics
    tokens: StreamTokens
    seal: ContextSeal = field(default_factory=lambda: ContextSeal(secrets.token_bytes(32)))
    """Seals an outbound call's context to its CallSid (voicebot.twilio.outbound); the server keys it like the
    stream tokens, so that every worker process accepts the others' seals."""
    sessions: set[LiveCall] = field(default_factory=set)
    draining: bool = False
    listeners: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    is_dev_call: Callable[[str], bool] = lambda _call_sid: False
    """True for a call placed from the dev page: no Twilio call exists, so it ends by closing the socket."""

    def publish(self, call_sid: str, event: dict[str, Any]) -> None:
        """Hand a call event to the dev page's event stream (if any listens)."""
        for listener in self.listeners:
            listener(call_sid, event)


STATE = web.AppKey("state", AppState)
