"""What the TTS transports share: the per-call voice of a REST provider, a segment's audio on a shared socket, and
the per-call socket connection (opened in the background, replaced after a failure, closed with the call).

A socket transport multiplexes a call's segments over one connection. Each segment is a :class:`SocketSegment`:
the socket's reader feeds it, the bot turn reads it through :meth:`SocketSegment.chunks`, and when the bot turn
leaves early (barge-in, timeout) the transport *abandons* it: the provider is told (Clear, cancel) and every byte
that still arrives for it is dropped here (fencing), because providers keep sending audio already generated.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from voicebot.errors import ProviderError, handled
from voicebot.logs import get_logger
from voicebot.providers.base import TextToSpeech
from voicebot.taskgroup import TaskGroup

log = get_logger("voicebot.tts")

CONNECT_TIMEOUT_S = 3.0
SEND_TIMEOUT_S = 3.0
"""A send that cannot complete in this time means the socket is stuck: it is dropped and replaced."""
OUTBOX_SIZE = 64
"""Messages waiting for the socket's writer; segments are bounded per turn, so a full outbox is a stuck writer."""

Fallback = Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class SharedCall:
    """The voice of a call for a REST provider: every turn uses the process's shared client."""

    def __init__(self, tts: TextToSpeech) -> None:
        self._tts = tts

    def for_turn(self) -> TextToSpeech:
        return self._tts


@asynccontextmanager
async def shared_call(tts: TextToSpeech) -> AsyncIterator[SharedCall]:
    yield SharedCall(tts)


@dataclass(eq=False)
class SocketSegment:
    """One text segment's audio on a call's socket."""

    text: str
    fallback: Fallback | None = None
    """Where the segment's audio comes from when the socket will not take it (REST)."""
    buffer: bytearray = field(default_factory=bytearray)
    started: bool = False
    done: bool = False
    abandoned: bool = False
    rerouted: bool = False
    error: ProviderError | None = None
    delivered: int = 0
    ticks: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        """The provider starts on this segment now (its first-byte clock starts)."""
        self.started = True
        self.changed.set()

    def feed(self, audio: bytes) -> None:
        self.buffer += audio
        self.changed.set()

    def progress(self) -> None:
        """The provider is producing audio this segment depends on (a coalesced group's first segment)."""
        self.ticks += 1
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()

    def fail(self, error: ProviderError) -> None:
        if not self.done:
            self.error = error
            self.changed.set()

    def reroute(self) -> None:
        """Synthesise this segment through the fallback (the socket will not take it)."""
        self.rerouted = True
        self.changed.set()

    @property
    def open(self) -> bool:
        """Still waiting for audio from the socket."""
        return not (self.done or self.abandoned or self.rerouted or self.error is not None)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The segment's audio. An empty chunk means "in progress" (synthesis started, or the group this segment
        was coalesced into is producing audio): the reader restarts its first-byte deadline."""
        seen = -1
        while True:
            if self.started and seen != self.ticks:
                seen = self.ticks
                yield b""
            if self.buffer:
                data = bytes(self.buffer)
                self.buffer.clear()
                self.delivered += len(data)
                yield data
                continue
            if self.done:
                return
            if self.error is not None:
                raise self.error
            if self.rerouted:
                assert self.fallback is not None
                async with self.fallback() as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            self.changed.clear()
            await self.changed.wait()


C = TypeVar("C")


class _Attempt:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.error: ProviderError | None = None


class SocketConnection(Generic[C]):
    """One call's provider socket: opened in the background, replaced after a failure, closed with the call.

    Subclasses open the connection (``_connect``), read it (``_read``, returning when the server closed it), send
    one queued message (``_send``) and fail every open segment (``_on_failure``). All of them translate vendor
    errors into :class:`ProviderError`; the runner never raises anything else.
    """

    provider = "tts"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._attempt = _Attempt()
        self._outbox: deque[object] = deque()
        self._outbox_ready = asyncio.Event()
        self.opened_at: float | None = None
        self.failures = 0

    # --- to implement ---

    def _connect(self) -> AbstractAsyncContextManager[C]:
        raise NotImplementedError

    async def _read(self, conn: C) -> None:
        raise NotImplementedError

    async def _send(self, conn: C, message: object) -> None:
        raise NotImplementedError

    def _on_failure(self, error: ProviderError) -> None:
        raise NotImplementedError

    # --- lifecycle ---

    def start(self) -> None:
        """Open the connection in the background unless one is open or opening."""
        if self._task is None or self._task.done():
            self._attempt = _Attempt()
            self._outbox.clear()
            self._task = asyncio.create_task(self._run(self._attempt), name=f"{self.provider}-socket")

    async def ready(self) -> None:
        """Wait for an open connection (opening one if needed); ProviderError if it cannot be opened."""
        self.start()
        attempt = self._attempt
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await attempt.connected.wait()
        except TimeoutError:
            raise ProviderError(self.provider, "socket connect timed out", transient=True) from None
        if attempt.error is not None:
            raise attempt.error

    @property
    def connected(self) -> bool:
        return self._attempt.connected.is_set() and self._attempt.error is None

    def age_s(self) -> float:
        return 0.0 if self.opened_at is None else time.monotonic() - self.opened_at

    async def restart(self) -> None:
        """Close the connection (e.g. before the provider's connection time limit) and open a fresh one."""
        await self.aclose()
        self.start()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not ``await task``: the runner's own CancelledError must not pass for ours (on Python 3.11 a
            # TaskGroup that just failed can leave this task with a pending cancel count, so ``cancelling()`` lies).
            await asyncio.wait([task])
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    def send(self, message: object) -> None:
        """Queue a message for the socket's writer (synchronous: callable from a cancelled task's cleanup)."""
        if len(self._outbox) >= OUTBOX_SIZE:
            raise ProviderError(self.provider, "socket writer is stuck", transient=True)
        self._outbox.append(message)
        self._outbox_ready.set()

    # --- the runner ---

    async def _run(self, attempt: _Attempt) -> None:
        try:
            async with self._connect() as conn:
                self.opened_at = time.monotonic()
                attempt.connected.set()
                log.info("tts_socket_opened", provider=self.provider)
                async with TaskGroup() as tg:
                    tg.create_task(self._write_loop(conn), name=f"{self.provider}-socket-writer")
                    await self._read(conn)
                    raise ProviderError(self.provider, "socket closed by the server", transient=True)
        except* ProviderError as group:
            error = handled(group)
            attempt.error = error
            attempt.connected.set()
            self.failures += 1
            log.warning("tts_socket_failed", provider=self.provider, error=str(error), status=error.status)
            self._on_failure(error)

    async def _write_loop(self, conn: C) -> None:
        while True:
            while self._outbox:
                message = self._outbox.popleft()
                try:
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await self._send(conn, message)
                except TimeoutError:
                    raise ProviderError(self.provider, "socket send timed out", transient=True) from None
            self._outbox_ready.clear()
            await self._outbox_ready.wait()
