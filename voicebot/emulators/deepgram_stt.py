"""Deepgram live STT emulator: ``GET /v1/listen`` and Flux's ``GET /v2/listen`` WebSockets (I/O shells around
:mod:`.stt_engine` and :mod:`.flux_engine`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import WSMsgType, web

from voicebot.audio import BYTES_PER_MS

from .common import Runtime, abort_connection, accepts, credential, json_response, new_request_id, sleep_ms
from .config import SttConfig
from .faults import SttFaults, wait_stall
from .flux_engine import FluxEngine, FluxOptions
from .log import EventLog
from .stt_engine import ListenOptions, Message, SttEngine

IDLE_CLOSE_CODE = 1011
IDLE_CLOSE_REASON = (
    "NET-0001: Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
DROP_CLOSE_REASON = "NET-0000: The service has not transmitted a Text frame to the client within the timeout"
CLOSE_HANDSHAKE_TIMEOUT_S = 2.0
"""How long ``ws.close()`` waits for the client's close frame."""
OUTBOUND_QUEUE_MESSAGES = 256
"""Messages waiting for ``result_delay_ms``; when full the receive loop blocks (back-pressure to the client)."""
MAX_MESSAGE_BYTES = 1 << 20


class _Engine(Protocol):
    request_id: str
    audio_bytes: int

    @property
    def audio_s(self) -> float: ...
    def feed(self, data: bytes) -> list[Message]: ...
    def control(self, kind: str | None, message: dict[str, Any]) -> tuple[list[Message], bool]: ...


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class SttService:
    """The Deepgram live STT emulator: knobs (``config``), ``faults`` and the transcript ``script``."""

    def __init__(self, config: SttConfig, runtime: Runtime, key: str | None) -> None:
        self.config = config
        self.faults = SttFaults()
        self.script: list[str] = []
        """Transcripts, one consumed per detected utterance; ``""`` is noise (no words)."""
        self.key = key
        self._runtime = runtime

    def next_transcript(self) -> str:
        """The next scripted transcript, or the configured default once the script is used up."""
        return self.script.pop(0) if self.script else self.config.default_transcript

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/listen``: check, upgrade, then run the connection."""
        return await self._handle(request, flux=False)

    async def handle_v2(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/listen`` (Flux): check, upgrade, then run the connection."""
        return await self._handle(request, flux=True)

    async def _handle(self, request: web.Request, *, flux: bool) -> web.StreamResponse:
        log = self._runtime.log
        request_id = new_request_id()
        if not accepts(credential(request, "Token") or credential(request, "Bearer"), self.key):
            log.append("stt", "rejected", status=401, request_id=request_id)
            return _refuse(401, "Invalid credentials.", request_id)
        faults = self.faults
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("stt", "rejected", status=status, request_id=request_id)
            return _refuse(status, f"Injected error {status}.", request_id, faults.error_headers())
        engine: _Engine
        try:
            if flux:
                engine = FluxEngine(FluxOptions.parse(request.query), self.config, self.next_transcript, request_id)
            else:
                engine = SttEngine(ListenOptions.parse(request.query), self.config, self.next_transcript, request_id)
        except ValueError as exc:
            log.append("stt", "rejected", status=400, request_id=request_id, error=str(exc))
            return _refuse(400, str(exc), request_id)
        ws = web.WebSocketResponse(compress=False, timeout=CLOSE_HANDSHAKE_TIMEOUT_S, max_msg_size=MAX_MESSAGE_BYTES)
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        log.append("stt", "open", request_id=request_id, query=dict(request.query), version=2 if flux else 1)
        with self._runtime.handler():
            connection = _Connection(self, request, ws, engine)
            if isinstance(engine, FluxEngine):
                await connection.enqueue(engine.connected())
            await connection.run()
        return ws


