"""One bot turn: LLM stream → text segments → parallel TTS → strictly ordered playout, with marks.

A turn is one task owning its own TaskGroup: the LLM reader, one TTS task per segment (at most
``MAX_TTS_IN_FLIGHT`` synthesising at once), the assembler that appends segment audio to the turn's timeline
strictly in segment order, and the sender that writes the timeline to Twilio with marks. Cancelling the turn's task
(barge-in) closes the LLM stream and aborts every TTS request in flight.

Positions inside a turn are offsets in its *timeline* (the turn's audio in order). The call's playout ledger counts
bytes sent over the whole call; after a resume the same timeline bytes are sent again, so each send records a span
mapping ledger positions back to timeline positions.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from voicebot.audio import BYTES_PER_SECOND
from voicebot.call.chunker import TextChunker
from voicebot.call.playout import HeardText, Segment, heard_text, mark_name
from voicebot.errors import ProviderError
from voicebot.logs import get_logger
from voicebot.providers.base import LanguageModel, Message, TextDelta, TextToSpeech, ToolCall
from voicebot.tools import ToolOutcome, ToolRunner

log = get_logger("voicebot.turn")

MAX_TTS_IN_FLIGHT = 3
"""Segments synthesised in parallel per turn (Deepgram allows ~15 concurrent REST requests per project)."""
SEGMENT_QUEUE_SIZE = 16
"""Segments waiting for the assembler; when full the LLM reader waits (back-pressure, nothing dropped)."""
MARK_EVERY_BYTES = BYTES_PER_SECOND
"""A mark about every second of audio, plus one at each segment end."""
MAX_MEDIA_BYTES = BYTES_PER_SECOND
"""Largest media message: one second of audio (about 10.7 kB of base64)."""
TTS_FIRST_BYTE_TIMEOUT_S = 3.0
TTS_CHUNK_TIMEOUT_S = 3.0
TTS_RETRIES = 1
LLM_FIRST_TOKEN_TIMEOUT_S = 6.0
"""Includes the SDK's one retry of a 429/5xx; past it the caller hears the cached apology rather than silence."""
LLM_TOKEN_TIMEOUT_S = 5.0
FINAL_MARK_GRACE_S = 5.0
"""How long past the expected end of playout to wait for the final mark before giving up on it."""
SPEECH_POLL_S = 0.05
"""While a tool runs and text before it is still being synthesised, how often the filler looks again."""


@dataclass(frozen=True)
class Fillers:
    """What the caller hears while tools run: ``text`` after ``after_s`` of silence, ``still`` after more."""

    text: str
    after_s: float
    still: str
    still_after_s: float
    audio: Callable[[str], Awaitable[bytes]]
    """The phrase's audio (cached: fillers cost no TTS round trip once warm)."""


@dataclass
class ToolRound:
    """One batch of tool calls in a reply: the text the model streamed before them, the calls, their outcomes."""

    index: int
    text: str
    calls: list[ToolCall]
    tasks: dict[str, asyncio.Task[ToolOutcome]] = field(default_factory=dict)
    outcomes: dict[str, ToolOutcome] = field(default_factory=dict)
    started: bool = False
    """Set once the calls were handed to the runner: from then on they belong in the history."""

    def assistant_message(self, content: str | None) -> Message:
        calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()},
            }
            for c in self.calls
        ]
        return {"role": "assistant", "content": content or None, "tool_calls": calls}

    def messages(self) -> list[Message]:
        """The model's view of the round for the follow-up request: every call answered, in call order."""
        tool_messages = [
            {"role": "tool", "tool_call_id": c.id, "content": self.outcomes[c.id].content} for c in self.calls
        ]
        return [self.assistant_message(self.text), *tool_messages]


class AudioOut(Protocol):
    """The call's socket writer, fenced by generation: stale sends are dropped and return False."""

    async def send_media(self, gen: int, audio: bytes) -> bool: ...
    async def send_mark(self, gen: int, name: str) -> bool: ...
    def sent_bytes(self) -> int:
        """Bytes sent so far on the call (the ledger position the next media byte will have)."""
        ...


@dataclass
class TurnTiming:
    """Monotonic timestamps of one turn's critical path; None where the stage did not happen."""

    speech_end: float | None = None
    stt_final: float | None = None
    llm_request: float | None = None
    first_token: float | None = None
    first_segment: float | None = None
    tts_request: float | None = None
    tts_first_byte: float | None = None
    first_media: float | None = None
    first_mark: float | None = None

    def relative_ms(self) -> dict[str, float]:
        """Each stage in ms after the caller stopped speaking (or after the first stage seen)."""
        stages = {k: v for k, v in vars(self).items() if v is not None}
        if not stages:
            return {}
        origin = self.speech_end if self.speech_end is not None else min(stages.values())
        return {k: round((v - origin) * 1000, 1) for k, v in stages.items() if k != "speech_end"}


