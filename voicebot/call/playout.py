"""The marks ledger: how much of the audio we sent has the caller heard (sans-I/O; time is passed in).

Twilio plays outbound mu-law at exactly ``BYTES_PER_SECOND`` and echoes a ``mark`` once every byte sent
before it has played (at once if its queue is empty). After a ``clear`` it drops its queue and echoes every
pending mark at once: those echoes mean *not* played.

Positions are byte offsets counted over the whole call, never reset: a mark, a segment and the played
position can be compared across generations, and a position is never reused. A ``clear`` leaves a dead gap:
the bytes between the position played at the clear and the bytes sent after it are never heard.

https://www.twilio.com/docs/voice/media-streams/websocket-messages#send-a-mark-message
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from voicebot.audio import BYTES_PER_MS, BYTES_PER_SECOND

DEFAULT_SAFETY_MARGIN_MS = 60.0
"""Taken off the estimated part of the played position: Twilio's own jitter buffer and clock drift."""
DEFAULT_MS_PER_CHAR = 65.0
"""Speaking rate used to place a cut inside a segment whose audio length is not known yet."""

# Float error must not make 0.1 s worth 799 bytes; a micro-byte is far below any real uncertainty.
_EPSILON_BYTES = 1e-6


class UnknownMark(ValueError):
    """A mark echo for a name never sent, or already echoed."""


@dataclass(frozen=True)
class MarkEcho:
    """One echoed mark: its byte position and whether the audio before it was really played."""

    name: str
    position: int
    played: bool


class _Chunk(NamedTuple):
    start: int
    end: int
    sent_at: float


class _PendingMark(NamedTuple):
    position: int
    epoch: int  # the clear count when it was sent: an older epoch echoes as not played
    sent_at: float = 0.0


class PlayoutLedger:
    """Bytes sent, marks sent and echoed, clears: the caller's playback position."""

    def __init__(self, *, safety_margin_ms: float = DEFAULT_SAFETY_MARGIN_MS) -> None:
        if safety_margin_ms < 0:
            raise ValueError("safety_margin_ms must not be negative")
        self._margin = safety_margin_ms * BYTES_PER_MS
        self._sent = 0
        # Audio after the anchor that may still be unplayed, in send order. A chunk sent while the previous
        # one cannot have finished playing is merged into it (its send time cannot delay playback), so the
        # deque holds one entry per underrun, not one per media message.
        self._chunks: deque[_Chunk] = deque()
        self._marks: dict[str, _PendingMark] = {}  # insertion order is send order
        self._epoch = 0
        # Sync point: every byte before _anchor has played, and byte _anchor started playing at _anchor_time
        # (None: no echo yet in this epoch, so a byte starts playing when it is sent, at the earliest).
        self._anchor = 0
        self._anchor_time: float | None = None
        self._epoch_start = 0  # first position sent after the last clear
        self._cleared_at: int | None = None  # played position frozen by the last clear

    @property
    def sent_bytes(self) -> int:
        """Bytes handed to the socket so far: the position of the next byte."""
        return self._sent

    @property
    def pending_marks(self) -> tuple[str, ...]:
        """Names of marks sent and not yet echoed, in send order."""
        return tuple(self._marks)

    def audio_sent(self, nbytes: int, now: float) -> None:
        """Record ``nbytes`` of audio handed to the socket at ``now`` (seconds, monotonic)."""
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        if not nbytes:
            return
        start, self._sent = self._sent, self._sent + nbytes
        if self._chunks:
            last = self._chunks[-1]
            if now <= last.sent_at + (last.end - last.start) / BYTES_PER_SECOND:
                self._chunks[-1] = last._replace(end=self._sent)
                return
        self._chunks.append(_Chunk(start, self._sent, now))

    def mark_sent(self, name: str, now: float) -> None:
        """Record a mark sent after all audio so far; it sits at position ``sent_bytes``."""
        if name in self._marks:
            raise ValueError(f"mark {name!r} is already pending")
        self._marks[name] = _PendingMark(self._sent, self._epoch, now)

    def mark_echoed(self, name: str, now: float) -> MarkEcho:
        """Record Twilio's echo of mark ``name`` at ``now``."""
        try:
            mark = self._marks.pop(name)
        except KeyError:
            raise UnknownMark(f"mark {name!r} was never sent or was already echoed") from None
        if mark.epoch != self._epoch:
            return MarkEcho(name, mark.position, played=False)  # flushed by a clear
        # An echo is the one exact sync point: the mark's position finished playing (at the latest) now.
        # Echoes come in order; an older position would move the anchor back, so it is only counted as played.
        if mark.position >= self._anchor:
            self._anchor, self._anchor_time = mark.position, now
            while self._chunks and self._chunks[0].end <= mark.position:
                self._chunks.popleft()
        return MarkEcho(name, mark.position, played=True)

    def cleared(self, now: float) -> int:
        """Record a ``clear`` sent at ``now``; return the played position it freezes (use it for heard_text)."""
        frozen = self.played_bytes(now)
        self._cleared_at = frozen
        self._epoch += 1
        self._chunks.clear()
        # Twilio's queue is empty now: the next byte sent starts playing when it arrives, from a fresh anchor.
        self._anchor = self._epoch_start = self._sent
        self._anchor_time = None
        return frozen

    def played_bytes(self, now: float) -> int:
        """Conservative position the caller has heard up to at ``now``."""
        estimated = self._simulate(now, cap_at_mark=True) - self._anchor
        played = self._anchor + max(0, math.floor(estimated - self._margin + _EPSILON_BYTES))
        if self._cleared_at is not None and played <= self._epoch_start:
            return self._cleared_at  # nothing heard since the clear; the bytes before it were cut
        return played

    def overdue_s(self, now: float) -> float:
        """How long past due the oldest pending mark of this epoch is (0.0 if none is late).

        A mark falls due when the audio before it would have finished playing at 8 bytes/ms from the last sync
        point (never before it was sent). Twilio echoes it within network delay of that; a peer whose marks stay
        overdue for seconds has stopped reading or playing.
        """
        mark = next((m for m in self._marks.values() if m.epoch == self._epoch), None)
        if mark is None:
            return 0.0
        due = self._time_reaching(mark.position)
        return max(0.0, now - max(mark.sent_at, due if due is not None else mark.sent_at))

    def _time_reaching(self, target: int) -> float | None:
        """When playback reaches byte ``target`` if the peer plays everything sent; None if it is not sent yet."""
        position, clock = self._anchor, self._anchor_time
        for chunk in self._chunks:
            if chunk.end <= position:
                continue
            start = chunk.sent_at if clock is None else max(clock, chunk.sent_at)
            first = max(chunk.start, position)
            if target <= chunk.end:
                return start + max(0, target - first) / BYTES_PER_SECOND
            position, clock = chunk.end, start + (chunk.end - first) / BYTES_PER_SECOND
        if target <= position:
            return clock
        return None

    def buffered_ms(self, now: float) -> float:
        """Best estimate of the audio sent but not yet played, in milliseconds (no margin, no mark cap)."""
        return (self._sent - self._simulate(now, cap_at_mark=False)) / BYTES_PER_MS

    def _simulate(self, now: float, cap_at_mark: bool) -> int:
        """Replay the chunks from the anchor at 8 bytes/ms; a chunk never starts before it was sent."""
        position, clock = self._anchor, self._anchor_time
        for chunk in self._chunks:
            if chunk.end <= position:
                continue
            start = chunk.sent_at if clock is None else max(clock, chunk.sent_at)
            if start >= now:
                break
            first = max(chunk.start, position)
            playable = math.floor((now - start) * BYTES_PER_SECOND + _EPSILON_BYTES)
            if playable < chunk.end - first:
                position = first + playable
                break
            position, clock = chunk.end, start + (chunk.end - first) / BYTES_PER_SECOND
        if cap_at_mark:
            # A mark not echoed yet may not have been reached yet: never claim past it.
            for mark in self._marks.values():
                if mark.epoch == self._epoch and mark.position >= self._anchor:
                    return min(position, mark.position)
        return position


