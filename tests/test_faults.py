"""Provider faults during live calls: real server, real SDK clients, emulated providers with injected faults, and a
simulated caller on real sockets. Each fault must leave the call going (or end it cleanly), never crash it.

Assertions are on bytes heard, provider requests, events and counts. The few timing bounds are named constants; the
production timeouts that would make a test slow are shortened by monkeypatching the named constant.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSCloseCode, web

from tests.voices import all_voices
from tests.world import TTS_MODEL, World, segments_of
from voicebot.call import bot_turn, conversation
from voicebot.caller import CallResult, HangUp, Say, SimulatedCaller, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import Step
from voicebot.emulators import Emulators, Event, LlmFaults, TtsFaults, synthesize, tokenize
from voicebot.logs import configure_logging

GREETING = "Hi."
APOLOGY = "Sorry, say that again?"
MS_PER_CHAR = 20.0
"""The TTS emulator speaks 3x faster than its default: the same bytes-level checks, a third of the playout time."""
WAIT_S = 10.0
"""Generous bound for any single wait on the bot or on an emulator event (the machine is shared and noisy)."""
CALL_TIMEOUT_S = 40.0
QUIET_MS = 400
"""Bot silence after which a reply counts as finished (replies here are contiguous audio)."""

FIRST = "When are you open?"
SECOND = "And on Sundays?"
SHORT_REPLY = "We open at nine."
SECOND_REPLY = "Sundays we are closed."
THREE_SEGMENTS = (
    "We open at nine, every weekday. On Saturdays we open a little later, at ten. "
    "Sundays and holidays we stay closed all day long."
)
MIDDLE_MARKER = "Saturdays"
"""Only the middle segment of THREE_SEGMENTS contains this word: faults are aimed at it."""


# --- helpers -----------------------------------------------------------------------------------------------------


def speech(text: str) -> bytes:
    """What the TTS emulator says for ``text`` in these tests."""
    return synthesize(text, TTS_MODEL, MS_PER_CHAR)


def reply_audio(reply: str) -> bytes:
    """The audio of a reply as the bot plays it: its segments, in order."""
    return b"".join(speech(s) for s in segments_of(reply))


def heard(result: CallResult) -> bytes:
    return b"".join(m.payload for m in result.media)


def assert_audio(actual: bytes, expected: bytes) -> None:
    """Byte equality with a short report (pytest's diff of large bytes objects is slow and unreadable)."""
    if actual == expected:
        return
    offset = next((i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b), None)
    where = f"first difference at byte {offset}" if offset is not None else "one is a prefix of the other"
    raise AssertionError(f"audio differs: got {len(actual)} bytes, expected {len(expected)}; {where}")


def turn(clip: str) -> list[Step]:
    """The caller says ``clip`` and waits until the bot's answer has played out."""
    return [Say(clip), WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=QUIET_MS)]


def greeting_steps() -> list[Step]:
    return [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=QUIET_MS)]


def last_user_message(emu: Emulators, index: int = -1) -> dict[str, Any]:
    message: dict[str, Any] = emu.llm.requests[index].data["messages"][-1]
    return message


class LiveCall:
    """A simulated call driven one step at a time, so that a test can change faults between turns."""

    def __init__(self, caller: SimulatedCaller) -> None:
        self.caller = caller
        self.task: asyncio.Task[CallResult] = asyncio.create_task(caller.run(timeout=CALL_TIMEOUT_S))

    async def steps(self, steps: Sequence[Step]) -> None:
        for step in steps:
            await self.caller.do(step)

    async def hang_up(self) -> CallResult:
        await self.caller.do(HangUp())
        return await self.task

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(emulators: Emulators, start_world: WorldFactory) -> WorldFactory:
    """A world with a short greeting and apology and faster speech; emulator knobs may be set before calling."""

    async def factory(**overrides: Any) -> World:
        emulators.tts.config.ms_per_char = MS_PER_CHAR
        settings: dict[str, Any] = {"greeting": GREETING, "apology": APOLOGY, **overrides}
        return await start_world(**settings)

    return factory


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Capture the server's JSON log lines."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    finally:
        logging.getLogger().handlers.clear()


