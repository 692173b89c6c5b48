"""A reply's tool rounds: what the model asked for and what became of each call, the filler while they run, and
how a round enters the model's history (heard-only, exactly one tool message per call id, whatever happened).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from voicebot.call.playout import HeardText
from voicebot.call.transcript import TranscriptWriter
from voicebot.errors import ProviderError
from voicebot.logs import REDACTOR, get_logger
from voicebot.metrics import Metrics
from voicebot.providers.base import Message, ToolCall
from voicebot.settings import Settings
from voicebot.tools import ToolOutcome, ToolRegistry, failure_line

log = get_logger("voicebot.turn")

SPEECH_POLL_S = 0.05
"""While a tool runs and text before it is still being synthesised, how often the filler looks again."""
INTERRUPTED_SUFFIX = " —"
"""Appended to an interrupted reply in the model's history: the caller stopped hearing it there."""
STILL_RUNNING = "it was started and is still running; do not call it again"
LOOKUP_CANCELLED = "the caller interrupted, so it was stopped before answering; nothing was changed"
CONTROL_NOT_DONE = "the caller interrupted this reply, so it was not carried out"
TRANSCRIPT_RESULT_CHARS = 500
UNKNOWN_TOOL_LABEL = "(unknown)"


@dataclass(frozen=True)
class Fillers:
    """What the caller hears while tools run: ``text`` after ``after_s`` of silence, ``still`` after more."""

    text: str
    after_s: float
    still: str
    still_after_s: float
    audio: Callable[[str], Awaitable[bytes]]
    """The phrase's audio (cached: fillers cost no TTS round trip once warm)."""

    @classmethod
    def from_settings(cls, settings: Settings, audio: Callable[[str], Awaitable[bytes]]) -> Fillers:
        return cls(
            text=settings.tool_filler,
            after_s=settings.tool_filler_after_ms / 1000,
            still=settings.tool_still_working,
            still_after_s=settings.tool_still_working_after_s,
            audio=audio,
        )


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


async def fill_silence(
    fillers: Fillers,
    say: str | None,
    speech_pending: Callable[[], bool],
    audio_end: Callable[[], float],
    speak: Callable[[str, bytes], Awaitable[None]],
) -> None:
    """While a round's tools run (cancel it when they finish): the filler (the tool's ``say``, else the default)
    after ``after_s`` of silence, then the still-working line after ``still_after_s`` more; each at most once."""
    started = time.monotonic()
    for text, after_s in ((say or fillers.text, fillers.after_s), (fillers.still, fillers.still_after_s)):
        await _silent_for(after_s, started, speech_pending, audio_end)
        try:
            audio = await fillers.audio(text)
        except (ProviderError, TimeoutError) as exc:
            log.warning("tool_filler_failed", error=str(exc) or "timed out")
            return
        await speak(text, audio)


async def _silent_for(
    seconds: float, since: float, speech_pending: Callable[[], bool], audio_end: Callable[[], float]
) -> None:
    """Return once the caller has heard nothing for ``seconds`` (counted from ``since`` at the earliest): text
    said before the tools is played to its end first."""
    while True:
        if speech_pending():
            await asyncio.sleep(SPEECH_POLL_S)
            continue
        wait = max(since, audio_end()) + seconds - time.monotonic()
        if wait <= 0:
            return
        await asyncio.sleep(wait)


def round_history(
    tool_round: ToolRound, heard: HeardText, *, interrupted: bool, tools: ToolRegistry, controls: frozenset[str]
) -> list[Message]:
    """The round as the model's history keeps it: what the caller heard of its text, then its calls, each with
    exactly one tool message. A round whose calls never ran is only its heard text (the model may ask again)."""
    content = heard.text + (INTERRUPTED_SUFFIX if heard.interrupted and heard.text else "")
    if not tool_round.started:
        return [{"role": "assistant", "content": content}] if content else []
    messages = [tool_round.assistant_message(content)]
    for call in tool_round.calls:
        messages.append(_tool_message(tool_round, call, interrupted, tools, call.name in controls))
    return messages


def _tool_message(
    tool_round: ToolRound, call: ToolCall, interrupted: bool, tools: ToolRegistry, control: bool
) -> Message:
    message: Message = {"role": "tool", "tool_call_id": call.id, "content": ""}
    outcome = tool_round.outcomes.get(call.id)
    task = tool_round.tasks.get(call.id)
    tool = tools.get(call.name)
    if outcome is not None:
        not_done = interrupted and control
        message["content"] = failure_line("not_done", call.name, CONTROL_NOT_DONE) if not_done else outcome.content
    elif task is not None and task.done() and not task.cancelled():
        message["content"] = task.result().content
    elif task is not None and not task.done() and tool is not None and tool.side_effects:
        # Owned by the call: it goes on, and its result replaces this line when it lands (the next request waits
        # a little for it first, see ToolRunner.settle).
        message["content"] = failure_line("still_running", call.name, STILL_RUNNING)
        task.add_done_callback(lambda t: t.cancelled() or message.update(content=t.result().content))
    else:
        message["content"] = failure_line("cancelled", call.name, LOOKUP_CANCELLED)
    return message


def record_outcome(
    outcome: ToolOutcome, *, metrics: Metrics, transcript: TranscriptWriter, tools: ToolRegistry
) -> None:
    """Every tool call's outcome, when it lands: transcript, metrics, one log line."""
    call = outcome.call
    # A metric label only from our own tool names: the model's made-up names would grow the series unbounded.
    label = call.name if tools.get(call.name) is not None else UNKNOWN_TOOL_LABEL
    metrics.tool_calls.labels(label, outcome.outcome).inc()
    metrics.tool_seconds.labels(label).observe(outcome.duration_s)
    duration_ms = round(outcome.duration_s * 1000, 1)
    transcript.write(
        "tool_call",
        name=call.name,
        id=call.id,
        arguments=REDACTOR.redact(call.arguments),
        duration_ms=duration_ms,
        outcome=outcome.outcome,
        result=REDACTOR.redact(outcome.content[:TRANSCRIPT_RESULT_CHARS]),
    )
    log.info("tool_call_finished", tool=call.name, outcome=outcome.outcome, duration_ms=duration_ms)
