"""Emulator settings: credentials and per-service knobs (mutable, so tests can change them at runtime)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Deepgram Aura REST TTS knobs."""

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
class TwilioConfig:
    """Twilio REST knobs (nothing but faults so far; kept for symmetry and future knobs)."""

    call_status_on_twiml: str = "in-progress"
    """``status`` returned when the update carries ``Twiml`` rather than ``Status``."""


@dataclass
class EmulatorConfig:
    """Everything the emulators need. A ``None`` credential accepts any non-empty one."""

    deepgram_key: str | None = None
    openai_key: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
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
