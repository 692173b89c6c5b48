"""Cartesia text-to-speech over its WebSocket (``/tts/websocket``), with aiohttp: one socket per call.

Each segment is its own context (``continue: false``, the whole sentence at once), so segments synthesise in
parallel on one socket and the bot turn plays them strictly in order. Output is raw ``pcm_mulaw`` at 8000 Hz.
Cancelling a context only stops work not yet started: audio already generating keeps arriving, so chunks of an
abandoned context are dropped here (fencing). PROVIDERS-2.md §4.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Any

import aiohttp
import orjson

from voicebot.audio import SAMPLE_RATE
from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import TextToSpeech
from voicebot.providers.tts_common import CONNECT_TIMEOUT_S, SocketConnection, SocketSegment

log = get_logger("voicebot.tts")
PROVIDER = "cartesia_tts"
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": SAMPLE_RATE}
CANCELLED_REMEMBERED = 64
"""Contexts cancelled recently whose late chunks are dropped quietly (older ones are dropped as unknown)."""
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class CartesiaCall(SocketConnection[aiohttp.ClientWebSocketResponse]):
    """One call's Cartesia socket; every segment is a context on it."""

    provider = PROVIDER

    def __init__(self, voice: CartesiaTts) -> None:
        super().__init__()
        self._voice = voice
        self.contexts: dict[str, SocketSegment] = {}
        self._cancelled: deque[str] = deque(maxlen=CANCELLED_REMEMBERED)
        self.dropped_bytes = 0

    def for_turn(self) -> TextToSpeech:
        return self

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        await self.ready()
        context_id = uuid.uuid4().hex
        segment = SocketSegment(text)
        self.contexts[context_id] = segment
        self.send(self._voice.request(context_id, text))
        segment.start()
        try:
            async with aclosing(segment.chunks()) as chunks:
                yield chunks
        finally:
            if self.contexts.pop(context_id, None) is not None and segment.open:
                segment.abandoned = True
                self._cancelled.append(context_id)
                self.send({"context_id": context_id, "cancel": True})

    # --- the socket ---

    def _connect(self) -> AbstractAsyncContextManager[aiohttp.ClientWebSocketResponse]:
        return self._voice.connect()

    async def _send(self, conn: aiohttp.ClientWebSocketResponse, message: object) -> None:
        try:
            await conn.send_str(orjson.dumps(message).decode())
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True) from exc

    async def _read(self, conn: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in conn:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_message(msg.data)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    raise ProviderError(PROVIDER, f"socket error: {conn.exception()!r}", transient=True)
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True) from exc
        code = conn.close_code
        raise ProviderError(PROVIDER, f"connection closed ({code})", transient=True, status=code)

    def _on_message(self, data: str) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("tts_bad_message", provider=PROVIDER)
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        context_id = message.get("context_id")
        segment = self.contexts.get(context_id) if isinstance(context_id, str) else None
        if kind == "chunk":
            try:
                audio = base64.b64decode(message.get("data") or "", validate=True)
            except (binascii.Error, TypeError):
                log.warning("tts_bad_message", provider=PROVIDER, kind=kind)
                return
            if segment is None:
                self.dropped_bytes += len(audio)  # a cancelled context still generating: fenced off
            else:
                segment.feed(audio)
        elif kind == "done":
            if segment is not None:
                self.contexts.pop(context_id, None)  # type: ignore[arg-type]
                segment.finish()
        elif kind == "error":
            status = message.get("status_code")
            text = str(message.get("title") or message.get("error") or "error")[:120]
            error = (
                ProviderError.from_status(PROVIDER, f"{text} ({status})", status)
                if isinstance(status, int)
                else ProviderError(PROVIDER, text, transient=True)
            )
            if segment is not None:
                self.contexts.pop(context_id, None)  # type: ignore[arg-type]
                segment.fail(error)
            elif context_id is None:
                raise error  # not about one context: the connection is unusable
            # else: an error for a context we cancelled; nothing waits for it

    def _on_failure(self, error: ProviderError) -> None:
        contexts, self.contexts = self.contexts, {}
        for segment in contexts.values():
            segment.fail(error)


class CartesiaTts:
    """Cartesia's voice: each call's turns over the call's socket; fixed phrases over a short-lived one."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        ws_url: str,
        api_key: str,
        voice_id: str,
        model: str,
        version: str,
        language: str = "en",
    ) -> None:
        self._http = http
        self._url = ws_url
        self._headers = {"Authorization": f"Bearer {api_key}", "Cartesia-Version": version}
        self.voice_id = voice_id
        self.model = model
        self.language = language

    def request(self, context_id: str, text: str) -> dict[str, Any]:
        """A whole segment as one context's only input."""
        return {
            "model_id": self.model,
            "transcript": text,
            "voice": {"mode": "id", "id": self.voice_id},
            "language": self.language,
            "context_id": context_id,
            "output_format": OUTPUT_FORMAT,
            "continue": False,
        }

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        try:
            async with self._http.ws_connect(
                self._url,
                headers=self._headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT_S),
                max_msg_size=MAX_MESSAGE_BYTES,
                compress=0,
                autoping=True,
            ) as ws:
                yield ws
        except aiohttp.WSServerHandshakeError as exc:
            raise ProviderError.from_status(PROVIDER, f"connection refused with HTTP {exc.status}", exc.status) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(PROVIDER, f"{type(exc).__name__}: {exc}", transient=True) from exc

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.open_call() as call, call.synthesize(text) as chunks:
            yield chunks

    @asynccontextmanager
    async def open_call(self) -> AsyncIterator[CartesiaCall]:
        call = CartesiaCall(self)
        call.start()
        try:
            yield call
        finally:
            await call.aclose()