async def metrics_text(world: World) -> str:
    async with aiohttp.ClientSession() as http, http.get(world.server.url("/metrics")) as resp:
        return await resp.text()


async def assert_not_crashed(world: World) -> None:
    text = await metrics_text(world)
    assert 'voicebot_calls_total{end_reason="crashed"}' not in text, text


def on_event(emu: Emulators, service: str, kind: str, action: Callable[[Event], None]) -> None:
    """Run ``action`` synchronously when the emulator records a ``service``/``kind`` event (before any reply)."""

    def listener(event: Event) -> None:
        if event.service == service and event.kind == kind:
            action(event)

    emu.log.listeners.append(listener)


async def wait_until(emu: Emulators, condition: Callable[[], bool], timeout: float) -> None:
    """Wait (woken by each new emulator event, no polling) until ``condition()`` holds."""
    if not condition():
        await emu.wait_for(lambda _event: condition(), timeout, since=emu.mark())


def assert_hung_up_cleanly(world: World, result: CallResult) -> None:
    assert result.ended_by == "server_closed", result.format_timeline()
    assert result.close_code == WSCloseCode.OK
    updates = world.emu.twilio.updates
    assert [u.data["call_sid"] for u in updates] == [result.call_sid]
    assert updates[0].data["form"] == {"Status": "completed"}


# --- STT ---------------------------------------------------------------------------------------------------------

FRAME_S = 0.020
STARTUP_SLACK_S = 0.3
"""Lenience for the replay check (exactness is test_stt_streams_hear_every_caller_frame_once's job); far less than
the ~0.6 s of audio before the caller speaks, so a missing replay (onset near zero) still fails."""
DROP_INTO_SPEECH_MS = 400.0
"""The STT socket is dropped this much audio after the caller's speech began: mid-utterance (the clip is 1.5 s)."""


@pytest.mark.parametrize("abrupt", [False, True], ids=["close_1011", "tcp_abort"])
async def test_stt_drop_mid_utterance_reconnects_replays_and_answers(make_world: WorldFactory, abrupt: bool) -> None:
    world = await make_world()
    emu = world.emu
    emu.stt.script.extend([FIRST, FIRST])  # one utterance per connection that hears it
    emu.llm.script.append(SHORT_REPLY)
    emu.stt.faults.drop_abrupt = abrupt
    onsets: list[Event] = []

    def arm_drop(event: Event) -> None:
        onsets.append(event)
        if len(onsets) == 1:
            emu.stt.faults.drop_after_audio_ms = event.data["timestamp"] * 1000 + DROP_INTO_SPEECH_MS

    def disarm(_event: Event) -> None:
        emu.stt.faults.drop_after_audio_ms = None  # only the first connection drops

    on_event(emu, "stt", "speech_started", arm_drop)
    on_event(emu, "stt", "drop", disarm)
    result = await world.call([*greeting_steps(), *turn("hours"), HangUp()])

    assert result.ok, result.format_timeline()
    drops = emu.select("stt", "drop")
    opens = emu.select("stt", "open")
    assert len(drops) == 1
    assert len(opens) == 2
    first_id, second_id = (e.data["request_id"] for e in opens)
    assert drops[0].data["request_id"] == first_id
    # Backoff before reconnecting, then the replay: the new stream hears the utterance from its very start.
    assert opens[1].t - drops[0].t >= conversation.STT_BACKOFF_S[0] * 0.9
    assert [e.data["request_id"] for e in onsets] == [first_id, second_id]
    # Speech starts at the same audio time on both streams (within the few frames the first stream may have heard
    # twice, see test_stt_streams_hear_every_caller_frame_once); without the replay it would start near zero.
    first_onset, second_onset = (e.data["timestamp"] for e in onsets)
    assert first_onset - STARTUP_SLACK_S <= second_onset <= first_onset + FRAME_S
    finals = [e for e in emu.select("stt", "results") if e.data["is_final"] and e.data["transcript"]]
    assert [(e.data["request_id"], e.data["transcript"]) for e in finals] == [(second_id, FIRST)]
    # Understood and answered once.
    assert len(emu.llm.requests) == 1
    assert last_user_message(emu) == {"role": "user", "content": FIRST}
    assert_audio(heard(result), speech(GREETING) + reply_audio(SHORT_REPLY))


