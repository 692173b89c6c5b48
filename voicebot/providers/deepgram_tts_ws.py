"""Deepgram Aura over its WebSocket (``speak.v1`` in deepgram-sdk): one socket per call.

The socket synthesises one Flush at a time, in order, so a segment's audio is every binary frame between the
previous ``Flushed`` and its own. :class:`SpeakPlan` is the sans-I/O part: which Speak/Flush/Clear to send, and
whose audio a frame is. Rules (PROVIDERS-2.md §1):

- Speak + Flush per segment; at most one Flush outstanding. Segments completed meanwhile are held and go out
  together under the next Flush (coalescing): the socket serialises synthesis anyway, and this keeps a call well
  under Deepgram's 20 Flushes per 60 s. If the window is full even so, the segment goes over REST: text is never
  dropped and the caller never waits a minute. A coalesced group's audio belongs to its first segment; the others
  end with no audio (the bot turn joins their text to the previous segment), or fail if the first is abandoned.
- Barge-in abandons every open segment: Clear is sent and every byte (and Flushed) before ``Cleared`` is dropped;
  nothing new is sent until ``Cleared`` (fencing).
- A socket failure fails its open segments (the bot turn retries them once, as any TTS failure) and the retry and
  the rest of that bot turn go over REST; so does a segment that timed out on the socket. The next turn opens a new
  socket. An idle socket is replaced before Deepgram's 60-minute connection limit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.speak.v1.types import SpeakV1Text

from voicebot.audio import SAMPLE_RATE
from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import TextToSpeech
from voicebot.providers.deepgram_socket import opened
from voicebot.providers.deepgram_stt import translate_socket_error
from voicebot.providers.deepgram_tts import DeepgramTts
from voicebot.providers.tts_common import SocketConnection, SocketSegment

log = get_logger("voicebot.tts")
PROVIDER = "deepgram_tts_ws"

MAX_SPEAK_CHARS = 2000
"""Deepgram's limit per Speak message; longer text is split at a word boundary."""
FLUSH_LIMIT = 20
FLUSH_WINDOW_S = 60.0
REPLACE_AFTER_S = 55 * 60.0
"""Deepgram closes a speak socket after 60 minutes: an idle one older than this is replaced first."""


@dataclass(frozen=True, slots=True)
class Speak:
    text: str
    kind: Literal["speak"] = "speak"


@dataclass(frozen=True, slots=True)
class Control:
    kind: Literal["flush", "clear", "close"]


Outgoing = Speak | Control
FLUSH = Control("flush")
CLEAR = Control("clear")


def split_text(text: str, limit: int = MAX_SPEAK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at spaces where possible."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        cut = cut if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces


class SpeakPlan:
    """The sans-I/O state of one speak socket: held and flushed segments, the Flush window, fencing."""

    def __init__(self) -> None:
        self.groups: deque[list[SocketSegment]] = deque()
        """Flushed groups whose ``Flushed`` has not arrived, oldest first."""
        self.held: list[SocketSegment] = []
        self.flushes: deque[float] = deque()
        self.fencing = False
        self.dropped_bytes = 0
        self.coalesced = 0
        self.rerouted = 0

    def idle(self) -> bool:
        return not (self.groups or self.held or self.fencing)

    def submit(self, segment: SocketSegment, now: float) -> list[Outgoing]:
        self.held.append(segment)
        return self._release(now)

    def _release(self, now: float) -> list[Outgoing]:
        if self.groups or self.fencing or not self.held:
            return []
        while self.flushes and now - self.flushes[0] >= FLUSH_WINDOW_S:
            self.flushes.popleft()
        group, self.held = self.held, []
        if len(self.flushes) >= FLUSH_LIMIT:
            for segment in group:
                segment.reroute()
            self.rerouted += len(group)
            return []
        self.flushes.append(now)
        self.groups.append(group)
        self.coalesced += len(group) - 1
        for segment in group:
            segment.start()
        return [*(Speak(piece) for s in group for piece in split_text(s.text)), FLUSH]

    def on_audio(self, audio: bytes) -> None:
        group = self.groups[0] if self.groups and not self.fencing else None
        if group is None or group[0].abandoned:
            self.dropped_bytes += len(audio)
            return
        group[0].feed(audio)
        for segment in group[1:]:
            segment.progress()  # its audio is inside the first segment's: it is not stalled

    def on_flushed(self, now: float) -> list[Outgoing]:
        if self.fencing or not self.groups:
            return []  # a Flushed for text a Clear already discarded
        for segment in self.groups.popleft():
            segment.finish()
        return self._release(now)

    def on_cleared(self, now: float) -> list[Outgoing]:
        self.fencing = False
        return self._release(now)

    def abandon(self, segment: SocketSegment) -> list[Outgoing]:
        """The bot turn left ``segment`` (barge-in, timeout): Clear once no open segment is left on the socket."""
        segment.abandoned = True
        if segment in self.held:
            self.held.remove(segment)
            return []
        for group in self.groups:
            if group[0] is segment:
                # Its coalesced partners' audio was to come with its own, which is now dropped: fail them, so the
                # bot turn retries their text rather than finishing them silent.
                for partner in group[1:]:
                    partner.fail(ProviderError(PROVIDER, "coalesced with an abandoned segment", transient=True))
        if self.groups and not any(s.open for group in self.groups for s in group):
            self.groups.clear()
            self.fencing = True
            return [CLEAR]
        return []

    def fail(self, error: ProviderError) -> list[SocketSegment]:
        """The socket is gone: every open segment fails; returns them."""
        failed = [s for group in self.groups for s in group] + self.held
        for segment in failed:
            segment.fail(error)
        self.groups.clear()
        self.held = []
        self.fencing = False
        return failed


class DeepgramSpeakCall(SocketConnection[Any]):
    """One call's speak socket and its per-turn voices."""

    provider = PROVIDER

    def __init__(self, client: AsyncDeepgramClient, rest: DeepgramTts, *, model: str) -> None:
        super().__init__()
        self._client = client
        self.rest = rest
        self.model = model
        self.plan = SpeakPlan()
        self._turn_of: dict[SocketSegment, _SpeakTurn] = {}

    def for_turn(self) -> TextToSpeech:
        return _SpeakTurn(self)

    # --- segments ---

    async def submit(self, segment: SocketSegment, turn: _SpeakTurn) -> None:
        if self.connected and self.plan.idle() and self.age_s() > REPLACE_AFTER_S:
            log.info("tts_socket_replaced", provider=PROVIDER, age_s=round(self.age_s()))
            await self.restart()
        await self.ready()
        self._turn_of[segment] = turn
        self._send_all(self.plan.submit(segment, time.monotonic()))

    def release(self, segment: SocketSegment) -> None:
        turn = self._turn_of.pop(segment, None)
        if segment.open:
            self._send_all(self.plan.abandon(segment))
            if turn is not None:
                turn.abandoned.add(segment.text)

    def _send_all(self, messages: list[Outgoing]) -> None:
        for message in messages:
            self.send(message)

    # --- the socket ---

    def _connect(self) -> AbstractAsyncContextManager[Any]:
        return _translated(self._client.speak.v1.connect(model=self.model, encoding="mulaw", sample_rate=SAMPLE_RATE))

    async def _send(self, conn: Any, message: object) -> None:
        assert isinstance(message, Speak | Control)
        try:
            if isinstance(message, Speak):
                await conn.send_text(SpeakV1Text(text=message.text))
            elif message.kind == "flush":
                await conn.send_flush()
            elif message.kind == "clear":
                await conn.send_clear()
            else:
                await conn.send_close()
        except _SDK_ERRORS as exc:
            raise translate_socket_error(PROVIDER, exc) from exc

    async def _read(self, conn: Any) -> None:
        try:
            async for message in conn:
                if isinstance(message, bytes):
                    self.plan.on_audio(message)
                else:
                    self._on_message(message)
        except _SDK_ERRORS as exc:
            raise translate_socket_error(PROVIDER, exc) from exc

    def _on_message(self, message: Any) -> None:
        # Flushed and Cleared have the same fields, so the SDK may parse one as the other: dispatch on ``type``.
        kind = getattr(message, "type", None)
        now = time.monotonic()
        if kind == "Flushed":
            self._send_all(self.plan.on_flushed(now))
        elif kind == "Cleared":
            self._send_all(self.plan.on_cleared(now))
        elif kind == "Warning":
            # Older servers and SDKs named the fields warn_code / warn_msg: read both.
            extra = getattr(message, "model_extra", None) or {}
            code = getattr(message, "code", None) or extra.get("warn_code")
            description = getattr(message, "description", None) or extra.get("warn_msg")
            log.warning("tts_socket_warning", provider=PROVIDER, code=code, description=description)
        elif kind == "Metadata":
            log.debug("tts_socket_metadata", provider=PROVIDER, request_id=getattr(message, "request_id", None))

    def _on_failure(self, error: ProviderError) -> None:
        for segment in self.plan.fail(error):
            turn = self._turn_of.get(segment)
            if turn is not None:
                turn.rest_only = True  # the rest of this bot turn goes over REST


_SDK_ERRORS = (ApiError, websockets.exceptions.WebSocketException, OSError)


@asynccontextmanager
async def _translated(cm: AbstractAsyncContextManager[Any]) -> AsyncIterator[Any]:
    try:
        async with cm as conn:
            await opened(conn)
            yield conn
    except _SDK_ERRORS as exc:
        raise translate_socket_error(PROVIDER, exc) from exc


class _SpeakTurn:
    """One bot turn's voice on the call's socket; after a socket failure, REST for the rest of the turn."""

    def __init__(self, call: DeepgramSpeakCall) -> None:
        self._call = call
        self.rest_only = False
        self.abandoned: set[str] = set()
        """Texts this turn left unfinished on the socket: asked again, it is the bot turn's retry after a timeout."""

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        rest = self._call.rest
        if text in self.abandoned:
            # A segment that timed out on the socket stalls everything behind it there: retry it, and the rest of
            # the turn, over REST (in parallel, each with its own deadline).
            self.rest_only = True
        if not self.rest_only:
            segment = SocketSegment(text, fallback=lambda: rest.synthesize(text))
            try:
                await self._call.submit(segment, self)
            except ProviderError as exc:
                log.warning("tts_socket_unavailable", provider=PROVIDER, error=str(exc), effect="rest for this turn")
                self.rest_only = True
            else:
                try:
                    async with aclosing(segment.chunks()) as chunks:
                        yield chunks
                finally:
                    self._call.release(segment)
                return
        async with rest.synthesize(text) as chunks:
            yield chunks


class DeepgramSpeakVoice:
    """Aura over WebSocket: fixed phrases over REST (one-off), each call's turns over the call's socket."""

    def __init__(self, client: AsyncDeepgramClient, rest: DeepgramTts, *, model: str) -> None:
        self._client = client
        self.rest = rest
        self.model = model

    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.rest.synthesize(text)

    @asynccontextmanager
    async def open_call(self) -> AsyncIterator[DeepgramSpeakCall]:
        call = DeepgramSpeakCall(self._client, self.rest, model=self.model)
        call.start()
        try:
            yield call
        finally:
            await call.aclose()
