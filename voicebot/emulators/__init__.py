"""Offline emulators of the providers the bot talks to: Deepgram live STT and Aura TTS, OpenAI chat, Twilio REST.

They speak the real wire protocols (see PROVIDERS.md), so the real SDKs can be pointed at them, and they expose
knobs for latency and injected faults plus a timestamped event log for tests and benchmarks. The Twilio REST
emulator also keeps an account's numbers and places the calls it is asked to create, answering them with the
simulated caller (``voicebot.caller``) as a person or an answering machine.
"""

from __future__ import annotations

from .app import Emulators, running_emulators
from .config import (
    DEFAULT_TRANSCRIPT,
    Callee,
    EmulatedNumber,
    EmulatorConfig,
    LlmConfig,
    SttConfig,
    TtsConfig,
    TwilioConfig,
)
from .deepgram_stt import IDLE_CLOSE_CODE, IDLE_CLOSE_REASON
from .deepgram_tts import synthesize
from .faults import Faults, LlmFaults, SttFaults, TtsFaults
from .log import Event, EventLog
from .openai_chat import LlmReply, ToolCall, invalid_sequence, tokenize

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "IDLE_CLOSE_CODE",
    "IDLE_CLOSE_REASON",
    "Callee",
    "EmulatedNumber",
    "EmulatorConfig",
    "Emulators",
    "Event",
    "EventLog",
    "Faults",
    "LlmConfig",
    "LlmFaults",
    "LlmReply",
    "SttConfig",
    "SttFaults",
    "ToolCall",
    "TtsConfig",
    "TtsFaults",
    "TwilioConfig",
    "invalid_sequence",
    "running_emulators",
    "synthesize",
    "tokenize",
]
