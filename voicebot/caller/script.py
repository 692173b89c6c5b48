"""The steps of a caller script: what the simulated caller says and waits for, in order."""

from __future__ import annotations

import array
from dataclasses import dataclass

from voicebot import clips
from voicebot.audio import FRAME_BYTES, MULAW_SILENCE, ulaw_to_pcm16

DEFAULT_WAIT_S = 15.0
SOUND_THRESHOLD = 100
"""Peak sample (16-bit scale, about -50 dBFS) above which a frame has sound rather than (near) silence."""


def resolve_audio(audio: str | bytes) -> bytes:
    """A clip name or raw mu-law bytes, padded with silence to whole 20 ms frames."""
    data = clips.load(audio) if isinstance(audio, str) else audio
    return data + bytes([MULAW_SILENCE]) * (-len(data) % FRAME_BYTES)


def voiced_frames(audio: bytes) -> tuple[int, int]:
    """Indices of the first and last 20 ms frame with sound; the whole span if there is none.

    Clips carry ~100 ms of silence each side: the caller's speech start/end events mark the sound, not the
    padding, so that turn latency runs from when the caller really stopped talking.
    """
    loud = []
    for index in range(len(audio) // FRAME_BYTES):
        samples = array.array("h", ulaw_to_pcm16(audio[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]))
        if max(samples, default=0) > SOUND_THRESHOLD or -min(samples, default=0) > SOUND_THRESHOLD:
            loud.append(index)
    if not loud:
        return 0, max(0, len(audio) // FRAME_BYTES - 1)
    return loud[0], loud[-1]


@dataclass(frozen=True, slots=True)
class Say:
    """Speak a clip (by name, see voicebot.clips) or raw mu-law bytes; the step ends after its last frame."""

    audio: str | bytes
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (self.audio if isinstance(self.audio, str) else f"{len(self.audio)} bytes")


@dataclass(frozen=True, slots=True)
class Silence:
    """Say nothing for ``ms`` (the caller keeps streaming silent frames, as Twilio does)."""

    ms: int


@dataclass(frozen=True, slots=True)
class WaitForBotAudio:
    """Wait until bot audio is playing (returns at once if it already is)."""

    timeout: float = DEFAULT_WAIT_S


@dataclass(frozen=True, slots=True)
class WaitForBotSilence:
    """Wait until bot audio has stopped and nothing is buffered, and has stayed so for ``quiet_ms``."""

    timeout: float = DEFAULT_WAIT_S
    quiet_ms: int = 0


@dataclass(frozen=True, slots=True)
class SayWhileBotSpeaks:
    """Barge in: start speaking ``after_ms`` after bot audio started (waiting for it to start if needed)."""

    audio: str | bytes
    after_ms: int = 500
    timeout: float = DEFAULT_WAIT_S
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (self.audio if isinstance(self.audio, str) else f"{len(self.audio)} bytes")


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Press a key: Twilio sends a ``dtmf`` message."""

    digit: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """Send ``stop`` and close the WebSocket, as Twilio does when the caller hangs up."""


Step = Say | Silence | WaitForBotAudio | WaitForBotSilence | SayWhileBotSpeaks | Dtmf | HangUp
