"""The conversation end to end: real server, real deepgram-sdk and openai clients, emulated providers, and a
simulated caller on real sockets. Assertions are on bytes, orderings and counts, never on speed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from tests.voices import VOICES, VoiceCase
from tests.world import World, audio_of, segments_of
from voicebot.audio import BYTES_PER_SECOND
from voicebot.call.bot_turn import READ_PACE_S
from voicebot.caller import CallResult, Dtmf, HangUp, Say, SayWhileBotSpeaks, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import Step
from voicebot.emulators import Emulators, LlmReply, ToolCall

GREETING_FIRST_AUDIO_BOUND_S = 0.5
"""Generous (CI is noisy): the greeting comes from memory, so in practice it is a few milliseconds."""
WAIT_S = 15.0
CALL_S = 30.0

FOUR_SENTENCES = (
    "Our opening hours are nine to six on every weekday. "
    "On Saturdays we open a little later, at ten in the morning. "
    "Sundays and public holidays we stay closed all day long. "
    "You can always leave a message and we will call you back."
)
LONG_REPLY = (
    "Let me explain everything about our pricing plans in detail for you. "
    "The basic plan costs ten dollars a month and covers one phone line. "
    "The business plan costs thirty dollars and includes five lines and voicemail. "
    "The enterprise plan is priced per seat and comes with a dedicated account manager."
)

MEDIUM_REPLY = "Let me explain our pricing plans for you. The basic plan costs ten dollars a month and covers one line."


LISTENING_MODES: dict[str, dict[str, Any]] = {"nova": {}, "flux": {"deepgram_stt_model": "flux-general-en"}}

all_voices_and_flux = pytest.mark.parametrize(
    ("voice", "listening"),
    [*((name, "nova") for name in VOICES), ("deepgram_rest", "flux")],
    indirect=["voice"],
)
"""Every voice listening through Nova, plus the default voice listening through Flux (/v2/listen): the two
dimensions add up rather than multiply, so the suite's wall time stays modest."""


@pytest.fixture
def listening() -> str:
    return "nova"


@pytest.fixture
def start_listening_world(start_world: Any, listening: str) -> Any:
    """``start_world`` in the test's listening mode: Deepgram Nova (/v1/listen) or Deepgram Flux (/v2/listen)."""
    mode = LISTENING_MODES[listening]

    async def factory(**overrides: Any) -> World:
        world: World = await start_world(**{**mode, **overrides})
        return world

    return factory


TAIL_STALL_S = 3.0
"""How long the LLM emulator holds a response's tail after its finish_reason (longer than the reply's audio)."""


def greeting_steps() -> list[Step]:
    return [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400)]


def reply_media(result: CallResult, greeting: bytes) -> tuple[bytes, list[bytes]]:
    """Epoch-0 audio after the greeting, and the audio of each later clear epoch."""
    epochs: dict[int, bytearray] = {}
    for media in result.media:
        epochs.setdefault(media.epoch, bytearray()).extend(media.payload)
    first = bytes(epochs.pop(0, b""))
    assert first.startswith(greeting), "the greeting must come first"
    return first[len(greeting) :], [bytes(epochs[k]) for k in sorted(epochs)]