async def test_stt_streams_hear_every_caller_frame_once(make_world: WorldFactory) -> None:
    """Frames that arrive while (re)connecting are in the replay buffer *and* in the send queue: send them once."""
    world = await make_world()
    emu = world.emu
    emu.stt.script.extend([FIRST, FIRST])
    emu.llm.script.append(SHORT_REPLY)
    onsets: list[Event] = []

    def arm_drop(event: Event) -> None:
        onsets.append(event)
        if len(onsets) == 1:
            emu.stt.faults.drop_after_audio_ms = event.data["timestamp"] * 1000 + DROP_INTO_SPEECH_MS

    def disarm(_event: Event) -> None:
        emu.stt.faults.drop_after_audio_ms = None

    on_event(emu, "stt", "speech_started", arm_drop)
    on_event(emu, "stt", "drop", disarm)
    result = await world.call([*greeting_steps(), *turn("hours"), HangUp()])

    assert result.ok, result.format_timeline()
    opens = emu.select("stt", "open")
    assert len(opens) == 2
    second_id = opens[1].data["request_id"]
    # Both streams hear the call's audio from its start (nothing was final before the drop), each frame once:
    # the same speech onset, and the second stream hears no more audio than the caller sent.
    assert len(onsets) == 2
    assert onsets[0].data["timestamp"] == pytest.approx(onsets[1].data["timestamp"], abs=FRAME_S / 2)
    ends = [
        e for e in emu.events if e.service == "stt" and e.data.get("request_id") == second_id and "audio_s" in e.data
    ]
    assert ends, "the second STT connection should have been closed at the end of the call"
    assert ends[-1].data["audio_s"] <= result.frames_sent * FRAME_S + 1e-6, (
        ends[-1].data["audio_s"],
        result.frames_sent,
    )


async def test_stt_refused_401_apologises_from_cache_and_hangs_up(make_world: WorldFactory) -> None:
    world = await make_world()
    emu = world.emu
    emu.stt.faults.error_status = 401
    tts_requests_before = len(emu.select("tts", "request"))
    result = await world.call([], timeout=CALL_TIMEOUT_S)

    assert_hung_up_cleanly(world, result)
    assert not result.failures, result.format_timeline()
    # The apology is the last thing heard (the greeting may have been cut for it), straight from the cache.
    clears = len(result.events_of("clear_received"))
    last_epoch = b"".join(m.payload for m in result.media if m.epoch == clears)
    assert last_epoch.endswith(speech(APOLOGY))
    assert len(emu.select("tts", "request")) == tts_requests_before
    assert [e.data["status"] for e in emu.select("stt", "rejected")] == [401]  # not retried: it cannot help
    assert not emu.llm.requests
    # Hung up only after the apology played out.
    assert emu.twilio.updates[0].t >= result.events_of("mark_echoed")[-1].t
    text = await metrics_text(world)
    assert 'voicebot_calls_total{end_reason="stt_unavailable"} 1.0' in text


async def test_stt_refused_with_a_wrong_key_hangs_up_cleanly_with_nothing_cached(
    emulators: Emulators, make_world: WorldFactory
) -> None:
    # The bot's Deepgram key is wrong: STT is refused, and nothing could be cached, so there is nothing to say.
    emulators.stt.key = emulators.tts.key = "the-real-deepgram-key"
    world = await make_world()
    emu = world.emu
    assert world.services.phrases.cached(APOLOGY) is None
    result = await world.call([], timeout=CALL_TIMEOUT_S)

    assert_hung_up_cleanly(world, result)
    assert [e.data["status"] for e in emu.select("stt", "rejected")] == [401]
    assert heard(result) == b""
    assert not emu.llm.requests
    await assert_not_crashed(world)