def _refuse(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> web.Response:
    # Deepgram answers a refused upgrade with dg-error and dg-request-id headers and the text in the body.
    return json_response(
        status,
        {
            "err_code": "INVALID_AUTH" if status == 401 else "REQUEST_FAILED",
            "err_msg": message,
            "request_id": request_id,
        },
        headers={"dg-error": message, "dg-request-id": request_id, **(headers or {})},
    )


class _Connection:
    """One accepted socket: a receive loop (this task) and a sender task that applies the result delay."""

    def __init__(self, service: SttService, request: web.Request, ws: web.WebSocketResponse, engine: _Engine) -> None:
        self._service = service
        self._request = request
        self._ws = ws
        self._engine = engine
        self._log = service._runtime.log
        self._runtime = service._runtime
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[float, Message | _Close]] = asyncio.Queue(OUTBOUND_QUEUE_MESSAGES)
        self._ended = False
        self._stall_s = service.faults.stall_s

    def _end(self, kind: str, **data: Any) -> None:
        if not self._ended:
            self._ended = True
            self._log.append(
                "stt", kind, request_id=self._engine.request_id, audio_s=round(self._engine.audio_s, 3), **data
            )

    async def run(self) -> None:
        """Receive in this task, send in a child task; both end with the socket."""
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._send_loop())
                if not await self._receive_loop():
                    sender.cancel()  # the client is gone: nothing left to send
                # else a close is queued: the sender flushes the queue, then closes the socket
        except asyncio.CancelledError:
            # The handler is cancelled by aiohttp when the client's TCP connection is lost
            # (handler_cancellation=True) or by our shutdown.
            if self._runtime.closing:
                self._end("close", initiator="shutdown")
            else:
                self._end("abort", cancelled=True)
            raise

    async def _receive_loop(self) -> bool:
        """Read until the client leaves (False) or a close has been queued (True)."""
        ws, engine, faults = self._ws, self._engine, self._service.faults
        while True:
            try:
                msg = await ws.receive(timeout=self._service.config.idle_timeout_s)
            except TimeoutError:
                self._log.append("stt", "idle_timeout", request_id=engine.request_id)
                await self.enqueue(_Close(IDLE_CLOSE_CODE, IDLE_CLOSE_REASON))
                return True
            if msg.type is WSMsgType.BINARY:
                data: bytes = msg.data
                if not data:
                    continue
                for out in engine.feed(data):
                    await self.enqueue(out)
                drop_ms = faults.drop_after_audio_ms
                if drop_ms is not None and engine.audio_bytes >= drop_ms * BYTES_PER_MS:
                    await self._drop(faults.drop_abrupt)
                    return False
            elif msg.type is WSMsgType.TEXT:
                if await self._control(msg.data):
                    return True
            elif msg.type is WSMsgType.CLOSE:
                self._end("close", initiator="client", code=msg.data)
                return False
            else:  # CLOSING (our own close from the sender), CLOSED, ERROR: the socket is gone
                if msg.type is not WSMsgType.CLOSING:
                    self._end("abort", error=repr(ws.exception()))
                return False

    async def _control(self, text: str) -> bool:
        """Handle a text frame; True when the socket closes after it (``CloseStream``, a Flux protocol error)."""
        engine = self._engine
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            message = {}
        kind = message.get("type")
        self._log.append("stt", "control", request_id=engine.request_id, type=kind)
        replies, close = engine.control(kind if isinstance(kind, str) else None, message)
        for out in replies:
            await self.enqueue(out)
        if close:
            error = next((m for m in replies if m.get("type") == "Error"), None)
            await self.enqueue(_Close(1000, "") if error is None else _Close(1008, str(error.get("code", ""))))
        return close

    async def _drop(self, abrupt: bool) -> None:
        self._end("drop", abrupt=abrupt)
        if abrupt:
            abort_connection(self._request)
        else:
            await self._ws.close(code=1011, message=DROP_CLOSE_REASON.encode())

    async def enqueue(self, item: Message | _Close) -> None:
        """Queue a message (or the close) for the sender, due after ``result_delay_ms``."""
        due = self._loop.time() + self._service.config.result_delay_ms / 1000
        await self._queue.put((due, item))

    async def _send_loop(self) -> None:
        ws, log, request_id = self._ws, self._log, self._engine.request_id
        await wait_stall(self._stall_s)
        while True:
            due, item = await self._queue.get()
            delay = due - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if isinstance(item, _Close):
                self._end("close", initiator="server", code=item.code, reason=item.reason)
                await ws.close(code=item.code, message=item.reason.encode())
                return
            try:
                await ws.send_str(orjson.dumps(item).decode())
            except ConnectionError:
                return  # the client is gone; the receive loop reports it
            _log_sent(log, request_id, item)


def _log_sent(log: EventLog, request_id: str, msg: Message) -> None:
    kind = msg["type"]
    if kind == "Results":
        alt = msg["channel"]["alternatives"][0]
        log.append(
            "stt",
            "results",
            request_id=request_id,
            transcript=alt["transcript"],
            is_final=msg["is_final"],
            speech_final=msg["speech_final"],
            from_finalize=msg["from_finalize"],
            start=msg["start"],
            duration=msg["duration"],
        )
    elif kind == "SpeechStarted":
        log.append("stt", "speech_started", request_id=request_id, timestamp=msg["timestamp"])
    elif kind == "UtteranceEnd":
        log.append("stt", "utterance_end", request_id=request_id, last_word_end=msg["last_word_end"])
    elif kind == "TurnInfo":
        log.append(
            "stt",
            "turn_info",
            request_id=request_id,
            event=msg["event"],
            turn_index=msg["turn_index"],
            transcript=msg["transcript"],
            end_of_turn_confidence=msg["end_of_turn_confidence"],
        )
    else:
        log.append("stt", kind.lower(), request_id=request_id)
