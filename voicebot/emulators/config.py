"""Emulator settings: credentials and per-service knobs (mutable, so tests can change them at runtime)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from voicebot.caller.script import Say, Step, WaitForBotAudio, WaitForBotSilence

DEFAULT_TRANSCRIPT = "I would like to know your opening hours."
DEFAULT_TTS_MODEL = "aura-asteria-en"  # Deepgram's documented default when ``model`` is absent
DEFAULT_MS_PER_CHAR = 60.0


@dataclass
class SttConfig:
    """Deepgram live STT knobs. Durations in audio time unless they say wall-clock."""

    result_delay_ms: float = 50.0
    """Wall-clock delay added to every server message (Deepgram's processing latency)."""
    idle_timeout_s: float = 10.0
    """Wall-clock seconds without any audio or text message before the 1011 ``NET-0001`` close."""
    speech_rms_threshold: float = 500.0
    """A 20 ms frame whose RMS (16-bit scale) reaches this is voiced."""
    min_speech_ms: float = 40.0
    """Consecutive voiced audio needed to start an utterance (filters clicks)."""
    interim_interval_ms: float = 300.0
    """Audio time between two interim results while speech continues."""
    ms_per_word: float = 250.0
    """Speech time per scripted word: the interim reveals one more word each ``ms_per_word``."""
    no_endpointing_final_ms: float = 1000.0
    """With ``endpointing=false``, silence after which a final (``speech_final: false``) is sent anyway."""
    pause_ms: float = 100.0
    """Silence inside an utterance after which voice starts the next ``" | "`` part of a scripted transcript."""
    flux_complete_silence_ms: float = 500.0
    """Flux: silence after which the end-of-turn confidence reaches 1.0 when the whole scripted sentence is said
    (it rises linearly: with the default ``eot_threshold`` 0.7 the turn ends after 350 ms of silence)."""
    flux_incomplete_silence_ms: float = 1000.0
    """The same while parts of the scripted sentence are still to come: Flux's model hears an unfinished sentence."""
    default_transcript: str = DEFAULT_TRANSCRIPT
    """Transcript used when the script is empty."""
    confidence: float = 0.98
    model_name: str = "general-nova-3"


@dataclass
class TtsConfig:
    """TTS knobs, shared by every emulated voice (Aura REST and socket, ElevenLabs, Cartesia).

    Latency model: ``ttfb_ms`` from request (REST), Flush (Aura socket) or context (Cartesia) to the first audio
    byte, then audio at ``bytes_per_second`` (4x real time by default) in ``chunk_bytes`` pieces; an Aura socket
    synthesises its texts one after another, the others in parallel.
    """

    ttfb_ms: float = 150.0
    """Wall-clock time from request to the first audio byte."""
    ttfb_overrides: dict[str, float] = field(default_factory=dict)
    """Substring of the text -> time to first byte (ms) for matching requests; the first match wins."""
    bytes_per_second: float | None = 32000.0
    """Audio byte rate once streaming (8000 is real time); None streams as fast as the socket takes it."""
    chunk_bytes: int = 800
    """Size of each written body chunk."""
    ms_per_char: float = DEFAULT_MS_PER_CHAR
    """Length of the synthesized audio per character of text."""


@dataclass
class LlmConfig:
    """OpenAI streaming chat knobs."""

    ttft_ms: float = 300.0
    """Wall-clock time from request to the first token."""
    tokens_per_second: float | None = 40.0
    """Token rate after the first; None sends them all at once."""
    model: str = "gpt-4o-mini"
    """Model name echoed when the request does not give one."""


@dataclass
class EmulatedNumber:
    """A phone number on the emulated account (an IncomingPhoneNumber), as the REST API shows it."""

    phone_number: str
    sid: str = ""
    friendly_name: str = ""
    voice_url: str = ""
    voice_method: str = "POST"
    voice_application_sid: str | None = None
    trunk_sid: str | None = None
    status_callback: str = ""
    status_callback_method: str = "POST"

    def __post_init__(self) -> None:
        digits = "".join(ch for ch in self.phone_number if ch.isdigit())
        self.sid = self.sid or "PN" + digits.rjust(32, "0")[-32:]
        self.friendly_name = self.friendly_name or self.phone_number


CalleeScript = Callable[[], list[Step]]


def human_callee_script() -> list[Step]:
    """The default person who answers: hears the greeting out, asks one thing, stays on until the bot hangs up."""
    return [WaitForBotAudio(15.0), WaitForBotSilence(15.0, 700), Say("hours")]


@dataclass
class Callee:
    """Who answers an outbound call the emulator places (``Calls.json``), chosen per test."""

    answered_by: str = "human"
    """``human`` or an AMD verdict (``machine_end_beep``, ``machine_start``, ``fax``, ...): what AMD reports.
    ``no-answer``, ``busy`` and ``failed`` end the call unanswered with that status."""
    script: CalleeScript = human_callee_script
    """What the callee does once the stream is up (a fresh list per call)."""
    ring_ms: float = 0.0
    """Wall-clock time between ``ringing`` and the answer."""
    timeout_s: float = 30.0
    """Longest call; the callee hangs up after it."""


@dataclass
class TwilioConfig:
    """Twilio REST knobs: the account's numbers, who answers placed calls, how the emulator reaches the bot."""

    call_status_on_twiml: str = "in-progress"
    """``status`` returned when the update carries ``Twiml`` rather than ``Status``."""
    numbers: list[EmulatedNumber] = field(default_factory=lambda: [EmulatedNumber("+15550100002")])
    verified_caller_ids: list[str] = field(default_factory=list)
    """Caller ids besides the account's numbers accepted as ``From``."""
    callee: Callee = field(default_factory=Callee)
    reach: dict[str, str] = field(default_factory=dict)
    """Public origin (``https://bot.example.com``) -> where the emulator really connects (``http://127.0.0.1:N``),
    as a tunnel or DNS would; unlisted origins are connected to as they are."""
    connector: Callable[[], aiohttp.BaseConnector] | None = None
    """Makes the HTTP connector for webhooks, callbacks and streams (e.g. one trusting a test CA)."""


@dataclass
class EmulatorConfig:
    """Everything the emulators need. A ``None`` credential accepts any non-empty one."""

    deepgram_key: str | None = None
    openai_key: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    elevenlabs_key: str | None = None
    cartesia_key: str | None = None
    stt: SttConfig = field(default_factory=SttConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)

    @classmethod
    def fast(
        cls,
        *,
        deepgram_key: str | None = None,
        openai_key: str | None = None,
        twilio_account_sid: str | None = None,
        twilio_auth_token: str | None = None,
    ) -> EmulatorConfig:
        """Zero-latency settings for tests: no processing delay, no pacing."""
        return cls(
            deepgram_key=deepgram_key,
            openai_key=openai_key,
            twilio_account_sid=twilio_account_sid,
            twilio_auth_token=twilio_auth_token,
            stt=SttConfig(result_delay_ms=0.0),
            tts=TtsConfig(ttfb_ms=0.0, bytes_per_second=None),
            llm=LlmConfig(ttft_ms=0.0, tokens_per_second=None),
        )
