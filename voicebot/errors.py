"""The project's exceptions: one root, shallow, typed. Vendor SDK errors are translated where the SDK is called."""

from __future__ import annotations

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


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in a (possibly nested) exception group, as ``except*`` hands them over."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first  # type: ignore[return-value]
