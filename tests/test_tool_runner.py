"""The per-call tool runner without sockets: checks and caps, who owns each call (a side effect outlives the turn
that asked for it, a lookup does not), bounded concurrency, and one outcome per call whatever happens."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from voicebot.providers.base import ToolCall
from voicebot.tools import Tool, ToolContext, ToolFailed, ToolLimits, ToolOutcome, ToolRegistry, ToolRunner

WAIT_S = 5.0
OBJECT = {"type": "object", "properties": {"n": {"type": "integer"}}}


class Gate:
    """A tool handler that records its calls and answers when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[dict[str, Any]] = []
        self.running = 0
        self.max_running = 0
        self.cancelled = 0

    async def __call__(self, args: dict[str, Any], call: ToolContext) -> Any:
        self.started.append(args)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return {"n": args.get("n"), "sid": call.call_sid}


def runner_with(
    tools: list[Tool], owner: asyncio.TaskGroup, limits: ToolLimits | None = None
) -> tuple[ToolRunner, list[ToolOutcome]]:
    recorded: list[ToolOutcome] = []
    runner = ToolRunner(
        ToolRegistry(tools), ToolContext("CA1", "+1", "+2"), limits or ToolLimits(), owner, recorded.append
    )
    return runner, recorded


def call(name: str, n: int | str = 1, call_id: str = "c1") -> ToolCall:
    return ToolCall(call_id, name, {"n": n})


async def test_checks_refuse_unknown_invalid_and_repeated_calls() -> None:
    gate = Gate()
    lookup = Tool("lookup", "d", OBJECT, gate, side_effects=False)
    async with asyncio.TaskGroup() as owner:
        runner, _ = runner_with([lookup], owner, ToolLimits(max_same_call=2))
        repeats: Counter[str] = Counter()
        assert runner.check(call("nope"), repeats) == ToolOutcome.failed(
            call("nope"), "unknown_tool", "there is no tool of that name"
        )
        bad = runner.check(call("lookup", "x"), repeats)
        assert bad is not None
        assert bad.outcome == "invalid_arguments"
        assert "'x' is not of type 'integer'" in bad.content
        unparsed = runner.check(ToolCall("c9", "lookup", {"_unparsed": "{"}), repeats)
        assert unparsed is not None
        assert unparsed.outcome == "invalid_arguments"
        assert runner.check(call("lookup"), repeats) is None
        assert runner.check(call("lookup"), repeats) is None
        third = runner.check(call("lookup"), repeats)
        assert third is not None
        assert third.outcome == "refused"
        assert runner.check(call("lookup", 2), repeats) is None  # other arguments: another call


async def test_a_side_effect_outlives_the_turn_a_lookup_does_not() -> None:
    booking, lookup_gate = Gate(), Gate()
    book = Tool("book", "d", OBJECT, booking)
    lookup = Tool("lookup", "d", OBJECT, lookup_gate, side_effects=False)
    async with asyncio.TaskGroup() as owner:
        runner, recorded = runner_with([book, lookup], owner)
        turn_started = asyncio.Event()
        tasks: dict[str, asyncio.Task[ToolOutcome]] = {}

        async def turn() -> None:
            async with asyncio.TaskGroup() as turn_tg:
                tasks["book"] = runner.start(call("book", call_id="b"), turn_tg)
                tasks["lookup"] = runner.start(call("lookup", call_id="l"), turn_tg)
                turn_started.set()
                await asyncio.wait(tasks.values())

        turn_task = owner.create_task(turn())
        await turn_started.wait()
        while len(booking.started) < 1 or len(lookup_gate.started) < 1:
            await asyncio.sleep(0)
        # The same booking again while it runs: refused, never sent twice.
        again = runner.check(call("book", call_id="b2"), Counter())
        assert again is not None
        assert again.outcome == "still_running"
        turn_task.cancel()  # barge-in
        await asyncio.wait([turn_task])
        assert lookup_gate.cancelled == 1
        assert tasks["lookup"].cancelled()
        assert not tasks["book"].done()  # the booking goes on
        assert runner.in_flight("b") is tasks["book"]
        booking.release.set()
        async with asyncio.timeout(WAIT_S):
            await runner.settle()
        assert tasks["book"].result().content == '{"n":1,"sid":"CA1"}'
        assert runner.in_flight("b") is None
        assert sorted(o.outcome for o in recorded) == ["cancelled", "ok"]


async def test_concurrency_is_bounded_and_every_failure_is_an_outcome() -> None:
    gate = Gate()

    async def fails(args: dict[str, Any], call: ToolContext) -> Any:
        raise ToolFailed("http_error", "the service answered HTTP 503")

    async def crashes(args: dict[str, Any], call: ToolContext) -> Any:
        raise KeyError("oops")

    async def slow(args: dict[str, Any], call: ToolContext) -> Any:
        await asyncio.sleep(WAIT_S)

    tools = [
        Tool("lookup", "d", OBJECT, gate, side_effects=False),
        Tool("fails", "d", OBJECT, fails),
        Tool("crashes", "d", OBJECT, crashes),
        Tool("slow", "d", OBJECT, slow, timeout_s=0.05),
    ]
    async with asyncio.TaskGroup() as owner:
        runner, _ = runner_with(tools, owner, ToolLimits(max_parallel=2))
        lookups = [runner.start(call("lookup", i, f"l{i}"), owner) for i in range(5)]
        while len(gate.started) < 2:
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert gate.max_running == 2  # the other three wait for a slot
        gate.release.set()
        failures = [runner.start(call(name, call_id=name), owner) for name in ("fails", "crashes", "slow")]
        async with asyncio.timeout(WAIT_S):
            done = await asyncio.gather(*lookups, *failures)
    assert [o.outcome for o in done] == ["ok"] * 5 + ["http_error", "error", "timeout"]
    assert done[5].content == "[error, no result] fails: the service answered HTTP 503"
    assert done[6].content == "[error, no result] crashes: the tool failed"  # no traceback, no exception text
    assert done[7].content == "[error, no result] slow: no answer within 0.05 s"


@pytest.mark.parametrize("chars", [10, 2000])
def test_results_are_cut_to_max_result_chars(chars: int) -> None:
    tool = Tool("t", "d", OBJECT, Gate(), max_result_chars=chars)
    text = tool.result_text({"text": "x" * 5000})
    assert len(text) == chars
    assert text.endswith("…[truncated]") == (chars > 100)
