"""Deepgram live speech-to-text (``listen.v1``) through deepgram-sdk, as an :class:`SpeechToText`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.listen.v1.types import ListenV1Error, ListenV1Results, ListenV1SpeechStarted, ListenV1UtteranceEnd

from voicebot.audio import SAMPLE_RATE
from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import SpeechStarted, SttEvent, Transcript, UtteranceEnd

log = get_logger("voicebot.stt")
PROVIDER = "deepgram_stt"


def translate_socket_error(provider: str, exc: BaseException) -> ProviderError:
    """A deepgram-sdk socket error (refused upgrade, close frame, network) as a :class:`ProviderError`."""
    if isinstance(exc, ApiError):
        status = exc.status_code or 0
        # The SDK drops the server's body and dg-error header on a refused upgrade: only the status is known.
        return ProviderError(
            provider, f"connection refused with HTTP {status}", transient=status >= 500 or status == 429, status=status
        )
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        return ProviderError(provider, f"connection closed ({code} {reason[:80]})", transient=True, status=code)
    return ProviderError(provider, f"{type(exc).__name__}: {exc}", transient=True)


def _translate(exc: BaseException) -> ProviderError:
    return translate_socket_error(PROVIDER, exc)


SDK_ERRORS = (ApiError, websockets.exceptions.WebSocketException, OSError, TimeoutError)


class DeepgramSttStream:
    """One live connection; sends audio and control messages, yields translated events."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def send_audio(self, audio: bytes) -> None:
        if not audio:
            return  # an empty binary frame makes Deepgram close the stream
        try:
            await self._conn.send_media(audio)
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc

    async def keep_alive(self) -> None:
        try:
            await self._conn.send_keep_alive()
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc

    async def finalize(self) -> None:
        try:
            await self._conn.send_finalize()
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc

    async def events(self) -> AsyncIterator[SttEvent]:
        try:
            async for msg in self._conn:
                if isinstance(msg, ListenV1Results):
                    alternatives = msg.channel.alternatives
                    text = alternatives[0].transcript if alternatives else ""
                    yield Transcript(
                        text=text,
                        is_final=bool(msg.is_final),
                        speech_final=bool(msg.speech_final),
                        from_finalize=bool(getattr(msg, "from_finalize", False)),
                        audio_end_s=float(msg.start) + float(msg.duration),
                    )
                elif isinstance(msg, ListenV1SpeechStarted):
                    yield SpeechStarted(audio_s=float(msg.timestamp))
                elif isinstance(msg, ListenV1UtteranceEnd):
                    yield UtteranceEnd(last_word_end_s=float(msg.last_word_end))
                elif isinstance(msg, ListenV1Error):
                    log.warning("stt_error_message", description=str(getattr(msg, "description", ""))[:200])
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc
        # A normal close (1000) ends the iterator: the stream is over, which the session treats as a drop.
        raise ProviderError(PROVIDER, "stream ended", transient=True)


class DeepgramStt:
    """Opens one Deepgram live stream per call with the settings' model and endpointing."""

    def __init__(self, client: AsyncDeepgramClient, *, model: str, language: str, endpointing_ms: int,
                 utterance_end_ms: int) -> None:  # fmt: skip
        self._client = client
        self._options: dict[str, Any] = {
            "model": model,
            "language": language,
            "encoding": "mulaw",
            "sample_rate": SAMPLE_RATE,  # an int: a float is sent as "8000.0"
            "channels": 1,
            "interim_results": True,
            "endpointing": endpointing_ms,
            "utterance_end_ms": utterance_end_ms,
            "vad_events": True,
            "smart_format": True,
            "punctuate": True,
        }

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[DeepgramSttStream]:
        try:
            async with self._client.listen.v1.connect(**self._options) as conn:
                yield DeepgramSttStream(conn)
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc
