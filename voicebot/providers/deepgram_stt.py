"""Deepgram live speech-to-text (``listen.v1``) through deepgram-sdk, as an :class:`SpeechToText`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import websockets.exceptions
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.listen.v1.types import ListenV1Error, ListenV1Results, ListenV1SpeechStarted, ListenV1UtteranceEnd

from voicebot.audio import SAMPLE_RATE
from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import SpeechStarted, SttEvent, Transcript, UtteranceEnd
from voicebot.providers.deepgram_socket import opened, raw_socket

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

    def events(self) -> AsyncIterator[SttEvent]:
        return socket_events(self._conn, _decoded, _from_sdk)


async def socket_events(
    conn: Any, decoded: Callable[[str | bytes], SttEvent | None], from_sdk: Callable[[Any], SttEvent | None]
) -> AsyncIterator[SttEvent]:
    """A recogniser socket's events (Nova's or Flux's), its errors as :class:`ProviderError`. On our transport the
    JSON is decoded by ``decoded``: the SDK's per-message model building (``construct_type`` over the union of the
    socket's message types) costs 90-190 us per result on this machine, this a few (BENCHMARKS.md, "Round 5").
    Should an SDK release stop keeping the transport where :func:`raw_socket` finds it, the SDK's parse takes over
    (``from_sdk``: slower, the same events), rather than the recogniser failing."""
    socket = raw_socket(conn)
    try:
        if socket is not None:
            async for data in socket:
                event = decoded(data)
                if event is not None:
                    yield event
        else:
            async for msg in conn:
                event = from_sdk(msg)
                if event is not None:
                    yield event
    except SDK_ERRORS as exc:
        raise _translate(exc) from exc
    # A normal close (1000) ends the iterator: the stream is over, which the session treats as a drop.
    raise ProviderError(PROVIDER, "stream ended", transient=True)


def _from_sdk(msg: Any) -> SttEvent | None:
    """One message as the SDK parsed it (the SDK's own socket, or a transport that is not ours)."""
    if isinstance(msg, ListenV1Results):
        alternatives = msg.channel.alternatives
        return Transcript(
            text=alternatives[0].transcript if alternatives else "",
            is_final=bool(msg.is_final),
            speech_final=bool(msg.speech_final),
            from_finalize=bool(getattr(msg, "from_finalize", False)),
            audio_end_s=float(msg.start) + float(msg.duration),
        )
    if isinstance(msg, ListenV1SpeechStarted):
        return SpeechStarted(audio_s=float(msg.timestamp))
    if isinstance(msg, ListenV1UtteranceEnd):
        return UtteranceEnd(last_word_end_s=float(msg.last_word_end))
    if isinstance(msg, ListenV1Error):
        log.warning("stt_error_message", description=str(getattr(msg, "description", ""))[:200])
    return None


def _decoded(data: str | bytes) -> SttEvent | None:
    """One message from the socket, decoded as PROVIDERS.md §1.2 describes it; the same event as :func:`_from_sdk`
    gives for the SDK's parse of it (``tests/test_deepgram_socket.py``). A message that is not JSON of that shape is
    skipped and logged, as the SDK skips what it cannot parse."""
    if isinstance(data, bytes):
        return None
    try:
        return _event(orjson.loads(data))
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError, AttributeError):
        log.warning("stt_bad_message", message=data[:200])
        return None


def _event(msg: dict[str, Any]) -> SttEvent | None:
    kind = msg["type"]
    if kind == "Results":
        alternatives = msg["channel"]["alternatives"]
        return Transcript(
            text=str(alternatives[0]["transcript"]) if alternatives else "",
            is_final=bool(msg.get("is_final")),
            speech_final=bool(msg.get("speech_final")),
            from_finalize=bool(msg.get("from_finalize")),
            audio_end_s=float(msg["start"]) + float(msg["duration"]),
        )
    if kind == "SpeechStarted":
        return SpeechStarted(audio_s=float(msg["timestamp"]))
    if kind == "UtteranceEnd":
        return UtteranceEnd(last_word_end_s=float(msg["last_word_end"]))
    if kind == "Error":
        log.warning("stt_error_message", description=str(msg.get("description", ""))[:200])
    return None  # Metadata, and anything newer


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
                await opened(conn)
                yield DeepgramSttStream(conn)
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc
