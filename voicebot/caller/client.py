"""The simulated caller: Twilio's side of a phone call, over real sockets, for offline tests, demos and benchmarks.

It does what Twilio does (PROVIDERS.md §4): POSTs the signed ``/voice`` webhook, reads the TwiML, opens the
``<Connect><Stream>`` WebSocket with a signed handshake, sends ``connected`` and ``start``, then streams the
caller's audio in real time as 20 ms mu-law frames (silence when the script says nothing), plays the bot's audio
on a :class:`~voicebot.caller.playback.PlaybackClock`, and echoes marks when their audio has played or was cleared.

One writer task sends every inbound message, so sequence numbers follow the send order. Frames are paced from a
clock origin (frame n at t0 + n x 20 ms) so scheduling jitter never accumulates. Mark deadlines are a timer
handle, not a task. Times are ``time.monotonic()``, like the server and the emulators on the same machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, assert_never

import aiohttp

from voicebot.audio import FRAME_BYTES, FRAME_MS, MULAW_SILENCE
from voicebot.caller.playback import AudioStarted, AudioStopped, PlaybackClock
from voicebot.caller.script import (
    Dtmf,
    HangUp,
    Say,
    SayWhileBotSpeaks,
    Silence,
    Step,
    WaitForBotAudio,
    WaitForBotSilence,
    resolve_audio,
    voiced_frames,
)
from voicebot.caller.timeline import CallerError, CallResult, EventKind, ReceivedMedia, Recorder, TimelineEvent
from voicebot.caller.twiml import (
    RejectTwiml,
    StreamTwiml,
    new_sid,
    parse_twiml,
    reachable_stream_url,
    webhook_params,
)
from voicebot.twilio import wire
from voicebot.twilio.security import twilio_signature
from voicebot.twilio.wire import OutClear, OutMark, OutMedia, WireError, parse_outbound

FRAME_S = FRAME_MS / 1000
WEBHOOK_TIMEOUT_S = 15.0  # Twilio's default webhook timeout
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
HANG_UP_GRACE_S = SEND_TIMEOUT_S + CLOSE_TIMEOUT_S
DEFAULT_CALL_TIMEOUT_S = 60.0
SILENT_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES


@dataclass(slots=True)
class _Utterance:
    audio: bytes
    label: str
    done: asyncio.Future[None]
    first_voiced: int
    last_voiced: int
    frame: int = 0


@dataclass(frozen=True, slots=True)
class _Control:
    kind: Literal["mark", "dtmf", "stop"]
    value: str
    done: asyncio.Future[None] | None = None


class SimulatedCaller:
    """One phone call placed against ``server_url``, driven by ``script`` (and/or by :meth:`do` while running).

    Use ``result = await caller.run(timeout=...)``, or run it as a task and interact meanwhile::

        task = asyncio.create_task(caller.run(timeout=20))
        await caller.wait_for("bot_audio_start", timeout=5)
        await caller.do(Say("hours"))
        result = await task
    """

    def __init__(
        self,
        server_url: str,
        script: Iterable[Step] = (),
        *,
        auth_token: str | None = None,
        public_url: str | None = None,
        extra_parameters: Mapping[str, str] | None = None,
        from_number: str = "+15550100001",
        to_number: str = "+15550100002",
        voice_path: str = "/voice",
        call_sid: str | None = None,
        account_sid: str | None = None,
        webhook_parameters: Mapping[str, str] | None = None,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        """``voice_path`` may carry a query (signed with it, as Twilio does); ``webhook_parameters`` add to or
        replace the inbound call's form (an outbound call's ``Direction``, ``AnsweredBy``); ``connector`` makes
        the HTTP connector (TLS trust, name resolution) for the webhook and the stream."""
        self.server_url = server_url.rstrip("/")
        self.public_url = (public_url or server_url).rstrip("/")
        self.script = list(script)
        self.auth_token = auth_token
        self.extra_parameters = dict(extra_parameters or {})
        self.from_number = from_number
        self.to_number = to_number
        self.voice_path = voice_path
        self.webhook_parameters = dict(webhook_parameters or {})
        self._connector = connector
        self.result = CallResult(
            started_at=time.monotonic(),
            call_sid=call_sid or new_sid("CA"),
            account_sid=account_sid or new_sid("AC"),
            stream_sid=new_sid("MZ"),
        )
        self.clock = PlaybackClock()
        self._log = Recorder(self.result)
        self._control: deque[_Control] = deque()
        self._wake = asyncio.Event()
        self._utterance: _Utterance | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._t0 = 0.0
        self._stop_sent = False
        self._server_closed = False
        self._timed_out = False
        self._hang_up_at = float("inf")
        self._ended = False

    # --- public surface -------------------------------------------------------------------------------

    @property
    def bot_playing(self) -> bool:
        """True while bot audio is playing (as of the last event the caller processed)."""
        return self._log.bot_playing

    async def run(self, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> CallResult:  # noqa: ASYNC109 (call length)
        """Place the call, run the script, keep streaming silence until hang-up, server close or ``timeout``."""
        self.result.started_at = time.monotonic()
        self._hang_up_at = self.result.started_at + timeout
        # The backstop: at ``timeout`` the caller hangs up politely (stop, close); this cancels whatever is left.
        deadline = asyncio.timeout(timeout + HANG_UP_GRACE_S)
        try:
            connector = self._connector() if self._connector is not None else None
            async with deadline, aiohttp.ClientSession(connector=connector) as session:
                stream = await self._webhook(session)
                if stream is not None:
                    await self._call(session, stream)
        except TimeoutError:
            if not deadline.expired():
                raise
            self.result.ended_by = "timeout"
        finally:
            self._end()
        return self.result

    async def wait_for(
        self,
        kind: EventKind,
        timeout: float,  # noqa: ASYNC109 (mirrors asyncio.wait_for)
        *,
        count: int = 1,
        detail: str | None = None,
    ) -> TimelineEvent:
        """Wait until ``count`` events of ``kind`` (with ``detail``, if given) happened; return the last of them."""
        async with asyncio.timeout(timeout):
            return await self._log.wait_count(kind, count, detail)

    async def do(self, step: Step) -> None:
        """Perform one script step now (steps run one at a time: do not overlap calls)."""
        match step:
            case Say(audio=audio):
                await self._say(resolve_audio(audio), step.name)
            case Silence(ms=ms):
                await asyncio.sleep(ms / 1000)
            case WaitForBotAudio(timeout=timeout):
                await self._guard(step, timeout, self._log.wait_bot_audio())
            case WaitForBotSilence(timeout=timeout, quiet_ms=quiet_ms):
                await self._guard(step, timeout, self._log.wait_bot_silence(quiet_ms))
            case SayWhileBotSpeaks(audio=audio, after_ms=after_ms, timeout=timeout):
                await self._guard(step, timeout, self._log.wait_into_bot_audio(after_ms))
                await self._say(resolve_audio(audio), step.name)
            case Dtmf(digit=digit):
                await self._send_control("dtmf", digit)
            case HangUp():
                await self._send_control("stop", "")
            case _:
                assert_never(step)

    async def hang_up(self) -> None:
        """Send ``stop`` and close the stream, as Twilio does when the caller hangs up."""
        await self.do(HangUp())

    # --- call setup -----------------------------------------------------------------------------------

    async def _webhook(self, session: aiohttp.ClientSession) -> StreamTwiml | None:
        r = self.result
        params = webhook_params(
            call_sid=r.call_sid, account_sid=r.account_sid, from_number=self.from_number, to_number=self.to_number
        )
        params.update(self.webhook_parameters)
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if self.auth_token is not None:
            signed_url = self.public_url + self.voice_path
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, signed_url, params)
        url = self.server_url + self.voice_path
        try:
            async with asyncio.timeout(WEBHOOK_TIMEOUT_S):
                async with session.post(url, data=params, headers=headers) as resp:
                    status, body = resp.status, await resp.text()
            if status != 200:
                raise ValueError(f"HTTP {status}: {body[:200]}")
            twiml = parse_twiml(body)
        except aiohttp.ClientError as exc:
            raise CallerError(f"webhook POST {url} failed: {exc}") from exc
        except (TimeoutError, ValueError) as exc:
            why = str(exc) or f"no answer within {WEBHOOK_TIMEOUT_S} s"
            self._log.record("webhook", f"failed: {why}")
            r.failures.append(f"webhook: {why}")
            r.ended_by = "webhook_error"
            return None
        if isinstance(twiml, RejectTwiml):
            self._log.record("webhook", f"{status} reject")
            self._log.record("rejected", twiml.say_text)
            r.rejected, r.say_text, r.ended_by = True, twiml.say_text, "rejected"
            return None
        self._log.record("webhook", f"{status} stream {twiml.url}")
        for problem in twiml.problems():
            self._log.fail("protocol_error", problem)
        return twiml

    async def _call(self, session: aiohttp.ClientSession, stream: StreamTwiml) -> None:
        headers = {"User-Agent": "Twilio.TmeWs/1.0"}
        if self.auth_token is not None:
            # Signed on the public wss:// URL exactly as written in <Stream url>, with no params.
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, stream.url, {})
        url = reachable_stream_url(stream.url, self.public_url, self.server_url)
        self.result.stream_url = stream.url
        self.result.custom_parameters = {**stream.parameters, **self.extra_parameters}
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await session.ws_connect(
                    url,
                    headers=headers,
                    autoclose=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                )
        except aiohttp.WSServerHandshakeError as exc:
            self._log.record("ws_closed", f"handshake refused: HTTP {exc.status}")
            self.result.failures.append(f"stream: server refused the WebSocket with HTTP {exc.status}")
            self.result.ended_by = "server_closed"
            return
        except aiohttp.ClientError as exc:
            raise CallerError(f"WebSocket connect to {url} failed: {exc}") from exc
        self._log.record("ws_open", url)
        try:
            await self._stream(ws)
        finally:
            await self._hang_up_quietly(ws)
            self._log.record("ws_closed", str(ws.close_code))
            self.result.close_code = ws.close_code
            if self._timed_out or time.monotonic() >= self._hang_up_at:
                self.result.ended_by = "timeout"
            elif self._stop_sent:
                self.result.ended_by = "hangup"
            elif self._server_closed:
                self.result.ended_by = "server_closed"

    async def _stream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self._send(ws, wire.connected_message())
        await self._send(
            ws,
            wire.start_message(
                stream_sid=self.result.stream_sid,
                call_sid=self.result.call_sid,
                account_sid=self.result.account_sid,
                custom_parameters=self.result.custom_parameters,
                sequence_number=self._next_seq(),
            ),
        )
        self._t0 = self.result.stream_started_at = time.monotonic()
        self._log.record("start_sent", ", ".join(sorted(self.result.custom_parameters)))
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self._receive_loop(ws))
            writer = tg.create_task(self._write_loop(ws))
            script = tg.create_task(self._run_script())
            remaining = max(0.0, self._hang_up_at - time.monotonic())
            done, _ = await asyncio.wait({receiver, writer}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # time is up: hang up as a caller does, with stop and a clean close
                self._timed_out = True
                self._control.append(_Control("stop", ""))
                self._wake.set()
                await asyncio.wait({receiver, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not receiver.done():  # we sent stop (or could not send): close, the receiver sees the close
                await self._hang_up_quietly(ws)
            for task in (receiver, writer, script):
                task.cancel()

    async def _hang_up_quietly(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """On timeout or error: send ``stop`` if the socket is still open, then close it; never raise I/O errors."""
        if ws.closed:
            return
        try:
            if not self._stop_sent:
                await self._send(ws, self._stop_message())
                self._stop_sent = True
                self._log.record("stop_sent")
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await ws.close()
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            pass  # the call is over either way; the timeline shows how it ended

    def _end(self) -> None:
        now = time.monotonic()
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        self.clock.close(now)
        self._pump(now, [])
        result = self.result
        result.ended_at = now
        if result.stream_started_at is not None:
            result.heard = self.clock.heard_audio(result.stream_started_at, now)
        result.bytes_played = self.clock.bytes_played(now)
        result.bytes_dropped = self.clock.bytes_dropped
        pending = [self._utterance.done] if self._utterance else []
        pending += [c.done for c in self._control if c.done is not None]
        for fut in pending:
            if not fut.done():
                fut.set_exception(CallerError("the call ended"))
                fut.exception()  # retrieved here so an unawaited one does not warn at garbage collection
        self._log.close()

    # --- sending --------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _stop_message(self) -> bytes:
        r = self.result
        return wire.stop_message(
            stream_sid=r.stream_sid, call_sid=r.call_sid, account_sid=r.account_sid, sequence_number=self._next_seq()
        )

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: bytes) -> None:
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await ws.send_str(message.decode())  # Twilio sends JSON in text frames

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send control messages as they come and one frame every 20 ms from t0, until stop or a dead socket."""
        frame = 0
        try:
            while True:
                while self._control:
                    if await self._send_one_control(ws, self._control.popleft()):
                        return
                now = time.monotonic()
                due = self._t0 + frame * FRAME_S
                if now >= due:
                    # Late frames go out back to back: the audio timeline, not the send time, is what counts.
                    await self._send_frame(ws, frame, now)
                    frame += 1
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(due - now):
                        await self._wake.wait()
                except TimeoutError:
                    pass  # time for the next frame
        except (aiohttp.ClientError, ConnectionError):
            return  # the server closed the socket under us; the receiver reports the close

    async def _send_one_control(self, ws: aiohttp.ClientWebSocketResponse, item: _Control) -> bool:
        sid = self.result.stream_sid
        match item.kind:
            case "mark":
                await self._send(
                    ws, wire.inbound_mark_message(stream_sid=sid, sequence_number=self._next_seq(), name=item.value)
                )
                self._log.record("mark_echoed", item.value)
            case "dtmf":
                await self._send(
                    ws, wire.dtmf_message(stream_sid=sid, sequence_number=self._next_seq(), digit=item.value)
                )
                self._log.record("dtmf_sent", item.value)
            case "stop":
                await self._send(ws, self._stop_message())
                self._stop_sent = True
                self._log.record("stop_sent")
            case _:
                assert_never(item.kind)
        if item.done is not None and not item.done.done():
            item.done.set_result(None)
        return item.kind == "stop"

    async def _send_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: int, now: float) -> None:
        u = self._utterance
        audio = SILENT_FRAME if u is None else u.audio[u.frame * FRAME_BYTES : (u.frame + 1) * FRAME_BYTES]
        message = wire.inbound_media_message(
            stream_sid=self.result.stream_sid,
            sequence_number=self._next_seq(),
            chunk=frame + 1,
            timestamp_ms=frame * FRAME_MS,
            audio=audio,
        )
        await self._send(ws, message)
        self.result.frames_sent += 1
        if u is None:
            return
        if u.frame == u.first_voiced:
            self._log.record("caller_speech_start", u.label, now)
        if u.frame == u.last_voiced:
            self._log.record("caller_speech_end", u.label, now)
        u.frame += 1
        if u.frame * FRAME_BYTES >= len(u.audio):
            self._utterance = None
            if not u.done.done():
                u.done.set_result(None)

    async def _send_control(self, kind: Literal["dtmf", "stop"], value: str) -> None:
        if self._ended:
            raise CallerError("the call has ended")
        done = asyncio.get_running_loop().create_future()
        self._control.append(_Control(kind, value, done))
        self._wake.set()
        await done

    # --- receiving ------------------------------------------------------------------------------------

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # No per-receive timeout: the bot may rightly stay silent for long; run()'s call deadline bounds this.
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._on_message(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self._log.fail("protocol_error", "binary frame (Twilio expects JSON text frames)")
            else:  # CLOSE, CLOSING, CLOSED or ERROR
                if msg.type is aiohttp.WSMsgType.ERROR:
                    self._log.fail("protocol_error", f"WebSocket error: {ws.exception()}")
                self._server_closed = not self._stop_sent
                return

    def _on_message(self, data: str) -> None:
        now = time.monotonic()
        try:
            event = parse_outbound(data)
        except WireError as exc:
            self._log.fail("protocol_error", str(exc))
            return
        if event.stream_sid != self.result.stream_sid:
            self._log.fail("protocol_error", f"{event.event} for unknown streamSid {event.stream_sid[:40]!r}")
            return
        dropped = self.clock.bytes_dropped
        marks = self.clock.feed(event, now)
        match event:
            case OutMedia(payload=payload):
                self.result.media.append(ReceivedMedia(now, payload, self.clock.epoch))
                self._log.record("media_received", str(len(payload)), now)
            case OutMark(name=name):
                self._log.record("mark_received", name, now)
            case OutClear():
                self._log.record("clear_received", f"dropped {self.clock.bytes_dropped - dropped} bytes", now)
            case _:
                assert_never(event)
        self._pump(now, marks)

    def _pump(self, now: float, marks: list[str]) -> None:
        """Turn the clock's outputs into timeline events and mark echoes, and re-arm the deadline timer."""
        for change in self.clock.transitions(now):
            match change:
                case AudioStarted(t=t):
                    self._log.record("bot_audio_start", "", t)
                case AudioStopped(t=t, cut=cut):
                    self._log.record("bot_audio_stop", "cut" if cut else "", t)
                case _:
                    assert_never(change)
        for name in [*marks, *self.clock.due_marks(now)]:
            self._control.append(_Control("mark", name))
            self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.clock.next_deadline()
        if deadline is not None and not self._ended:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._pump(time.monotonic(), [])

    # --- script ---------------------------------------------------------------------------------------

    async def _run_script(self) -> None:
        for step in self.script:
            await self.do(step)

    async def _guard(self, step: Step, limit_s: float, wait: Coroutine[None, None, None]) -> None:
        """Run a step's wait; on timeout record a failure and carry on with the script, as a caller would."""
        deadline = asyncio.timeout(limit_s)
        try:
            async with deadline:
                await wait
        except TimeoutError:
            if not deadline.expired():
                raise
            self._log.fail("step_timeout", f"{type(step).__name__} gave up after {limit_s} s")

    async def _say(self, audio: bytes, label: str) -> None:
        if self._ended:
            raise CallerError("the call has ended")
        if self._utterance is not None:
            raise RuntimeError("the caller is already speaking; run steps one at a time")
        done = asyncio.get_running_loop().create_future()
        self._utterance = _Utterance(audio, label, done, *voiced_frames(audio))
        await done
