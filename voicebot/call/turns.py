"""Turn-taking: who speaks now, when the caller's turn ends, and barge-in in two stages. Sans-I/O.

Inputs are method calls carrying ``now`` (seconds, monotonic); each returns the actions the session must carry out.
No clocks, no sockets: every rule below is unit-tested without sleeping.

Speculation (preemptive generation, see DESIGN.md "A speculative turn"): once the caller's words are known with
confidence while the turn may be ending — the answer to an early :class:`Finalize` sent after
``preemptive_silence_ms`` of local silence, or Flux's EagerEndOfTurn — the machine asks for a :class:`Speculate`;
the caller going on (local VAD speech, or Flux's TurnResumed) gives :class:`DropSpeculation`; the confirmed end of
the turn is the usual :class:`Reply`, which the session adopts the speculation for when the words are the same.
In the Nova mode the end of a speculated turn is confirmed locally: ``endpoint_silence_ms`` of VAD silence (the
recogniser's own endpointing rule), or the recogniser's ``speech_final``/``UtteranceEnd``, whichever comes first.
At most ``max_speculations`` per caller turn, and never while the bot speaks.

Barge-in (see DESIGN.md): stage 1 — while the bot speaks (after the grace period, if interruptible), local VAD
speech for ``min_speech_ms``, Deepgram ``SpeechStarted`` or a non-empty interim transcript → :class:`Clear` at once
and pause. Stage 2 — real words (anything but a backchannel) → :class:`CancelTurn`; a backchannel, silence or noise
until ``confirm_ms`` → :class:`Resume` the cut reply.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from voicebot.audio import FRAME_MS

# --- actions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clear:
    """Stage 1: stop the bot's audio now (Twilio ``clear``) and hold the rest of the reply."""


@dataclass(frozen=True, slots=True)
class Resume:
    """False alarm: play the held reply again from the last played mark."""


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Stage 2: the caller really took the floor; cancel the bot's turn (LLM, TTS, queued audio)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The caller's turn is complete: answer ``text``. ``speech_end`` is when the caller stopped speaking."""

    text: str
    speech_end: float
    final_at: float


@dataclass(frozen=True, slots=True)
class Finalize:
    """Local VAD heard the caller go quiet: ask the recogniser to finalise now."""


@dataclass(frozen=True, slots=True)
class IdlePrompt:
    """The caller has been silent too long: ask whether they are still there."""


@dataclass(frozen=True, slots=True)
class EndCall:
    """Say goodbye and hang up (too many idle prompts)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Speculate:
    """The caller may have finished with ``text``: start the reply now, held until a :class:`Reply` adopts it."""

    text: str


@dataclass(frozen=True, slots=True)
class DropSpeculation:
    """The caller went on: abort the held reply at once."""

    reason: str


Action = Clear | Resume | CancelTurn | Reply | Finalize | IdlePrompt | EndCall | Speculate | DropSpeculation


class Phase(enum.Enum):
    LISTENING = "listening"  # the bot is silent and waits for the caller
    THINKING = "thinking"  # a reply was requested; no audio of it has started yet
    SPEAKING = "speaking"  # the bot's audio is playing
    PAUSED = "paused"  # stage 1 barge-in: audio cleared, waiting for words to confirm
    ENDED = "ended"


@dataclass(frozen=True)
class TurnConfig:
    barge_in: bool = True
    min_speech_ms: int = 100
    confirm_ms: int = 1200
    finalize_silence_ms: int = 500
    idle_timeout_s: float = 8.0
    idle_reprompts: int = 2
    dtmf_timeout_s: float = 1.5
    backchannels: tuple[str, ...] = ("uh-huh", "mm-hmm", "yeah", "okay")
    flux: bool = False  # the recogniser reports turns (Deepgram Flux): no Finalize, turn events end the turn
    preemptive: bool = False  # speculate on an early Finalize's answer (the Nova mode; Flux speculates on eager)
    preemptive_silence_ms: int = 60
    endpoint_silence_ms: int = 300
    max_speculations: int = 2


_WORD_RE = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> str:
    """Lower-case words only: 'Uh-huh.' → 'uh huh'."""
    return " ".join(_WORD_RE.findall(text.lower().replace("-", " ")))


