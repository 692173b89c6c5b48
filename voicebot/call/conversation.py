"""The conversation of one call: listening (VAD + STT), turn-taking, bot turns, barge-in, ending.

Runs inside the CallSession's TaskGroup. Inputs arrive from three places — the session's receive loop (audio,
marks, DTMF), the STT stream, and finished bot turns — and go through the sans-I/O :class:`TurnTaking` machine;
its actions are applied one at a time by a single control task, so no two actions ever race.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from voicebot.audio import BYTES_PER_SECOND, FRAME_BYTES
from voicebot.call.audio_out import CallAudioOut
from voicebot.call.bot_turn import BotTurn, TurnResult, TurnTiming
from voicebot.call.playout import HeardText, PlayoutLedger, UnknownMark, parse_mark_name
from voicebot.call.services import TRANSFER_TEXT, Services
from voicebot.call.speculation import AdoptedModel, Speculation
from voicebot.call.tool_rounds import INTERRUPTED_SUFFIX, Fillers, record_outcome, round_history
from voicebot.call.transcript import TranscriptWriter
from voicebot.call.turns import (
    Action,
    CancelTurn,
    Clear,
    DropSpeculation,
    EndCall,
    Finalize,
    IdlePrompt,
    Reply,
    Resume,
    Speculate,
    TurnConfig,
    TurnTaking,
)
from voicebot.call.vad import FrameVad
from voicebot.errors import CallEnded, ProviderError, handled
from voicebot.logs import REDACTOR, get_logger
from voicebot.metrics import Metrics
from voicebot.providers.base import (
    Message,
    SpeechStarted,
    SttEvent,
    SttStream,
    TextToSpeech,
    Transcript,
    TtsCall,
    TurnEvent,
    UtteranceEnd,
)
from voicebot.providers.deepgram_flux import FLUX_CHUNK_MS
from voicebot.settings import Settings
from voicebot.taskgroup import TaskGroup
from voicebot.tools import CONTROL_TOOLS, ToolContext, ToolLimits, ToolRunner
from voicebot.twilio import twiml, wire

log = get_logger("voicebot.call.conversation")

STT_AUDIO_MAX_BYTES = 2 * BYTES_PER_SECOND
"""2 s of caller audio waiting for the STT socket; on overflow the oldest audio is dropped (live audio wins)."""
STT_REPLAY_FRAMES = 500
"""10 s of audio since the last final result, replayed to a reconnected STT stream."""
CONTROL_QUEUE_SIZE = 256
"""Action batches waiting for the control task; actions come from state changes, so this never fills in practice."""
KEEPALIVE_INTERVAL_S = 4.0
STT_SEND_BYTES = 3 * FRAME_BYTES
"""60 ms of audio per message to Deepgram: the SDK's per-message cost (a masked frame, a random mask from the OS)
was a third of the server's CPU at 20 ms per message; this adds at most 40 ms before the recogniser hears audio."""
FLUX_SEND_BYTES = FLUX_CHUNK_MS // 20 * FRAME_BYTES
"""Flux wants 80 ms messages (PROVIDERS-2.md §2); silence is sent too: a Flux socket without audio dies."""
STT_REPLAY_CHUNK_BYTES = 8000
STT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
STT_MAX_FAILURES = 5
STT_STALL_S = 3.0
"""Local VAD has heard speech for this long with no message at all from the recogniser: the stream is stuck."""
STT_WATCHDOG_PERIOD_S = 0.5
SHUTDOWN_GOODBYE_TIMEOUT_S = 10.0
SIDE_EFFECT_GRACE_S = 10.0
"""When the call ends, how long side-effecting tool calls still in flight may finish (each has its own timeout
too); past it they are cancelled."""
PLAYOUT_WATCHDOG_PERIOD_S = 0.5
HANG_UP_TIMEOUT_S = 10.0
CONTEXT_INTRO = "\n\nYou placed this call. What it is about: "

EventSink = Callable[[str, dict[str, Any]], None]