@dataclass
class _SegmentAudio:
    index: int
    text: str
    round: int
    buffer: bytearray = field(default_factory=bytearray)
    done: bool = False
    failed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Span:
    ledger_start: int
    turn_start: int
    length: int


@dataclass
class _MarkPoint:
    position: int
    segment: int
    final: bool = False


@dataclass
class TurnResult:
    heard: HeardText
    tool_calls: list[ToolCall]
    timing: TurnTiming
    spoken_text: str
    provider_failures: list[str]


class BotTurn:
    """A reply generated by the LLM, or a fixed phrase whose audio is already known."""

    def __init__(
        self,
        gen: int,
        out: AudioOut,
        *,
        tts: TextToSpeech,
        llm: LanguageModel | None = None,
        messages: Sequence[Message] = (),
        tools: Sequence[dict[str, Any]] = (),
        fixed: tuple[str, bytes | None] | None = None,
        fallback: tuple[str, bytes | None] | None = None,
        timing: TurnTiming | None = None,
        on_first_media: Callable[[BotTurn], None] | None = None,
        runner: ToolRunner | None = None,
        fillers: Fillers | None = None,
    ) -> None:
        self.gen = gen
        self._out = out
        self._tts = tts
        self._llm = llm
        self._messages = messages
        self._tools = tools
        self._fixed = fixed
        self._fallback = fallback
        self.timing = timing or TurnTiming()
        self._on_first_media = on_first_media
        self._runner = runner
        self._fillers = fillers
        self.tool_calls: list[ToolCall] = []
        """Call controls (end_call, transfer_call) for the conversation, once the reply has played."""
        self.rounds: list[ToolRound] = []
        self.fillers_said: list[str] = []
        self._round = 0  # the round new segments belong to; len(rounds) once the last tools ran
        self._round_segments = 0  # segments added since the last round's tools ran
        self._repeats: Counter[str] = Counter()
        self.failures: list[str] = []
        self._queue: asyncio.Queue[_SegmentAudio | None] = asyncio.Queue(SEGMENT_QUEUE_SIZE)
        self._tts_slots = asyncio.Semaphore(MAX_TTS_IN_FLIGHT)
        self._segment_count = 0
        self._tg: asyncio.TaskGroup | None = None
        # timeline and playout state
        self.timeline = bytearray()
        self.segments: list[Segment] = []
        self._segment_rounds: list[int] = []  # the round of each entry of ``segments``
        self.audio_end = 0.0  # when the audio sent so far ends playing at the caller (estimate, monotonic)
        self._assembled = False
        self._points: list[_MarkPoint] = []
        self._next_point = 0
        self._cursor = 0
        self._spans: list[_Span] = []
        self._marks: dict[str, _MarkPoint] = {}
        self._mark_serial = 0
        self.paused = False
        self.played = 0  # timeline position of the last mark echoed as played
        self._wake = asyncio.Event()
        self._done_playing = asyncio.Event()
        self._current: _SegmentAudio | None = None
        self._current_start = 0

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def run(self) -> TurnResult:
        """Produce, send and play the whole turn; returns once its final mark has been echoed (or given up on)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if self._fixed is not None:
                text, audio = self._fixed
                await self._add_segment(text, audio)
                await self._queue.put(None)
            else:
                tg.create_task(self._think(), name=f"turn-{self.gen}-llm")
            tg.create_task(self._assemble(), name=f"turn-{self.gen}-assemble")
            tg.create_task(self._send(), name=f"turn-{self.gen}-send")
        return TurnResult(
            heard=heard_text(self.segments, len(self.timeline)),
            tool_calls=self.tool_calls,
            timing=self.timing,
            spoken_text=" ".join(s.text for s in self.segments),
            provider_failures=self.failures,
        )

    def heard_at_cut(self, ledger_played: int) -> HeardText:
        """What the caller heard, given the ledger's played position when the audio was cut."""
        return heard_text(self.segments_so_far(), self._to_timeline(ledger_played))

    def segments_so_far(self) -> list[Segment]:
        return [segment for segment, _ in self._tagged_segments()]

    def heard_by_round(self, ledger_played: int | None) -> list[HeardText]:
        """What the caller heard of each round's text (index ``len(rounds)``: the text after the last tools);
        ``ledger_played`` None means the turn played to its end."""
        played = len(self.timeline) if ledger_played is None else self._to_timeline(ledger_played)
        tagged = self._tagged_segments()
        return [heard_text([s for s, r in tagged if r == index], played) for index in range(len(self.rounds) + 1)]

    def _tagged_segments(self) -> list[tuple[Segment, int]]:
        tagged = list(zip(self.segments, self._segment_rounds, strict=True))
        if not self._assembled and self._current is not None:
            tagged.append((Segment(self._current.text, self._current_start, None), self._current.round))
        return tagged

    # --- barge-in controls (called by the session, synchronously) ---------------------------------------------

    def pause(self) -> None:
        """Stage 1: stop sending at once (the session sends Twilio's ``clear``)."""
        self.paused = True

    def resume(self) -> None:
        """False alarm: replay from the last mark the caller is known to have heard."""
        self.paused = False
        self._cursor = min(self.played, len(self.timeline))
        self._next_point = next((i for i, p in enumerate(self._points) if p.position > self._cursor), len(self._points))
        self._wake.set()

    def mark_echoed(self, name: str, played: bool, now: float) -> None:
        point = self._marks.pop(name, None)
        if point is None or not played:
            return  # a mark flushed by a clear: that audio was not heard
        if self.timing.first_mark is None:
            self.timing.first_mark = now
        self.played = max(self.played, point.position)
        if point.final:
            self._done_playing.set()
            self._wake.set()

    # --- producing segments ------------------------------------------------------------------------------------

    async def _think(self) -> None:
        """Stream the reply; between rounds, run its tool calls and ask again with every result."""
        chunker = TextChunker()
        if self._runner is not None:
            await self._runner.settle()  # side effects of an interrupted reply land in the history first
        messages = list(self._messages)
        self.timing.llm_request = time.monotonic()
        told_cap = False
        while True:
            text, calls, ok = await self._stream_round(messages, chunker)
            for piece in chunker.flush():  # text before the tool calls is spoken first
                await self._add_segment(piece)
            if not ok or not calls:
                break
            if self._runner is None:
                self.tool_calls += calls
                break
            tool_round = ToolRound(len(self.rounds), text, calls)
            self.rounds.append(tool_round)
            over_cap = len(self.rounds) > self._runner.limits.max_rounds
            await self.run_tools(tool_round, over_cap=over_cap)
            self._round, self._round_segments = len(self.rounds), 0
            if self.tool_calls or (over_cap and told_cap):
                break  # a call control ends the reply here; or the model ignored the cap once already
            told_cap = over_cap
            messages += tool_round.messages()
        answer_due = not ok or (self.rounds and not self.tool_calls)  # a call control says its own goodbye
        if self._round_segments == 0 and answer_due and self._fallback is not None:
            # Nothing said since the tools ran (or the model failed before saying anything): the cached apology,
            # never silence.
            await self._add_segment(*self._fallback)
        await self._queue.put(None)

    async def _stream_round(
        self, messages: Sequence[Message], chunker: TextChunker
    ) -> tuple[str, list[ToolCall], bool]:
        """One LLM request: text goes to the chunker as it streams, tool calls are only collected (a held,
        speculative reply can stop here; :meth:`run_tools` is the separate step that acts on them)."""
        assert self._llm is not None
        loop = asyncio.get_running_loop()
        text: list[str] = []
        calls: list[ToolCall] = []
        tools = self._runner.schemas() if self._runner is not None else self._tools
        try:
            async with asyncio.timeout(LLM_FIRST_TOKEN_TIMEOUT_S) as deadline:
                async with self._llm.stream(messages, tools) as events:
                    async for event in events:
                        deadline.reschedule(loop.time() + LLM_TOKEN_TIMEOUT_S)
                        if isinstance(event, TextDelta):
                            if self.timing.first_token is None:
                                self.timing.first_token = time.monotonic()
                            text.append(event.text)
                            for piece in chunker.feed(event.text):
                                await self._add_segment(piece)
                        else:
                            calls.append(event)
        except (ProviderError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, ProviderError) else "timed out"
            self.failures.append(f"llm: {reason}")
            log.warning("llm_failed", error=reason, gen=self.gen, segments=self._segment_count, round=self._round)
            return "".join(text), [], False
        return "".join(text), calls, True

    async def run_tools(self, tool_round: ToolRound, *, over_cap: bool) -> None:
        """Give every call of the round exactly one outcome: run, refused or invalid; call controls are kept
        for the conversation (they act once the reply has played). Says the filler if the tools keep the
        caller waiting."""
        runner = self._runner
        assert runner is not None
        assert self._tg is not None
        tool_round.started = True
        for call in tool_round.calls:
            if runner.is_control(call.name):
                self.tool_calls.append(call)
                tool_round.outcomes[call.id] = ToolOutcome(call, "ok", "done: it takes effect when this reply ends")
                continue
            outcome = runner.refuse_over_cap(call) if over_cap else runner.check(call, self._repeats)
            if outcome is not None:
                tool_round.outcomes[call.id] = outcome
                runner.record(outcome)
            else:
                tool_round.tasks[call.id] = runner.start(call, self._tg)
        if not tool_round.tasks:
            return
        filler = self._tg.create_task(self._fill_silence(tool_round), name=f"turn-{self.gen}-filler")
        try:
            # asyncio.wait, not gather: if this turn is cancelled, side-effecting calls (owned by the call) go on.
            await asyncio.wait(tool_round.tasks.values())
        finally:
            filler.cancel()
        for call_id, task in tool_round.tasks.items():
            tool_round.outcomes[call_id] = task.result()

    async def _fill_silence(self, tool_round: ToolRound) -> None:
        fillers, runner = self._fillers, self._runner
        if fillers is None or runner is None:
            return
        started = time.monotonic()
        first = runner.say_for(tool_round.calls) or fillers.text
        for text, after_s in ((first, fillers.after_s), (fillers.still, fillers.still_after_s)):
            await self._silent_for(after_s, since=started)
            try:
                audio = await fillers.audio(text)
            except (ProviderError, TimeoutError) as exc:
                log.warning("tool_filler_failed", error=str(exc) or "timed out", gen=self.gen)
                return
            self.fillers_said.append(text)
            log.info("tool_filler", gen=self.gen, text=text, waited_ms=round((time.monotonic() - started) * 1000))
            await self._add_segment(text, audio)

    async def _silent_for(self, seconds: float, *, since: float) -> None:
        """Return once the caller has heard nothing from this turn for ``seconds`` (counted from ``since`` at
        the earliest): text before the tools is spoken to its end first."""
        while True:
            if self._speech_pending():
                await asyncio.sleep(SPEECH_POLL_S)
                continue
            wait = max(since, self.audio_end) + seconds - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _speech_pending(self) -> bool:
        return not self._queue.empty() or self._current is not None or self._cursor < len(self.timeline)

    async def _add_segment(self, text: str, audio: bytes | None = None) -> None:
        segment = _SegmentAudio(self._segment_count, text, self._round)
        self._segment_count += 1
        self._round_segments += 1
        if self.timing.first_segment is None:
            self.timing.first_segment = time.monotonic()
        if audio is not None:
            segment.buffer += audio
            segment.done = True
        else:
            assert self._tg is not None
            self._tg.create_task(self._synthesize(segment), name=f"turn-{self.gen}-tts-{segment.index}")
        await self._queue.put(segment)

    async def _synthesize(self, segment: _SegmentAudio) -> None:
        loop = asyncio.get_running_loop()
        async with self._tts_slots:
            for attempt in range(TTS_RETRIES + 1):
                if self.timing.tts_request is None:
                    self.timing.tts_request = time.monotonic()
                try:
                    async with asyncio.timeout(TTS_FIRST_BYTE_TIMEOUT_S) as deadline:
                        async with self._tts.synthesize(segment.text) as chunks:
                            async for chunk in chunks:
                                if self.timing.tts_first_byte is None:
                                    self.timing.tts_first_byte = time.monotonic()
                                deadline.reschedule(loop.time() + TTS_CHUNK_TIMEOUT_S)
                                segment.buffer += chunk
                                segment.changed.set()
                    break
                except (ProviderError, TimeoutError) as exc:
                    reason = str(exc) if isinstance(exc, ProviderError) else "timed out"
                    transient = not isinstance(exc, ProviderError) or exc.transient
                    if segment.buffer or attempt == TTS_RETRIES or not transient:
                        # Part of the audio is out already or retries are spent: skip the rest of this segment.
                        segment.failed = True
                        self.failures.append(f"tts segment {segment.index}: {reason}")
                        log.warning("tts_segment_skipped", gen=self.gen, segment=segment.index, error=reason)
                        break
                    log.info("tts_retry", gen=self.gen, segment=segment.index, error=reason)
        segment.done = True
        segment.changed.set()

    # --- ordering: segments into the timeline, strictly in order -------------------------------------------------

    async def _assemble(self) -> None:
        while (segment := await self._queue.get()) is not None:
            self._current, self._current_start = segment, len(self.timeline)
            copied = 0
            next_mark = len(self.timeline) + MARK_EVERY_BYTES
            while True:
                segment.changed.clear()
                if len(segment.buffer) > copied:
                    self.timeline += segment.buffer[copied:]
                    copied = len(segment.buffer)
                    while next_mark < len(self.timeline):
                        self._points.append(_MarkPoint(next_mark, segment.index))
                        next_mark += MARK_EVERY_BYTES
                    self._wake.set()
                if segment.done:
                    break
                await segment.changed.wait()
            segment.buffer = bytearray()  # the timeline holds it now
            self._current = None
            if copied:
                self.segments.append(Segment(segment.text, self._current_start, len(self.timeline)))
                self._segment_rounds.append(segment.round)
                self._points.append(_MarkPoint(len(self.timeline), segment.index))
        fallback_audio = self._fallback[1] if self._fallback is not None else None
        if not self.segments and self.failures and self._fallback is not None and fallback_audio:
            # Every segment failed (TTS down for the whole turn): say the cached apology rather than nothing.
            text, audio = self._fallback[0], fallback_audio
            start = len(self.timeline)
            self.timeline += audio
            self.segments.append(Segment(text, start, len(self.timeline)))
            self._segment_rounds.append(self._round)
            self._points.append(_MarkPoint(len(self.timeline), self._segment_count))
            self._wake.set()
        if self._points and self._points[-1].position == len(self.timeline):
            self._points[-1].final = True
        else:
            self._points.append(_MarkPoint(len(self.timeline), self._segment_count, final=True))
        self._assembled = True
        self._wake.set()

    # --- sending: the one writer of this turn ------------------------------------------------------------------

    async def _send(self) -> None:
        while True:
            self._wake.clear()  # before looking at the state, so a wake-up during the flush is not lost
            if not self.paused:
                await self._flush()
            if self._done_playing.is_set():
                return
            if not self._is_paused() and self._assembled and self._all_sent():
                # Everything is out: wait for the final mark (or a rewind after a false barge-in).
                remaining_s = max(0, len(self.timeline) - self.played) / BYTES_PER_SECOND
                try:
                    async with asyncio.timeout(remaining_s + FINAL_MARK_GRACE_S):
                        await self._wake.wait()
                except TimeoutError:
                    log.warning("final_mark_missing", gen=self.gen, waited_s=round(remaining_s + FINAL_MARK_GRACE_S, 1))
                    self._done_playing.set()
                    return
            else:
                await self._wake.wait()

    def _is_paused(self) -> bool:
        # A method, not the attribute: the flag changes across awaits, which type narrowing cannot see.
        return self.paused

    def _all_sent(self) -> bool:
        return self._cursor >= len(self.timeline) and self._next_point >= len(self._points)

    async def _flush(self) -> None:
        while not self.paused:
            points = self._points
            while self._next_point < len(points) and points[self._next_point].position <= self._cursor:
                point = points[self._next_point]
                self._mark_serial += 1
                name = mark_name(self.gen, point.segment, self._mark_serial)
                self._marks[name] = point
                self._next_point += 1
                await self._out.send_mark(self.gen, name)
                if self._is_paused():
                    return
            limit = len(self.timeline)
            if self._next_point < len(points):
                limit = min(limit, points[self._next_point].position)
            end = min(limit, self._cursor + MAX_MEDIA_BYTES)
            if end <= self._cursor:
                return
            chunk = bytes(self.timeline[self._cursor : end])
            self._record_span(self._out.sent_bytes(), self._cursor, len(chunk))
            self.audio_end = max(self.audio_end, time.monotonic()) + len(chunk) / BYTES_PER_SECOND
            self._cursor = end
            if not await self._out.send_media(self.gen, chunk):
                return
            if self.timing.first_media is None:
                self.timing.first_media = time.monotonic()
                if self._on_first_media is not None:
                    self._on_first_media(self)

    def _record_span(self, ledger_start: int, turn_start: int, length: int) -> None:
        last = self._spans[-1] if self._spans else None
        if (
            last is not None
            and last.ledger_start + last.length == ledger_start
            and last.turn_start + last.length == turn_start
        ):
            last.length += length
        else:
            self._spans.append(_Span(ledger_start, turn_start, length))

    def _to_timeline(self, ledger_position: int) -> int:
        """Map a ledger (whole-call) byte position to this turn's timeline; 0 before its first byte."""
        position = 0
        for span in self._spans:
            if ledger_position <= span.ledger_start:
                break
            position = span.turn_start + min(ledger_position - span.ledger_start, span.length)
        return max(position, self.played)