class Backchannels:
    """Recognises short acknowledgements ("uh-huh", "yeah okay") that must not interrupt the bot."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self._phrases = {normalize(p) for p in phrases if normalize(p)}
        self._words = {w for p in self._phrases for w in p.split()}

    def only_backchannel(self, text: str) -> bool:
        """True for empty text (noise) and for text made only of backchannel phrases."""
        norm = normalize(text)
        if not norm or norm in self._phrases:
            return True
        return all(word in self._words for word in norm.split()) and len(norm.split()) <= 4


@dataclass
class _Utterance:
    finals: list[str] = field(default_factory=list)
    last_speech_at: float | None = None
    has_words: bool = False

    def text(self) -> str:
        return " ".join(t.strip() for t in self.finals if t.strip())


class TurnTaking:
    """The state machine; the session feeds it events and carries out the returned actions in order."""

    def __init__(self, config: TurnConfig) -> None:
        self.config = config
        self.backchannels = Backchannels(config.backchannels)
        self.phase = Phase.LISTENING
        self.interruptible = True
        self._grace_until = 0.0
        self._speech_frames = 0
        self._silence_frames = 0
        self._in_speech = False
        self._utterance = _Utterance()
        self._held_reply: Reply | None = None
        self._confirm_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._finalize_sent = False
        self._reprompts = 0
        self._dtmf: list[str] = []
        self._dtmf_deadline: float | None = None
        self._min_speech_frames = max(1, config.min_speech_ms // FRAME_MS)
        self._finalize_frames = (
            max(1, config.finalize_silence_ms // FRAME_MS) if config.finalize_silence_ms and not config.flux else 0
        )
        self._early_frames = max(1, config.preemptive_silence_ms // FRAME_MS)
        self._endpoint_frames = max(1, config.endpoint_silence_ms // FRAME_MS)
        self._speculation: str | None = None  # text of the held reply, if one runs
        self._speculations = 0  # started in this caller turn
        self._early_finalizes = 0  # early Finalizes not yet answered
        self._confirming = False  # a speculation waits for the local end-of-turn silence

    # --- bot side ------------------------------------------------------------------------------------------------

    def reply_requested(self) -> None:
        """The session started a bot turn for a Reply; audio will follow."""
        if self.phase is not Phase.ENDED:
            self.phase = Phase.THINKING
            self._idle_deadline = None

    def bot_started(self, now: float, *, interruptible: bool = True, grace_ms: int = 0) -> None:
        """The first audio of a bot turn went out."""
        if self.phase is Phase.ENDED:
            return
        self.phase = Phase.SPEAKING
        self.interruptible = interruptible
        self._grace_until = now + grace_ms / 1000
        self._idle_deadline = None
        self._speech_frames = 0

    def bot_finished(self, now: float) -> list[Action]:
        """All audio of the bot's turn has played (its last mark echoed), or the turn ended without audio."""
        if self.phase is Phase.ENDED:
            return []
        self.phase = Phase.LISTENING
        self._confirm_deadline = None
        self._idle_deadline = now + self.config.idle_timeout_s
        if self._held_reply is not None:
            reply, self._held_reply = self._held_reply, None
            return self._start_reply(reply)
        return []

    def ended(self) -> None:
        self.phase = Phase.ENDED

    # --- caller side -------------------------------------------------------------------------------------------

    def vad(self, is_speech: bool, now: float) -> list[Action]:
        """One 20 ms inbound frame classified by the local VAD."""
        if is_speech:
            self._speech_frames += 1
            self._silence_frames = 0
            if self._speech_frames >= self._min_speech_frames:
                if not self._in_speech:
                    self._in_speech = True
                    self._finalize_sent = False
                self._utterance.last_speech_at = now
                self._push_idle(now)
                if self._can_barge_in(now):
                    return self._stage_one(now)
                if self._speculation is not None and not self.config.flux:
                    return self._drop("caller_continued")
            return []
        self._speech_frames = 0
        self._silence_frames += 1
        if self._confirming and self._silence_frames >= self._endpoint_frames and self.phase is Phase.LISTENING:
            return self._end_of_utterance(now)  # the recogniser's endpointing rule, measured locally
        if (
            self.config.preemptive
            and self._in_speech
            and self._silence_frames == self._early_frames
            and not self._finalize_sent
            and self.phase is Phase.LISTENING
            and self._speculations < self.config.max_speculations
        ):
            # The answer starts a speculation instead of ending the turn. Out of speech, so that the caller going
            # on makes a new turn segment (and a later pause may speculate again).
            self._in_speech = False
            self._finalize_sent = True
            self._early_finalizes += 1
            return [Finalize()]
        if (
            self._in_speech
            and self._finalize_frames
            and self._silence_frames >= self._finalize_frames
            and not self._finalize_sent
            and self.phase in (Phase.LISTENING, Phase.PAUSED)
        ):
            self._in_speech = False
            self._finalize_sent = True
            return [Finalize()]
        if self._silence_frames >= self._finalize_frames:
            self._in_speech = False
        return []

    def speech_started(self, now: float) -> list[Action]:
        """The recogniser detected speech onset."""
        self._push_idle(now)
        if self._can_barge_in(now):
            return self._stage_one(now)
        return []

    def transcript(
        self, text: str, *, is_final: bool, speech_final: bool, from_finalize: bool, now: float
    ) -> list[Action]:
        """An interim or final recognition result."""
        if self.phase is Phase.ENDED:
            return []
        actions: list[Action] = []
        words = bool(text.strip())
        if words:
            self._push_idle(now)
            self._reprompts = 0
            if self._utterance.last_speech_at is None:
                self._utterance.last_speech_at = now
        real_words = words and not self.backchannels.only_backchannel(text)
        if self.phase is Phase.SPEAKING and words and self._can_barge_in(now):
            actions += self._stage_one(now)
        if self.phase is Phase.PAUSED:
            if real_words:
                actions.append(self._cancel("caller_words"))
            elif is_final and (speech_final or from_finalize):
                # Only a backchannel or noise: the caller did not take the floor.
                self._utterance = _Utterance()
                return [*actions, *self._resume()]
            elif is_final:
                return actions  # a backchannel final: wait for the end of the utterance or the deadline
        if self.phase is Phase.THINKING and real_words and is_final:
            # The caller went on talking before the reply started: answer the whole thing instead.
            actions.append(self._cancel("caller_continued"))
        if is_final and words:
            self._utterance.finals.append(text)
            self._utterance.has_words = self._utterance.has_words or real_words
        if is_final and from_finalize and not speech_final and self._early_finalizes:
            self._early_finalizes -= 1
            return actions + self._early_final(now)
        if is_final and (speech_final or from_finalize):
            actions += self._end_of_utterance(now)
        return actions

    def turn_event(self, event: str, text: str, now: float) -> list[Action]:
        """A Flux turn event (``start``, ``update``, ``eager_end``, ``resumed``, ``end``) with the turn's words."""
        if self.phase is Phase.ENDED:
            return []
        if event == "start":
            return self.speech_started(now)
        if event == "update":
            return self.transcript(text, is_final=False, speech_final=False, from_finalize=False, now=now)
        if event == "eager_end":
            return self._speculate(text)
        if event == "resumed":
            return self._drop("turn_resumed") if self._speculation is not None else []
        if event == "end":
            # Flux's EndOfTurn carries the whole turn: it replaces any pieces seen so far.
            self._utterance.finals.clear()
            return self.transcript(text, is_final=True, speech_final=True, from_finalize=False, now=now)
        return []

    def utterance_end(self, now: float) -> list[Action]:
        """No word for ``utterance_end_ms``: the fallback end of the caller's turn."""
        if self.phase is Phase.ENDED:
            return []
        if self.phase is Phase.PAUSED:
            self._utterance = _Utterance()
            return self._resume()
        return self._end_of_utterance(now)

    def dtmf(self, digit: str, now: float) -> list[Action]:
        """A keypad digit: collected until '#' or a pause, then answered like speech."""
        if self.phase is Phase.ENDED:
            return []
        actions: list[Action] = []
        self._idle_deadline = None
        self._reprompts = 0
        if self.phase in (Phase.SPEAKING, Phase.PAUSED, Phase.THINKING):
            if self.phase is Phase.SPEAKING:
                actions.append(Clear())
            actions.append(self._cancel("dtmf"))
        if digit == "#":
            return actions + self._flush_dtmf(now)
        self._dtmf.append(digit)
        self._dtmf_deadline = now + self.config.dtmf_timeout_s
        return actions

    def tick(self, now: float) -> list[Action]:
        """Timers: the barge-in confirmation window, DTMF collection, the idle prompt."""
        if self.phase is Phase.ENDED:
            return []
        if self.phase is Phase.PAUSED and self._confirm_deadline is not None and now >= self._confirm_deadline:
            self._utterance = _Utterance()
            return self._resume()
        if self._dtmf_deadline is not None and now >= self._dtmf_deadline:
            return self._flush_dtmf(now)
        if self.phase is Phase.LISTENING and self._idle_deadline is not None and now >= self._idle_deadline:
            if self._utterance.finals or self._in_speech:
                self._idle_deadline = now + self.config.idle_timeout_s
                return []
            self._idle_deadline = None
            if self._reprompts < self.config.idle_reprompts:
                self._reprompts += 1
                return [IdlePrompt()]
            self.phase = Phase.ENDED
            return [EndCall("caller_idle")]
        return []

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do (for the session's timer)."""
        deadlines = [d for d in (self._confirm_deadline, self._dtmf_deadline, self._idle_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    # --- internals ---------------------------------------------------------------------------------------------

    def _push_idle(self, now: float) -> None:
        # The caller is making sound: restart the idle timer (not cancel it: noise that never becomes a reply
        # must not switch the idle prompt off for good).
        if self._idle_deadline is not None:
            self._idle_deadline = now + self.config.idle_timeout_s

    def _can_barge_in(self, now: float) -> bool:
        return self.phase is Phase.SPEAKING and self.config.barge_in and self.interruptible and now >= self._grace_until

    def _stage_one(self, now: float) -> list[Action]:
        self.phase = Phase.PAUSED
        self._confirm_deadline = now + self.config.confirm_ms / 1000
        self._utterance = _Utterance(last_speech_at=now)
        return [Clear()]

    def _resume(self) -> list[Action]:
        self.phase = Phase.SPEAKING
        self._confirm_deadline = None
        return [Resume()]

    def _cancel(self, reason: str) -> CancelTurn:
        self.phase = Phase.LISTENING
        self._confirm_deadline = None
        self._held_reply = None
        return CancelTurn(reason)

    def _early_final(self, now: float) -> list[Action]:
        """The answer to an early Finalize: speculate on it, unless the caller has already gone on."""
        if self._in_speech and self._silence_frames < self._early_frames:
            return []  # speaking again: this was a piece of the sentence
        if self._silence_frames >= self._endpoint_frames:
            return self._end_of_utterance(now)  # already confirmed: no need to hold anything
        self._confirming = bool(self._utterance.finals)  # words to answer, held or not: confirm locally
        return self._speculate(self._utterance.text() if self._utterance.has_words else "")

    def _speculate(self, text: str) -> list[Action]:
        if (
            self.phase is not Phase.LISTENING
            or self._speculations >= self.config.max_speculations
            or self.backchannels.only_backchannel(text)
        ):
            return []
        if self._speculation is not None and normalize(self._speculation) == normalize(text):
            return []
        self._speculations += 1
        self._speculation = text
        return [Speculate(text)]

    def _drop(self, reason: str) -> list[Action]:
        self._speculation = None
        self._confirming = False
        return [DropSpeculation(reason)]

    def _end_of_utterance(self, now: float) -> list[Action]:
        utterance, self._utterance = self._utterance, _Utterance()
        self._in_speech = False
        # The Reply (if any) adopts or replaces the speculation; either way this caller turn is over.
        self._speculation = None
        self._speculations = 0
        self._confirming = False
        self._early_finalizes = 0
        text = utterance.text()
        if not text:
            return []
        if self.phase is Phase.THINKING and not utterance.has_words:
            return []  # "okay" while the answer is being prepared: an acknowledgement, not a new question
        reply = Reply(text=text, speech_end=utterance.last_speech_at or now, final_at=now)
        if self.phase in (Phase.SPEAKING, Phase.PAUSED):
            # The caller spoke while the bot could not be interrupted: answer once the bot is done.
            self._held_reply = reply
            return []
        return self._start_reply(reply)

    def _start_reply(self, reply: Reply) -> list[Action]:
        self.phase = Phase.THINKING
        self._idle_deadline = None
        return [reply]

    def _flush_dtmf(self, now: float) -> list[Action]:
        digits, self._dtmf, self._dtmf_deadline = "".join(self._dtmf), [], None
        if not digits:
            return []
        return self._start_reply(
            Reply(text=f"(The caller pressed {digits} on the keypad.)", speech_end=now, final_at=now)
        )
