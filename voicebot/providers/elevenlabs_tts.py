"""ElevenLabs text-to-speech over REST streaming (``POST /v1/text-to-speech/{voice}/stream``), with aiohttp.

``output_format=ulaw_8000`` is raw mu-law at 8 kHz, no header: what Twilio plays. One request per segment, like
Aura over REST, so segments synthesise in parallel and ElevenLabs' per-socket context limit never applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp

from voicebot.errors import ProviderError
from voicebot.providers.tts_common import CONNECT_TIMEOUT_S, SharedCall, shared_call

PROVIDER = "elevenlabs_tts"
TIMEOUT = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=10.0)
"""The bot turn bounds the first byte and every chunk more tightly; this bounds a phrase warm-up."""
OUTPUT_FORMAT = "ulaw_8000"
READ_CHUNK_BYTES = 4096


class ElevenLabsTts:
    """Synthesises one segment per request through a shared aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, *, base_url: str, api_key: str, voice_id: str, model: str) -> None:
        self._http = http
        self._url = f"{base_url.rstrip('/')}/v1/text-to-speech/{voice_id}/stream"
        self._headers = {"xi-api-key": api_key, "accept": "audio/basic"}
        self.model = model

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        body = {"text": text, "model_id": self.model}
        try:
            async with self._http.post(
                self._url, params={"output_format": OUTPUT_FORMAT}, json=body, headers=self._headers, timeout=TIMEOUT
            ) as response:
                if response.status != 200:
                    # The body is not echoed: it may quote the request's text; the status says enough.
                    raise ProviderError.from_status(PROVIDER, f"HTTP {response.status}", response.status)
                yield _chunks(response)
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True) from exc

    def open_call(self) -> AbstractAsyncContextManager[SharedCall]:
        return shared_call(self)


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            if chunk:
                yield chunk
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True) from exc
