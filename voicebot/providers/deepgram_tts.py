"""Deepgram Aura text-to-speech over REST streaming (``speak.v1.audio.generate``), as a :class:`TextToSpeech`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager

import httpx
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError

from voicebot.audio import SAMPLE_RATE
from voicebot.errors import ProviderError
from voicebot.providers.tts_common import SharedCall, shared_call

PROVIDER = "deepgram_tts"


def _translate(exc: BaseException) -> ProviderError:
    if isinstance(exc, ApiError):
        status = exc.status_code or 0
        return ProviderError(PROVIDER, f"HTTP {status}", transient=status >= 500 or status in (408, 429), status=status)
    return ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True)


async def _translated(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in chunks:
            if chunk:
                yield chunk
    except (ApiError, httpx.HTTPError, OSError) as exc:
        raise _translate(exc) from exc


class DeepgramTts:
    """Synthesises one text segment per request: mu-law, 8000 Hz, no container (Twilio forbids file headers)."""

    def __init__(self, client: AsyncDeepgramClient, *, model: str) -> None:
        self._client = client
        self.model = model

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        # An async generator (not awaited); aclosing() aborts the HTTP response at once on barge-in.
        stream = self._client.speak.v1.audio.generate(
            text=text, model=self.model, encoding="mulaw", sample_rate=SAMPLE_RATE, container="none"
        )
        async with aclosing(stream):
            translated = _translated(stream)
            async with aclosing(translated):
                yield translated

    def open_call(self) -> AbstractAsyncContextManager[SharedCall]:
        return shared_call(self)
