"""Custom tools end to end: real server, real openai SDK against the LLM emulator (which refuses any invalid
message sequence), a real tool service on loopback, and the simulated caller. Assertions are on bytes heard,
requests seen and histories sent, never on speed."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import AUTH_TOKEN
from tests.tool_service import ToolRequest, ToolService, fixed, held, running_tool_service
from tests.world import World, audio_of, segments_of
from voicebot.caller import CallResult, HangUp, Say, SayWhileBotSpeaks, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import Step
from voicebot.emulators import Emulators, LlmReply, ToolCall
from voicebot.logs import configure_logging
from voicebot.tools import SIGNATURE_HEADER, sign

WAIT_S = 15.0
TOOL_WAIT_S = 10.0
SLOW_TOOL_S = 2.0
"""Well past the filler threshold (0.7 s of silence) and well short of the still-working line (5 s more)."""

HOURS = """
[[tool]]
name = "opening_hours"
description = "Opening hours for a day of the week."
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }}, required = ["day"] }}
url = "{base}/hours"
method = "{method}"
side_effects = false
"""
WEATHER = """
[[tool]]
name = "weather"
description = "The weather in a city."
parameters = '{{"type": "object", "properties": {{"city": {{"type": "string"}}}}}}'
url = "{base}/weather"
side_effects = false
"""
BOOK = """
[[tool]]
name = "book_table"
description = "Book a table."
url = "{base}/book"
timeout_s = {timeout_s}
say = "{say}"
static = {{ restaurant = "main" }}
[tool.parameters]
type = "object"
required = ["time", "people"]
properties = {{ time = {{ type = "string" }}, people = {{ type = "integer", minimum = 1 }} }}
[tool.headers]
Authorization = "Bearer ${{VB_TEST_TOOL_TOKEN}}"
"""
TOOL_TOKEN = "tool-token-7c1e55aa90"
TOOLS_SECRET = "tools-secret-0b9d3f2e41"
BOOK_SAY = "Let me book that for you."
SHORT_GREETING = "Hi there."
"""A short greeting keeps these tests short: every call waits for it to play in real time."""


@pytest.fixture
async def service() -> AsyncIterator[ToolService]:
    async with running_tool_service() as svc:
        yield svc


@pytest.fixture
def tools_world(
    start_world: Any, service: ToolService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    monkeypatch.setenv("VB_TEST_TOOL_TOKEN", TOOL_TOKEN)

    async def factory(*, method: str = "POST", timeout_s: float = 10, **settings: Any) -> World:
        path = tmp_path / "tools.toml"
        base = service.base_url
        path.write_text(
            HOURS.format(base=base, method=method)
            + WEATHER.format(base=base)
            + BOOK.format(base=base, timeout_s=timeout_s, say=BOOK_SAY)
        )
        world: World = await start_world(
            tools_file=path, tools_secret=TOOLS_SECRET, **{"greeting": SHORT_GREETING, **settings}
        )
        return world

    return factory


def ask(steps_after: list[Step] | None = None) -> list[Step]:
    return [
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=400),
        Say("hours"),
        *(steps_after or []),
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=1200),
        HangUp(),
    ]


def heard_after_greeting(world: World, result: CallResult) -> bytes:
    audio = b"".join(m.payload for m in result.media)
    greeting = audio_of(world.server.settings.greeting)
    assert audio.startswith(greeting)
    return audio[len(greeting) :]


def spoken(*texts: str) -> bytes:
    return b"".join(audio_of(s) for text in texts for s in segments_of(text))


def messages_of(emu: Emulators, index: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = emu.llm.requests[index].data["messages"]
    return messages


def tool_lines(world: World) -> list[dict[str, Any]]:
    lines = []
    for path in world.transcripts.glob("*.jsonl"):
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [line for line in lines if line["kind"] == "tool_call"]


async def test_a_fast_tool_answers_without_filler(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.append("When do you open on Monday?")
    emu.llm.script.extend([LlmReply(tool_calls=[ToolCall("opening_hours", {"day": "monday"})]), "We open at nine."])
    service.answers["/hours"] = fixed(text="9:00-18:00")
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    assert heard_after_greeting(world, result) == spoken("We open at nine.")  # no filler, nothing else
    [request] = service.requests
    body = request.json()
    assert body == {
        "tool": "opening_hours",
        "arguments": {"day": "monday"},
        "call_sid": result.call_sid,
        "from": body["from"],
        "to": body["to"],
    }
    assert body["from"]
    assert request.headers[SIGNATURE_HEADER] == sign(TOOLS_SECRET, request.body)
    assert len(emu.llm.requests) == 2
    *_, call, answer = messages_of(emu, 1)
    assert call["role"] == "assistant"
    assert call["tool_calls"][0]["function"] == {"name": "opening_hours", "arguments": '{"day":"monday"}'}
    assert answer == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "9:00-18:00"}
    [line] = tool_lines(world)
    assert line["name"] == "opening_hours"
    assert line["outcome"] == "ok"
    assert line["arguments"] == {"day": "monday"}
    assert line["result"] == "9:00-18:00"
    assert line["duration_ms"] >= 0


async def test_a_slow_tool_gets_the_filler_once_then_the_answer(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.append("A table for two at seven, please.")
    reply = "Your table for two at seven is booked."
    emu.llm.script.extend([LlmReply(tool_calls=[ToolCall("book_table", {"time": "19:00", "people": 2})]), reply])
    service.answers["/book"] = fixed(text='{"booked": true}', delay_s=SLOW_TOOL_S, content_type="application/json")
    tts_before = len(emu.select("tts", "request"))
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    # The tool's own `say` phrase, from the cache (no TTS request for it), once; then the answer.
    assert heard_after_greeting(world, result) == audio_of(BOOK_SAY) + spoken(reply)
    assert [e.data["text"] for e in emu.select("tts", "request")[tts_before:]] == segments_of(reply)
    [request] = service.requests
    assert request.json()["arguments"] == {"time": "19:00", "people": 2, "restaurant": "main"}  # static merged
    assert messages_of(emu, 1)[-1]["content"] == '{"booked": true}'


async def test_two_tools_run_in_parallel_and_one_follow_up_carries_both(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.append("Are you open Monday, and how is the weather?")
    before = "Let me check both."
    emu.llm.script.extend(
        [
            LlmReply(before, [ToolCall("opening_hours", {"day": "monday"}), ToolCall("weather", {"city": "Oslo"})]),
            "Open at nine, and sunny.",
        ]
    )

    async def when_both_arrived(request: ToolRequest) -> web.Response:
        await service.wait_for_requests(2, TOOL_WAIT_S)  # only if the two calls overlap
        return web.Response(text=f"answer for {request.path}")

    service.answers["/hours"] = service.answers["/weather"] = when_both_arrived
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    first, second = service.requests
    assert first.answered is not None
    assert second.received < first.answered
    assert heard_after_greeting(world, result) == spoken(before, "Open at nine, and sunny.")
    assert len(emu.llm.requests) == 2
    *_, call, hours, weather = messages_of(emu, 1)
    assert call["content"] == before
    ids = [c["id"] for c in call["tool_calls"]]
    assert [hours["tool_call_id"], weather["tool_call_id"]] == ids
    assert (hours["content"], weather["content"]) == ("answer for /hours", "answer for /weather")


FAILURES = [
    ("http_500", "book_table", {"time": "19:00", "people": 2}, "the service answered HTTP 500", 1, "http_error"),
    ("timeout", "book_table", {"time": "19:00", "people": 2}, "no answer within 0.5 s", 1, "timeout"),
    ("invalid_arguments", "book_table", {"time": "19:00", "people": "many"}, "do not fit its schema", 0,
     "invalid_arguments"),
    ("invalid_json", "book_table", '{"time": "19:00", "people": 2', "the arguments were not valid JSON", 0,
     "invalid_arguments"),
    ("unknown_tool", "book_tabel", {"time": "19:00"}, "there is no tool of that name", 0, "unknown_tool"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "name", "arguments", "line", "requests", "outcome"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_a_failed_tool_gives_the_model_an_error_line_and_the_caller_an_apology(
    tools_world: Any, service: ToolService, case: str, name: str, arguments: Any, line: str, requests: int,
    outcome: str,
) -> None:  # fmt: skip
    world: World = await tools_world(timeout_s=0.5)
    emu = world.emu
    emu.stt.script.append("A table for two at seven, please.")
    # The follow-up says nothing: the bot must not leave the caller in silence.
    emu.llm.script.extend([LlmReply(tool_calls=[ToolCall(name, arguments)]), ""])
    service.answers["/book"] = fixed(500, "boom") if case == "http_500" else fixed(text="late", delay_s=3.0)
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    assert len(service.requests) == requests
    assert heard_after_greeting(world, result) == audio_of(world.server.settings.apology)
    tool_message = messages_of(emu, 1)[-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith(f"[error, no result] {name}: ")
    assert line in tool_message["content"]
    [record] = tool_lines(world)
    assert record["outcome"] == outcome
    async with aiohttp.ClientSession() as http, http.get(world.server.url("/metrics")) as response:
        metrics = await response.text()
    label = "(unknown)" if case == "unknown_tool" else name  # never the model's made-up name
    assert f'voicebot_tool_calls_total{{outcome="{outcome}",tool="{label}"}} 1.0' in metrics


def barge_in_steps() -> list[Step]:
    return [
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=400),
        Say("hours"),
        SayWhileBotSpeaks("question", after_ms=800),
        WaitForBotAudio(WAIT_S),
        WaitForBotSilence(WAIT_S, quiet_ms=1200),
        HangUp(),
    ]


LONG_BEFORE = "Let me book a table for two at seven for you right now, this will only take a moment."
INTERRUPTION = "Wait, stop, I have a different question."


async def interruption_final(emu: Emulators) -> float:
    """When the recogniser sent the final result of the caller's interrupting words."""
    event = await emu.wait_for(
        lambda e: (
            e.service == "stt" and e.kind == "results" and e.data["is_final"] and "different" in e.data["transcript"]
        ),
        TOOL_WAIT_S * 2,
    )
    return event.t