_MARK_NAME = re.compile(r"g(0|[1-9][0-9]*)\.s(0|[1-9][0-9]*)\.m(0|[1-9][0-9]*)")


def mark_name(generation: int, segment: int, n: int) -> str:
    """The mark name for the ``n``-th mark of ``segment`` in bot turn ``generation``."""
    if generation < 0 or segment < 0 or n < 0:
        raise ValueError("mark name parts must not be negative")
    return f"g{generation}.s{segment}.m{n}"


def parse_mark_name(name: str) -> tuple[int, int, int]:
    """``(generation, segment, n)`` from a name made by ``mark_name``; ValueError for any other name."""
    m = _MARK_NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"not a voicebot mark name: {name!r}")
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True)
class Segment:
    """A text segment and the byte positions of its audio; ``end`` is None while still being synthesised."""

    text: str
    start: int
    end: int | None


@dataclass(frozen=True)
class HeardText:
    """What the caller heard of a bot turn, and whether some of its text went unheard."""

    text: str
    interrupted: bool


def heard_text(segments: Sequence[Segment], played: int, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> HeardText:
    """The words of ``segments`` heard up to position ``played``, cut segment snapped down to a whole word."""
    if ms_per_char <= 0:
        raise ValueError("ms_per_char must be positive")
    heard: list[str] = []
    interrupted = False
    for segment in segments:
        if not segment.text.strip():
            continue
        if segment.end is not None and segment.start < segment.end <= played:
            heard.append(segment.text.strip())
            continue
        interrupted = True
        prefix = _heard_prefix(segment, played, ms_per_char)
        if prefix:
            heard.append(prefix)
    return HeardText(" ".join(heard), interrupted)


def _heard_prefix(segment: Segment, played: int, ms_per_char: float) -> str:
    text, start, end = segment.text, segment.start, segment.end
    if played <= start or (end is not None and end <= start):
        return ""
    if end is None:
        # The audio's real length is unknown: never claim its last character, hence never its last word.
        chars = min(int((played - start) / (ms_per_char * BYTES_PER_MS)), len(text) - 1)
    else:
        chars = (played - start) * len(text) // (end - start)
    prefix = text[:chars]
    if not text[chars : chars + 1].isspace():
        # The cut falls inside a word (or on its closing punctuation): that word was not heard.
        cut = max(prefix.rfind(" "), prefix.rfind("\n"))
        prefix = prefix[:cut] if cut >= 0 else ""
    return prefix.strip()
