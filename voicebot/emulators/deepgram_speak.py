"""Deepgram Aura WebSocket emulator: ``GET /v1/speak`` upgraded, Speak / Flush / Clear / Close (PROVIDERS-2.md §1).

Shares the REST emulator's knobs, faults and event names (``tts`` request / first_byte / complete / abort), so a
test reads the same events whichever transport the bot uses. Each Speak's text is one "request": a Flush
synthesises the texts received since the previous Flush in order, each with its own time to first byte, then sends
``Flushed``. ``Clear`` stops the synthesis at once, discards pending text and answers ``Cleared``.

Behaviour the docs leave open, chosen here (UNVERIFIED against the live service): a Speak over 2000 characters
gets a Warning and is ignored; a Flush over the 20-per-minute limit gets a Warning and is still served; an injected
error on an open socket closes it with 1011.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from voicebot.audio import SAMPLE_RATE

from .common import Runtime, abort_connection, accepts, credential, new_request_id, sleep_ms
from .config import DEFAULT_TTS_MODEL
from .deepgram_tts import MAX_TEXT_CHARS, Progress, TtsService
from .faults import wait_stall

FLUSH_LIMIT = 20
FLUSH_WINDOW_S = 60.0
ENCODINGS = ("linear16", "mulaw", "alaw")
ERROR_CLOSE_CODE = 1011


@dataclass
class _Text:
    text: str
    request_id: str
    progress: Progress = field(default_factory=Progress)


class SpeakSocketService:
    """One handler per socket; ``sockets_opened`` counts upgrades (tests check one socket per call)."""

    def __init__(self, tts: TtsService, runtime: Runtime) -> None:
        self.tts = tts
        self._runtime = runtime
        self.sockets_opened = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log, faults = self._runtime.log, self.tts.faults
        request_id = new_request_id()
        if not accepts(credential(request, "Token") or credential(request, "Bearer"), self.tts.key):
            log.append("tts", "rejected", status=401, request_id=request_id, transport="websocket")
            return web.Response(status=401, text="Invalid credentials.")
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("tts", "rejected", status=status, request_id=request_id, transport="websocket")
            return web.Response(status=status, text=f"Injected error {status}.", headers=faults.error_headers())
        problem = _validate(request.query)
        if problem is not None:
            log.append("tts", "rejected", status=400, request_id=request_id, error=problem, transport="websocket")
            return web.Response(status=400, text=problem)
        model = request.query.get("model", DEFAULT_TTS_MODEL)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets_opened += 1
        log.append("tts", "socket_open", request_id=request_id, model=model, transport="websocket")
        await ws.send_str(orjson.dumps({"type": "Metadata", "request_id": request_id, "model_name": model}).decode())
        session = _Session(self, ws, request, model)
        try:
            await session.run()
        finally:
            await session.stop()
            log.append("tts", "socket_closed", request_id=request_id, code=ws.close_code)
        return ws


class _Session:
    def __init__(self, service: SpeakSocketService, ws: web.WebSocketResponse, request: web.Request, model: str):
        self.service = service
        self.tts = service.tts
        self.log = service._runtime.log
        self.ws = ws
        self.request = request
        self.model = model
        self.pending: list[_Text] = []
        self.jobs: asyncio.Queue[list[_Text]] = asyncio.Queue()
        self.current: list[_Text] = []
        self.flushes: deque[float] = deque()
        self.sequence = 0
        self.worker: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.worker = asyncio.create_task(self._work())
        async for msg in self.ws:
            if msg.type is not WSMsgType.TEXT:
                continue  # binary frames are not part of the speak protocol: ignored
            try:
                message = orjson.loads(msg.data)
                kind = message["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                await self._warning("INVALID_MESSAGE", "could not parse the message")
                continue
            if kind == "Speak":
                await self._speak(message.get("text"))
            elif kind == "Flush":
                await self._flush()
            elif kind == "Clear":
                await self._clear()
            elif kind == "Close":
                await self.jobs.join()
                await self.ws.close(code=1000)
                return
            else:
                await self._warning("UNKNOWN_MESSAGE", f"unknown message type {kind!r}")

    async def stop(self) -> None:
        unfinished = self.current + self.pending
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        self._abort(unfinished)

    async def _speak(self, text: object) -> None:
        if not isinstance(text, str) or not text:
            await self._warning("INVALID_TEXT", "text must be a non-empty string")
            return
        if len(text) > MAX_TEXT_CHARS:
            await self._warning("TEXT_TOO_LONG", f"text is longer than {MAX_TEXT_CHARS} characters")
            return
        item = _Text(text, new_request_id())
        self.log.append(
            "tts", "request", request_id=item.request_id, text=text, model=self.model, transport="websocket"
        )
        self.pending.append(item)

    async def _flush(self) -> None:
        now = time.monotonic()
        while self.flushes and now - self.flushes[0] >= FLUSH_WINDOW_S:
            self.flushes.popleft()
        self.flushes.append(now)
        if len(self.flushes) > FLUSH_LIMIT:
            self.log.append("tts", "flush_limit", flushes=len(self.flushes))
            await self._warning("FLUSH_LIMIT_EXCEEDED", f"more than {FLUSH_LIMIT} Flush messages in 60 seconds")
        self.jobs.put_nowait(self.pending)
        self.pending = []

    async def _clear(self) -> None:
        # Stop what is being generated, drop what is queued, then confirm: nothing of it follows the Cleared.
        dropped = self.current + self.pending
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
        while not self.jobs.empty():
            dropped += self.jobs.get_nowait()
            self.jobs.task_done()
        self._abort(dropped)
        self.current, self.pending = [], []
        self.jobs = asyncio.Queue()
        self.sequence += 1
        await self.ws.send_str(orjson.dumps({"type": "Cleared", "sequence_id": self.sequence}).decode())
        self.worker = asyncio.create_task(self._work())

    def _abort(self, texts: list[_Text]) -> None:
        for item in texts:
            if item.progress.sent < len(self.tts.audio(item.text, self.model)):
                self.log.append("tts", "abort", request_id=item.request_id, bytes_sent=item.progress.sent)

    async def _work(self) -> None:
        while True:
            group = await self.jobs.get()
            self.current = group
            try:
                for item in group:
                    await self._synthesize(item)
                self.sequence += 1
                await self.ws.send_str(orjson.dumps({"type": "Flushed", "sequence_id": self.sequence}).decode())
            except (InjectedError, web.HTTPException) as exc:
                # An injected error (faults, or a monkeypatched ttfb_ms): the socket closes, as Deepgram's errors do.
                self.log.append("tts", "rejected", status=exc.status, transport="websocket")
                await self.ws.close(code=ERROR_CLOSE_CODE, message=f"Injected error {exc.status}".encode())
                return
            except ConnectionError:
                return
            finally:
                self.current = []
                self.jobs.task_done()

    async def _synthesize(self, item: _Text) -> None:
        tts, faults = self.tts, self.tts.faults
        status = faults.take_error()
        if status is not None:
            raise InjectedError(status)
        await wait_stall(faults.stall_s)
        await sleep_ms(tts.ttfb_ms(item.text))
        audio = tts.audio(item.text, self.model)
        await tts.pace(audio, self.ws.send_bytes, item.request_id, item.progress)
        if item.progress.sent < len(audio):
            abort_connection(self.request)  # the drop_after_bytes fault: no close frame
            raise ConnectionError("dropped on purpose")
        self.log.append("tts", "complete", request_id=item.request_id, bytes=item.progress.sent)

    async def _warning(self, code: str, description: str) -> None:
        await self.ws.send_str(orjson.dumps({"type": "Warning", "description": description, "code": code}).decode())


class InjectedError(Exception):
    """An error the faults inject on an open socket (the status the REST emulator would answer)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _validate(query: Mapping[str, str]) -> str | None:
    encoding = query.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        return f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}"
    if encoding != "mulaw":
        return f"this emulator speaks mulaw only, got {encoding!r}"
    sample_rate = query.get("sample_rate", "24000")
    if sample_rate != str(SAMPLE_RATE):
        return f"sample_rate must be {SAMPLE_RATE} for mulaw telephone audio, got {sample_rate!r}"
    container = query.get("container", "none")
    if container != "none":
        return f"container must be 'none' on the socket, got {container!r}"
    return None