class Conversation:
    """Everything spoken on one call, from the greeting to the hang-up."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        start: wire.Start,
        settings: Settings,
        services: Services,
        metrics: Metrics,
        publish: EventSink | None = None,
        *,
        rest_hang_up: bool = True,
        transport: asyncio.BaseTransport | None = None,
        context: str | None = None,
    ) -> None:
        self.settings = settings
        self.services = services
        self.metrics = metrics
        self.call_sid = start.call_sid
        self._publish_sink = publish
        # A call from the dev page has no Twilio call behind it: it ends by closing the socket.
        self._telephony = services.telephony if rest_hang_up else None
        self.ledger = PlayoutLedger()
        self.out = CallAudioOut(ws, start.stream_sid, self.ledger, settings.send_stall_timeout_s, transport)
        self.machine = TurnTaking(
            TurnConfig(
                barge_in=settings.barge_in,
                min_speech_ms=settings.barge_in_min_speech_ms,
                confirm_ms=settings.barge_in_confirm_ms,
                idle_timeout_s=settings.idle_timeout_s,
                idle_reprompts=settings.idle_reprompts,
                backchannels=settings.backchannels,
                flux=settings.flux,
                preemptive=settings.preemptive_generation and not settings.flux,
                preemptive_silence_ms=settings.preemptive_silence_ms,
                endpoint_silence_ms=settings.deepgram_endpointing_ms,
                max_speculations=settings.preemptive_max_attempts,
            )
        )
        self._send_bytes = FLUX_SEND_BYTES if settings.flux else STT_SEND_BYTES
        self._speculation: Speculation | None = None
        self.vad = FrameVad()
        self.history: list[Message] = []
        self.transcript = TranscriptWriter(settings.transcript_dir, start.call_sid)
        self.system_prompt = services.system_prompt
        if context is not None:  # an outbound call's context (voicebot.twilio.outbound), from a signed webhook
            self.system_prompt += CONTEXT_INTRO + context
            self.transcript.write("context", text=context)
        self._tool_context = ToolContext(
            start.call_sid, start.custom_parameters.get("from", ""), start.custom_parameters.get("to", "")
        )
        self._tools: ToolRunner | None = None  # made in run(): side-effecting calls live in the call's TaskGroup
        self._fillers = Fillers.from_settings(settings, services.phrases.get)
        self._gen = 0
        self._turn: BotTurn | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_interruptible = True
        self._turn_grace_ms = 0
        self._cut_played: int | None = None
        self._speech_onset: float | None = None
        self._vad_speaking = False
        self._actions: asyncio.Queue[list[Action]] = asyncio.Queue(CONTROL_QUEUE_SIZE)
        # Caller audio not yet sent to the recogniser: a byte buffer, not a queue of frames, so a 20 ms frame costs
        # one bytearray append and the sender wakes once per STT_SEND_BYTES. Bounded: see STT_AUDIO_MAX_BYTES.
        self._audio = bytearray()
        self._audio_ready = asyncio.Event()
        self._replay: deque[bytes] = deque(maxlen=STT_REPLAY_FRAMES)
        self._stt: SttStream | None = None
        self._last_stt_send = time.monotonic()
        self._stt_silent_since: float | None = None  # first VAD speech frame not yet answered by any STT message
        self._tg: asyncio.TaskGroup | None = None
        self._voice: TtsCall | None = None
        self._ending = False
        self.turns_completed = 0
        self.barge_ins = 0

    # --- running ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Greet, then listen and answer until the call ends (raises CallEnded when the bot hangs up)."""
        try:
            # Side-effecting tool calls live in their own TaskGroup around the call's loops: when the call ends
            # (hang-up, the bot's goodbye), a booking in flight is waited for, not cut off mid-request.
            async with TaskGroup() as side_effects:
                self._tools = ToolRunner(
                    self.services.tools,
                    self._tool_context,
                    ToolLimits(
                        max_parallel=self.settings.tool_max_parallel,
                        max_rounds=self.settings.tool_max_rounds,
                        max_same_call=self.settings.tool_max_same_call,
                        settle_s=self.settings.tool_settle_s,
                    ),
                    side_effects,
                    functools.partial(
                        record_outcome, metrics=self.metrics, transcript=self.transcript, tools=self.services.tools
                    ),
                )
                try:
                    await self._run_call()
                finally:
                    await self._tools.finish(SIDE_EFFECT_GRACE_S)
        finally:
            self.transcript.close()

    async def _run_call(self) -> None:
        # The call's voice first: a socket transport starts connecting now, without delaying the greeting.
        try:
            async with self.services.tts.open_call() as voice, TaskGroup() as tg:
                self._voice = voice
                self._tg = tg
                self._start_fixed(self.settings.greeting, interruptible=True, grace_ms=self.settings.barge_in_grace_ms)
                tg.create_task(self._control(), name="control")
                tg.create_task(self._listen(), name="stt")
                tg.create_task(self._playout_watchdog(), name="playout-watchdog")
        finally:
            # A turn cut off by the hang-up holds this conversation (its callbacks) and its task holds the
            # cancellation's traceback: cycles that only a full collection frees (tests/test_call_memory.py).
            self._turn = self._turn_task = None

    async def _playout_watchdog(self) -> None:
        """Twilio echoes each mark once its audio has played; marks long overdue mean the peer stopped reading."""
        limit = self.settings.send_stall_timeout_s
        while True:
            await asyncio.sleep(PLAYOUT_WATCHDOG_PERIOD_S)
            overdue = self.ledger.overdue_s(time.monotonic())
            if overdue > limit:
                log.warning("peer_stalled", overdue_s=round(overdue, 1), pending_marks=len(self.ledger.pending_marks))
                raise CallEnded("peer_stalled", 1011)

    def _publish(self, event: dict[str, Any]) -> None:
        if self._publish_sink is not None:
            self._publish_sink(self.call_sid, event)

    def _post(self, actions: list[Action]) -> None:
        try:
            self._actions.put_nowait(actions)
        except asyncio.QueueFull:
            raise CallEnded("control_queue_full", 1011) from None

    async def _control(self) -> None:
        while True:
            deadline = self.machine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    actions = await self._actions.get()
            except TimeoutError:
                actions = self.machine.tick(time.monotonic())
            for action in actions:
                await self._apply(action)

    # --- inputs from the session's receive loop (synchronous: the per-frame hot path) ------------------------

    def on_media(self, payload: bytes, now: float) -> None:
        if len(payload) <= FRAME_BYTES:  # Twilio's 20 ms frame: the hot path
            self._queue_audio(payload)
        else:
            # A legal but large payload is queued as 20 ms frames, so the queues stay bounded in bytes too.
            for i in range(0, len(payload), FRAME_BYTES):
                self._queue_audio(payload[i : i + FRAME_BYTES])
        actions: list[Action] = []
        for speech in self.vad.frames(payload):
            if speech and self._stt_silent_since is None:
                self._stt_silent_since = now
            if speech and not self._vad_speaking:
                self._speech_onset = now
            self._vad_speaking = speech
            actions += self.machine.vad(speech, now)
        if actions:
            self._post(actions)

    def _queue_audio(self, frame: bytes) -> None:
        audio = self._audio
        audio += frame
        if len(audio) > STT_AUDIO_MAX_BYTES:
            del audio[: len(audio) - STT_AUDIO_MAX_BYTES]  # drop the oldest audio: the recogniser must stay live
        if len(audio) >= self._send_bytes:
            self._audio_ready.set()
        self._replay.append(frame)

    def on_mark(self, name: str, now: float) -> bool:
        """A mark echoed by Twilio; False for a mark this call never sent."""
        try:
            echo = self.ledger.mark_echoed(name, now)
            gen = parse_mark_name(name)[0]
        except (UnknownMark, ValueError):
            return False
        turn = self._turn
        if turn is not None and turn.gen == gen:
            turn.mark_echoed(name, echo.played, now)
        return True

    def on_dtmf(self, digit: str, now: float) -> None:
        self.transcript.write("dtmf", digit=digit)
        self._post(self.machine.dtmf(digit, now))

    # --- listening ---------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        failures = 0
        while True:
            error = await self._stt_session()
            failures += 1
            self.metrics.provider_errors.labels("deepgram_stt", "transient" if error.transient else "fatal").inc()
            if not error.transient or failures > STT_MAX_FAILURES:
                log.error("stt_unavailable", error=str(error), status=error.status, failures=failures)
                await self._apologise_and_hang_up("stt_unavailable")
                return
            delay = STT_BACKOFF_S[min(failures - 1, len(STT_BACKOFF_S) - 1)]
            log.warning("stt_reconnecting", error=str(error), attempt=failures, delay_s=delay)
            await asyncio.sleep(delay)

    async def _stt_session(self) -> ProviderError:
        """One STT connection, until it fails; returns the failure."""
        failure: ProviderError = ProviderError("deepgram_stt", "stream ended", transient=True)
        try:
            async with self.services.stt.connect() as stream, TaskGroup() as tg:
                self._stt = stream
                self._stt_silent_since = None
                # Everything since the last final result (a superset of what is queued), once: nothing said while
                # the stream was down is lost, and nothing is sent twice.
                self._audio.clear()
                self._audio_ready.clear()
                replay = b"".join(self._replay)
                for i in range(0, len(replay), STT_REPLAY_CHUNK_BYTES):
                    await stream.send_audio(replay[i : i + STT_REPLAY_CHUNK_BYTES])
                self._last_stt_send = time.monotonic()
                tg.create_task(self._pump_audio(stream), name="stt-send")
                tg.create_task(self._keep_alive(stream), name="stt-keepalive")
                tg.create_task(self._stt_watchdog(), name="stt-watchdog")
                async for event in stream.events():
                    self._on_stt(event, time.monotonic())
        except* ProviderError as group:
            failure = handled(group)
        finally:
            self._stt = None
        return failure

    async def _stt_watchdog(self) -> None:
        """Deepgram answers speech within about a second; a stream that stays silent through speech is stuck."""
        while True:
            await asyncio.sleep(STT_WATCHDOG_PERIOD_S)
            since = self._stt_silent_since
            if since is not None and time.monotonic() - since > STT_STALL_S:
                self.metrics.provider_errors.labels("deepgram_stt", "stalled").inc()
                raise ProviderError("deepgram_stt", f"no result for {STT_STALL_S:.0f} s of speech", transient=True)

    async def _pump_audio(self, stream: SttStream) -> None:
        """Caller audio to the recogniser in STT_SEND_BYTES messages; no timer or allocation per 20 ms frame."""
        while True:
            await self._audio_ready.wait()
            self._audio_ready.clear()
            chunk = bytes(self._audio)
            self._audio.clear()
            await stream.send_audio(chunk)
            self._last_stt_send = time.monotonic()

    async def _keep_alive(self, stream: SttStream) -> None:
        """Twilio streams audio all the time, so this rarely fires: only if our audio stops, e.g. a stalled peer."""
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL_S)
            if time.monotonic() - self._last_stt_send >= KEEPALIVE_INTERVAL_S:
                await stream.keep_alive()  # keep Deepgram from closing with NET-0001
                self._last_stt_send = time.monotonic()

    def _on_stt(self, event: SttEvent, now: float) -> None:
        self._stt_silent_since = None
        match event:
            case Transcript():
                if event.is_final:
                    self._replay.clear()
                if event.text:
                    self._publish({"type": "user", "text": event.text, "final": event.is_final})
                actions = self.machine.transcript(
                    event.text,
                    is_final=event.is_final,
                    speech_final=event.speech_final,
                    from_finalize=event.from_finalize,
                    now=now,
                )
            case SpeechStarted():
                actions = self.machine.speech_started(now)
            case UtteranceEnd():
                actions = self.machine.utterance_end(now)
            case TurnEvent():
                if event.event == "end":
                    self._replay.clear()
                if event.text and event.event in ("update", "end"):
                    self._publish({"type": "user", "text": event.text, "final": event.event == "end"})
                actions = self.machine.turn_event(event.event, event.text, now)
        if actions:
            self._post(actions)

    # --- actions -----------------------------------------------------------------------------------------------

    async def _apply(self, action: Action) -> None:
        match action:
            case Clear():
                await self._clear()
            case Resume():
                if self._turn is not None and self._turn.paused:
                    self._turn.resume()
                self.metrics.barge_ins.labels("resumed").inc()
                self._publish({"type": "barge_in", "stage": "resume"})
                log.info("barge_in_resumed", gen=self._gen)
            case CancelTurn():
                await self._cancel_turn(action.reason)
            case Reply():
                await self._reply(action)
            case Speculate():
                self._speculate(action.text)
            case DropSpeculation():
                self._drop_speculation(action.reason)
            case Finalize():
                if self._stt is not None:
                    try:
                        await self._stt.finalize()
                    except ProviderError as exc:
                        log.warning("stt_finalize_failed", error=str(exc))
            case IdlePrompt():
                self._start_fixed(self.settings.idle_prompt, interruptible=True)
            case EndCall():
                await self._end_call(action.reason, say_goodbye=True)

    async def _clear(self) -> None:
        now = time.monotonic()
        turn = self._turn
        if turn is not None:
            turn.pause()
        self._cut_played = await self.out.send_clear()
        self.barge_ins += 1
        onset_ms = round((now - self._speech_onset) * 1000, 1) if self._speech_onset is not None else None
        self.metrics.barge_ins.labels("cleared").inc()
        self._publish({"type": "barge_in", "stage": "clear"})
        log.info("barge_in_clear", gen=self._gen, since_speech_onset_ms=onset_ms)

    async def _cancel_turn(self, reason: str) -> None:
        turn, task = self._turn, self._turn_task
        if turn is None or task is None:
            return
        played = self._cut_played
        if played is None and turn.timing.first_media is not None:
            played = await self.out.send_clear()  # cancelled without a stage-1 clear (DTMF): stop the audio too
        self._gen += 1
        self.out.current_gen = self._gen  # fencing first: nothing of the old turn can be sent from here on
        # Cancel without waiting for the old turn's cleanup (closing its HTTP streams can take a while under load):
        # generation fencing already keeps its audio off the socket, and the TaskGroup still owns the task.
        task.cancel()
        self._turn = self._turn_task = None
        heard = turn.heard_at_cut(played if played is not None else 0)
        self._remember_reply(turn, heard, interrupted=True, ledger_played=played or 0)
        self.metrics.barge_ins.labels("cancelled").inc()
        self._publish({"type": "barge_in", "stage": "cancel"})
        log.info("turn_cancelled", reason=reason, gen=turn.gen, heard_chars=len(heard.text))

    # --- speculation (preemptive generation) -------------------------------------------------------------------

    def _messages_for(self, text: str) -> list[Message]:
        system: Message = {"role": "system", "content": self.system_prompt}
        return [system, *self.history, {"role": "user", "content": text}]

    def _speculate(self, text: str) -> None:
        """Start the reply to ``text`` now, held: no TTS, no audio, no history, no tool until adopted."""
        assert self._tg is not None
        self._drop_speculation("replaced")
        if self._tools is not None and not self._tools.settled():
            return  # a side effect's result is still to land in the history: the reply waits for it (settle)
        tools = self._tools.schemas() if self._tools is not None else []
        spec = Speculation(self.services.llm, self._messages_for(text), tools, text)
        spec.task = self._tg.create_task(spec.run(), name="speculation")
        self._speculation = spec
        self.metrics.speculations.labels("started").inc()
        log.info("speculation_started", chars=len(text))

    def _drop_speculation(self, reason: str) -> None:
        spec, self._speculation = self._speculation, None
        if spec is None:
            return
        spec.cancel()
        self.metrics.speculations.labels("discarded").inc()
        log.info("speculation_discarded", reason=reason, held_ms=round((time.monotonic() - spec.started) * 1000, 1))

    def _adopt(self, messages: list[Message], timing: TurnTiming) -> AdoptedModel | None:
        """The held reply if it answers exactly ``messages``; otherwise drop it (the words changed)."""
        spec = self._speculation
        if spec is None:
            return None
        if not spec.matches(messages):
            self._drop_speculation("words_changed")
            return None
        self._speculation = None
        gain = max(0.0, (timing.stt_final or spec.started) - spec.started)
        timing.llm_request = spec.started
        timing.first_token = spec.first_token
        self.metrics.speculations.labels("adopted").inc()
        self.metrics.speculation_gain.observe(gain)
        log.info("speculation_adopted", gain_ms=round(gain * 1000, 1))
        return AdoptedModel(spec, self.services.llm)

    async def _reply(self, reply: Reply) -> None:
        if self._turn_task is not None:
            await self._cancel_turn("new_reply")
        messages = self._messages_for(reply.text)
        self.history.append(messages[-1])
        self.transcript.write("user", text=reply.text)
        timing = TurnTiming(speech_end=reply.speech_end, stt_final=reply.final_at)
        apology = (self.settings.apology, self.services.phrases.cached(self.settings.apology))
        self._start_turn(
            BotTurn(
                self._next_gen(),
                self.out,
                tts=self._turn_voice(),
                llm=self._adopt(messages, timing) or self.services.llm,
                messages=messages,
                fallback=apology,
                timing=timing,
                on_first_media=self._on_first_media,
                runner=self._tools,
                fillers=self._fillers,
            ),
            interruptible=True,
        )

    # --- bot turns ---------------------------------------------------------------------------------------------

    def _turn_voice(self) -> TextToSpeech:
        return self._voice.for_turn() if self._voice is not None else self.services.tts

    def _next_gen(self) -> int:
        self._gen += 1
        self.out.current_gen = self._gen
        self._cut_played = None
        return self._gen

    def _start_fixed(self, text: str, *, interruptible: bool, grace_ms: int = 0) -> None:
        turn = BotTurn(
            self._next_gen(),
            self.out,
            tts=self._turn_voice(),
            fixed=(text, self.services.phrases.cached(text)),
            on_first_media=self._on_first_media,
        )
        self._start_turn(turn, interruptible=interruptible, grace_ms=grace_ms)

    def _start_turn(self, turn: BotTurn, *, interruptible: bool, grace_ms: int = 0) -> None:
        assert self._tg is not None
        self._turn = turn
        self._turn_interruptible = interruptible
        self._turn_grace_ms = grace_ms
        self._turn_task = self._tg.create_task(self._run_turn(turn), name=f"turn-{turn.gen}")

    def _on_first_media(self, turn: BotTurn) -> None:
        if turn is self._turn:
            self.machine.bot_started(
                time.monotonic(), interruptible=self._turn_interruptible, grace_ms=self._turn_grace_ms
            )

    async def _run_turn(self, turn: BotTurn) -> None:
        result = await turn.run()
        if self._turn is turn:
            self._turn = self._turn_task = None
        self._remember_reply(turn, result.heard, interrupted=False)
        self._log_turn(turn, result)
        # Call controls act only from a reply that played to its end, after the reply's other tools finished.
        for call in result.tool_calls if not result.heard.interrupted else ():
            self.transcript.write("tool_call", name=call.name, arguments=REDACTOR.redact(call.arguments))
            if call.name == "end_call":
                await self._end_call("bot_ended", say_goodbye=not result.heard.text)
                return
            if call.name == "transfer_call" and self.settings.transfer_number:
                await self._transfer()
                return
        self._post(self.machine.bot_finished(time.monotonic()))

    def _remember_reply(
        self, turn: BotTurn, heard: HeardText, *, interrupted: bool, ledger_played: int | None = None
    ) -> None:
        """Heard-only history: what the caller heard of each round, each round's tool calls with exactly one
        tool message per id, then what was heard of the final text."""
        interrupted = interrupted or heard.interrupted
        by_round = turn.heard_by_round(ledger_played) if turn.rounds else [heard]
        controls = frozenset(c for c in CONTROL_TOOLS if self._tools is not None and self._tools.is_control(c))
        for tool_round, round_heard in zip(turn.rounds, by_round, strict=False):
            self.history += round_history(
                tool_round, round_heard, interrupted=interrupted, tools=self.services.tools, controls=controls
            )
        final = by_round[-1]
        if final.text:
            self.history.append(
                {"role": "assistant", "content": final.text + (INTERRUPTED_SUFFIX if interrupted else "")}
            )
        self.transcript.write("assistant", text=heard.text, interrupted=interrupted, gen=turn.gen)
        self._publish({"type": "assistant", "text": heard.text, "interrupted": interrupted})

    def _log_turn(self, turn: BotTurn, result: TurnResult) -> None:
        self.turns_completed += 1
        t = result.timing
        latency = t.relative_ms()
        hops = {
            "stt_final_to_llm_request": _gap(t.stt_final, t.llm_request),
            "segment_to_tts_request": _gap(t.first_segment, t.tts_request),
            "tts_first_byte_to_media": _gap(t.tts_first_byte, t.first_media),
        }
        for hop, seconds in hops.items():
            if seconds is not None:
                self.metrics.server_hop.labels(hop).observe(seconds)
        if t.speech_end is not None:
            for stage, ms in latency.items():
                self.metrics.turn_stage.labels(stage).observe(ms / 1000)
        if t.llm_request is not None:
            self.transcript.write(
                "turn",
                gen=turn.gen,
                latency_ms=latency,
                server_hops_ms={k: round(v * 1000, 3) for k, v in hops.items() if v is not None},
            )
            self._publish({"type": "turn", "latency_ms": latency})
        log.info(
            "turn_completed",
            gen=turn.gen,
            latency_ms=latency,
            server_hops_ms={k: round(v * 1000, 2) for k, v in hops.items() if v is not None},
            chars=len(result.spoken_text),
            failures=result.provider_failures or None,
        )

    # --- ending ------------------------------------------------------------------------------------------------

    async def _say(self, text: str) -> None:
        """Play a fixed phrase to the end (non-interruptible), inside the current task."""
        turn = BotTurn(
            self._next_gen(), self.out, tts=self._turn_voice(), fixed=(text, self.services.phrases.cached(text))
        )
        self._turn = turn
        self.machine.bot_started(time.monotonic(), interruptible=False)
        result = await turn.run()
        self._remember_reply(turn, result.heard, interrupted=False)

    async def _finish(
        self, reason: str, phrase: str | None, *, code: int = 1000, timeout_s: float | None = None
    ) -> None:
        """Stop what is playing, say ``phrase`` to its end, hang up; the one path every ending goes through."""
        if self._ending:
            return
        self._ending = True
        try:
            async with asyncio.timeout(timeout_s):
                task = self._turn_task
                if task is not None and task is not asyncio.current_task():
                    await self._cancel_turn(reason)
                if phrase is not None:
                    await self._say(phrase)
        except TimeoutError:
            log.warning("ending_phrase_timed_out", reason=reason)
        self.machine.ended()
        await self._hang_up(reason, code=code)

    async def _end_call(self, reason: str, *, say_goodbye: bool) -> None:
        await self._finish(reason, self.settings.goodbye if say_goodbye else None)

    async def _apologise_and_hang_up(self, reason: str) -> None:
        cached = self.services.phrases.cached(self.settings.apology) is not None
        await self._finish(reason, self.settings.apology if cached else None)

    async def shut_down(self) -> None:
        """Server shutdown: stop what is playing, say goodbye, hang up; the socket then closes with 1001."""
        await self._finish("server_shutdown", self.settings.goodbye, code=1001, timeout_s=SHUTDOWN_GOODBYE_TIMEOUT_S)

    async def _transfer(self) -> None:
        self._ending = True
        await self._say(TRANSFER_TEXT)
        self.machine.ended()
        telephony = self._telephony
        if telephony is not None:
            try:
                async with asyncio.timeout(HANG_UP_TIMEOUT_S):
                    await telephony.redirect(self.call_sid, twiml.dial(self.settings.transfer_number))
                self.transcript.write("transfer", to=self.settings.transfer_number)
                raise CallEnded("transferred")
            except (ProviderError, TimeoutError) as exc:
                log.error("transfer_failed", error=str(exc))
        await self._hang_up("transfer_failed")

    async def _hang_up(self, reason: str, code: int = 1000) -> None:
        """End the call through the REST API (closing the socket alone leaves a <Connect> call hanging)."""
        telephony = self._telephony
        if telephony is not None:
            try:
                async with asyncio.timeout(HANG_UP_TIMEOUT_S):
                    ended_now = await telephony.hang_up(self.call_sid)
                log.info("call_hung_up", reason=reason, already_ended=not ended_now)
            except (ProviderError, TimeoutError) as exc:
                log.error("hang_up_failed", error=str(exc), effect="closing the stream instead")
        self.transcript.write("hang_up", reason=reason)
        raise CallEnded(reason, code)


def _gap(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)