async def test_barge_in_never_cancels_a_side_effect_and_its_result_reaches_the_next_request(
    tools_world: Any, service: ToolService
) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.extend(["A table for two at seven, please.", INTERRUPTION])
    emu.llm.script.extend(
        [LlmReply(LONG_BEFORE, [ToolCall("book_table", {"time": "19:00", "people": 2})]), "Sure, go ahead."]
    )
    release = asyncio.Event()
    service.answers["/book"] = held(release, '{"booked": true, "table": 12}')

    async def release_after_the_interruption() -> float:
        interrupted_at = await interruption_final(emu)  # the old reply is being cancelled now
        release.set()
        return interrupted_at

    releaser = asyncio.create_task(release_after_the_interruption())
    result = await world.call(barge_in_steps())
    interrupted_at = await releaser
    assert result.ok, result.format_timeline()

    [booking] = service.requests  # booked once, never repeated
    assert booking.answered is not None
    assert booking.received < interrupted_at < booking.answered  # in flight when the reply was cancelled
    assert len(emu.llm.requests) == 2  # no follow-up for the interrupted reply: the next answer carries it
    *_, call, booked, user = messages_of(emu, 1)
    assert user == {"role": "user", "content": INTERRUPTION}
    assert call["role"] == "assistant"
    assert call["content"].endswith(" —")  # heard only in part
    assert LONG_BEFORE.startswith(call["content"].removesuffix(" —"))
    assert booked == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": booked["content"]}
    assert booked["content"] == '{"booked": true, "table": 12}'
    assert [r["outcome"] for r in tool_lines(world)] == ["ok"]