def llm_messages(emu: Emulators, index: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = emu.llm.requests[index].data["messages"]
    return messages


@pytest.mark.parametrize("voice", list(VOICES), indirect=True)
async def test_greeting_is_the_first_audio_and_comes_from_the_cache(start_world: Any) -> None:
    world: World = await start_world()
    tts_requests_before = len(world.emu.select("tts", "request"))
    result = await world.call([*greeting_steps(), HangUp()])
    assert result.ok, result.format_timeline()
    greeting = audio_of(world.server.settings.greeting)
    assert b"".join(m.payload for m in result.media) == greeting
    # Cached at startup: the call itself made no TTS request.
    assert len(world.emu.select("tts", "request")) == tts_requests_before
    start_sent = result.first("start_sent")
    assert start_sent is not None
    assert result.media[0].t >= start_sent.t
    assert result.media[0].t - start_sent.t < GREETING_FIRST_AUDIO_BOUND_S


async def test_last_segment_goes_to_tts_at_the_finish_reason_not_at_the_end_of_the_response(
    start_world: Any,
) -> None:
    """The reply's text is complete at the chunk with the ``finish_reason``: its last segment is synthesised and
    heard while the response's tail (usage, ``[DONE]``, the end of the body) is still on its way."""
    world: World = await start_world()
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("We are open from nine to six.")
    world.emu.llm.faults.tail_stall_s = TAIL_STALL_S
    result = await world.call(
        [*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400), HangUp()]
    )
    assert result.ok, result.format_timeline()
    reply, _ = reply_media(result, audio_of(world.server.settings.greeting))
    assert reply == b"".join(audio_of(s) for s in segments_of("We are open from nine to six."))
    [request] = world.emu.llm.requests
    [tts] = [e for e in world.emu.select("tts", "request") if e.t > request.t]
    rid = request.data["request_id"]
    ended = [e for e in world.emu.select("llm") if e.kind in ("complete", "abort") and e.data["request_id"] == rid]
    # Synthesis started before the response ended (or the caller hung up, the tail still held).
    assert not ended or tts.t < ended[0].t - TAIL_STALL_S / 2, (tts, ended)


@all_voices_and_flux
async def test_reply_is_played_in_text_order_even_when_the_first_segment_is_slowest(
    start_listening_world: Any, voice: VoiceCase
) -> None:
    world: World = await start_listening_world()
    segments = segments_of(FOUR_SENTENCES)
    assert len(segments) == 4, segments
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append(FOUR_SENTENCES)
    world.emu.tts.config.ttfb_overrides = {segments[0][:30]: 600.0}
    result = await world.call(
        [*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=800), HangUp()]
    )
    assert result.ok, result.format_timeline()
    reply, later = reply_media(result, audio_of(world.server.settings.greeting))
    assert later == []
    # Exactly the TTS outputs, in text order, nothing interleaved, the whole reply covered.
    assert reply == b"".join(audio_of(s) for s in segments)
    requests = {e.data["text"]: e for e in world.emu.select("tts", "request")}
    if not voice.parallel:
        # One socket synthesises in order: the later segments went out together, coalesced under one Flush.
        assert all(requests[s].t <= requests[segments[-1]].t for s in segments[1:])
        return
    # And synthesis really ran in parallel: segments 2-4 were requested before segment 1's first byte.
    first_id = requests[segments[0]].data["request_id"]
    first_byte = next(e.t for e in world.emu.select("tts", "first_byte") if e.data["request_id"] == first_id)
    assert all(requests[s].t < first_byte for s in segments[1:])


