"""Cartesia TTS WebSocket emulator: ``GET /tts/websocket`` upgraded, contexts (PROVIDERS-2.md §4).

Same knobs, faults and events as the Deepgram emulators (each context is one ``tts`` request). Faithful where the
bot relies on it: the ``Cartesia-Version`` header (or ``cartesia_version`` query), ``Authorization: Bearer`` (or
``X-API-Key``), the request fields, ``chunk`` / ``done`` / ``error`` messages, and a cancel that stops only work not
yet started: a context already streaming keeps streaming (the client must drop it). Injected errors on an open
socket arrive as ``error`` messages for the context, as Cartesia reports per-request failures.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from voicebot.audio import SAMPLE_RATE

from .common import Runtime, abort_connection, credential, new_request_id, sleep_ms
from .deepgram_tts import Progress, TtsService
from .faults import wait_stall

OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": SAMPLE_RATE}


@dataclass
class _Context:
    context_id: str
    request_id: str
    fields: dict[str, Any]
    transcript: list[str] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Task[None] | None = None
    cancelled: bool = False


class CartesiaService:
    def __init__(self, tts: TtsService, runtime: Runtime, key: str | None) -> None:
        self.tts = tts
        self.key = key
        self._runtime = runtime
        self.sockets_opened = 0
        self.max_contexts: int | None = None
        """Concurrent contexts per socket before a 429 error message (Cartesia's plan limit); None: no limit."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log, faults = self._runtime.log, self.tts.faults
        given = credential(request, "Bearer") or request.headers.get("X-API-Key") or request.query.get("api_key")
        if not given or (self.key is not None and given != self.key):
            log.append("tts", "rejected", status=401, provider="cartesia")
            return _http_error(401, "Invalid API key")
        if not (request.headers.get("Cartesia-Version") or request.query.get("cartesia_version")):
            log.append("tts", "rejected", status=400, provider="cartesia")
            return _http_error(400, "Cartesia-Version header is required")
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("tts", "rejected", status=status, provider="cartesia")
            return _http_error(status, f"Injected error {status}")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets_opened += 1
        log.append("tts", "socket_open", provider="cartesia")
        session = _Session(self, ws, request)
        try:
            await session.run()
        finally:
            await session.stop()
            log.append("tts", "socket_closed", provider="cartesia", code=ws.close_code)
        return ws


class _Session:
    def __init__(self, service: CartesiaService, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.service = service
        self.tts = service.tts
        self.log = service._runtime.log
        self.ws = ws
        self.request = request
        self.contexts: dict[str, _Context] = {}
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                message = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                await self._error(None, 400, "Invalid JSON")
                continue
            if not isinstance(message, dict):
                await self._error(None, 400, "Invalid request")
                continue
            await self._on_request(message)

    async def stop(self) -> None:
        tasks = [c.task for c in self.contexts.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_request(self, message: dict[str, Any]) -> None:
        context_id = message.get("context_id")
        if not isinstance(context_id, str) or not context_id:
            await self._error(None, 400, "context_id is required")
            return
        context = self.contexts.get(context_id)
        if message.get("cancel") is True:
            if context is not None:
                self._cancel(context)
            return
        problem = _validate(message)
        if problem is not None:
            await self._error(context_id, 400, problem)
            return
        transcript = message.get("transcript")
        fields = {k: v for k, v in message.items() if k not in ("transcript", "continue")}
        if context is None:
            limit = self.service.max_contexts
            active = sum(1 for c in self.contexts.values() if c.task is not None and not c.task.done())
            if limit is not None and active >= limit:
                await self._error(context_id, 429, "Too many concurrent requests")
                return
            context = _Context(context_id, new_request_id(), fields)
            self.contexts[context_id] = context
        elif fields != context.fields:
            await self._error(context_id, 400, "every input of a context must repeat the same fields")
            return
        if isinstance(transcript, str) and transcript:
            context.transcript.append(transcript)
        if message.get("continue") is not True and context.task is None:
            text = "".join(context.transcript)
            self.log.append("tts", "request", request_id=context.request_id, text=text, model=fields["model_id"])
            context.task = asyncio.create_task(self._generate(context, text))

    def _cancel(self, context: _Context) -> None:
        """Stops only work not yet started: audio already generating keeps coming (Cartesia's documented behaviour)."""
        context.cancelled = True
        self.log.append("tts", "abort", request_id=context.request_id, bytes_sent=context.progress.sent)
        if context.task is not None and context.progress.sent == 0:
            context.task.cancel()

    async def _generate(self, context: _Context, text: str) -> None:
        tts, faults = self.tts, self.tts.faults
        try:
            status = faults.take_error()
            if status is not None:
                raise _Status(status)
            await wait_stall(faults.stall_s)
            await sleep_ms(tts.ttfb_ms(text))
            audio = tts.audio(text, context.fields["model_id"])

            async def send_chunk(piece: bytes) -> None:
                data = base64.b64encode(piece).decode()
                await self._send(
                    {"type": "chunk", "data": data, "done": False, "status_code": 206, "context_id": context.context_id}
                )

            await tts.pace(audio, send_chunk, context.request_id, context.progress)
            if context.progress.sent < len(audio):
                abort_connection(self.request)
                return
            await self._send({"type": "done", "done": True, "status_code": 200, "context_id": context.context_id})
            self.log.append("tts", "complete", request_id=context.request_id, bytes=context.progress.sent)
        except (_Status, web.HTTPException) as exc:
            status = exc.status
            self.log.append("tts", "rejected", status=status, request_id=context.request_id, provider="cartesia")
            await self._error(context.context_id, status, f"Injected error {status}")
        except ConnectionError:
            pass
        finally:
            self.contexts.pop(context.context_id, None)

    async def _send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_str(orjson.dumps(message).decode())

    async def _error(self, context_id: str | None, status: int, message: str) -> None:
        body: dict[str, Any] = {
            "type": "error",
            "title": _TITLES.get(status, "Error"),
            "message": message,
            "error_code": _CODES.get(status, "internal_error"),
            "status_code": status,
            "done": True,
        }
        if context_id is not None:
            body["context_id"] = context_id
        await self._send(body)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_TITLES = {400: "Invalid request", 401: "Unauthorized", 429: "Too many requests", 500: "Internal server error"}
_CODES = {400: "invalid_request", 401: "unauthorized", 429: "rate_limited", 500: "internal_error"}


def _validate(message: dict[str, Any]) -> str | None:
    if not isinstance(message.get("model_id"), str) or not message["model_id"]:
        return "model_id is required"
    voice = message.get("voice")
    voice_ok = isinstance(voice, str) or (isinstance(voice, dict) and voice.get("mode") == "id" and voice.get("id"))
    if not voice_ok:
        return "voice must be {'mode': 'id', 'id': ...}"
    output = message.get("output_format")
    if output != OUTPUT_FORMAT:
        return f"this emulator speaks raw pcm_mulaw at {SAMPLE_RATE} only, got {output!r}"
    if not isinstance(message.get("transcript", ""), str):
        return "transcript must be a string"
    return None


def _http_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)
