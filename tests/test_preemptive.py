"""Preemptive generation end to end, in both listening modes: Nova with an early Finalize (VOICEBOT_PREEMPTIVE_
GENERATION) and Flux with EagerEndOfTurn. Real server, real SDKs, emulated providers, a simulated caller."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.test_conversation import WAIT_S, greeting_steps, llm_messages, reply_media
from tests.tool_service import fixed, running_tool_service
from tests.world import World, audio_of, segments_of
from voicebot.caller import HangUp, Say, Silence, WaitForBotAudio, WaitForBotSilence
from voicebot.emulators import LlmReply, ToolCall

MODES = {
    # Nova: an early Finalize after 160 ms of local silence; the turn is confirmed after 500 ms of it.
    "nova": {"preemptive_generation": True, "deepgram_endpointing_ms": 500},
    # Flux: EagerEndOfTurn at 0.3 (150 ms of silence after a whole sentence, 300 ms mid-sentence in the emulator).
    "flux": {"deepgram_stt_model": "flux-general-en", "deepgram_eager_eot_threshold": 0.3},
}
CONFIRMED_AFTER_S = 0.3
"""Silence after the caller's speech before either mode confirms the end of the turn (at least)."""
PAUSE_MS = 200
"""The caller's pause mid-sentence: past the eager point in both modes, short of the end of the turn."""
SENTENCE = "I'd like to book a table | for Friday evening."
WHOLE = "I'd like to book a table for Friday evening."
DISCARDED = "Sure, which day would you like to come?"
ANSWER = "Friday evening is free, see you then."


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def metric(world: World, outcome: str) -> float:
    value = world.server.state.metrics.speculations.labels(outcome)._value.get()
    return float(value)


def transcript_lines(world: World, call_sid: str) -> list[dict[str, Any]]:
    path = world.transcripts / f"{call_sid}.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_adopted_speculation_is_one_request_sent_before_the_turn_was_confirmed(
    start_world: Any, mode: str
) -> None:
    world: World = await start_world(**MODES[mode])
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("We are open from nine to six.")
    result = await world.call(
        [*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=500), HangUp()]
    )
    assert result.ok, result.format_timeline()
    assert len(world.emu.llm.requests) == 1
    assert not world.emu.select("llm", "abort")
    assert (metric(world, "started"), metric(world, "adopted"), metric(world, "discarded")) == (1, 1, 0)
    exposition = world.server.state.metrics.render().decode()
    assert 'voicebot_speculations_total{outcome="adopted"} 1.0' in exposition
    assert "voicebot_speculation_gain_seconds_count 1.0" in exposition
    reply, later = reply_media(result, audio_of(world.server.settings.greeting))
    assert reply == b"".join(audio_of(s) for s in segments_of("We are open from nine to six."))
    assert later == []
    # The audio starts earlier than without speculation: the LLM request went out before the end of the turn was
    # confirmed (stt_final), where a turn without speculation sends it.
    [turn] = [line for line in transcript_lines(world, result.call_sid) if line["kind"] == "turn"]
    assert turn["latency_ms"]["llm_request"] < turn["latency_ms"]["stt_final"], turn


async def test_caller_going_on_after_the_eager_point_aborts_the_held_reply(start_world: Any, mode: str) -> None:
    world: World = await start_world(**MODES[mode])
    emu = world.emu
    emu.stt.script.append(SENTENCE)
    emu.llm.script.extend([DISCARDED, ANSWER])
    emu.llm.config.tokens_per_second = 10.0  # the held reply is still streaming when the caller goes on
    result = await world.call(
        [
            *greeting_steps(),
            Say("hours"),
            Silence(PAUSE_MS),
            Say("okay"),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=500),
            HangUp(),
        ]
    )
    assert result.ok, result.format_timeline()
    requests = emu.llm.requests
    assert len(requests) == 2, [r.data["messages"][-1] for r in requests]
    # The first (half-sentence) stream was aborted at the provider; the reply answers the whole sentence.
    first_id = requests[0].data["request_id"]
    assert [e for e in emu.select("llm", "abort") if e.data["request_id"] == first_id]
    assert requests[0].data["messages"][-1]["content"] == "I'd like to book a table"
    assert requests[1].data["messages"][-1] == {"role": "user", "content": WHOLE}
    # Nothing of the discarded reply was synthesised, heard or kept.
    assert all(DISCARDED[:10] not in e.data["text"] for e in emu.select("tts", "request"))
    reply, later = reply_media(result, audio_of(world.server.settings.greeting))
    assert reply == b"".join(audio_of(s) for s in segments_of(ANSWER))
    assert later == []
    lines = transcript_lines(world, result.call_sid)
    assert [(line["kind"], line.get("text")) for line in lines if line["kind"] in ("user", "assistant")][1:] == [
        ("user", WHOLE),
        ("assistant", ANSWER),
    ]
    assert metric(world, "discarded") == 1
    assert metric(world, "adopted") + metric(world, "discarded") == metric(world, "started")


