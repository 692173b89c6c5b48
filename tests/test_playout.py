"""Pure unit tests for the marks ledger and the heard-text computation (time is an argument, no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.audio import BYTES_PER_MS, BYTES_PER_SECOND
from voicebot.call.playout import (
    DEFAULT_SAFETY_MARGIN_MS,
    HeardText,
    MarkEcho,
    PlayoutLedger,
    Segment,
    UnknownMark,
    heard_text,
    mark_name,
    parse_mark_name,
)

SECOND = BYTES_PER_SECOND
MARGIN = int(DEFAULT_SAFETY_MARGIN_MS * BYTES_PER_MS)  # 480 bytes


def exact() -> PlayoutLedger:
    return PlayoutLedger(safety_margin_ms=0)


# --- marks --------------------------------------------------------------------------------------------------


def test_marks_echo_in_order_with_their_positions() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.audio_sent(SECOND // 2, now=0.0)
    ledger.mark_sent("b", now=0.0)
    assert list(ledger.pending_marks) == ["a", "b"]
    assert ledger.mark_echoed("a", now=1.1) == MarkEcho("a", SECOND, played=True)
    assert list(ledger.pending_marks) == ["b"]
    assert ledger.mark_echoed("b", now=1.6) == MarkEcho("b", SECOND * 3 // 2, played=True)
    assert not ledger.pending_marks
    assert ledger.sent_bytes == SECOND * 3 // 2


def test_mark_sent_while_idle_echoes_played_at_once() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(800, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.mark_echoed("a", now=0.1)
    ledger.mark_sent("idle", now=5.0)  # everything has played: Twilio echoes at once
    assert ledger.mark_echoed("idle", now=5.01) == MarkEcho("idle", 800, played=True)
    assert ledger.played_bytes(now=5.01) == 800  # anchored: no margin taken off a confirmed position


def test_clear_makes_pending_echoes_not_played() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND * 3, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("b", now=0.0)
    ledger.cleared(now=1.0)
    ledger.audio_sent(800, now=1.0)
    ledger.mark_sent("c", now=1.0)
    assert ledger.pending_marks == ("a", "b", "c")
    assert ledger.mark_echoed("a", now=1.05) == MarkEcho("a", SECOND * 3, played=False)
    assert ledger.mark_echoed("b", now=1.05) == MarkEcho("b", SECOND * 4, played=False)
    assert ledger.mark_echoed("c", now=1.2) == MarkEcho("c", SECOND * 4 + 800, played=True)


def test_unknown_or_repeated_mark_raises() -> None:
    ledger = exact()
    with pytest.raises(UnknownMark):
        ledger.mark_echoed("never", now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.mark_echoed("a", now=0.0)
    with pytest.raises(ValueError, match="already echoed"):
        ledger.mark_echoed("a", now=0.1)
    assert issubclass(UnknownMark, ValueError)


def test_duplicate_pending_mark_and_negative_sizes_raise() -> None:
    ledger = exact()
    ledger.mark_sent("a", now=0.0)
    with pytest.raises(ValueError, match="already pending"):
        ledger.mark_sent("a", now=0.0)
    with pytest.raises(ValueError, match="negative"):
        ledger.audio_sent(-1, now=0.0)
    with pytest.raises(ValueError, match="negative"):
        PlayoutLedger(safety_margin_ms=-1)


# --- played_bytes -------------------------------------------------------------------------------------------


def test_nothing_sent_nothing_played() -> None:
    assert PlayoutLedger().played_bytes(now=3.0) == 0
    assert PlayoutLedger().buffered_ms(now=3.0) == 0


def test_playback_advances_from_send_time_and_is_capped_at_bytes_sent() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND, now=10.0)
    assert ledger.played_bytes(now=10.0) == 0
    assert ledger.played_bytes(now=10.1) == 800
    assert ledger.played_bytes(now=10.5) == SECOND // 2
    assert ledger.played_bytes(now=12.0) == SECOND


def test_safety_margin_comes_off_the_estimate() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(SECOND, now=10.0)
    assert ledger.played_bytes(now=10.05) == 0  # 400 bytes estimated, less the 480-byte margin: not negative
    assert ledger.played_bytes(now=10.5) == SECOND // 2 - MARGIN


def test_echo_anchors_and_playback_advances_from_it() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("b", now=0.0)
    ledger.mark_echoed("a", now=1.2)  # a late echo: playback resumes from the echo, not from 1.0
    assert ledger.played_bytes(now=1.2) == SECOND
    assert ledger.played_bytes(now=1.7) == SECOND + SECOND // 2 - MARGIN  # margin only on the estimate


def test_estimate_never_passes_a_pending_mark() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_sent("b", now=0.0)
    ledger.audio_sent(SECOND, now=0.0)
    ledger.mark_echoed("a", now=1.0)
    assert ledger.played_bytes(now=3.5) == 2 * SECOND  # not 3 * SECOND: "b" has not echoed
    ledger.mark_echoed("b", now=2.0)
    assert ledger.played_bytes(now=2.5) == 2 * SECOND + SECOND // 2
    assert ledger.buffered_ms(now=2.5) == 500


def test_underrun_a_chunk_does_not_play_before_it_was_sent() -> None:
    ledger = exact()
    ledger.audio_sent(800, now=0.0)
    ledger.audio_sent(800, now=1.0)  # the synthesiser was slow: Twilio's queue ran dry in between
    assert ledger.played_bytes(now=0.5) == 800
    assert ledger.played_bytes(now=1.05) == 1200
    assert ledger.played_bytes(now=1.2) == 1600


def test_underrun_after_an_anchor() -> None:
    ledger = exact()
    ledger.audio_sent(800, now=0.0)
    ledger.mark_sent("a", now=0.0)
    ledger.mark_echoed("a", now=0.15)
    ledger.audio_sent(1600, now=1.0)
    assert ledger.played_bytes(now=0.9) == 800
    assert ledger.played_bytes(now=1.1) == 1600
    assert ledger.buffered_ms(now=1.1) == 100


def test_small_chunks_play_like_one_big_chunk() -> None:
    many, one = exact(), exact()
    one.audio_sent(SECOND, now=0.0)
    for i in range(50):
        many.audio_sent(160, now=i * 0.001)  # sent much faster than real time
    for now in (0.0, 0.013, 0.25, 0.999, 2.0):
        assert many.played_bytes(now) == one.played_bytes(now)


def test_buffered_ms_counts_sent_but_unplayed_audio() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(SECOND, now=0.0)
    assert ledger.buffered_ms(now=0.0) == 1000
    assert ledger.buffered_ms(now=0.25) == 750
    assert ledger.buffered_ms(now=5.0) == 0


def test_clear_freezes_the_played_position() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND * 4, now=0.0)
    ledger.mark_sent("a", now=0.0)
    assert ledger.cleared(now=1.5) == SECOND * 3 // 2
    assert ledger.buffered_ms(now=1.5) == 0
    assert ledger.played_bytes(now=9.0) == SECOND * 3 // 2  # the rest was dropped by Twilio
    ledger.mark_echoed("a", now=1.6)
    assert ledger.played_bytes(now=9.0) == SECOND * 3 // 2


def test_audio_after_clear_starts_a_fresh_anchor() -> None:
    ledger = exact()
    ledger.audio_sent(SECOND * 4, now=0.0)
    frozen = ledger.cleared(now=1.0)
    ledger.audio_sent(800, now=3.0)  # starts playing when it arrives, not queued behind the dropped audio
    assert ledger.played_bytes(now=2.0) == frozen
    assert ledger.played_bytes(now=3.05) == SECOND * 4 + 400
    assert ledger.buffered_ms(now=3.05) == 50


def test_estimate_with_margin_falls_back_to_frozen_position_after_clear() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(SECOND * 4, now=0.0)
    frozen = ledger.cleared(now=1.0)
    assert frozen == SECOND - MARGIN
    ledger.audio_sent(800, now=3.0)
    assert ledger.played_bytes(now=3.05) == frozen  # 400 estimated bytes, all inside the margin


# A simulated Twilio: each send arrives after a downlink delay, plays in order at 8 bytes/ms, and a mark echo
# reaches us an uplink delay after its audio played. The ledger must never claim more than really played.
sends = st.lists(
    st.tuples(
        st.integers(0, 4000),  # bytes
        st.floats(0, 0.6),  # gap since the previous send, seconds
        st.booleans(),  # mark after it
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    sends=sends,
    downlink=st.floats(0, DEFAULT_SAFETY_MARGIN_MS / 1000 * 0.9),
    uplink=st.floats(0, 0.2),
    queries=st.lists(st.floats(0, 15), max_size=20),
)
def test_never_claims_more_than_really_played(
    sends: list[tuple[int, float, bool]], downlink: float, uplink: float, queries: list[float]
) -> None:
    ledger = PlayoutLedger()
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, value)
    now, position, playing_until = 0.0, 0, 0.0
    starts: list[tuple[int, int, float]] = []  # (start position, end position, playback start)
    for i, (nbytes, gap, mark) in enumerate(sends):
        now += gap
        begin = max(now + downlink, playing_until)
        playing_until = begin + nbytes / SECOND
        starts.append((position, position + nbytes, begin))
        position += nbytes
        events.append((now, 2 * i, "send", nbytes))
        if mark:
            events.append((now, 2 * i, "mark", position))
            events.append((playing_until + uplink, 2 * i + 1, "echo", position))

    def truly_played(t: float) -> int:
        done = 0
        for start, end, begin in starts:
            if t <= begin:
                break
            done = min(end, start + int((t - begin) * SECOND + 1e-6))
        return done

    events += [(q, -1, "query", 0) for q in queries]
    last = 0
    for t, order, kind, value in sorted(events, key=lambda e: (e[0], e[1] != -1, e[1])):
        name = f"m{value}-{order // 2}"
        if kind == "send":
            ledger.audio_sent(value, t)
        elif kind == "mark":
            ledger.mark_sent(name, t)
        elif kind == "echo":
            assert ledger.mark_echoed(name, t).played
        played = ledger.played_bytes(t)
        assert played <= truly_played(t)
        assert played >= last  # without a clear the estimate never goes back
        last = played


# --- mark names ---------------------------------------------------------------------------------------------


def test_mark_name_round_trip() -> None:
    assert mark_name(3, 12, 0) == "g3.s12.m0"
    assert parse_mark_name(mark_name(3, 12, 0)) == (3, 12, 0)


@pytest.mark.parametrize("name", ["", "greeting", "g1.s2", "g1.s2.m3.x", "g01.s2.m3", "g-1.s2.m3", "g١.s2.m3"])
def test_parse_mark_name_rejects_foreign_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a voicebot mark name"):
        parse_mark_name(name)


def test_mark_name_rejects_negative_parts() -> None:
    with pytest.raises(ValueError, match="negative"):
        mark_name(0, -1, 0)


# --- heard_text ---------------------------------------------------------------------------------------------

TWO = [Segment("Hello there.", 0, 800), Segment("How are you today?", 800, 2600)]


def test_all_played() -> None:
    assert heard_text(TWO, played=2600) == HeardText("Hello there. How are you today?", interrupted=False)


def test_nothing_played() -> None:
    assert heard_text(TWO, played=0) == HeardText("", interrupted=True)


def test_cut_mid_word_drops_the_partial_word() -> None:
    # "How are you today?" is 18 characters over 1800 bytes: 100 bytes per character.
    assert heard_text(TWO, played=800 + 1000) == HeardText("Hello there. How are", interrupted=True)  # "How are yo"
    assert heard_text(TWO, played=800 + 200) == HeardText("Hello there.", interrupted=True)  # "Ho"


def test_cut_on_a_word_boundary_keeps_the_word() -> None:
    assert heard_text(TWO, played=800 + 700) == HeardText("Hello there. How are", interrupted=True)  # "How are "
    assert heard_text(TWO, played=800 + 1100) == HeardText("Hello there. How are you", interrupted=True)


def test_first_segment_cut_drops_the_rest() -> None:
    assert heard_text(TWO, played=600) == HeardText("Hello", interrupted=True)


def test_unknown_end_is_estimated_from_speaking_rate_and_never_claims_the_last_word() -> None:
    segment = Segment("One two three four", start=0, end=None)
    per_char = 100 * BYTES_PER_MS
    assert heard_text([segment], played=8 * per_char, ms_per_char=100) == HeardText("One two", True)
    assert heard_text([segment], played=10**9, ms_per_char=100) == HeardText("One two three", True)
    assert heard_text([segment], played=14 * 65 * BYTES_PER_MS) == HeardText("One two three", True)  # default rate


def test_segment_without_audio_was_not_heard() -> None:
    segments = [Segment("Skipped.", 0, 0), Segment("Played.", 0, 800)]
    assert heard_text(segments, played=800) == HeardText("Played.", interrupted=True)


def test_ms_per_char_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        heard_text(TWO, played=0, ms_per_char=0)


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.text("abc,.", min_size=1, max_size=6), min_size=1, max_size=12),
    length=st.integers(1, 5000),
    played=st.integers(-10, 6000),
    known=st.booleans(),
)
def test_heard_words_are_a_prefix_of_the_words_played(words: list[str], length: int, played: int, known: bool) -> None:
    text = " ".join(words)
    segment = Segment(text, 100, 100 + length if known else None)
    heard = heard_text([segment], played).text.split()
    assert heard == words[: len(heard)]
    fraction = max(0, played - 100) / (length if known else 65 * BYTES_PER_MS * len(text))
    # Every heard word (and the space after it) lies inside the played fraction of the text.
    assert len(" ".join(heard)) <= fraction * len(text)


def test_overdue_counts_from_when_the_oldest_mark_should_have_played() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(8000, 0.0)  # one second of audio, sent at once at t=0
    ledger.mark_sent("m1", 0.0)
    assert ledger.overdue_s(0.5) == 0.0
    assert ledger.overdue_s(1.0) == 0.0
    assert ledger.overdue_s(3.5) == 2.5


def test_a_mark_sent_while_idle_is_due_at_once() -> None:
    ledger = PlayoutLedger()
    ledger.mark_sent("m1", 10.0)
    assert ledger.overdue_s(10.0) == 0.0
    assert ledger.overdue_s(12.0) == 2.0


def test_overdue_follows_the_anchor_and_underruns() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(8000, 0.0)
    ledger.mark_sent("m1", 0.0)
    ledger.mark_echoed("m1", 1.2)  # played until 1.2 s (late echo: the anchor moves)
    ledger.audio_sent(4000, 5.0)  # an underrun: the next half second is sent at t=5
    ledger.mark_sent("m2", 5.0)
    assert ledger.overdue_s(5.5) == 0.0
    assert ledger.overdue_s(6.5) == 1.0


def test_marks_flushed_by_a_clear_are_never_overdue() -> None:
    ledger = PlayoutLedger()
    ledger.audio_sent(8000, 0.0)
    ledger.mark_sent("m1", 0.0)
    ledger.cleared(0.5)
    assert ledger.overdue_s(100.0) == 0.0
