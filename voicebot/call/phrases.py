"""Fixed phrases (greeting, apology, idle prompt, goodbye) synthesised once per process and kept in memory, so the
first audio of a call costs no TTS round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import TextToSpeech

log = get_logger("voicebot.call.phrases")

PHRASE_TIMEOUT_S = 15.0
MAX_PHRASE_BYTES = 8000 * 60  # one minute of audio: a fixed phrase longer than that is a configuration mistake


class PhraseCache:
    """Audio for a small set of texts, filled at startup and on first use after a failed warm-up."""

    def __init__(self, tts: TextToSpeech) -> None:
        self._tts = tts
        self._audio: dict[str, bytes] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.warmed = asyncio.Event()
        """Set once the startup warm-up has finished (whether or not every phrase could be synthesised)."""

    def cached(self, text: str) -> bytes | None:
        return self._audio.get(text)

    async def get(self, text: str) -> bytes:
        """The phrase's audio, synthesising it now if the warm-up did not (raises ProviderError on failure)."""
        audio = self._audio.get(text)
        if audio is not None:
            return audio
        lock = self._locks.setdefault(text, asyncio.Lock())
        async with lock:
            audio = self._audio.get(text)
            if audio is None:
                audio = await self._synthesize(text)
                self._audio[text] = audio
        return audio

    async def warm(self, texts: Iterable[str]) -> None:
        """Synthesise every phrase; failures are logged and retried lazily on first use."""
        try:
            for text in dict.fromkeys(t for t in texts if t):
                try:
                    await self.get(text)
                except (ProviderError, TimeoutError) as exc:
                    log.warning("phrase_warmup_failed", error=str(exc) or "timed out", chars=len(text))
        finally:
            self.warmed.set()

    async def _synthesize(self, text: str) -> bytes:
        buffer = bytearray()
        async with asyncio.timeout(PHRASE_TIMEOUT_S), self._tts.synthesize(text) as chunks:
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) > MAX_PHRASE_BYTES:
                    raise ProviderError("phrases", "fixed phrase audio is longer than a minute", transient=False)
        if not buffer:
            raise ProviderError("phrases", "no audio for a fixed phrase", transient=True)
        return bytes(buffer)