async def test_stt_stall_is_detected_by_the_watchdog_and_the_utterance_answered(make_world: WorldFactory) -> None:
    world = await make_world()
    emu = world.emu
    emu.stt.script.extend([FIRST, FIRST])
    emu.llm.script.append(SHORT_REPLY)
    emu.stt.faults.stall_s = math.inf  # accepts audio, answers nothing: speech is heard locally only

    def unstall(_event: Event) -> None:
        emu.stt.faults.stall_s = 0.0  # the next connection works

    on_event(emu, "stt", "abort", unstall)
    on_event(emu, "stt", "close", unstall)
    result = await world.call([*greeting_steps(), *turn("hours"), HangUp()])

    assert result.ok, result.format_timeline()
    opens = emu.select("stt", "open")
    assert len(opens) == 2
    # The bot itself gave up on the silent stream (the emulator never closes it), before the reply was asked for.
    first_id = opens[0].data["request_id"]
    first_end = next(e for e in emu.events if e.kind in ("close", "abort") and e.data.get("request_id") == first_id)
    assert first_end.data.get("initiator", "client") == "client"
    assert len(emu.llm.requests) == 1
    assert first_end.t < emu.llm.requests[0].t
    assert last_user_message(emu) == {"role": "user", "content": FIRST}
    assert_audio(heard(result), speech(GREETING) + reply_audio(SHORT_REPLY))


# --- TTS ---------------------------------------------------------------------------------------------------------

TTS_TIMEOUT_S = 1.0
"""Stand-in for bot_turn.TTS_FIRST_BYTE_TIMEOUT_S (3 s) so that two timed-out attempts stay quick."""
STALLED_TTFB_MS = 60_000.0