@pytest.mark.parametrize("voice", list(VOICES), indirect=True)
async def test_a_reply_well_ahead_of_the_caller_is_read_in_large_pieces_and_never_runs_dry(
    start_world: Any,
) -> None:
    """Once the caller has READ_AHEAD_S of the reply queued, TTS is read every READ_PACE_S instead of at each
    network chunk: the same bytes in the same order, in far fewer media messages, and still ahead of playback."""
    world: World = await start_world()
    world.emu.tts.config.bytes_per_second = 4 * BYTES_PER_SECOND  # synthesis at 4x real time, a chunk at a time
    world.emu.stt.script.append("What do the plans cost?")
    world.emu.llm.script.append(MEDIUM_REPLY)
    result = await world.call(
        [*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=800), HangUp()]
    )
    assert result.ok, result.format_timeline()
    greeting = audio_of(world.server.settings.greeting)
    reply, later = reply_media(result, greeting)
    assert later == []
    segments = [audio_of(s) for s in segments_of(MEDIUM_REPLY)]
    assert reply == b"".join(segments)
    skip, messages = len(greeting), []
    for media in result.media:
        if skip > 0:
            skip -= len(media.payload)
            continue
        messages.append(media)
    chunk = world.emu.tts.config.chunk_bytes
    chunks = sum(-(-len(audio) // chunk) for audio in segments)
    # Each TTS chunk as its own media message would be `chunks` messages (62 here); paced reads make about two dozen.
    assert 2 * len(messages) < chunks, (len(messages), chunks)
    # Played in real time from its first message, the reply never runs out before the next message arrives.
    start, queued_s, shortfall_s = messages[0].t, 0.0, 0.0
    for media in messages:
        shortfall_s = max(shortfall_s, (media.t - start) - queued_s)
        queued_s += len(media.payload) / BYTES_PER_SECOND
    assert shortfall_s < READ_PACE_S, shortfall_s


@all_voices_and_flux
async def test_barge_in_clears_cancels_and_keeps_only_what_was_heard(start_listening_world: Any) -> None:
    world: World = await start_listening_world()
    emu = world.emu
    emu.stt.script.extend(["Tell me about your pricing.", "Wait, stop, I have a different question."])
    emu.llm.script.extend([LONG_REPLY, "Of course, what is your question?"])
    emu.llm.config.tokens_per_second = 10.0  # the reply is still streaming when the caller cuts in
    # Twice real time: the caller's buffer does not run dry, yet segments are still being synthesised at the cut.
    emu.tts.config.bytes_per_second = 16000.0
    result = await world.call(
        [
            *greeting_steps(),
            Say("hours"),
            WaitForBotAudio(WAIT_S),
            # The "question" clip: one breath, so the recogniser hears a single utterance.
            SayWhileBotSpeaks("question", after_ms=1500),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=800),
            HangUp(),
        ]
    )
    assert result.ok, result.format_timeline()
    assert len(result.events_of("clear_received")) == 1
    # After the clear, only the new reply's bytes: nothing of the interrupted one.
    _, after_clear = reply_media(result, audio_of(world.server.settings.greeting))
    second = "Of course, what is your question?"
    expected = b"".join(audio_of(s) for s in segments_of(second))
    assert after_clear == [expected], (
        [len(a) for a in after_clear],
        len(expected),
        [(e.data.get("text"), e.kind) for e in emu.select("tts", "request")],
        [m["content"] for m in llm_messages(emu, -1)[1:]],
        result.format_timeline(),
    )
    # The old LLM stream and the TTS request in flight were aborted at the provider.
    first_llm = emu.llm.requests[0]
    assert any(e.t > first_llm.t for e in emu.select("llm", "abort"))
    assert emu.select("tts", "abort"), [(e.kind, e.data.get("text")) for e in emu.select("tts")]
    # The next request's history holds only the heard prefix, then the new words.
    messages = llm_messages(emu, 1)
    assert messages[-1] == {"role": "user", "content": "Wait, stop, I have a different question."}
    heard = messages[-2]
    assert heard["role"] == "assistant"
    assert heard["content"].endswith(" —")
    heard_text = heard["content"].removesuffix(" —")
    assert heard_text
    assert LONG_REPLY.startswith(heard_text)
    assert len(heard_text) < len(segments_of(LONG_REPLY)[0])  # cut inside the first segment
    assert LONG_REPLY[len(heard_text)] == " "  # snapped to a whole word


@all_voices_and_flux
async def test_backchannel_resumes_the_reply_without_asking_the_model(start_listening_world: Any) -> None:
    world: World = await start_listening_world()
    emu = world.emu
    emu.stt.script.extend(["Tell me about your pricing.", "uh-huh"])
    emu.llm.script.append(MEDIUM_REPLY)
    result = await world.call(
        [
            *greeting_steps(),
            Say("question"),
            WaitForBotAudio(WAIT_S),
            SayWhileBotSpeaks("uh_huh", after_ms=1200),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=1500),
            HangUp(),
        ],
        timeout=40,
    )
    assert result.ok, result.format_timeline()
    clears = result.events_of("clear_received")
    assert len(clears) == 1
    assert len(emu.llm.requests) == 1, "no LLM request for a backchannel"
    full = b"".join(audio_of(s) for s in segments_of(MEDIUM_REPLY))
    before, after = reply_media(result, audio_of(world.server.settings.greeting))
    dropped = int(clears[0].detail.split()[1])
    played_before = len(before) - dropped
    assert full.startswith(before)
    assert len(after) == 1
    resumed = after[0]
    # Resumed from the last played mark: the rest of the reply, starting no later than where the cut was.
    assert full.endswith(resumed)
    assert len(full) - len(resumed) <= played_before
    # Every byte was eventually heard: nothing of the resumed audio was dropped.
    assert result.bytes_dropped == dropped


