"""Running one call's tool calls: checks, ownership, bounds, and exactly one outcome per call id.

Who owns a tool call (DESIGN.md): a lookup (``side_effects = false``) runs in the bot turn's TaskGroup, so a
barge-in that cancels the turn cancels it. A call with side effects runs in a TaskGroup of the call (``owner``):
it outlives the turn that asked for it, its outcome is recorded (and reaches the history) when it lands, and when
the call itself ends the conversation waits for it (:meth:`finish`, bounded) rather than cutting it off. Nothing
here raises into the call: every failure becomes an outcome whose content is one line the model cannot take for
an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from voicebot.logs import get_logger
from voicebot.providers.base import ToolCall
from voicebot.tools.base import CONTROL_TOOLS, Outcome, Tool, ToolContext, ToolFailed, failure_line
from voicebot.tools.registry import ToolRegistry

log = get_logger("voicebot.tools")

UNPARSED_KEY = "_unparsed"
"""The LLM provider's marker for arguments that were not valid JSON (see providers/openai_llm.py)."""


@dataclass(frozen=True)
class ToolLimits:
    max_parallel: int = 4
    """Tool calls of one call running at once; the rest wait for a slot (their timeout starts in the slot)."""
    max_rounds: int = 3
    """Rounds of tool calls per reply; past it the model is told so and gets one last request."""
    max_same_call: int = 2
    """The same tool with the same arguments, per reply; past it the model is told to use the earlier result."""
    settle_s: float = 3.0
    """Before answering the caller again, wait this long for side effects still in flight (their results then
    reach the model instead of 'still running')."""


@dataclass(frozen=True)
class ToolOutcome:
    """What became of one tool call; ``content`` is its tool message."""

    call: ToolCall
    outcome: Outcome
    content: str
    duration_s: float = 0.0

    @classmethod
    def failed(cls, call: ToolCall, outcome: Outcome, reason: str, duration_s: float = 0.0) -> ToolOutcome:
        return cls(call, outcome, failure_line(outcome, call.name, reason), duration_s)


OutcomeSink = Callable[[ToolOutcome], None]


def call_key(call: ToolCall) -> str:
    """Same tool, same arguments: the identity the repeat cap counts."""
    return call.name + orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS).decode()


class ToolRunner:
    """One call's tool runner; ``owner`` is the call's TaskGroup (side effects live there)."""

    def __init__(
        self,
        registry: ToolRegistry,
        context: ToolContext,
        limits: ToolLimits,
        owner: asyncio.TaskGroup,
        record: OutcomeSink,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self._context = context
        self._owner = owner
        self._record = record
        self._slots = asyncio.Semaphore(limits.max_parallel)
        self._in_flight: dict[str, tuple[str, asyncio.Task[ToolOutcome]]] = {}  # side effects, by call id

    def schemas(self) -> list[dict[str, object]]:
        return self.registry.schemas()

    def is_control(self, name: str) -> bool:
        """end_call, or transfer_call when a transfer number is set: acted on by the conversation, not run here."""
        return name in CONTROL_TOOLS and any(s["function"]["name"] == name for s in self.registry.schemas())

    def say_for(self, calls: Iterable[ToolCall]) -> str | None:
        """The first filler phrase declared by one of these tools."""
        for call in calls:
            tool = self.registry.get(call.name)
            if tool is not None and tool.say:
                return tool.say
        return None

    def check(self, call: ToolCall, repeats: Counter[str]) -> ToolOutcome | None:
        """An outcome decided without running the call (refused or invalid), else None: it may run."""
        tool = self.registry.get(call.name)
        if tool is None:
            return ToolOutcome.failed(call, "unknown_tool", "there is no tool of that name")
        if set(call.arguments) == {UNPARSED_KEY}:
            return ToolOutcome.failed(call, "invalid_arguments", "the arguments were not valid JSON")
        problem = tool.check_arguments(call.arguments)
        if problem is not None:
            return ToolOutcome.failed(call, "invalid_arguments", f"the arguments do not fit its schema ({problem})")
        key = call_key(call)
        if any(k == key for k, _ in self._in_flight.values()):
            return ToolOutcome.failed(call, "still_running", "the same call is still running; do not call it again")
        repeats[key] += 1
        if repeats[key] > self.limits.max_same_call:
            return ToolOutcome.failed(
                call, "refused", f"this exact call already ran {self.limits.max_same_call} times; use its result"
            )
        return None

    def refuse_over_cap(self, call: ToolCall) -> ToolOutcome:
        return ToolOutcome.failed(
            call,
            "refused",
            f"the limit of {self.limits.max_rounds} tool rounds per reply is reached; answer with what you have",
        )

    def record(self, outcome: ToolOutcome) -> None:
        self._record(outcome)

    def start(self, call: ToolCall, turn: asyncio.TaskGroup) -> asyncio.Task[ToolOutcome]:
        """Run a checked call: a lookup in the turn's TaskGroup, a side effect in the call's."""
        tool = self.registry.get(call.name)
        assert tool is not None  # check() came first
        if not tool.side_effects:
            return turn.create_task(self._run(tool, call), name=f"tool-{call.name}")
        task = self._owner.create_task(self._run(tool, call), name=f"tool-{call.name}")
        self._in_flight[call.id] = (call_key(call), task)
        task.add_done_callback(lambda _: self._in_flight.pop(call.id, None))
        return task

    def in_flight(self, call_id: str) -> asyncio.Task[ToolOutcome] | None:
        entry = self._in_flight.get(call_id)
        return entry[1] if entry is not None else None

    def settled(self) -> bool:
        """No side effect in flight: the history holds every result (a speculative reply may start)."""
        return not self._in_flight

    async def settle(self) -> None:
        """Wait (bounded) for side effects still in flight, so the next request carries their results."""
        tasks = [task for _, task in self._in_flight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.settle_s)

    async def finish(self, timeout_s: float) -> None:
        """The call is ending: let side effects in flight finish (bounded), so none is cut off mid-request."""
        tasks = [task for _, task in self._in_flight.values()]
        if tasks:
            log.info("tool_waiting_at_call_end", calls=len(tasks))
            await asyncio.wait(tasks, timeout=timeout_s)

    async def _run(self, tool: Tool, call: ToolCall) -> ToolOutcome:
        started = time.monotonic()
        outcome: ToolOutcome
        try:
            async with self._slots, asyncio.timeout(tool.timeout_s):
                answer = await tool.handler(dict(call.arguments), self._context)
            outcome = ToolOutcome(call, "ok", tool.result_text(answer), time.monotonic() - started)
        except TimeoutError:
            outcome = ToolOutcome.failed(call, "timeout", f"no answer within {tool.timeout_s:g} s", _since(started))
        except ToolFailed as exc:
            outcome = ToolOutcome.failed(call, exc.outcome, exc.reason, _since(started))
        except asyncio.CancelledError:
            self._record(ToolOutcome.failed(call, "cancelled", "cancelled", _since(started)))
            raise
        # A deployer's Python tool failing is an outcome for the model, never a crash of the call.
        except Exception as exc:
            log.error("tool_crashed", tool=call.name, error_type=type(exc).__name__, exc_info=True)
            outcome = ToolOutcome.failed(call, "error", "the tool failed", _since(started))
        self._record(outcome)
        return outcome


def _since(started: float) -> float:
    return time.monotonic() - started