@all_voices
@pytest.mark.parametrize("fault", ["http_500", "timeout"])
async def test_tts_fault_on_one_segment_retries_once_then_skips_it(
    make_world: WorldFactory, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    world = await make_world()
    emu = world.emu
    segments = segments_of(THREE_SEGMENTS)
    assert len(segments) == 3 and [MIDDLE_MARKER in s for s in segments] == [False, True, False]
    emu.stt.script.append(FIRST)
    emu.llm.script.append(THREE_SEGMENTS)
    if fault == "http_500":
        real_ttfb = emu.tts.ttfb_ms

        def failing_ttfb(text: str) -> float:
            if MIDDLE_MARKER in text:
                raise web.HTTPInternalServerError(text='{"err_code": "INTERNAL"}', content_type="application/json")
            return real_ttfb(text)

        monkeypatch.setattr(emu.tts, "ttfb_ms", failing_ttfb)
    else:
        monkeypatch.setattr(bot_turn, "TTS_FIRST_BYTE_TIMEOUT_S", TTS_TIMEOUT_S)
        emu.tts.config.ttfb_overrides = {MIDDLE_MARKER: STALLED_TTFB_MS}
    call_start = emu.mark()

    def middle_requests() -> list[Event]:
        return [e for e in emu.select("tts", "request", since=call_start) if MIDDLE_MARKER in e.data["text"]]

    def middle_given_up() -> bool:
        aborted = {e.data["request_id"] for e in emu.select("tts", "abort", since=call_start)}
        requests = middle_requests()
        return len(requests) == 2 and all(e.data["request_id"] in aborted for e in requests)

    call = LiveCall(world.caller())
    try:
        await call.steps([*greeting_steps(), Say("hours"), WaitForBotAudio(WAIT_S)])
        if fault == "timeout":
            # A gap in the audio while both attempts at the middle segment time out; then the last one plays.
            await wait_until(emu, middle_given_up, WAIT_S)
            await call.steps([WaitForBotAudio(WAIT_S)])
        await call.steps([WaitForBotSilence(WAIT_S, quiet_ms=QUIET_MS)])
        result = await call.hang_up()
    finally:
        await call.close()

    assert result.ok, result.format_timeline()
    assert [e.data["text"] for e in middle_requests()] == [segments[1], segments[1]], "one retry, then skipped"
    if fault == "timeout":
        assert middle_given_up(), "a timed-out request is aborted at the provider"
    assert not result.events_of("clear_received")
    assert_audio(heard(result), speech(GREETING) + speech(segments[0]) + speech(segments[2]))


@all_voices
async def test_tts_down_for_a_whole_turn_plays_the_cached_apology_then_recovers(make_world: WorldFactory) -> None:
    world = await make_world()
    emu = world.emu
    emu.stt.script.extend([FIRST, SECOND])
    emu.llm.script.extend([THREE_SEGMENTS, SECOND_REPLY])
    call = LiveCall(world.caller())
    try:
        await call.steps(greeting_steps())
        emu.tts.faults.error_status = 500
        await call.steps(turn("hours"))
        emu.tts.faults = TtsFaults()
        await call.steps(turn("question"))
        result = await call.hang_up()
    finally:
        await call.close()

    assert result.ok, result.format_timeline()
    assert_audio(heard(result), speech(GREETING) + speech(APOLOGY) + reply_audio(SECOND_REPLY))
    assert last_user_message(emu) == {"role": "user", "content": SECOND}


# --- LLM ---------------------------------------------------------------------------------------------------------

RETRY_AFTER_S = 0.5
LLM_TIMEOUT_S = 1.5
"""Stand-in for bot_turn.LLM_FIRST_TOKEN_TIMEOUT_S so that a stalled model costs little test time."""


def _rate_limited(faults: LlmFaults) -> None:
    faults.fail_next, faults.fail_status, faults.retry_after_s = 2, 429, RETRY_AFTER_S  # the SDK retries once


def _rate_limited_once(faults: LlmFaults) -> None:
    faults.fail_next, faults.fail_status, faults.retry_after_s = 1, 429, RETRY_AFTER_S


def _server_error(faults: LlmFaults) -> None:
    faults.error_status = 500


def _stalled(faults: LlmFaults) -> None:
    faults.stall_s = math.inf


LLM_FAULTS: dict[str, tuple[Callable[[LlmFaults], None], str]] = {
    # fault -> (how to inject it, what the caller hears for the first turn)
    "429_retry_after": (_rate_limited, "apology"),
    "429_then_ok": (_rate_limited_once, "reply"),
    "500": (_server_error, "apology"),
    "stall_before_first_token": (_stalled, "apology"),
}


@pytest.mark.parametrize("fault", list(LLM_FAULTS))
async def test_llm_fault_gives_the_apology_and_the_next_turn_works(
    make_world: WorldFactory, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    inject, first_heard = LLM_FAULTS[fault]
    monkeypatch.setattr(bot_turn, "LLM_FIRST_TOKEN_TIMEOUT_S", LLM_TIMEOUT_S)
    world = await make_world()
    emu = world.emu
    emu.stt.script.extend([FIRST, SECOND])
    emu.llm.script.append(SHORT_REPLY)
    call = LiveCall(world.caller())
    try:
        await call.steps(greeting_steps())
        inject(emu.llm.faults)
        await call.steps(turn("hours"))
        emu.llm.faults = LlmFaults()
        emu.llm.script[:] = [SECOND_REPLY]  # whether or not the faulted request got as far as taking a reply
        await call.steps(turn("question"))
        result = await call.hang_up()
    finally:
        await call.close()

    assert result.ok, result.format_timeline()
    first = speech(APOLOGY) if first_heard == "apology" else reply_audio(SHORT_REPLY)
    assert_audio(heard(result), speech(GREETING) + first + reply_audio(SECOND_REPLY))
    assert not result.events_of("clear_received")
    # The next turn asked the model normally, with the first utterance kept in the history.
    messages = emu.llm.requests[-1].data["messages"]
    assert messages[-1] == {"role": "user", "content": SECOND}
    assert {"role": "user", "content": FIRST} in messages
    rejected = emu.select("llm", "rejected")
    if fault == "429_retry_after":
        assert [e.data["status"] for e in rejected] == [429, 429]
        assert rejected[1].t - rejected[0].t >= RETRY_AFTER_S * 0.9, "retry-after is honoured"
    if fault == "429_then_ok":
        assert [e.data["status"] for e in rejected] == [429]
        assert emu.llm.requests[0].t - rejected[0].t >= RETRY_AFTER_S * 0.9, "retry-after is honoured"
    if fault == "stall_before_first_token":
        assert emu.select("llm", "abort"), "the stalled stream is closed at the provider"


DROP_AFTER_TOKENS = 12
"""Inside the second sentence of THREE_SEGMENTS: the first segment is complete, the second is not."""


async def test_llm_disconnect_mid_stream_plays_the_partial_reply_and_the_next_turn_works(
    make_world: WorldFactory,
) -> None:
    world = await make_world()
    emu = world.emu
    received = "".join(tokenize(THREE_SEGMENTS)[:DROP_AFTER_TOKENS])
    complete = segments_of(THREE_SEGMENTS)[0]
    assert received.startswith(complete) and len(received.strip()) > len(complete), received
    emu.stt.script.extend([FIRST, SECOND])
    emu.llm.script.extend([THREE_SEGMENTS, SECOND_REPLY])
    call = LiveCall(world.caller())
    try:
        await call.steps(greeting_steps())
        emu.llm.faults.drop_after_tokens = DROP_AFTER_TOKENS
        await call.steps(turn("hours"))
        emu.llm.faults = LlmFaults()
        await call.steps(turn("question"))
        result = await call.hang_up()
    finally:
        await call.close()

    assert result.ok, result.format_timeline()
    assert len(emu.select("llm", "drop")) == 1
    # The partial reply: every complete segment, and at most the received rest of the text (never the apology).
    whole = speech(GREETING) + reply_audio(received) + reply_audio(SECOND_REPLY)
    complete_only = speech(GREETING) + speech(complete) + reply_audio(SECOND_REPLY)
    audio = heard(result)
    assert audio in (whole, complete_only), (len(audio), len(whole), len(complete_only))
    messages = emu.llm.requests[-1].data["messages"]
    assert messages[-1] == {"role": "user", "content": SECOND}
    assert messages[-2]["role"] == "assistant"
    assert messages[-2]["content"].startswith(complete)
    await assert_not_crashed(world)


# --- Twilio REST -------------------------------------------------------------------------------------------------

HANG_UP_TIMEOUT_S = 1.0
"""Stand-in for conversation.HANG_UP_TIMEOUT_S when the REST API never answers."""


@pytest.mark.parametrize("fault", ["http_500", "stall"])
async def test_twilio_rest_failure_on_hang_up_still_closes_the_socket(
    make_world: WorldFactory,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: Callable[[], list[dict[str, Any]]],
    fault: str,
) -> None:
    # The idle path hangs up without any STT or LLM: greeting, silence, goodbye, REST update.
    world = await make_world(idle_timeout_s=0.3, idle_reprompts=0)
    emu = world.emu
    if fault == "http_500":
        emu.twilio.faults.error_status = 500
    else:
        monkeypatch.setattr(conversation, "HANG_UP_TIMEOUT_S", HANG_UP_TIMEOUT_S)
        emu.twilio.faults.stall_s = math.inf
    result = await world.call([], timeout=CALL_TIMEOUT_S)

    assert result.ended_by == "server_closed", result.format_timeline()
    assert result.close_code == WSCloseCode.OK
    settings = world.server.settings
    assert_audio(heard(result), speech(GREETING) + speech(settings.goodbye))
    assert emu.twilio.updates == []
    if fault == "http_500":
        assert [(e.data["call_sid"], e.data["status"]) for e in emu.select("twilio", "rejected")] == [
            (result.call_sid, 500)
        ]
    failed = [line for line in log_lines() if line["event"] == "hang_up_failed"]
    assert len(failed) == 1
    assert failed[0]["call_sid"] == result.call_sid
    ended = [line for line in log_lines() if line["event"] == "call_ended" and line.get("call_sid") == result.call_sid]
    assert len(ended) == 1
    await assert_not_crashed(world)
