"""The interfaces the call session depends on. Another transport or vendor plugs in by implementing these."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# --- speech-to-text ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The recogniser heard speech begin (Deepgram ``SpeechStarted``)."""

    audio_s: float
    kind: Literal["speech_started"] = "speech_started"


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result: interim (``is_final`` false) or final; ``speech_final`` ends the caller's turn."""

    text: str
    is_final: bool
    speech_final: bool
    from_finalize: bool = False
    audio_end_s: float = 0.0
    kind: Literal["transcript"] = "transcript"


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """No word for ``utterance_end_ms``: the fallback end of the caller's turn."""

    last_word_end_s: float
    kind: Literal["utterance_end"] = "utterance_end"


TurnEventKind = Literal["start", "update", "eager_end", "resumed", "end"]


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """A conversational recogniser's turn event (Deepgram Flux ``TurnInfo``); ``text`` is the turn so far."""

    event: TurnEventKind
    text: str
    turn_index: int = 0
    kind: Literal["turn"] = "turn"


SttEvent = SpeechStarted | Transcript | UtteranceEnd | TurnEvent


class SttStream(Protocol):
    """One live recognition stream for one call."""

    async def send_audio(self, audio: bytes) -> None: ...
    async def keep_alive(self) -> None: ...
    async def finalize(self) -> None: ...
    def events(self) -> AsyncIterator[SttEvent]: ...


class SpeechToText(Protocol):
    def connect(self) -> AbstractAsyncContextManager[SttStream]: ...


# --- language model ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call (arguments already reassembled from the streamed fragments)."""

    id: str
    name: str
    arguments: dict[str, Any]
    kind: Literal["tool_call"] = "tool_call"


LlmEvent = TextDelta | ToolCall
Message = dict[str, Any]


class LanguageModel(Protocol):
    def stream(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]]
    ) -> AbstractAsyncContextManager[AsyncIterator[LlmEvent]]:
        """Open a streamed reply; leaving the context closes the HTTP stream at once (barge-in)."""
        ...


# --- text-to-speech ----------------------------------------------------------------------------------------------


class TextToSpeech(Protocol):
    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream mu-law 8 kHz audio for ``text``; leaving the context aborts the request.

        An empty chunk means "synthesis of this text starts now" (a socket transport that serialises segments
        sends it when the segment's turn comes): the caller restarts its first-byte deadline, nothing is played.
        """
        ...


class TtsCall(Protocol):
    """One call's voice: a socket per call for socket transports, the shared client for REST ones."""

    def for_turn(self) -> TextToSpeech:
        """The voice for one bot turn (a socket transport remembers per turn that it fell back to REST)."""
        ...


class Voice(TextToSpeech, Protocol):
    """A TTS provider: ``synthesize`` for one-off audio (the fixed phrases), ``open_call`` for a call's turns."""

    def open_call(self) -> AbstractAsyncContextManager[TtsCall]:
        """Start the call's connection (in the background: entering does not wait for it); leaving closes it."""
        ...


# --- telephony ---------------------------------------------------------------------------------------------------


class Telephony(Protocol):
    async def hang_up(self, call_sid: str) -> bool:
        """End the call; False when it had already ended (Twilio 20404)."""
        ...

    async def redirect(self, call_sid: str, twiml: str) -> bool: ...
