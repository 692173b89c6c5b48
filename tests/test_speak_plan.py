"""The Aura socket's sans-I/O plan (voicebot/providers/deepgram_tts_ws.py): what is sent, whose audio a frame is."""

from __future__ import annotations

from voicebot.errors import ProviderError
from voicebot.providers.deepgram_tts_ws import (
    CLEAR,
    FLUSH,
    FLUSH_LIMIT,
    FLUSH_WINDOW_S,
    MAX_SPEAK_CHARS,
    Speak,
    SpeakPlan,
    split_text,
)
from voicebot.providers.tts_common import SocketSegment


def seg(text: str) -> SocketSegment:
    return SocketSegment(text)


def test_first_segment_goes_out_at_once_with_its_flush() -> None:
    plan, a = SpeakPlan(), seg("One.")
    assert plan.submit(a, 0.0) == [Speak("One."), FLUSH]
    assert a.started


def test_segments_completed_meanwhile_are_coalesced_under_the_next_flush() -> None:
    plan, a, b, c = SpeakPlan(), seg("One."), seg("Two."), seg("Three.")
    plan.submit(a, 0.0)
    assert plan.submit(b, 0.1) == []
    assert plan.submit(c, 0.2) == []
    plan.on_audio(b"aa")
    assert plan.on_flushed(0.5) == [Speak("Two."), Speak("Three."), FLUSH]
    assert a.done and bytes(a.buffer) == b"aa"
    plan.on_audio(b"bbcc")
    assert bytes(b.buffer) == b"bbcc" and not c.buffer  # the group's audio belongs to its first segment
    assert c.ticks == 1  # ... and its partner hears that the group is making progress
    plan.on_flushed(1.0)
    assert b.done and c.done
    assert plan.coalesced == 1 and plan.idle()


def test_audio_goes_to_the_segment_in_flight_in_order() -> None:
    plan, a, b = SpeakPlan(), seg("One."), seg("Two.")
    plan.submit(a, 0.0)
    plan.on_audio(b"1")
    plan.on_audio(b"2")
    plan.on_flushed(0.1)
    plan.submit(b, 0.2)
    plan.on_audio(b"3")
    assert bytes(a.buffer) == b"12" and bytes(b.buffer) == b"3"


def test_over_the_flush_limit_segments_are_rerouted_never_dropped() -> None:
    plan = SpeakPlan()
    for i in range(FLUSH_LIMIT):
        plan.submit(seg(f"s{i}"), float(i))
        plan.on_flushed(float(i) + 0.5)
    late = seg("late")
    assert plan.submit(late, 30.0) == []
    assert late.rerouted and plan.rerouted == 1
    # Once the oldest Flush has left the window, the socket is used again.
    again = seg("again")
    assert plan.submit(again, FLUSH_WINDOW_S + 0.1) == [Speak("again"), FLUSH]


def test_barge_in_clears_and_fences_until_cleared() -> None:
    plan, a, b = SpeakPlan(), seg("One."), seg("Two.")
    plan.submit(a, 0.0)
    plan.submit(b, 0.0)
    assert plan.abandon(b) == []  # only held: nothing was sent for it
    assert plan.abandon(a) == [CLEAR]
    plan.on_audio(b"stale")
    assert plan.on_flushed(0.1) == []  # a Flushed for cleared text
    new = seg("New.")
    assert plan.submit(new, 0.2) == []  # nothing new goes out before Cleared
    plan.on_audio(b"still stale")
    assert plan.on_cleared(0.3) == [Speak("New."), FLUSH]
    plan.on_audio(b"new")
    assert bytes(new.buffer) == b"new" and not a.buffer
    assert plan.dropped_bytes == len(b"stale") + len(b"still stale")


def test_abandoning_a_coalesced_group_s_first_segment_fails_its_partners() -> None:
    plan, a, b, c = SpeakPlan(), seg("One."), seg("Two."), seg("Three.")
    plan.submit(a, 0.0)
    plan.submit(b, 0.1)
    plan.submit(c, 0.1)
    plan.on_flushed(0.2)  # b and c go out together
    assert plan.abandon(b) == [CLEAR]  # c's audio was to come with b's: c fails (and is retried), nothing is open
    assert c.error is not None and c.error.transient
    plan.on_audio(b"bc")
    assert plan.dropped_bytes == 2 and not c.buffer


def test_socket_failure_fails_every_open_segment() -> None:
    plan, a, b = SpeakPlan(), seg("One."), seg("Two.")
    plan.submit(a, 0.0)
    plan.submit(b, 0.0)
    error = ProviderError("x", "gone", transient=True)
    assert plan.fail(error) == [a, b]
    assert a.error is error and b.error is error and plan.idle()


def test_long_text_is_split_at_spaces_within_the_speak_limit() -> None:
    text = " ".join(["word"] * 1000)
    pieces = split_text(text)
    assert all(len(p) <= MAX_SPEAK_CHARS for p in pieces)
    assert " ".join(pieces) == text
    assert split_text("x" * (MAX_SPEAK_CHARS + 5)) == ["x" * MAX_SPEAK_CHARS, "xxxxx"]