@all_voices_and_flux
async def test_hang_up_only_after_the_goodbye_has_played(start_listening_world: Any) -> None:
    world: World = await start_listening_world()
    emu = world.emu
    emu.stt.script.append("Thanks, goodbye.")
    emu.llm.script.append(LlmReply(tool_calls=(ToolCall("end_call", {"reason": "caller said goodbye"}),)))
    result = await world.call([*greeting_steps(), Say("goodbye")])
    assert result.ended_by == "server_closed", result.format_timeline()
    goodbye = audio_of(world.server.settings.goodbye)
    reply, later = reply_media(result, audio_of(world.server.settings.greeting))
    assert reply == goodbye
    assert later == []
    updates = emu.twilio.updates
    assert len(updates) == 1
    assert updates[0].data["form"] == {"Status": "completed"}
    assert updates[0].data["call_sid"] == result.call_sid
    last_echo = result.events_of("mark_echoed")[-1]
    assert updates[0].t >= last_echo.t
    assert result.bytes_dropped == 0


async def test_idle_caller_is_reprompted_then_hung_up(start_world: Any) -> None:
    world: World = await start_world(idle_timeout_s=0.5, idle_reprompts=1)
    result = await world.call([])
    assert result.ended_by == "server_closed", result.format_timeline()
    settings = world.server.settings
    expected = audio_of(settings.greeting) + audio_of(settings.idle_prompt) + audio_of(settings.goodbye)
    assert b"".join(m.payload for m in result.media) == expected
    assert len(world.emu.twilio.updates) == 1
    assert not world.emu.llm.requests


async def test_dtmf_digits_reach_the_model(start_world: Any) -> None:
    world: World = await start_world()
    world.emu.llm.script.append("You pressed four two.")
    result = await world.call(
        [
            *greeting_steps(),
            Dtmf("4"),
            Dtmf("2"),
            Dtmf("#"),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=500),
            HangUp(),
        ]
    )
    assert result.ok, result.format_timeline()
    last_user = llm_messages(world.emu, 0)[-1]
    assert last_user["role"] == "user"
    assert "42" in last_user["content"]


@pytest.mark.parametrize("listening", sorted(LISTENING_MODES))
async def test_transcript_file_holds_what_was_said_and_heard(start_listening_world: Any, listening: str) -> None:
    world: World = await start_listening_world()
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("We are open from nine to six.")
    result = await world.call(
        [*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=500), HangUp()]
    )
    assert result.ok, result.format_timeline()
    lines = [orjson.loads(line) for line in (world.transcripts / f"{result.call_sid}.jsonl").read_bytes().splitlines()]
    kinds: Sequence[str] = [line["kind"] for line in lines]
    assert kinds == ["assistant", "user", "assistant", "turn"]
    assert lines[1]["text"] == "When are you open?"
    assert lines[2] == {**lines[2], "text": "We are open from nine to six.", "interrupted": False}
    assert set(lines[3]["latency_ms"]) >= {"stt_final", "llm_request", "first_token", "tts_first_byte", "first_media"}


async def test_shutdown_drains_then_says_goodbye_and_closes_with_1001(start_world: Any) -> None:
    world: World = await start_world(drain_timeout_s=0.3)
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("We are open from nine to six.")
    caller = world.caller([*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S)])
    call = asyncio.ensure_future(caller.run(timeout=CALL_S))
    await caller.wait_for("bot_audio_start", WAIT_S, count=2)  # the reply is playing
    await caller.wait_for("bot_audio_stop", WAIT_S, count=2)
    runner = world.server.server.runner
    assert runner is not None
    await runner.shutdown()  # what SIGTERM does: stop taking calls, drain, then end the rest
    result = await call
    assert result.close_code == 1001, result.format_timeline()
    settings = world.server.settings
    reply, _ = reply_media(result, audio_of(settings.greeting))
    assert reply.endswith(audio_of(settings.goodbye))
    assert world.emu.twilio.updates[-1].data["form"] == {"Status": "completed"}
    lines = [orjson.loads(line) for line in (world.transcripts / f"{result.call_sid}.jsonl").read_bytes().splitlines()]
    assert [line["kind"] for line in lines][-2:] == ["assistant", "hang_up"]
    assert lines[-1]["reason"] == "server_shutdown"