async def test_barge_in_cancels_a_lookup_and_the_history_says_so(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.extend(["When do you open on Monday?", INTERRUPTION])
    before = "Let me look up our opening hours for Monday for you, this may take a moment."
    emu.llm.script.extend([LlmReply(before, [ToolCall("opening_hours", {"day": "monday"})]), "Sure, go ahead."])
    service.answers["/hours"] = held(asyncio.Event(), "never answered")
    result = await world.call(barge_in_steps())
    assert result.ok, result.format_timeline()

    assert len(emu.llm.requests) == 2
    *_, call, cancelled, user = messages_of(emu, 1)
    assert user["content"] == INTERRUPTION
    assert cancelled["tool_call_id"] == call["tool_calls"][0]["id"]
    assert cancelled["content"].startswith("[cancelled, no result] opening_hours: the caller interrupted")
    assert "nothing was changed" in cancelled["content"]
    assert [r["outcome"] for r in tool_lines(world)] == ["cancelled"]


async def test_end_call_from_an_interrupted_reply_does_not_hang_up(tools_world: Any) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.extend(["That's all, thanks.", INTERRUPTION])
    goodbye = "Thank you so much for calling us today, have a wonderful evening and goodbye from all of us."
    emu.llm.script.extend([LlmReply(goodbye, [ToolCall("end_call", {"reason": "done"})]), "Of course, go ahead."])
    result = await world.call(barge_in_steps())
    assert result.ok, result.format_timeline()

    assert result.ended_by != "server_closed"
    assert emu.twilio.updates == []  # never hung up
    *_, call, not_done, user = messages_of(emu, 1)
    assert call["tool_calls"][0]["function"]["name"] == "end_call"
    assert not_done["content"].startswith("[not done] end_call: the caller interrupted this reply")
    assert user["content"] == INTERRUPTION


async def test_rounds_are_capped_and_the_model_is_told(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world(tool_max_rounds=2)
    emu = world.emu
    emu.stt.script.append("When do you open?")
    emu.llm.script.extend(
        [LlmReply(tool_calls=[ToolCall("opening_hours", {"day": day})]) for day in ("mon", "tue", "wed", "thu")]
    )
    service.answers["/hours"] = fixed(text="9:00-18:00")
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    assert len(service.requests) == 2  # two rounds ran
    assert len(emu.llm.requests) == 4  # the third round was refused and the model told; the fourth ended it
    told = messages_of(emu, 3)[-1]
    assert told["content"].startswith("[not run] opening_hours: the limit of 2 tool rounds per reply is reached")
    assert heard_after_greeting(world, result) == audio_of(world.server.settings.apology)
    assert [r["outcome"] for r in tool_lines(world)] == ["ok", "ok", "refused", "refused"]


async def test_get_tools_are_signed_and_secrets_never_reach_logs_or_transcripts(
    tools_world: Any, service: ToolService
) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", [AUTH_TOKEN, TOOLS_SECRET], stream=stream)
    try:
        world: World = await tools_world(method="get")
        emu = world.emu
        emu.stt.script.append("When do you open on Monday?")
        emu.llm.script.extend(
            [
                LlmReply(tool_calls=[ToolCall("opening_hours", {"day": "monday"})]),
                LlmReply(tool_calls=[ToolCall("book_table", {"time": "19:00", "people": 2})]),
                "Done.",
            ]
        )
        result = await world.call(ask())
    finally:
        logging.getLogger().handlers.clear()
    assert result.ok, result.format_timeline()

    hours, book = service.requests
    assert hours.method == "GET"
    assert hours.query == {"day": "monday"}
    assert hours.headers[SIGNATURE_HEADER] == sign(TOOLS_SECRET, hours.raw_query.encode())
    assert book.headers[SIGNATURE_HEADER] == sign(TOOLS_SECRET, book.body)
    assert book.headers["Authorization"] == f"Bearer {TOOL_TOKEN}"  # resolved from the environment
    logs = stream.getvalue()
    assert "tool_call_finished" in logs
    transcripts = "".join(p.read_text() for p in world.transcripts.glob("*.jsonl"))
    for secret in (TOOL_TOKEN, TOOLS_SECRET):
        assert secret not in logs
        assert secret not in transcripts


PYTHON_TOOLS = """
from voicebot.tools import ToolFailed, tool

@tool(description="Loyalty points of the caller.", side_effects=False,
      parameters={"type": "object", "properties": {}})
async def loyalty_points(args, call):
    return {"caller": call.caller, "call_sid": call.call_sid, "points": 120}

@tool(description="Cancel a booking.", parameters={"type": "object", "properties": {"ref": {"type": "string"}}})
async def cancel_booking(args, call):
    raise RuntimeError("database is on fire")

@tool(description="Gift card balance.", side_effects=False, parameters={"type": "object", "properties": {}})
async def gift_card(args, call):
    raise ToolFailed("error", "the gift card system is down")
"""


async def test_python_tools_are_offered_and_their_failures_are_contained(start_world: Any, tmp_path: Path) -> None:
    module = tmp_path / "shop_tools.py"
    module.write_text(PYTHON_TOOLS)
    world: World = await start_world(tools_module=str(module), greeting=SHORT_GREETING)
    emu = world.emu
    emu.stt.script.append("How many points do I have, and cancel booking B12.")
    calls = [ToolCall("loyalty_points"), ToolCall("cancel_booking", {"ref": "B12"}), ToolCall("gift_card")]
    emu.llm.script.extend([LlmReply(tool_calls=calls), "You have a hundred and twenty points."])
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    offered = [t["function"]["name"] for t in emu.llm.requests[0].data["tools"]]
    assert offered == ["end_call", "loyalty_points", "cancel_booking", "gift_card"]
    *_, points, crashed, down = messages_of(emu, 1)
    assert orjson.loads(points["content"]) == {
        "caller": points_caller(points),
        "call_sid": result.call_sid,
        "points": 120,
    }
    assert crashed["content"] == "[error, no result] cancel_booking: the tool failed"
    assert down["content"] == "[error, no result] gift_card: the gift card system is down"
    assert heard_after_greeting(world, result) == spoken("You have a hundred and twenty points.")
    async with aiohttp.ClientSession() as http, http.get(world.server.url("/metrics")) as response:
        metrics = await response.text()
    assert 'voicebot_tool_calls_total{outcome="ok",tool="loyalty_points"} 1.0' in metrics
    assert 'voicebot_tool_calls_total{outcome="error",tool="cancel_booking"} 1.0' in metrics
    assert 'voicebot_tool_seconds_count{tool="gift_card"} 1.0' in metrics


def points_caller(message: dict[str, Any]) -> str:
    caller: str = orjson.loads(message["content"])["caller"]
    assert caller  # the caller's number reached the tool
    return caller


async def test_a_long_tool_gets_the_still_working_line_once(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world(tool_still_working_after_s=0.3)
    emu = world.emu
    emu.stt.script.append("A table for two at seven, please.")
    reply = "Booked."
    emu.llm.script.extend([LlmReply(tool_calls=[ToolCall("book_table", {"time": "19:00", "people": 2})]), reply])
    # Long enough for the filler (after 0.7 s of silence), its audio (1.5 s) and 0.3 s more of silence; short
    # enough that the answer follows the still-working line without a gap (the caller hangs up after 1.2 s).
    service.answers["/book"] = fixed(text="booked", delay_s=3.5)
    result = await world.call(ask())
    assert result.ok, result.format_timeline()

    still = world.server.settings.tool_still_working
    assert heard_after_greeting(world, result) == audio_of(BOOK_SAY) + audio_of(still) + spoken(reply)


async def test_a_hang_up_does_not_cut_off_a_booking_in_flight(tools_world: Any, service: ToolService) -> None:
    world: World = await tools_world()
    emu = world.emu
    emu.stt.script.append("A table for two at seven, please.")
    emu.llm.script.extend([LlmReply("Let me book that.", [ToolCall("book_table", {"time": "19:00", "people": 2})])])
    service.answers["/book"] = fixed(text='{"booked": true}', delay_s=SLOW_TOOL_S / 2)
    steps: list[Step] = [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400), Say("hours")]
    result = await world.call([*steps, WaitForBotAudio(WAIT_S), HangUp()])
    assert result.ok, result.format_timeline()
    hung_up = result.events_of("stop_sent")[-1].t
    async with asyncio.timeout(TOOL_WAIT_S):
        for session in list(world.server.state.sessions):
            await session.finished.wait()

    [booking] = service.requests
    assert booking.answered is not None
    assert booking.received < hung_up < booking.answered  # in flight when the caller hung up
    [line] = tool_lines(world)
    assert line["outcome"] == "ok"  # waited for, not cancelled: the transcript has the booking's result
    assert line["result"] == '{"booked": true}'
