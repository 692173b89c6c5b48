"""Twilio's outbound playout queue as a sans-I/O clock: what the caller hears, and when marks come back.

Twilio buffers outbound ``media`` and plays it in order at 8000 bytes/s; a ``mark`` is echoed once the audio
queued before it has played, at once if nothing is buffered; ``clear`` drops the unplayed audio and echoes every
pending mark (https://www.twilio.com/docs/voice/media-streams/websocket-messages, PROVIDERS.md §4.4).

Time is always passed in (``now``, seconds on the ``time.monotonic()`` scale); nothing here sleeps or awaits.
Audio is laid out on *runs*: stretches of gapless playback that start when media arrives while the queue is
idle. Positions inside a run are whole bytes from its anchor, so long calls do not accumulate float drift.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import assert_never

from voicebot.audio import BYTES_PER_SECOND, MULAW_SILENCE
from voicebot.twilio.wire import OutboundEvent, OutClear, OutMark, OutMedia


@dataclass(frozen=True, slots=True)
class AudioStarted:
    """Bot audio began playing at ``t`` (media arrived while nothing was buffered)."""

    t: float


@dataclass(frozen=True, slots=True)
class AudioStopped:
    """Bot audio stopped playing at ``t``: the queue drained, or ``clear``/hang-up cut it (``cut=True``)."""

    t: float
    cut: bool


Transition = AudioStarted | AudioStopped


@dataclass(slots=True)
class HeardSegment:
    """One ``media`` payload as scheduled for playback; truncated to the played part if it was cut."""

    start: float
    audio: bytes
    epoch: int

    @property
    def end(self) -> float:
        return self.start + len(self.audio) / BYTES_PER_SECOND


@dataclass(slots=True)
class _Run:
    anchor: float
    nbytes: int

    @property
    def end(self) -> float:
        return self.anchor + self.nbytes / BYTES_PER_SECOND


def _played_bytes(segment: HeardSegment, now: float) -> int:
    """Bytes of ``segment`` played by ``now`` (floor: a byte counts once it has fully played)."""
    if now <= segment.start:
        return 0
    return min(len(segment.audio), math.floor((now - segment.start) * BYTES_PER_SECOND + 1e-6))


class PlaybackClock:
    """Twilio's playout queue for one stream; feed it outbound events and poll it with the current time."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._marks: deque[tuple[float, str]] = deque()  # (due time, name), in arrival (= due) order
        self._ready: list[str] = []  # marks due and not yet handed out
        self._transitions: list[Transition] = []
        self.segments: list[HeardSegment] = []
        self.epoch = 0
        """Incremented by every ``clear``: media received afterwards belongs to the new epoch."""
        self.bytes_received = 0
        self.bytes_dropped = 0
        self.closed = False

    # --- input ----------------------------------------------------------------------------------------

    def feed(self, event: OutboundEvent, now: float) -> list[str]:
        """Apply one server → Twilio message received at ``now``; return the marks to echo right away."""
        if self.closed:
            return []
        match event:
            case OutMedia(payload=payload):
                self._media(payload, now)
            case OutMark(name=name):
                end = self.drains_at(now)
                self._marks.append((now if end is None else end, name))
            case OutClear():
                self._cut(now)
                self.epoch += 1
                # Every pending mark is echoed at once, whether or not its audio played.
                self._ready.extend(name for _, name in self._marks)
                self._marks.clear()
            case _:
                assert_never(event)
        return self.due_marks(now)

    def _media(self, payload: bytes, now: float) -> None:
        if not payload:
            return
        run = self._run
        if run is None or now > run.end:
            self._flush_stop(now)
            run = self._run = _Run(anchor=now, nbytes=0)
            self._transitions.append(AudioStarted(now))
        self.segments.append(
            HeardSegment(start=run.anchor + run.nbytes / BYTES_PER_SECOND, audio=payload, epoch=self.epoch)
        )
        run.nbytes += len(payload)
        self.bytes_received += len(payload)

    def close(self, now: float) -> None:
        """The call ended at ``now``: unplayed audio is dropped and pending marks are never echoed."""
        if self.closed:
            return
        self._cut(now)
        self._marks.clear()
        self.closed = True

    def _cut(self, now: float) -> None:
        """Drop everything not yet played at ``now``, including the unplayed rest of the current payload."""
        run = self._run
        if run is None:
            return
        if now >= run.end:
            self._flush_stop(now)
            return
        for segment in reversed(self.segments):
            if segment.end <= now:
                break
            keep = _played_bytes(segment, now)
            self.bytes_dropped += len(segment.audio) - keep
            segment.audio = segment.audio[:keep]
        while self.segments and not self.segments[-1].audio:
            self.segments.pop()
        self._run = None
        self._transitions.append(AudioStopped(now, cut=True))

    def _flush_stop(self, now: float) -> None:
        """Report the natural end of the previous run (if it has ended by ``now``) before anything newer."""
        run = self._run
        if run is not None and now >= run.end:
            self._transitions.append(AudioStopped(run.end, cut=False))
            self._run = None

    # --- output ---------------------------------------------------------------------------------------

    def due_marks(self, now: float) -> list[str]:
        """Names of the marks to echo at ``now``, in order; each is returned once."""
        while self._marks and self._marks[0][0] <= now:
            self._ready.append(self._marks.popleft()[1])
        ready, self._ready = self._ready, []
        return ready

    def transitions(self, now: float) -> list[Transition]:
        """Audio start/stop transitions up to ``now``, in time order; each is returned once."""
        self._flush_stop(now)
        out, self._transitions = self._transitions, []
        return out

    def next_deadline(self) -> float | None:
        """When the I/O layer should poll next: the next mark due, or the end of buffered audio."""
        times = [self._marks[0][0]] if self._marks else []
        if self._run is not None:
            times.append(self._run.end)
        return min(times, default=None)

    def drains_at(self, now: float) -> float | None:
        """When the buffered audio will have played, or None if nothing is buffered at ``now``."""
        run = self._run
        if run is None or now >= run.end:
            return None
        return run.end

    def is_playing(self, now: float) -> bool:
        """True while buffered audio is playing at ``now``."""
        return self.drains_at(now) is not None

    def buffered_bytes(self, now: float) -> int:
        """Bytes queued but not yet played at ``now``."""
        end = self.drains_at(now)
        return 0 if end is None else math.ceil((end - now) * BYTES_PER_SECOND - 1e-6)

    def bytes_played(self, now: float) -> int:
        """Bytes played by ``now`` (audio cut by ``clear`` counts only up to the cut)."""
        return sum(_played_bytes(segment, now) for segment in self.segments)

    def heard_audio(self, start: float, end: float) -> bytes:
        """What the caller heard between ``start`` and ``end``, as mu-law with silence where nothing played."""
        total = max(0, round((end - start) * BYTES_PER_SECOND))
        out = bytearray([MULAW_SILENCE]) * total
        for segment in self.segments:
            offset = round((segment.start - start) * BYTES_PER_SECOND)
            audio = segment.audio[: _played_bytes(segment, end)]
            lo, hi = max(offset, 0), min(offset + len(audio), total)
            if lo < hi:
                out[lo:hi] = audio[lo - offset : hi - offset]
        return bytes(out)
