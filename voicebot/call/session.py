"""CallSession: one per Media Streams WebSocket; owns every task of the call and always cleans up."""

from __future__ import annotations

import asyncio
import time
from typing import assert_never

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from voicebot.call.conversation import Conversation
from voicebot.call.services import Services
from voicebot.call.state import AppState
from voicebot.errors import CallEnded, handled
from voicebot.logs import get_logger
from voicebot.taskgroup import TaskGroup
from voicebot.twilio import wire
from voicebot.twilio.outbound import ContextError
from voicebot.twilio.security import TokenError

log = get_logger("voicebot.call.session")

MAX_LOGGED_PROTOCOL_ERRORS = 5
"""Per call; further malformed messages are only counted (a bad peer must not flood the log)."""
MAX_PROTOCOL_ERRORS = 50
"""A peer that keeps sending garbage is not Twilio: end its call."""
WATCHDOG_PERIOD_S = 1.0


class CallSession:
    """The life of one call: handshake (``connected``/``start`` + token), the call's loops, the ending."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        state: AppState,
        services: Services | None = None,
        transport: asyncio.BaseTransport | None = None,
        *,
        dev_token_only: bool = False,
    ) -> None:
        self.ws = ws
        self.dev_token_only = dev_token_only
        """An unsigned upgrade while Twilio signatures are checked: only a token minted by the dev page may open it."""
        self.transport = transport
        self.state = state
        self.services = services
        self.conversation: Conversation | None = None
        self.settings = state.settings
        self.finished = asyncio.Event()
        self.start: wire.Start | None = None
        self.context: str | None = None
        """An outbound call's context, from the signed webhook URL (voicebot.twilio.outbound)."""
        self.end_reason = ""
        self.protocol_errors = 0
        self.media_frames = 0
        self.last_media_at = time.monotonic()
        self._shutdown_requested = asyncio.Event()

    # --- lifecycle ---

    async def run(self) -> None:
        """Serve the call until it ends; never returns with a task of this call still running."""
        started_at = time.monotonic()
        try:
            start = await self._handshake()
            if start is None:
                return
            self.start = start
            structlog.contextvars.bind_contextvars(call_sid=start.call_sid, stream_sid=start.stream_sid)
            log.info("call_started", custom_parameters=sorted(start.custom_parameters))
            code = await self._serve()
            await self.ws.close(code=code, message=self.end_reason.encode()[:120])
            self.state.metrics.calls_total.labels(self.end_reason).inc()
            log.info(
                "call_ended",
                reason=self.end_reason,
                duration_s=round(time.monotonic() - started_at, 3),
                media_frames=self.media_frames,
                protocol_errors=self.protocol_errors,
                turns=self.conversation.turns_completed if self.conversation else 0,
                barge_ins=self.conversation.barge_ins if self.conversation else 0,
                stale_audio_dropped=self.conversation.out.dropped_stale if self.conversation else 0,
            )
        finally:
            self.finished.set()

    def shut_down(self) -> None:
        """Ask the call to end now (server shutdown); it closes with 1001 Going Away."""
        self._shutdown_requested.set()

    async def _serve(self) -> int:
        ended: CallEnded | None = None
        try:
            async with TaskGroup() as tg:
                if self.services is not None and self.start is not None:
                    self.conversation = Conversation(
                        self.ws,
                        self.start,
                        self.settings,
                        self.services,
                        self.state.metrics,
                        self.state.publish,
                        rest_hang_up=not self.state.is_dev_call(self.start.call_sid),
                        transport=self.transport,
                        context=self.context,
                    )
                    tg.create_task(self.conversation.run(), name="conversation")
                tg.create_task(self._receive_loop())
                tg.create_task(self._watchdog())
                tg.create_task(self._shutdown_watch())
        except* CallEnded as group:
            ended = handled(group)
        # Every loop runs until it raises CallEnded, so ``ended`` is always set here.
        assert ended is not None
        self.end_reason = ended.reason
        return ended.code

    # --- handshake ---

    async def _handshake(self) -> wire.Start | None:
        """Wait for ``start`` and redeem its token; close with nothing sent on any failure."""
        try:
            async with asyncio.timeout(self.settings.start_timeout_s):
                while True:
                    msg = await self.ws.receive()
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        self.state.metrics.reject("no_start")
                        log.info("stream_closed_before_start")
                        return None
                    if msg.type is not WSMsgType.TEXT:
                        return await self._refuse("no_start", "binary frame before start")
                    try:
                        event = wire.parse_inbound(msg.data)
                    except wire.WireError as exc:
                        return await self._refuse("no_start", f"malformed message before start: {exc}")
                    if isinstance(event, wire.Connected):
                        continue
                    if not isinstance(event, wire.Start):
                        return await self._refuse("no_start", f"{event.event} before start")
                    break
        except TimeoutError:
            return await self._refuse("no_start", "no start message in time")
        if self.dev_token_only and not self.state.is_dev_call(event.call_sid):
            # A Twilio stream is always signed: an unsigned one is someone replaying a /voice token.
            return await self._refuse("bad_token", "unsigned stream for a call the dev page did not place")
        try:
            self.state.tokens.redeem(event.custom_parameters.get("token"), event.call_sid)
        except TokenError as exc:
            return await self._refuse("bad_token", str(exc), call_sid=event.call_sid)
        try:
            self.context = self.state.seal.open(event.call_sid, event.custom_parameters)
        except ContextError as exc:
            return await self._refuse("bad_token", str(exc), call_sid=event.call_sid)
        return event

    async def _refuse(self, reason: str, detail: str, call_sid: str | None = None) -> wire.Start | None:
        self.state.metrics.reject("bad_token" if reason == "bad_token" else "no_start")
        log.warning("stream_refused", reason=reason, detail=detail, call_sid=call_sid)
        await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())
        return None

    # --- loops ---

    async def _receive_loop(self) -> None:
        ws = self.ws
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                self._on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._protocol_error("binary_frame", "binary frames are not part of Media Streams")
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                raise CallEnded("socket_closed")
            elif msg.type is WSMsgType.ERROR:
                # aiohttp reports oversized frames (and broken framing) this way and closes with 1009/1002.
                raise CallEnded(f"socket_error: {type(ws.exception()).__name__}", WSCloseCode.PROTOCOL_ERROR)

    def _on_text(self, data: str | bytes) -> None:
        try:
            event = wire.parse_inbound(data)
        except wire.WireError as exc:
            self._protocol_error("malformed", str(exc))
            return
        if (
            self.start is not None
            and not isinstance(event, wire.Connected | wire.Start)
            and event.stream_sid != self.start.stream_sid
        ):
            self._protocol_error("wrong_stream", "a message for another streamSid was ignored")
            return
        match event:
            case wire.Media():
                self.media_frames += 1
                self.last_media_at = time.monotonic()
                self.on_media(event)
            case wire.Mark():
                self.on_mark(event)
            case wire.Dtmf():
                self.on_dtmf(event)
            case wire.Stop():
                raise CallEnded("stop")
            case wire.Start():
                self._protocol_error("second_start", "a second start message was ignored")
            case wire.Connected():
                self._protocol_error("late_connected", "connected after start was ignored")
            case _:
                assert_never(event)

    def _protocol_error(self, kind: str, detail: str) -> None:
        self.protocol_errors += 1
        self.state.metrics.protocol_errors.labels(kind).inc()
        if self.protocol_errors <= MAX_LOGGED_PROTOCOL_ERRORS:
            log.warning("protocol_error", kind=kind, detail=detail)
        if self.protocol_errors >= MAX_PROTOCOL_ERRORS:
            raise CallEnded("too_many_protocol_errors", WSCloseCode.POLICY_VIOLATION)

    async def _watchdog(self) -> None:
        deadline = time.monotonic() + self.settings.max_call_duration_s
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if now >= deadline:
                raise CallEnded("max_duration")
            if now - self.last_media_at > self.settings.idle_media_timeout_s:
                raise CallEnded("media_timeout")

    async def _shutdown_watch(self) -> None:
        await self._shutdown_requested.wait()
        if self.conversation is not None:
            await self.conversation.shut_down()  # the goodbye, then CallEnded with 1001
        raise CallEnded("server_shutdown", WSCloseCode.GOING_AWAY)

    # --- events, handed to the conversation ---

    def on_media(self, event: wire.Media) -> None:
        if self.conversation is not None:
            self.conversation.on_media(event.payload, self.last_media_at)

    def on_mark(self, event: wire.Mark) -> None:
        if self.conversation is not None and not self.conversation.on_mark(event.name, time.monotonic()):
            self._protocol_error("unknown_mark", "a mark this call never sent was ignored")

    def on_dtmf(self, event: wire.Dtmf) -> None:
        if self.conversation is not None:
            self.conversation.on_dtmf(event.digit, time.monotonic())