async def test_a_held_reply_runs_no_tool_unless_adopted(start_world: Any, mode: str) -> None:
    world: World = await start_world(**MODES[mode])
    emu = world.emu
    emu.stt.script.append("Thanks, that's all | for the booking, actually.")
    # The half sentence sounds like a goodbye: the speculative reply ends the call. It must not run.
    emu.llm.script.extend([LlmReply(tool_calls=(ToolCall("end_call", {"reason": "goodbye"}),)), ANSWER])
    result = await world.call(
        [
            *greeting_steps(),
            Say("hours"),
            Silence(PAUSE_MS),
            Say("okay"),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=500),
            HangUp(),
        ]
    )
    assert result.ended_by == "hangup", result.format_timeline()
    assert emu.twilio.updates == []  # no hang-up through the REST API
    first = llm_messages(emu, 0)
    assert first[-1]["content"] == "Thanks, that's all"
    reply, _ = reply_media(result, audio_of(world.server.settings.greeting))
    assert reply == b"".join(audio_of(s) for s in segments_of(ANSWER))
    assert "tool_call" not in [line["kind"] for line in transcript_lines(world, result.call_sid)]


LOOKUP = """
[[tool]]
name = "opening_hours"
description = "Opening hours for a day of the week."
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }}, required = ["day"] }}
url = "{base}/hours"
side_effects = false
"""


async def test_a_custom_tool_of_a_held_reply_runs_only_after_adoption(
    start_world: Any, mode: str, tmp_path: Any
) -> None:
    async with running_tool_service() as service:
        service.answers["/hours"] = fixed(text="9:00-18:00")
        tools = tmp_path / "tools.toml"
        tools.write_text(LOOKUP.format(base=service.base_url))
        world: World = await start_world(tools_file=tools, **MODES[mode])
        emu = world.emu
        emu.stt.script.append("When do you open | on Friday?")
        lookup = LlmReply(tool_calls=(ToolCall("opening_hours", {"day": "friday"}),))
        # Held (half sentence, dropped), then held again and adopted (whole sentence), then the answer round.
        emu.llm.script.extend([lookup, lookup, "We open at nine on Friday."])
        result = await world.call(
            [
                *greeting_steps(),
                Say("hours"),
                Silence(PAUSE_MS),
                Say("okay"),
                WaitForBotAudio(WAIT_S),
                WaitForBotSilence(WAIT_S, quiet_ms=500),
                HangUp(),
            ]
        )
        assert result.ok, result.format_timeline()
        assert [r.data["messages"][-1].get("content") for r in emu.llm.requests][:2] == [
            "When do you open",
            "When do you open on Friday?",
        ]
        # One tool run, from the adopted reply, after the turn was confirmed; none from the dropped one.
        [request] = service.requests
        assert request.json()["arguments"] == {"day": "friday"}
        # The held stream (zero-latency emulator) carried its tool call within a few ms of its start, about 0.2 s
        # after the caller's speech end; the turn is confirmed only after 0.35 s (Flux) or 0.5 s (Nova) of silence.
        speech_end = result.events_of("caller_speech_end")[-1].t
        assert request.received - speech_end > CONFIRMED_AFTER_S, request.received - speech_end
        [turn] = [line for line in transcript_lines(world, result.call_sid) if line["kind"] == "turn"]
        assert turn["latency_ms"]["llm_request"] < turn["latency_ms"]["stt_final"], turn
