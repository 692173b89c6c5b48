"""The voice chosen by ``VOICEBOT_TTS_PROVIDER`` (and ``DEEPGRAM_TTS_TRANSPORT``), built from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from deepgram import AsyncDeepgramClient

from voicebot.providers.base import Voice
from voicebot.providers.cartesia_tts import CartesiaTts
from voicebot.providers.deepgram_tts import DeepgramTts
from voicebot.providers.deepgram_tts_ws import DeepgramSpeakVoice
from voicebot.providers.elevenlabs_tts import ElevenLabsTts
from voicebot.providers.pools import PoolUse, aiohttp_session
from voicebot.settings import Settings


def _secret(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter()) if getter is not None else ""


@asynccontextmanager
async def open_voice(settings: Settings, deepgram: AsyncDeepgramClient, pool: PoolUse) -> AsyncIterator[Voice]:
    """The configured voice for the process's lifetime; ElevenLabs and Cartesia get an aiohttp session on ``pool``
    (Aura uses ``deepgram``'s own HTTP client)."""
    rest = DeepgramTts(deepgram, model=settings.deepgram_tts_model)
    if settings.tts_provider == "deepgram":
        if settings.deepgram_tts_transport == "websocket":
            yield DeepgramSpeakVoice(deepgram, rest, model=settings.deepgram_tts_model)
        else:
            yield rest
        return
    async with aiohttp_session(pool) as http:
        if settings.tts_provider == "elevenlabs":
            yield ElevenLabsTts(
                http,
                base_url=settings.elevenlabs_base_url,
                api_key=_secret(settings.elevenlabs_api_key),
                voice_id=settings.elevenlabs_voice_id,
                model=settings.elevenlabs_model,
            )
        else:
            yield CartesiaTts(
                http,
                ws_url=settings.cartesia_ws_url,
                api_key=_secret(settings.cartesia_api_key),
                voice_id=settings.cartesia_voice_id,
                model=settings.cartesia_model,
                version=settings.cartesia_version,
                language=settings.deepgram_language.split("-")[0],
            )
