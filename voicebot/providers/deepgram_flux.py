"""Deepgram Flux (``listen.v2``, conversational STT with end-of-turn detection) through deepgram-sdk.

Flux reports turns, not results: ``StartOfTurn``, ``Update``, ``EagerEndOfTurn``, ``TurnResumed``, ``EndOfTurn``
(PROVIDERS-2.md §2), translated here into :class:`TurnEvent`. Flux sockets die without audio and a JSON KeepAlive
closes them, so :meth:`FluxSttStream.keep_alive` sends silence instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from deepgram import AsyncDeepgramClient
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v2.socket_client import V2SocketClientResponse
from deepgram.listen.v2.types import ListenV2FatalError, ListenV2TurnInfo

from voicebot.audio import SAMPLE_RATE, silence
from voicebot.logs import get_logger
from voicebot.providers.base import SttEvent, TurnEvent, TurnEventKind
from voicebot.providers.deepgram_socket import opened
from voicebot.providers.deepgram_stt import PROVIDER, SDK_ERRORS, socket_events, translate_socket_error

log = get_logger("voicebot.stt")

FLUX_CHUNK_MS = 80
"""Flux's recommended audio message size (four Twilio frames)."""
_KEEPALIVE_AUDIO = silence(FLUX_CHUNK_MS)
_EVENTS: dict[str, TurnEventKind] = {
    "StartOfTurn": "start",
    "Update": "update",
    "EagerEndOfTurn": "eager_end",
    "TurnResumed": "resumed",
    "EndOfTurn": "end",
}


def warm_stt_paths() -> None:
    """Build the SDK's message parsing once at startup, not while parsing a caller's first result: the first
    ``construct_type`` over a socket's response union costs 10-20 ms (measured), later ones a fraction of a ms.
    (On our socket transport the recognisers' messages are decoded without it; this keeps the SDK's path warm for
    any other.)"""
    results = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.0,
        "start": 0.0,
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": "ok",
                    "confidence": 1.0,
                    "words": [{"word": "ok", "start": 0, "end": 1, "confidence": 1.0, "punctuated_word": "Ok."}],
                }
            ]
        },
        "metadata": {"request_id": "warmup", "model_info": {"name": "", "version": "", "arch": ""}, "model_uuid": ""},
    }
    v1 = [
        results,
        {"type": "SpeechStarted", "channel": [0], "timestamp": 0.0},
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.0},
    ]
    turn_info = {
        "type": "TurnInfo",
        "request_id": "warmup",
        "sequence_id": 0,
        "event": "EndOfTurn",
        "turn_index": 0,
        "audio_window_start": 0.0,
        "audio_window_end": 1.0,
        "transcript": "ok",
        "words": [{"word": "ok", "confidence": 1.0}],
        "end_of_turn_confidence": 1.0,
    }
    v1_union: Any = V1SocketClientResponse  # a typing Union, as the SDK passes it
    v2_union: Any = V2SocketClientResponse
    for message in v1:
        construct_type(type_=v1_union, object_=message)
    construct_type(type_=v2_union, object_=turn_info)


class FluxSttStream:
    """One Flux connection; sends audio, yields translated turn events."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def send_audio(self, audio: bytes) -> None:
        if not audio:
            return
        try:
            await self._conn.send_media(audio)
        except SDK_ERRORS as exc:
            raise translate_socket_error(PROVIDER, exc) from exc

    async def keep_alive(self) -> None:
        """Silence, not a KeepAlive message: Flux closes the socket on a JSON KeepAlive."""
        await self.send_audio(_KEEPALIVE_AUDIO)

    async def finalize(self) -> None:
        """Flux decides the end of the turn itself; a local-VAD Finalize has no Flux equivalent worth sending."""

    def events(self) -> AsyncIterator[SttEvent]:
        return socket_events(self._conn, _decoded, _from_sdk)


def _from_sdk(msg: Any) -> TurnEvent | None:
    """One Flux message as the SDK parsed it (a transport that is not ours)."""
    if isinstance(msg, ListenV2TurnInfo):
        kind = _EVENTS.get(str(msg.event))
        return None if kind is None else TurnEvent(kind, msg.transcript, int(msg.turn_index))
    if isinstance(msg, ListenV2FatalError):
        log.warning("stt_error_message", code=str(msg.code)[:80], description=str(msg.description)[:200])
    return None


def _decoded(data: str | bytes) -> TurnEvent | None:
    """One Flux message from the socket (PROVIDERS-2.md §2); the same event as :func:`_from_sdk` gives for the
    SDK's parse of it (``tests/test_deepgram_socket.py``). A message of another shape is skipped and logged."""
    if isinstance(data, bytes):
        return None
    try:
        msg = orjson.loads(data)
        kind = msg["type"]
        if kind == "TurnInfo":
            event = _EVENTS.get(str(msg["event"]))
            return None if event is None else TurnEvent(event, str(msg["transcript"]), int(msg["turn_index"]))
        if kind == "Error":
            log.warning(
                "stt_error_message", code=str(msg.get("code"))[:80], description=str(msg.get("description"))[:200]
            )
        return None  # Connected, ConfigureSuccess/Failure, Warning, and anything newer
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError):
        log.warning("stt_bad_message", message=data[:200])
        return None


class DeepgramFlux:
    """Opens one Flux stream per call with the settings' thresholds."""

    chunk_ms = FLUX_CHUNK_MS

    def __init__(
        self,
        client: AsyncDeepgramClient,
        *,
        model: str,
        eot_threshold: float | None,
        eager_eot_threshold: float | None,
        eot_timeout_ms: int | None,
    ) -> None:
        self._client = client
        options: dict[str, Any] = {
            "model": model,
            "encoding": "mulaw",
            "sample_rate": SAMPLE_RATE,
            "eot_threshold": eot_threshold,
            "eager_eot_threshold": eager_eot_threshold,
            "eot_timeout_ms": eot_timeout_ms,
        }
        self._options = {k: v for k, v in options.items() if v is not None}

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[FluxSttStream]:
        try:
            async with self._client.listen.v2.connect(**self._options) as conn:
                await opened(conn)
                yield FluxSttStream(conn)
        except SDK_ERRORS as exc:
            raise translate_socket_error(PROVIDER, exc) from exc
