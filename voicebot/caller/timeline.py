"""The Twilio-side record of a simulated call: timeline events, received media, per-turn latency, heard audio."""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

from voicebot.caller.wavio import write_wav

EventKind = Literal[
    "webhook",  # /voice answered (detail: HTTP status and what the TwiML asked for)
    "rejected",  # the TwiML was <Say>/<Hangup>/<Reject> instead of <Connect><Stream>
    "ws_open",
    "start_sent",
    "caller_speech_start",  # first frame of an utterance with sound sent (clips start with ~100 ms of silence)
    "caller_speech_end",  # last frame of an utterance with sound sent (clips end with ~100 ms of silence)
    "dtmf_sent",
    "bot_audio_start",  # bot audio began playing (media arrived with nothing buffered)
    "bot_audio_stop",  # buffered bot audio finished playing, or was cut (detail "cut")
    "media_received",  # one per outbound media message (detail: bytes)
    "mark_received",
    "mark_echoed",
    "clear_received",  # detail: bytes dropped by it
    "stop_sent",
    "ws_closed",  # detail: close code
    "step_timeout",  # a script step's wait timed out (also in CallResult.failures)
    "protocol_error",  # a server → Twilio message Twilio would reject (also in CallResult.failures)
]

FailureKind = Literal["step_timeout", "protocol_error"]

EndReason = Literal["hangup", "server_closed", "timeout", "rejected", "webhook_error"]


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """Something that happened on the Twilio side of the call, at ``t`` on the ``time.monotonic()`` scale."""

    t: float
    kind: EventKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedMedia:
    """One outbound ``media`` payload: when it arrived and which clear epoch (0, then +1 per clear) it is in."""

    t: float
    payload: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class Turn:
    """A caller utterance and the bot's answer: latency = utterance end → first bot audio played after it."""

    speech_start: float
    speech_end: float
    bot_audio_start: float | None

    @property
    def latency_ms(self) -> float | None:
        return None if self.bot_audio_start is None else (self.bot_audio_start - self.speech_end) * 1000


@dataclass(slots=True)
class CallResult:
    """Everything the simulated Twilio saw; filled in live while the call runs."""

    started_at: float
    call_sid: str
    account_sid: str
    stream_sid: str
    events: list[TimelineEvent] = field(default_factory=list)
    media: list[ReceivedMedia] = field(default_factory=list, repr=False)
    ended_by: EndReason | None = None
    rejected: bool = False
    say_text: str = ""
    stream_url: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    close_code: int | None = None
    failures: list[str] = field(default_factory=list)
    frames_sent: int = 0
    bytes_played: int = 0
    bytes_dropped: int = 0
    stream_started_at: float | None = None
    ended_at: float | None = None
    heard: bytes = field(default=b"", repr=False)
    """Mu-law audio the caller heard from stream start to call end, with silence where nothing played."""

    @property
    def ok(self) -> bool:
        """The call connected and no wait timed out and no protocol error was seen."""
        return not self.failures and self.ended_by not in ("rejected", "webhook_error")

    def add(self, event: TimelineEvent) -> None:
        # Kept in time order: a drain is reported at the moment the audio ran out, which can be a little
        # before the moment the I/O layer noticed it.
        bisect.insort_right(self.events, event, key=lambda e: e.t)

    def events_of(self, kind: EventKind, detail: str | None = None) -> list[TimelineEvent]:
        """All events of ``kind`` (and ``detail``, if given), in time order."""
        return [e for e in self.events if e.kind == kind and (detail is None or e.detail == detail)]

    def first(self, kind: EventKind, after: float = float("-inf")) -> TimelineEvent | None:
        """The first event of ``kind`` at or after ``after``."""
        return next((e for e in self.events if e.kind == kind and e.t >= after), None)

    @property
    def marks_echoed(self) -> list[str]:
        return [e.detail for e in self.events_of("mark_echoed")]

    def turns(self) -> list[Turn]:
        """One Turn per caller utterance, paired with the first bot audio that started after it ended."""
        starts = self.events_of("caller_speech_start")
        ends = self.events_of("caller_speech_end")
        out = []
        for i, (start, end) in enumerate(zip(starts, ends, strict=False)):
            bot = self.first("bot_audio_start", after=end.t)
            # An answer that starts after the caller spoke again belongs to the later utterance.
            if bot is not None and i + 1 < len(starts) and bot.t >= starts[i + 1].t:
                bot = None
            out.append(Turn(start.t, end.t, bot.t if bot else None))
        return out

    @property
    def latencies_ms(self) -> list[float]:
        """Per-turn latency in ms, for the turns the bot answered."""
        return [t.latency_ms for t in self.turns() if t.latency_ms is not None]

    def write_wav(self, path: str | Path) -> None:
        """Write what the caller heard as an 8 kHz mono 16-bit PCM WAV."""
        write_wav(path, self.heard)

    def format_timeline(self, *, collapse_media: bool = True) -> str:
        """A readable timeline, one line per event, with ms offsets from the start of the call."""
        lines = [f"call {self.call_sid}  ended_by={self.ended_by}  close_code={self.close_code}"]
        for is_media, group in groupby(self.events, key=lambda e: e.kind == "media_received"):
            events = list(group)
            if is_media and collapse_media and len(events) > 1:
                total = sum(int(e.detail) for e in events if e.detail.isdigit())
                span = (events[-1].t - events[0].t) * 1000
                detail = f"x{len(events)}, {total} bytes ({total / 8:.0f} ms of audio) over {span:.0f} ms"
                lines.append(self._line(events[0], detail))
            else:
                lines.extend(self._line(e, e.detail) for e in events)
        if turns := self.turns():
            shown = ", ".join("-" if t.latency_ms is None else f"{t.latency_ms:.0f}" for t in turns)
            lines.append(f"turn latency ms (speech end → bot audio): {shown}")
        lines.append(
            f"frames sent {self.frames_sent}; bot audio received {sum(len(m.payload) for m in self.media)} "
            f"bytes, played {self.bytes_played}, dropped {self.bytes_dropped}"
        )
        lines.extend(f"FAILURE: {f}" for f in self.failures)
        return "\n".join(lines)

    def _line(self, event: TimelineEvent, detail: str) -> str:
        return f"{(event.t - self.started_at) * 1000:10.1f} ms  {event.kind:<20} {detail}".rstrip()


class CallerError(Exception):
    """The simulated call could not be placed (server unreachable), or ended while something waited on it."""


class Recorder:
    """Adds events to a CallResult's timeline and wakes the coroutines waiting for them."""

    def __init__(self, result: CallResult) -> None:
        self.result = result
        self._by_kind: dict[str, list[TimelineEvent]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False
        self.bot_playing = False
        """Bot audio is playing: between a ``bot_audio_start`` and the next ``bot_audio_stop``."""

    def record(self, kind: EventKind, detail: str = "", t: float | None = None) -> TimelineEvent:
        event = TimelineEvent(time.monotonic() if t is None else t, kind, detail)
        self.result.add(event)
        self._by_kind.setdefault(kind, []).append(event)
        if kind in ("bot_audio_start", "bot_audio_stop"):
            self.bot_playing = kind == "bot_audio_start"
        self._notify()
        return event

    def fail(self, kind: FailureKind, why: str) -> None:
        self.record(kind, why)
        self.result.failures.append(f"{kind}: {why}")

    def count(self, kind: EventKind) -> int:
        return len(self._by_kind.get(kind, ()))

    def last(self, kind: EventKind) -> TimelineEvent | None:
        events = self._by_kind.get(kind)
        return events[-1] if events else None

    def close(self) -> None:
        """The call is over: waiters whose event has not happened get CallerError."""
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_count(self, kind: EventKind, count: int, detail: str | None = None) -> TimelineEvent:
        """Wait until ``count`` events of ``kind`` (with ``detail``) were recorded; return the last of those."""
        while True:
            events = self._by_kind.get(kind, [])
            if detail is not None:
                events = [e for e in events if e.detail == detail]
            if len(events) >= count:
                return events[count - 1]
            if self.closed:
                raise CallerError(f"the call ended before {count} {kind} event(s)")
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    async def _next(self, kind: EventKind) -> TimelineEvent:
        return await self.wait_count(kind, self.count(kind) + 1)

    async def wait_bot_audio(self) -> None:
        """Until bot audio is playing."""
        if not self.bot_playing:
            await self._next("bot_audio_start")

    async def wait_bot_silence(self, quiet_ms: int) -> None:
        """Until bot audio has stopped and no new audio started for ``quiet_ms``."""
        while True:
            if self.bot_playing:
                await self._next("bot_audio_stop")
            if self.bot_playing:
                continue  # audio restarted in the same step as the stop (a short underrun): not silence
            if quiet_ms <= 0:
                return
            quiet = asyncio.timeout(quiet_ms / 1000)
            try:
                async with quiet:
                    await self._next("bot_audio_start")
            except TimeoutError:
                if quiet.expired():
                    return  # quiet for quiet_ms: the bot has finished
                raise

    async def wait_into_bot_audio(self, after_ms: int) -> None:
        """Until ``after_ms`` after the current (or else the next) bot audio started."""
        last = self.last("bot_audio_start")
        started = last.t if self.bot_playing and last is not None else (await self._next("bot_audio_start")).t
        delay = started + after_ms / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
