"""Fault knobs, one mutable dataclass per service, settable by tests between requests."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass


@dataclass
class Faults:
    """Faults common to every service.

    - ``latency_ms``: extra delay before answering each request (before the WS upgrade, the first byte, ...).
    - ``error_status``: answer every request with this HTTP status while set (401, 429, 500, ...).
    - ``fail_next`` / ``fail_status``: answer the next N requests with ``fail_status``, then behave again.
    - ``retry_after_s`` / ``retry_after_ms``: headers added to injected error answers (``retry-after``,
      ``retry-after-ms``), as OpenAI sends them on 429.
    - ``stall_s``: accept the request, then send nothing for this many seconds (``math.inf``: never).
    """

    latency_ms: float = 0.0
    error_status: int | None = None
    fail_next: int = 0
    fail_status: int = 500
    retry_after_s: float | None = None
    retry_after_ms: float | None = None
    stall_s: float = 0.0

    def take_error(self) -> int | None:
        """The status to inject for this request, consuming one ``fail_next`` if any."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_status
        return self.error_status

    def error_headers(self) -> dict[str, str]:
        """Retry headers for an injected error answer."""
        headers = {}
        if self.retry_after_s is not None:
            headers["retry-after"] = _number(self.retry_after_s)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = _number(self.retry_after_ms)
        return headers


@dataclass
class SttFaults(Faults):
    """Deepgram live STT faults; ``drop_after_audio_ms`` ends the socket after that much audio was received.

    The drop is a 1011 close (reason ``NET-0000``), or a TCP abort without close frame if ``drop_abrupt``.
    """

    drop_after_audio_ms: float | None = None
    drop_abrupt: bool = False


@dataclass
class TtsFaults(Faults):
    """Deepgram TTS faults; ``drop_after_bytes`` aborts the TCP connection after that many audio bytes."""

    drop_after_bytes: int | None = None


@dataclass
class LlmFaults(Faults):
    """OpenAI chat faults; ``drop_after_tokens`` aborts the TCP connection after that many streamed tokens;
    ``tail_stall_s`` holds the end of a stream (the usage chunk, ``[DONE]``, the end of the body) for that long after
    the chunk with the ``finish_reason``, as a slow provider or network can."""

    drop_after_tokens: int | None = None
    tail_stall_s: float = 0.0


async def wait_stall(seconds: float) -> None:
    """Hang for ``seconds``, forever if infinite (shutdown cancels the handler)."""
    if seconds <= 0:
        return
    if math.isinf(seconds):
        await asyncio.get_running_loop().create_future()
    await asyncio.sleep(seconds)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
