"""Pure unit tests for the sans-I/O turn-taking machine: end of turn, two-stage barge-in, DTMF, idle timers.

Every input carries an explicit ``now`` (seconds); no sleeps, no event loop.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from voicebot.audio import FRAME_MS
from voicebot.call.turns import (
    Action,
    Backchannels,
    CancelTurn,
    Clear,
    DropSpeculation,
    EndCall,
    Finalize,
    IdlePrompt,
    Phase,
    Reply,
    Resume,
    Speculate,
    TurnConfig,
    TurnTaking,
    normalize,
)

FRAME_S = FRAME_MS / 1000
# Small, round numbers: 5 frames of speech to barge in, 5 frames of silence to Finalize, 1 s to confirm.
CFG = TurnConfig(
    min_speech_ms=5 * FRAME_MS,
    confirm_ms=1000,
    finalize_silence_ms=5 * FRAME_MS,
    idle_timeout_s=5.0,
    idle_reprompts=2,
    dtmf_timeout_s=1.5,
)
MIN_SPEECH_FRAMES = 5
FINALIZE_FRAMES = 5
CONFIRM_S = 1.0
IDLE_S = 5.0
DTMF_S = 1.5


def phase(tt: TurnTaking) -> Phase:
    """The phase, read through a call so mypy does not narrow it across inputs."""
    return tt.phase


def listening(config: TurnConfig = CFG) -> TurnTaking:
    return TurnTaking(config)


def speaking(
    config: TurnConfig = CFG, *, now: float = 0.0, interruptible: bool = True, grace_ms: int = 0
) -> TurnTaking:
    """A machine whose bot turn started playing at ``now``."""
    tt = TurnTaking(config)
    tt.reply_requested()
    tt.bot_started(now, interruptible=interruptible, grace_ms=grace_ms)
    return tt


def thinking(config: TurnConfig = CFG) -> TurnTaking:
    """A machine that just answered 'what is the weather' at t=1 and has no bot audio yet."""
    tt = TurnTaking(config)
    assert final(tt, "what is the weather", 1.0, speech_final=True) == [Reply("what is the weather", 1.0, 1.0)]
    assert phase(tt) is Phase.THINKING
    return tt


def vad(tt: TurnTaking, speech: bool, n: int, start: float) -> list[Action]:
    """Feed ``n`` consecutive 20 ms frames starting at ``start``; all actions in order."""
    actions: list[Action] = []
    for i in range(n):
        actions += tt.vad(speech, start + i * FRAME_S)
    return actions


def interim(tt: TurnTaking, text: str, now: float) -> list[Action]:
    return tt.transcript(text, is_final=False, speech_final=False, from_finalize=False, now=now)


def final(
    tt: TurnTaking, text: str, now: float, *, speech_final: bool = False, from_finalize: bool = False
) -> list[Action]:
    return tt.transcript(text, is_final=True, speech_final=speech_final, from_finalize=from_finalize, now=now)


# --- end of the caller's turn -----------------------------------------------------------------------------------


def test_speech_final_ends_the_turn() -> None:
    tt = listening()
    assert final(tt, "Hello there.", 2.0, speech_final=True) == [Reply("Hello there.", speech_end=2.0, final_at=2.0)]
    assert phase(tt) is Phase.THINKING


def test_final_without_speech_final_waits() -> None:
    tt = listening()
    assert final(tt, "I would like", 2.0) == []
    assert phase(tt) is Phase.LISTENING


def test_finals_are_joined_in_order_and_speech_end_is_the_last_vad_speech() -> None:
    tt = listening()
    vad(tt, True, 10, start=1.0)
    last_speech = 1.0 + 9 * FRAME_S
    assert final(tt, "I'd like", 1.5) == []
    assert interim(tt, "a pizza with", 1.7) == []
    assert final(tt, "a pizza", 1.9) == []
    assert final(tt, "with olives.", 2.0, speech_final=True) == [
        Reply("I'd like a pizza with olives.", speech_end=last_speech, final_at=2.0)
    ]


def test_utterance_end_is_the_fallback_end_of_turn() -> None:
    tt = listening()
    assert final(tt, "book a table", 3.0) == []
    assert final(tt, "for two", 3.4) == []
    assert tt.utterance_end(4.5) == [Reply("book a table for two", speech_end=3.0, final_at=4.5)]
    assert phase(tt) is Phase.THINKING


def test_final_from_finalize_ends_the_turn() -> None:
    tt = listening()
    assert final(tt, "yes please", 2.0, from_finalize=True) == [Reply("yes please", speech_end=2.0, final_at=2.0)]


def test_empty_finals_are_ignored() -> None:
    tt = listening()
    assert final(tt, "", 1.0) == []
    assert final(tt, "one", 1.2) == []
    assert final(tt, "   ", 1.4) == []
    assert final(tt, " two ", 1.5) == []
    # Deepgram often closes the utterance with an empty speech_final result.
    assert final(tt, "", 1.6, speech_final=True) == [Reply("one two", speech_end=1.2, final_at=1.6)]


def test_only_empty_finals_give_no_reply() -> None:
    tt = listening()
    assert final(tt, "", 1.0) == []
    assert final(tt, " ", 1.2, speech_final=True) == []
    assert tt.utterance_end(2.0) == []
    assert phase(tt) is Phase.LISTENING


def test_each_turn_starts_a_fresh_utterance() -> None:
    tt = listening()
    assert [a.text for a in final(tt, "first", 1.0, speech_final=True) if isinstance(a, Reply)] == ["first"]
    tt.bot_started(2.0, interruptible=False)
    tt.bot_finished(3.0)
    assert final(tt, "second", 4.0, speech_final=True) == [Reply("second", speech_end=4.0, final_at=4.0)]


# --- Finalize on local VAD silence -------------------------------------------------------------------------------


def test_finalize_once_after_silence_following_speech() -> None:
    tt = listening()
    assert vad(tt, True, MIN_SPEECH_FRAMES, start=1.0) == []
    assert vad(tt, False, FINALIZE_FRAMES - 1, start=1.1) == []
    assert tt.vad(False, 1.2) == [Finalize()]
    assert vad(tt, False, 50, start=1.22) == []


def test_no_finalize_after_speech_shorter_than_the_minimum() -> None:
    tt = listening()
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=1.0) == []
    assert vad(tt, False, 50, start=1.1) == []


def test_finalize_again_for_the_next_utterance() -> None:
    tt = listening()
    vad(tt, True, MIN_SPEECH_FRAMES, start=1.0)
    assert vad(tt, False, FINALIZE_FRAMES, start=1.1) == [Finalize()]
    vad(tt, True, MIN_SPEECH_FRAMES, start=2.0)
    assert vad(tt, False, FINALIZE_FRAMES, start=2.1) == [Finalize()]


def test_no_finalize_while_the_bot_speaks() -> None:
    tt = speaking(interruptible=False)
    vad(tt, True, MIN_SPEECH_FRAMES, start=1.0)
    assert vad(tt, False, 50, start=1.1) == []


def test_finalize_disabled() -> None:
    tt = listening(TurnConfig(min_speech_ms=5 * FRAME_MS, finalize_silence_ms=0))
    vad(tt, True, MIN_SPEECH_FRAMES, start=1.0)
    assert vad(tt, False, 100, start=1.1) == []


# --- barge-in, stage 1 -------------------------------------------------------------------------------------------


def test_vad_barge_in_after_min_speech() -> None:
    tt = speaking()
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=1.0) == []  # 80 ms of speech, 100 ms needed
    assert phase(tt) is Phase.SPEAKING
    assert tt.vad(True, 1.08) == [Clear()]
    assert phase(tt) is Phase.PAUSED
    assert tt.next_deadline() == pytest.approx(1.08 + CONFIRM_S)
    assert vad(tt, True, 20, start=1.1) == []  # one Clear per barge-in


def test_vad_speech_count_restarts_after_a_silent_frame() -> None:
    tt = speaking()
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=1.0) == []
    assert tt.vad(False, 1.08) == []
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=1.1) == []
    assert phase(tt) is Phase.SPEAKING


def test_vad_speech_count_starts_with_the_bot_audio() -> None:
    tt = thinking()
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=2.0) == []
    tt.bot_started(2.08)
    assert vad(tt, True, MIN_SPEECH_FRAMES - 1, start=2.1) == []  # speech before the bot's audio does not count
    assert tt.vad(True, 2.18) == [Clear()]


def test_speech_started_barges_in() -> None:
    tt = speaking()
    assert tt.speech_started(1.0) == [Clear()]
    assert phase(tt) is Phase.PAUSED


def test_non_empty_interim_barges_in() -> None:
    tt = speaking()
    assert interim(tt, " ", 1.0) == []
    assert phase(tt) is Phase.SPEAKING
    assert interim(tt, "yeah", 1.2) == [Clear()]
    assert phase(tt) is Phase.PAUSED


def test_barge_in_after_the_grace_period() -> None:
    tt = speaking(now=10.0, grace_ms=1000)
    assert tt.speech_started(10.99) == []
    assert tt.speech_started(11.0) == [Clear()]


Trigger = Callable[[TurnTaking, float], list[Action]]
TRIGGERS: dict[str, Trigger] = {
    "vad": lambda tt, now: vad(tt, True, 3 * MIN_SPEECH_FRAMES, start=now),
    "speech_started": lambda tt, now: tt.speech_started(now),
    "interim": lambda tt, now: interim(tt, "hang on", now),
}
NO_BARGE_IN: dict[str, Callable[[], TurnTaking]] = {
    "listening": listening,
    "thinking": thinking,
    "grace_period": lambda: speaking(now=2.0, grace_ms=1000),
    "not_interruptible": lambda: speaking(interruptible=False),
    "barge_in_disabled": lambda: speaking(TurnConfig(barge_in=False, min_speech_ms=5 * FRAME_MS)),
}


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("state", NO_BARGE_IN)
def test_no_barge_in(state: str, trigger: str) -> None:
    tt = NO_BARGE_IN[state]()
    before = tt.phase
    assert TRIGGERS[trigger](tt, 2.5) == []
    assert phase(tt) is before


# --- barge-in, stage 2 -------------------------------------------------------------------------------------------


def test_real_words_interim_cancels_then_the_full_utterance_is_answered() -> None:
    tt = speaking()
    assert vad(tt, True, MIN_SPEECH_FRAMES, start=1.0) == [Clear()]
    barge_in_at = 1.0 + (MIN_SPEECH_FRAMES - 1) * FRAME_S
    assert interim(tt, "wait", 1.3) == [CancelTurn("caller_words")]
    assert phase(tt) is Phase.LISTENING
    assert final(tt, "wait a second", 1.6) == []
    assert final(tt, "please", 2.0, speech_final=True) == [
        Reply("wait a second please", speech_end=barge_in_at, final_at=2.0)
    ]


def test_real_words_final_cancels_then_replies() -> None:
    tt = speaking()
    assert tt.speech_started(1.0) == [Clear()]
    assert final(tt, "stop right there", 1.8, speech_final=True) == [
        CancelTurn("caller_words"),
        Reply("stop right there", speech_end=1.0, final_at=1.8),
    ]


def test_real_words_interim_while_speaking_clears_and_cancels_at_once() -> None:
    tt = speaking()
    assert interim(tt, "no no", 1.0) == [Clear(), CancelTurn("caller_words")]


@pytest.mark.parametrize("text", ["yeah", "Uh-huh.", "yeah okay", "mm-hmm okay"])
def test_backchannel_resumes_without_a_reply(text: str) -> None:
    tt = speaking()
    assert tt.speech_started(1.0) == [Clear()]
    assert interim(tt, text, 1.2) == []
    assert final(tt, text, 1.5, speech_final=True) == [Resume()]
    assert phase(tt) is Phase.SPEAKING
    assert tt.next_deadline() is None
    assert tt.utterance_end(2.5) == []
    assert tt.bot_finished(5.0) == []  # nothing held either


def test_backchannel_final_waits_for_the_end_of_the_utterance() -> None:
    tt = speaking()
    tt.speech_started(1.0)
    assert final(tt, "okay", 1.4) == []
    assert phase(tt) is Phase.PAUSED
    assert final(tt, "", 1.6, speech_final=True) == [Resume()]
    assert tt.bot_finished(5.0) == []
    # The next turn owes nothing to the backchannel: not its text, not its timing.
    assert final(tt, "next question", 8.0, speech_final=True) == [Reply("next question", speech_end=8.0, final_at=8.0)]


def test_backchannel_then_utterance_end_resumes() -> None:
    tt = speaking()
    tt.speech_started(1.0)
    final(tt, "mm-hmm", 1.4)
    assert tt.utterance_end(2.0) == [Resume()]
    assert phase(tt) is Phase.SPEAKING


def test_noise_resumes_at_the_confirm_deadline() -> None:
    tt = speaking()
    assert vad(tt, True, MIN_SPEECH_FRAMES, start=1.0) == [Clear()]
    deadline = 1.0 + (MIN_SPEECH_FRAMES - 1) * FRAME_S + CONFIRM_S
    assert final(tt, "", 1.5) == []
    assert tt.next_deadline() == pytest.approx(deadline)
    assert tt.tick(deadline - 0.01) == []
    assert phase(tt) is Phase.PAUSED
    assert tt.tick(deadline) == [Resume()]
    assert phase(tt) is Phase.SPEAKING
    assert tt.next_deadline() is None
    assert tt.tick(deadline + 10) == []


def test_a_second_barge_in_after_resume() -> None:
    tt = speaking()
    tt.speech_started(1.0)
    assert tt.tick(1.0 + CONFIRM_S) == [Resume()]
    assert tt.speech_started(3.0) == [Clear()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("yeah", True),
        ("Uh-huh.", True),
        ("yeah okay", True),
        ("Okay, yeah!", True),
        ("okay okay okay okay", True),
        ("okay okay okay okay okay", False),
        ("yeah but wait", False),
        ("stop", False),
        ("uh-huh no", False),
    ],
)
def test_only_backchannel(text: str, expected: bool) -> None:
    assert Backchannels(CFG.backchannels).only_backchannel(text) is expected


def test_normalize() -> None:
    assert normalize("Uh-huh.") == "uh huh"
    assert normalize("  Mm-HMM,  OKAY! it's 42 ") == "mm hmm okay it's 42"


def test_yeah_but_wait_is_real_words() -> None:
    tt = speaking()
    tt.speech_started(1.0)
    assert final(tt, "yeah but wait", 1.5, speech_final=True) == [
        CancelTurn("caller_words"),
        Reply("yeah but wait", speech_end=1.0, final_at=1.5),
    ]


# --- speech the bot cannot be interrupted by is answered afterwards ---------------------------------------------


@pytest.mark.parametrize("state", ["not_interruptible", "barge_in_disabled", "grace_period"])
def test_speech_while_not_interruptible_is_answered_after_bot_finished(state: str) -> None:
    tt = NO_BARGE_IN[state]()
    assert final(tt, "what time is it", 2.5, speech_final=True) == []
    assert phase(tt) is Phase.SPEAKING
    assert tt.bot_finished(6.0) == [Reply("what time is it", speech_end=2.5, final_at=2.5)]
    assert phase(tt) is Phase.THINKING
    assert tt.next_deadline() is None  # no idle prompt while the held reply is being answered
    tt.bot_started(7.0, interruptible=False)
    assert tt.bot_finished(8.0) == []  # answered once


def test_held_reply_is_dropped_when_the_caller_barges_in() -> None:
    tt = speaking(grace_ms=1000)
    assert final(tt, "what time is it", 0.5, speech_final=True) == []  # held: said during the grace period
    assert tt.speech_started(2.0) == [Clear()]
    assert final(tt, "hello", 2.5, speech_final=True) == [
        CancelTurn("caller_words"),
        Reply("hello", speech_end=2.0, final_at=2.5),
    ]
    tt.bot_started(3.0)
    assert tt.bot_finished(4.0) == []  # the cancelled turn's held question is not answered later


# --- the caller goes on talking before the reply starts ----------------------------------------------------------


def test_caller_continuing_while_thinking_cancels_and_answers_the_continuation() -> None:
    tt = thinking()
    assert interim(tt, "in paris", 1.5) == []  # interims alone do not cancel
    assert phase(tt) is Phase.THINKING
    # The cancelled reply's question is already in the conversation history, so the new Reply carries only the
    # continuation; the LLM sees both user messages.
    assert final(tt, "in paris", 2.0) == [CancelTurn("caller_continued")]
    assert phase(tt) is Phase.LISTENING
    # Without VAD frames, speech_end falls back to the first result with words (the interim at 1.5).
    assert final(tt, "tomorrow", 2.4, speech_final=True) == [Reply("in paris tomorrow", speech_end=1.5, final_at=2.4)]
    assert phase(tt) is Phase.THINKING


def test_continuation_in_one_final_cancels_and_replies() -> None:
    tt = thinking()
    assert final(tt, "in paris", 2.0, speech_final=True) == [
        CancelTurn("caller_continued"),
        Reply("in paris", speech_end=2.0, final_at=2.0),
    ]


# --- DTMF ----------------------------------------------------------------------------------------------------------


def dtmf_reply(digits: str, now: float) -> Reply:
    return Reply(f"(The caller pressed {digits} on the keypad.)", speech_end=now, final_at=now)


def test_dtmf_collected_until_hash() -> None:
    tt = listening()
    assert tt.dtmf("1", 1.0) == []
    assert tt.dtmf("2", 1.2) == []
    assert tt.dtmf("3", 1.4) == []
    assert tt.dtmf("#", 1.6) == [dtmf_reply("123", 1.6)]
    assert phase(tt) is Phase.THINKING
    assert tt.next_deadline() is None
    assert tt.tick(10.0) == []


def test_dtmf_flushed_after_the_timeout() -> None:
    tt = listening()
    tt.dtmf("4", 1.0)
    tt.dtmf("2", 1.5)
    assert tt.next_deadline() == 1.5 + DTMF_S
    assert tt.tick(1.5 + DTMF_S - 0.01) == []
    assert tt.tick(1.5 + DTMF_S) == [dtmf_reply("42", 1.5 + DTMF_S)]
    assert tt.tick(20.0) == []


def test_hash_alone_is_not_answered() -> None:
    tt = listening()
    assert tt.dtmf("#", 1.0) == []
    assert phase(tt) is Phase.LISTENING


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("speaking", [Clear(), CancelTurn("dtmf")]),
        ("not_interruptible", [Clear(), CancelTurn("dtmf")]),
        ("paused", [CancelTurn("dtmf")]),
        ("thinking", [CancelTurn("dtmf")]),
        ("listening", []),
    ],
)
def test_dtmf_interrupts_the_bot(state: str, expected: list[Action]) -> None:
    makers: dict[str, Callable[[], TurnTaking]] = {
        "speaking": speaking,
        "not_interruptible": lambda: speaking(interruptible=False),
        "paused": speaking,
        "thinking": thinking,
        "listening": listening,
    }
    tt = makers[state]()
    if state == "paused":
        assert tt.speech_started(1.5) == [Clear()]
    assert tt.dtmf("7", 2.0) == expected
    assert phase(tt) is Phase.LISTENING
    assert tt.dtmf("#", 2.5) == [dtmf_reply("7", 2.5)]


# --- idle ------------------------------------------------------------------------------------------------------------


def test_idle_prompt_after_silence() -> None:
    tt = speaking()
    assert tt.next_deadline() is None
    assert tt.bot_finished(10.0) == []
    assert tt.next_deadline() == 10.0 + IDLE_S
    assert tt.tick(10.0 + IDLE_S - 0.01) == []
    assert tt.tick(10.0 + IDLE_S) == [IdlePrompt()]
    assert tt.next_deadline() is None
    assert tt.tick(100.0) == []


def play_prompt(tt: TurnTaking, now: float) -> float:
    """The session plays the idle prompt: returns when it finished."""
    tt.bot_started(now)
    tt.bot_finished(now + 1.0)
    return now + 1.0


def test_idle_reprompts_then_end_call() -> None:
    tt = speaking()
    t = 0.0
    tt.bot_finished(t)
    for _ in range(CFG.idle_reprompts):
        t += IDLE_S
        assert tt.tick(t) == [IdlePrompt()]
        t = play_prompt(tt, t)
    assert tt.tick(t + IDLE_S) == [EndCall("caller_idle")]
    assert phase(tt) is Phase.ENDED
    assert tt.next_deadline() is None
    assert tt.tick(t + 10 * IDLE_S) == []


def test_words_reset_the_reprompt_count() -> None:
    tt = speaking()
    tt.bot_finished(0.0)
    assert tt.tick(IDLE_S) == [IdlePrompt()]
    t = play_prompt(tt, IDLE_S)
    assert final(tt, "sorry, I'm here", t + 1, speech_final=True) != []
    tt.bot_started(t + 2)
    t += 3
    tt.bot_finished(t)
    for _ in range(CFG.idle_reprompts):
        t += IDLE_S
        assert tt.tick(t) == [IdlePrompt()]
        t = play_prompt(tt, t)
    assert tt.tick(t + IDLE_S) == [EndCall("caller_idle")]


def test_speech_resets_the_idle_timer() -> None:
    tt = speaking()
    tt.bot_finished(0.0)
    vad(tt, True, MIN_SPEECH_FRAMES, start=IDLE_S - 1)
    assert tt.tick(IDLE_S) == []
    assert final(tt, "hello", IDLE_S + 0.5, speech_final=True) == [
        Reply("hello", speech_end=IDLE_S - 1 + 4 * FRAME_S, final_at=IDLE_S + 0.5)
    ]


@pytest.mark.parametrize(
    "onset",
    [
        pytest.param(lambda tt, now: vad(tt, True, MIN_SPEECH_FRAMES, start=now), id="vad"),
        pytest.param(lambda tt, now: tt.speech_started(now), id="speech_started"),
    ],
)
def test_speech_without_words_does_not_disarm_the_idle_timer(onset: Trigger) -> None:
    tt = speaking()
    tt.bot_finished(0.0)
    onset(tt, 1.0)  # a cough: the recogniser never produces words
    vad(tt, False, 50, start=1.2)
    assert tt.utterance_end(3.0) == []
    assert tt.next_deadline() is not None
    assert tt.tick(60.0) == [IdlePrompt()]


def test_speech_shorter_than_the_minimum_does_not_touch_the_idle_timer() -> None:
    tt = speaking()
    tt.bot_finished(0.0)
    vad(tt, True, MIN_SPEECH_FRAMES - 1, start=1.0)
    assert tt.next_deadline() == IDLE_S
    assert tt.tick(IDLE_S) == [IdlePrompt()]


def test_idle_deadline_is_pushed_while_an_utterance_is_pending() -> None:
    tt = speaking(interruptible=False)
    assert final(tt, "well", 1.0) == []  # no speech_final yet
    tt.bot_finished(10.0)
    assert tt.tick(10.0 + IDLE_S) == []
    assert tt.next_deadline() == 10.0 + 2 * IDLE_S
    assert tt.utterance_end(16.0) == [Reply("well", speech_end=1.0, final_at=16.0)]


def test_no_idle_prompt_while_thinking() -> None:
    tt = speaking()
    tt.bot_finished(0.0)
    tt.reply_requested()
    assert phase(tt) is Phase.THINKING
    assert tt.next_deadline() is None
    assert tt.tick(100.0) == []


# --- next_deadline ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confirm_ms", "expected"),
    [(500, 1.2 + 0.5), (2000, 1.0 + DTMF_S)],
)
def test_next_deadline_is_the_earliest_of_confirm_and_dtmf(confirm_ms: int, expected: float) -> None:
    tt = listening(TurnConfig(confirm_ms=confirm_ms, dtmf_timeout_s=DTMF_S))
    tt.dtmf("5", 1.0)  # collecting digits when a prompt starts playing
    tt.bot_started(1.1)
    tt.speech_started(1.2)
    assert phase(tt) is Phase.PAUSED
    assert tt.next_deadline() == pytest.approx(expected)


@pytest.mark.parametrize(("idle_s", "expected"), [(1.0, 0.2 + 1.0), (5.0, 0.0 + DTMF_S)])
def test_next_deadline_is_the_earliest_of_idle_and_dtmf(idle_s: float, expected: float) -> None:
    tt = listening(TurnConfig(idle_timeout_s=idle_s, dtmf_timeout_s=DTMF_S))
    tt.dtmf("5", 0.0)
    tt.bot_started(0.1)
    tt.bot_finished(0.2)
    assert tt.next_deadline() == pytest.approx(expected)
    actions = tt.tick(expected)
    assert actions == ([IdlePrompt()] if idle_s < DTMF_S else [dtmf_reply("5", expected)])


# --- after the call ended ------------------------------------------------------------------------------------------

AFTER_ENDED: list[object] = [
    pytest.param(lambda tt: vad(tt, True, 20, start=1.0) + vad(tt, False, 50, start=1.4), id="vad"),
    pytest.param(lambda tt: tt.speech_started(1.0), id="speech_started"),
    pytest.param(lambda tt: interim(tt, "wait", 1.0), id="interim"),
    pytest.param(lambda tt: tt.bot_finished(1.0), id="bot_finished"),
    pytest.param(lambda tt: tt.tick(1000.0), id="tick"),
    pytest.param(lambda tt: tt.dtmf("1", 1.0) + tt.tick(1000.0), id="dtmf_timeout"),
    pytest.param(lambda tt: final(tt, "wait", 1.0, speech_final=True), id="speech_final"),
    pytest.param(lambda tt: final(tt, "wait", 1.0) + tt.utterance_end(2.0), id="utterance_end"),
    pytest.param(lambda tt: tt.dtmf("1", 1.0) + tt.dtmf("#", 1.1), id="dtmf_hash"),
]


@pytest.mark.parametrize("state", ["speaking", "listening"])
@pytest.mark.parametrize("inputs", AFTER_ENDED)
def test_nothing_is_emitted_after_ended(state: str, inputs: Callable[[TurnTaking], list[Action]]) -> None:
    tt = speaking() if state == "speaking" else listening()
    tt.ended()
    assert inputs(tt) == []
    tt.reply_requested()
    tt.bot_started(2.0)
    assert phase(tt) is Phase.ENDED


def test_a_backchannel_while_thinking_does_not_replace_the_pending_answer() -> None:
    tt = TurnTaking(TurnConfig(backchannels=("okay", "uh-huh")))
    tt.reply_requested()
    assert tt.phase is Phase.THINKING
    actions = tt.transcript("Okay.", is_final=True, speech_final=True, from_finalize=False, now=1.0)
    assert actions == []
    assert tt.phase is Phase.THINKING


# --- speculation (preemptive generation) and Flux turn events -----------------------------------------------------

PREEMPTIVE = TurnConfig(
    min_speech_ms=5 * FRAME_MS,
    finalize_silence_ms=25 * FRAME_MS,
    preemptive=True,
    preemptive_silence_ms=8 * FRAME_MS,
    endpoint_silence_ms=15 * FRAME_MS,
    max_speculations=2,
)
FLUX = TurnConfig(min_speech_ms=5 * FRAME_MS, flux=True)


def test_early_finalize_speculates_then_local_silence_confirms() -> None:
    tt = listening(PREEMPTIVE)
    vad(tt, True, 10, start=1.0)
    assert vad(tt, False, 8, start=1.2) == [Finalize()]
    assert final(tt, "Book a table.", 1.4, from_finalize=True) == [Speculate("Book a table.")]
    assert phase(tt) is Phase.LISTENING
    assert vad(tt, False, 6, start=1.36) == []  # 14 frames of silence: not yet the endpoint
    [reply] = vad(tt, False, 1, start=1.48)
    assert isinstance(reply, Reply)
    assert reply.text == "Book a table."
    assert phase(tt) is Phase.THINKING


def test_caller_going_on_drops_the_speculation_and_a_later_pause_tries_again() -> None:
    tt = listening(PREEMPTIVE)
    vad(tt, True, 10, start=1.0)
    assert vad(tt, False, 8, start=1.2) == [Finalize()]
    assert final(tt, "I'd like to book", 1.4, from_finalize=True) == [Speculate("I'd like to book")]
    assert vad(tt, True, 5, start=1.4) == [DropSpeculation("caller_continued")]
    vad(tt, True, 5, start=1.5)
    assert vad(tt, False, 8, start=1.6) == [Finalize()]
    assert final(tt, "for Friday.", 1.8, from_finalize=True) == [Speculate("I'd like to book for Friday.")]
    [reply] = vad(tt, False, 7, start=1.76)
    assert isinstance(reply, Reply)
    assert reply.text == "I'd like to book for Friday."


def test_speculations_are_bounded_per_turn_then_the_usual_finalize_ends_it() -> None:
    tt = listening(PREEMPTIVE)
    t = 1.0
    for words in ("one", "two"):
        vad(tt, True, 10, start=t)
        assert vad(tt, False, 8, start=t + 0.2) == [Finalize()]
        assert len(final(tt, f"and {words}", t + 0.4, from_finalize=True)) == 1
        assert vad(tt, True, 5, start=t + 0.4) == [DropSpeculation("caller_continued")]
        t += 0.6
    vad(tt, True, 10, start=t)
    # No third early Finalize (two were used): only the usual one, after 25 frames, which ends the turn.
    assert vad(tt, False, 24, start=t + 0.2) == []
    assert vad(tt, False, 1, start=t + 0.7) == [Finalize()]
    [reply] = final(tt, "and three.", t + 0.8, from_finalize=True)
    assert isinstance(reply, Reply)
    assert reply.text == "and one and two and three."


def test_the_answer_to_an_early_finalize_after_the_caller_went_on_is_a_piece_not_a_speculation() -> None:
    tt = listening(PREEMPTIVE)
    vad(tt, True, 10, start=1.0)
    assert vad(tt, False, 8, start=1.2) == [Finalize()]
    vad(tt, True, 6, start=1.36)
    assert final(tt, "I'd like", 1.5, from_finalize=True) == []
    assert final(tt, "a pizza.", 2.0, speech_final=True)[0] == Reply("I'd like a pizza.", 1.36 + 5 * FRAME_S, 2.0)


def test_no_speculation_while_the_bot_speaks() -> None:
    tt = speaking(PREEMPTIVE, interruptible=False)
    vad(tt, True, 10, start=1.0)
    assert vad(tt, False, 8, start=1.2) == []
    assert tt.turn_event("eager_end", "hello there", 1.4) == []


def test_flux_turn_events_end_resume_and_barge_in() -> None:
    tt = listening(FLUX)
    assert vad(tt, False, 30, start=0.0) == []  # no Finalize in Flux mode: Flux ends the turn
    assert tt.turn_event("start", "", 1.0) == []
    assert tt.turn_event("update", "Book a", 1.2) == []
    assert tt.turn_event("eager_end", "Book a table", 1.5) == [Speculate("Book a table")]
    assert tt.turn_event("eager_end", "book a table.", 1.5) == []  # the same words: the held reply stands
    assert tt.turn_event("resumed", "Book a table", 1.6) == [DropSpeculation("turn_resumed")]
    # speech_end: the first words seen (no local VAD speech in this test)
    assert tt.turn_event("end", "Book a table for two.", 2.0) == [Reply("Book a table for two.", 1.2, 2.0)]
    tt.bot_started(2.5)
    # StartOfTurn while the bot speaks is stage 1 of a barge-in; the words of the turn confirm it.
    assert tt.turn_event("start", "", 3.0) == [Clear()]
    assert tt.turn_event("update", "Wait, stop", 3.3) == [CancelTurn("caller_words")]


def test_flux_backchannel_turn_resumes_the_bot() -> None:
    tt = speaking(FLUX)
    assert tt.turn_event("start", "", 1.0) == [Clear()]
    assert tt.turn_event("update", "uh-huh", 1.2) == []
    assert tt.turn_event("end", "uh-huh", 1.5) == [Resume()]
