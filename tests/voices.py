"""The voices every conversation-level guarantee is checked with: Aura over REST (the default) and over its socket,
ElevenLabs and Cartesia, each against its emulator.

A test opts in with ``@all_voices``; others run with the default voice only. Every voice is configured with the
same model id: the emulators key their deterministic synthesiser by model id, so the byte-exact expectations
(``audio_of``, ``speech``) are the same whichever voice speaks. (The model id each provider receives is checked in
tests/test_voices.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from voicebot.settings import Settings

ELEVENLABS_KEY = "el-test-key"
CARTESIA_KEY = "cartesia-test-key"
VOICE_ID = "test-voice"
TTS_MODEL: str = Settings.model_fields["deepgram_tts_model"].default
"""The default Aura voice, which tests/world.py's ``audio_of`` speaks with."""


@dataclass(frozen=True)
class VoiceCase:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    parallel: bool = True
    """Segments are synthesised in parallel (REST, Cartesia contexts); the Aura socket serialises them."""

    def configure(self, base_url: str) -> dict[str, Any]:
        """Settings for a server whose providers are the emulators at ``base_url``."""
        return {**self.settings, "elevenlabs_base_url": base_url, "cartesia_base_url": base_url}


VOICES = {
    case.name: case
    for case in (
        VoiceCase("deepgram_rest"),
        VoiceCase("deepgram_websocket", {"deepgram_tts_transport": "websocket"}, parallel=False),
        VoiceCase(
            "elevenlabs",
            {
                "tts_provider": "elevenlabs",
                "elevenlabs_api_key": ELEVENLABS_KEY,
                "elevenlabs_voice_id": VOICE_ID,
                "elevenlabs_model": TTS_MODEL,
            },
        ),
        VoiceCase(
            "cartesia",
            {
                "tts_provider": "cartesia",
                "cartesia_api_key": CARTESIA_KEY,
                "cartesia_voice_id": VOICE_ID,
                "cartesia_model": TTS_MODEL,
            },
        ),
    )
}
DEFAULT_VOICE = "deepgram_rest"

all_voices = pytest.mark.parametrize("voice", list(VOICES), indirect=True)
"""Run the test once per voice (the ``voice`` fixture in conftest.py)."""
