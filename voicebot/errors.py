"""The project's exceptions: one root, shallow, typed. Vendor SDK errors are translated where the SDK is called."""

from __future__ import annotations

import traceback
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class VoicebotError(Exception):
    """Root of every error voicebot raises on purpose."""


class ProviderError(VoicebotError):
    """A provider (Deepgram, OpenAI, Twilio REST) failed; ``transient`` says whether a retry may help."""

    def __init__(self, provider: str, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.transient = transient
        self.status = status

    @classmethod
    def from_status(cls, provider: str, message: str, status: int) -> ProviderError:
        """An error answer with an HTTP status: 408, 429 and 5xx are worth a retry, other statuses are not."""
        return cls(provider, message, transient=status >= 500 or status in (408, 429), status=status)


class CallEnded(VoicebotError):
    """Raised inside a call's TaskGroup to end the call; the reason ends up in ``call_ended``."""

    def __init__(self, reason: str, code: int = 1000) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def handled(group: BaseExceptionGroup[E]) -> E:
    """The first exception of a group that ``except*`` has handled, with every traceback in the group dropped.

    A traceback holds the frames it passed through, and their locals: a call's objects. Python 3.11's TaskGroup raises
    its group from a frame that holds the group (a reference cycle), and an exception kept after it was handled (an
    attempt's error, a call's end) holds its own frames; either way the whole call stayed in memory until the next
    full run of the cycle collector (tests/test_call_memory.py). Nothing here needs the tracebacks once handled.
    """
    drop_tracebacks(group)
    return first_leaf(group)


def drop_tracebacks(exc: BaseException) -> None:
    """Clear the traceback of ``exc`` (and the finished frames' locals), of everything in it if it is a group, and
    of its causes and contexts."""
    pending, seen = [exc], set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            # The frames' locals too: a frame that raised the group may hold it (TaskGroup.__aexit__ in 3.11), and
            # another exception derived from it (what ``except*`` hands over) shares its traceback.
            traceback.clear_frames(e.__traceback__)
        e.__traceback__ = None
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        pending.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in a (possibly nested) exception group, as ``except*`` hands them over."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first  # type: ignore[return-value]
