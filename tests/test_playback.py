"""Pure unit tests for the caller's playout clock: Twilio's mark/clear semantics with time passed in."""

from __future__ import annotations

import pytest

from voicebot.audio import MULAW_SILENCE
from voicebot.caller.playback import AudioStarted, AudioStopped, PlaybackClock
from voicebot.twilio.wire import OutClear, OutMark, OutMedia

SID = "MZ" + "0" * 32
T0 = 1000.0  # an arbitrary monotonic origin


def media(n: int, byte: int = 0x11) -> OutMedia:
    return OutMedia(SID, bytes([byte]) * n)


def mark(name: str) -> OutMark:
    return OutMark(SID, name)


CLEAR = OutClear(SID)


def test_mark_when_idle_is_echoed_at_once() -> None:
    clock = PlaybackClock()
    assert clock.feed(mark("m0"), T0) == ["m0"]
    assert clock.next_deadline() is None
    assert clock.due_marks(T0 + 10) == []


def test_mark_is_echoed_when_the_audio_before_it_has_played() -> None:
    clock = PlaybackClock()
    assert clock.feed(media(800), T0) == []  # 100 ms
    assert clock.feed(mark("a"), T0) == []
    assert clock.feed(media(1600), T0 + 0.01) == []  # 200 ms more, queued behind
    assert clock.feed(mark("b"), T0 + 0.01) == []
    assert clock.next_deadline() == pytest.approx(T0 + 0.1)
    assert clock.due_marks(T0 + 0.099) == []
    assert clock.due_marks(T0 + 0.1) == ["a"]
    assert clock.next_deadline() == pytest.approx(T0 + 0.3)
    assert clock.due_marks(T0 + 0.29) == []
    assert clock.due_marks(T0 + 0.31) == ["b"]
    assert clock.due_marks(T0 + 0.5) == []  # each mark is handed out once


def test_marks_keep_their_order_when_polled_late() -> None:
    clock = PlaybackClock()
    for i in range(3):
        clock.feed(media(160), T0)
        clock.feed(mark(f"m{i}"), T0)
    assert clock.due_marks(T0 + 1) == ["m0", "m1", "m2"]


def test_playback_rate_is_8000_bytes_per_second() -> None:
    clock = PlaybackClock()
    clock.feed(media(8000), T0)
    assert clock.buffered_bytes(T0) == 8000
    assert clock.buffered_bytes(T0 + 0.25) == 6000
    assert clock.bytes_played(T0 + 0.25) == 2000
    assert clock.drains_at(T0) == pytest.approx(T0 + 1.0)
    assert clock.is_playing(T0 + 0.999)
    assert not clock.is_playing(T0 + 1.0)


def test_clear_drops_unplayed_audio_and_echoes_every_pending_mark() -> None:
    clock = PlaybackClock()
    clock.feed(media(800), T0)  # plays T0 .. T0+0.1
    clock.feed(mark("a"), T0)
    clock.feed(media(800), T0)  # plays T0+0.1 .. T0+0.2
    clock.feed(mark("b"), T0)
    assert clock.due_marks(T0 + 0.1) == ["a"]
    # Clear half-way through the second chunk: its unplayed rest is dropped, "b" comes back at once.
    assert clock.feed(CLEAR, T0 + 0.15) == ["b"]
    assert clock.bytes_dropped == 400
    assert clock.bytes_played(T0 + 5) == 1200
    assert not clock.is_playing(T0 + 0.15)
    assert clock.next_deadline() is None
    assert clock.epoch == 1


def test_clear_with_nothing_buffered_echoes_nothing_and_drops_nothing() -> None:
    clock = PlaybackClock()
    clock.feed(media(160), T0)
    clock.feed(mark("played"), T0)
    assert clock.due_marks(T0 + 1) == ["played"]
    assert clock.feed(CLEAR, T0 + 1) == []
    assert clock.bytes_dropped == 0


def test_audio_after_clear_starts_a_new_epoch_and_plays_at_once() -> None:
    clock = PlaybackClock()
    clock.feed(media(8000), T0)
    clock.feed(CLEAR, T0 + 0.5)
    clock.feed(media(800, byte=0x22), T0 + 0.6)
    assert [s.epoch for s in clock.segments] == [0, 1]
    assert clock.segments[1].start == pytest.approx(T0 + 0.6)
    assert clock.drains_at(T0 + 0.6) == pytest.approx(T0 + 0.7)


def test_transitions_report_start_drain_and_cut() -> None:
    clock = PlaybackClock()
    clock.feed(media(800), T0)
    clock.feed(media(800), T0 + 0.05)  # still playing: same run
    assert clock.transitions(T0 + 0.05) == [AudioStarted(T0)]
    assert clock.transitions(T0 + 0.19) == []
    stopped = clock.transitions(T0 + 0.25)
    assert stopped == [AudioStopped(pytest.approx(T0 + 0.2), cut=False)]  # the drain time, not the poll time
    clock.feed(media(800), T0 + 1)
    clock.feed(CLEAR, T0 + 1.05)
    assert clock.transitions(T0 + 1.05) == [AudioStarted(T0 + 1), AudioStopped(T0 + 1.05, cut=True)]


def test_drain_is_reported_before_the_next_start_even_if_not_polled_in_between() -> None:
    clock = PlaybackClock()
    clock.feed(media(160), T0)
    clock.feed(media(160), T0 + 1)
    assert clock.transitions(T0 + 1) == [
        AudioStarted(T0),
        AudioStopped(pytest.approx(T0 + 0.02), cut=False),
        AudioStarted(T0 + 1),
    ]


def test_heard_audio_has_silence_in_the_gaps_and_stops_at_the_cut() -> None:
    clock = PlaybackClock()
    clock.feed(media(80, byte=0x11), T0 + 0.01)  # 10 ms of silence first, then 10 ms of 0x11
    clock.feed(media(800, byte=0x22), T0 + 0.03)  # 10 ms gap, then 0x22 until cut at +5 ms
    clock.feed(CLEAR, T0 + 0.035)
    heard = clock.heard_audio(T0, T0 + 0.05)
    silence = bytes([MULAW_SILENCE])
    assert heard == silence * 80 + b"\x11" * 80 + silence * 80 + b"\x22" * 40 + silence * 120


def test_heard_audio_only_includes_what_played_by_the_end_time() -> None:
    clock = PlaybackClock()
    clock.feed(media(800, byte=0x33), T0)
    assert clock.heard_audio(T0, T0 + 0.05) == b"\x33" * 400


def test_close_drops_the_rest_and_never_echoes_pending_marks() -> None:
    clock = PlaybackClock()
    clock.feed(media(800), T0)
    clock.feed(mark("never"), T0)
    clock.close(T0 + 0.05)
    assert clock.bytes_dropped == 400
    assert clock.due_marks(T0 + 1) == []
    assert clock.feed(mark("late"), T0 + 1) == []
    assert clock.next_deadline() is None


def test_long_calls_do_not_drift() -> None:
    clock = PlaybackClock()
    for _ in range(50 * 3600):  # an hour of back-to-back 20 ms chunks
        clock.feed(media(160), T0)
    clock.feed(mark("end"), T0)
    assert clock.next_deadline() == pytest.approx(T0 + 3600, abs=1e-9)
