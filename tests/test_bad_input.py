"""Bad input on a live call: a running session (after a valid ``start``) is sent garbage while a second, well-behaved
call completes a full turn through the emulators. Each abuse must end in "ignored and logged" (the abused call goes
on: later media still reaches the recogniser and ``stop`` ends it with reason ``stop``) or in "closed cleanly with a
reason" (a close code, no crash), and must never touch the other call.

Then property tests of the Twilio wire layer that tests/test_twilio_wire.py does not already cover.
"""

from __future__ import annotations

import asyncio
import io
import logging
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSCloseCode, WSMsgType
from hypothesis import given
from hypothesis import strategies as st

from tests.fake_twilio import MediaSocket, answered_call, new_call_sid, open_media
from tests.world import TTS_MODEL, World, segments_of
from voicebot.audio import FRAME_BYTES
from voicebot.call.session import MAX_LOGGED_PROTOCOL_ERRORS, MAX_PROTOCOL_ERRORS
from voicebot.caller import CallResult, HangUp, Say, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import resolve_audio
from voicebot.emulators import DEFAULT_TRANSCRIPT, Emulators, synthesize
from voicebot.logs import configure_logging
from voicebot.twilio import wire

GREETING = "Hi."
MS_PER_CHAR = 20.0
"""The TTS emulator speaks 3x faster than its default: the same byte-level checks, a third of the playout time."""
WAIT_S = 10.0
"""Generous bound for any single wait (the machine is shared and noisy)."""
GOOD_CALL_TIMEOUT_S = 30.0
QUIET_MS = 400
LEAD_FRAMES = 5
"""Silent media frames sent before the abuse, so that the session is well into its receive loop."""
SPOKEN_CLIP = "okay"
MAX_MESSAGE_BYTES = 16 * 1024
"""The server's limit in these tests (the default is 64 KiB): an oversized message needs fewer bytes."""

GOOD_REPLY = "We open at nine."
"""Scripted: only the good call ever asks the model (the abused call stops before its caller's turn ends). The
recogniser is not scripted: both calls may speak, so both get the emulator's default transcript."""


def speech(text: str) -> bytes:
    return synthesize(text, TTS_MODEL, MS_PER_CHAR)


def reply_audio(reply: str) -> bytes:
    return b"".join(speech(s) for s in segments_of(reply))


def clip_frames(name: str) -> list[bytes]:
    audio = resolve_audio(name)
    return [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Capture the server's JSON log lines."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    finally:
        logging.getLogger().handlers.clear()


@pytest.fixture
async def world(emulators: Emulators, start_world: Callable[..., Awaitable[World]]) -> World:
    emulators.tts.config.ms_per_char = MS_PER_CHAR
    return await start_world(greeting=GREETING, max_message_bytes=MAX_MESSAGE_BYTES)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def metrics_text(world: World, http: aiohttp.ClientSession) -> str:
    async with http.get(world.server.url("/metrics")) as resp:
        return await resp.text()


def metric(text: str, sample: str) -> float:
    """The value of one sample line of the Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def read_until_closed(sock: MediaSocket) -> tuple[int | None, str, list[Any]]:
    """Read until the server closes: the close code, its reason, and every message received before it."""
    received: list[Any] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            msg = await sock.ws.receive()
            if msg.type is WSMsgType.CLOSE:
                return msg.data, msg.extra or "", received
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return sock.ws.close_code, "", received
            received.append(msg.data)


class GoodCall:
    """The well-behaved call: greeting, one utterance, the bot's full answer, hang-up."""

    def __init__(self, world: World) -> None:
        self.world = world
        world.emu.llm.script.append(GOOD_REPLY)
        script = [
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=QUIET_MS),
            Say(SPOKEN_CLIP),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=QUIET_MS),
            HangUp(),
        ]
        self.caller = world.caller(script)
        self.task = asyncio.create_task(self.caller.run(timeout=GOOD_CALL_TIMEOUT_S))

    async def started(self) -> None:
        """Wait until the good call is live (its recogniser stream is open), so the abuse overlaps it."""
        await self.world.emu.wait_for_kind("stt", "open", WAIT_S)

    async def result(self) -> CallResult:
        return await self.task

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def good_call(world: World) -> AsyncIterator[GoodCall]:
    call = GoodCall(world)
    try:
        await call.started()
        yield call
    finally:
        await call.close()


def call_lines(lines: list[dict[str, Any]], call_sid: str, event: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("call_sid") == call_sid and line["event"] == event]


async def assert_good_call_unaffected(good: GoodCall, log: LogLines) -> None:
    result = await good.result()
    assert result.ok, result.format_timeline()
    assert result.ended_by == "hangup"
    audio = b"".join(m.payload for m in result.media)
    expected = speech(GREETING) + reply_audio(GOOD_REPLY)
    assert audio == expected, (len(audio), len(expected))
    assert [r.data["messages"][-1]["content"] for r in good.world.emu.llm.requests] == [DEFAULT_TRANSCRIPT]
    lines = log()
    assert call_lines(lines, result.call_sid, "protocol_error") == []
    [ended] = call_lines(lines, result.call_sid, "call_ended")
    assert (ended["reason"], ended["protocol_errors"]) == ("stop", 0)


# --- the abuse -------------------------------------------------------------------------------------------------


def _media(sock: MediaSocket, **changes: Any) -> str:
    """A valid inbound media message of this stream with top-level or ``media`` fields changed."""
    msg = orjson.loads(
        wire.inbound_media_message(
            stream_sid=sock.stream_sid,
            sequence_number=sock.seq + 1,
            chunk=sock.chunk + 1,
            timestamp_ms=0,
            audio=b"\xff",
        )
    )
    for key, value in changes.items():
        if key in msg["media"]:
            msg["media"][key] = value
        else:
            msg[key] = value
    return orjson.dumps(msg).decode()


def _mark(sock: MediaSocket, name: Any) -> str:
    msg = {"event": "mark", "sequenceNumber": "9", "streamSid": sock.stream_sid, "mark": {"name": name}}
    return orjson.dumps(msg).decode()


Message = str | bytes
"""A text frame (str) or a binary frame (bytes)."""


@dataclass(frozen=True)
class Abuse:
    build: Callable[[MediaSocket], list[Message]]
    kinds: tuple[str, ...] | None
    """The protocol_error kind logged for each message; None: any kind, one per message."""


IGNORED: dict[str, Abuse] = {
    "malformed_json": Abuse(lambda s: ["{not json", "", '{"event": "media", "media": {'], ("malformed",) * 3),
    "binary_frames": Abuse(
        lambda s: [b"\x00\x01\x02\x03", _media(s).encode()],  # even a valid message is refused as a binary frame
        ("binary_frame",) * 2,
    ),
    "wrong_types": Abuse(
        lambda s: [
            "[1, 2]",
            "null",
            '"media"',
            '{"event": 5}',
            _media(s, sequenceNumber=True),
            _media(s, sequenceNumber=4.5),
            _media(s, chunk="-1"),
            _media(s, media="x"),
            _media(s, payload=12),
            _media(s, streamSid=None),
            _mark(s, 42),
            orjson.dumps(
                {"event": "dtmf", "streamSid": s.stream_sid, "sequenceNumber": "9", "dtmf": {"digit": 5}}
            ).decode(),
        ],
        ("malformed",) * 12,
    ),
    "invalid_base64": Abuse(
        lambda s: [
            _media(s, payload="%%%%"),
            _media(s, payload="abc"),
            _media(s, payload="no+JhoaJjpzSAA="),
            _media(s, payload="="),
            _media(s, payload="no+J\nhoaJjpzS"),
        ],
        ("malformed",) * 5,
    ),
    "second_start": Abuse(
        lambda s: [
            wire.start_message(
                stream_sid="MZ" + "f" * 32, call_sid=new_call_sid(), account_sid="AC" + "0" * 32, custom_parameters={}
            ).decode()
        ],
        ("second_start",),
    ),
    "late_connected": Abuse(lambda s: [wire.connected_message().decode()], ("late_connected",)),
    "unknown_events": Abuse(
        lambda s: [
            '{"event": "dance"}',
            wire.clear_message(s.stream_sid).decode(),  # an outbound event sent inbound
            orjson.dumps({"event": "closed", "streamSid": s.stream_sid}).decode(),
        ],
        ("malformed",) * 3,
    ),
    "marks_never_sent": Abuse(
        lambda s: [_mark(s, "never-sent"), _mark(s, "g1.s0.m999"), _mark(s, "g99.s0.m1")],
        ("unknown_mark",) * 3,
    ),
    "media_for_another_stream": Abuse(lambda s: [_media(s, streamSid="MZ" + "e" * 32)], ("wrong_stream",)),
}


async def send_all(sock: MediaSocket, messages: list[Message]) -> None:
    for message in messages:
        if isinstance(message, bytes):
            await sock.ws.send_bytes(message)
        else:
            await sock.ws.send_str(message)


@pytest.mark.parametrize("case", list(IGNORED))
async def test_bad_input_is_ignored_and_logged_and_the_call_goes_on(
    world: World, good_call: GoodCall, http: aiohttp.ClientSession, log_lines: LogLines, case: str
) -> None:
    emu = world.emu
    abuse = IGNORED[case]
    before_bad = emu.mark()
    sock = await answered_call(http, world.server)
    opened = await emu.wait_for_kind("stt", "open", WAIT_S, since=before_bad)
    for _ in range(LEAD_FRAMES):
        await sock.media()
    messages = abuse.build(sock)
    await send_all(sock, messages)
    # Media after the abuse still reaches the recogniser of this call...
    spoken = clip_frames(SPOKEN_CLIP)
    for frame in spoken:
        await sock.media(frame)
    await emu.wait_for_kind("stt", "speech_started", WAIT_S, request_id=opened.data["request_id"])
    # ... and stop still ends the call normally.
    await sock.stop()
    code, reason, received = await read_until_closed(sock)

    assert (code, reason) == (WSCloseCode.OK, "stop")
    for data in received:  # whatever the bot said went to this call's own stream
        assert orjson.loads(data)["streamSid"] == sock.stream_sid
    await assert_good_call_unaffected(good_call, log_lines)
    lines = log_lines()
    [ended] = call_lines(lines, sock.call_sid, "call_ended")
    assert ended["reason"] == "stop"
    assert ended["protocol_errors"] == len(messages)
    assert ended["media_frames"] == LEAD_FRAMES + len(spoken)
    logged = call_lines(lines, sock.call_sid, "protocol_error")
    assert len(logged) == min(len(messages), MAX_LOGGED_PROTOCOL_ERRORS)
    text = await metrics_text(world, http)
    if abuse.kinds is not None:
        assert [line["kind"] for line in logged] == list(abuse.kinds[:MAX_LOGGED_PROTOCOL_ERRORS])
        for kind in set(abuse.kinds):
            assert metric(text, f'voicebot_protocol_errors_total{{kind="{kind}"}}') == abuse.kinds.count(kind)
    assert metric(text, 'voicebot_calls_total{end_reason="stop"}') == 2
    assert metric(text, 'voicebot_calls_total{end_reason="crashed"}') == 0


@pytest.mark.parametrize("case", ["oversized_message", "too_many_protocol_errors"])
async def test_abuse_past_the_limits_closes_the_call_with_a_reason(
    world: World, good_call: GoodCall, http: aiohttp.ClientSession, log_lines: LogLines, case: str
) -> None:
    sock = await answered_call(http, world.server)
    for _ in range(LEAD_FRAMES):
        await sock.media()
    if case == "oversized_message":
        await sock.send(_media(sock, padding="x" * MAX_MESSAGE_BYTES))
        expected_code = WSCloseCode.MESSAGE_TOO_BIG
    else:
        await send_all(sock, ["{garbage"] * MAX_PROTOCOL_ERRORS)
        expected_code = WSCloseCode.POLICY_VIOLATION
    code, reason, _received = await read_until_closed(sock)

    assert code == expected_code
    await assert_good_call_unaffected(good_call, log_lines)
    lines = log_lines()
    [ended] = call_lines(lines, sock.call_sid, "call_ended")
    text = await metrics_text(world, http)
    if case == "too_many_protocol_errors":
        assert reason == ended["reason"] == "too_many_protocol_errors"
        assert len(call_lines(lines, sock.call_sid, "protocol_error")) == MAX_LOGGED_PROTOCOL_ERRORS
        assert metric(text, 'voicebot_protocol_errors_total{kind="malformed"}') == MAX_PROTOCOL_ERRORS
    else:
        assert ended["reason"]  # closed with a reason of its own, not as a crash
    assert metric(text, 'voicebot_calls_total{end_reason="crashed"}') == 0
    assert not [line for line in lines if line["event"] == "call_crashed"]


@pytest.mark.parametrize("first", ["media", "binary", "mark", "stop"])
async def test_anything_before_start_is_refused_while_another_call_goes_on(
    world: World, good_call: GoodCall, http: aiohttp.ClientSession, log_lines: LogLines, first: str
) -> None:
    sock = await open_media(http, world.server, new_call_sid())
    await sock.connected()
    if first == "media":
        await sock.media()
    elif first == "binary":
        await sock.ws.send_bytes(b"\x00\x01")
    elif first == "mark":
        await sock.send(_mark(sock, "g1.s0.m1"))
    else:
        await sock.stop()
    code, reason, received = await read_until_closed(sock)

    assert (code, reason, received) == (WSCloseCode.POLICY_VIOLATION, "no_start", [])
    await assert_good_call_unaffected(good_call, log_lines)
    text = await metrics_text(world, http)
    assert metric(text, 'voicebot_calls_rejected_total{reason="no_start"}') == 1
    assert metric(text, 'voicebot_calls_total{end_reason="crashed"}') == 0


# --- property tests of the wire layer ------------------------------------------------------------------------------

sids = st.text(string.ascii_letters + string.digits, min_size=1, max_size=wire.MAX_SID_LENGTH)
names = st.text(min_size=1, max_size=wire.MAX_MARK_NAME_LENGTH)
parameters = st.dictionaries(
    st.text(max_size=40), st.text(max_size=wire.MAX_PARAMETER_LENGTH), max_size=wire.MAX_PARAMETERS
)


@given(sid=sids, audio=st.binary(max_size=2000), name=names)
def test_outbound_messages_round_trip(sid: str, audio: bytes, name: str) -> None:
    assert wire.parse_outbound(wire.media_message(sid, audio)) == wire.OutMedia(sid, audio)
    assert wire.parse_outbound(wire.mark_message(sid, name)) == wire.OutMark(sid, name)
    assert wire.parse_outbound(wire.clear_message(sid)) == wire.OutClear(sid)


@given(
    event=st.sampled_from(["media", "mark", "clear", "stop", "start"]),
    body=st.dictionaries(st.sampled_from(["streamSid", "media", "mark"]), st.deferred(lambda: json_values)),
)
def test_any_outbound_shaped_object_parses_well_typed_or_raises_wire_error(event: str, body: dict[str, Any]) -> None:
    try:
        parsed = wire.parse_outbound(orjson.dumps({**body, "event": event}))
    except wire.WireError:
        return
    assert parsed.event == event
    assert isinstance(parsed.stream_sid, str) and 0 < len(parsed.stream_sid) <= wire.MAX_SID_LENGTH
    if isinstance(parsed, wire.OutMedia):
        assert isinstance(parsed.payload, bytes)
    elif isinstance(parsed, wire.OutMark):
        assert isinstance(parsed.name, str) and parsed.name


@given(stream=sids, call=sids, account=sids, params=parameters, seq=st.integers(0, 10**15))
def test_start_and_stop_round_trip(stream: str, call: str, account: str, params: dict[str, str], seq: int) -> None:
    start = wire.parse_inbound(
        wire.start_message(
            stream_sid=stream, call_sid=call, account_sid=account, custom_parameters=params, sequence_number=seq
        )
    )
    assert isinstance(start, wire.Start)
    assert (start.sequence_number, start.stream_sid, start.call_sid, start.account_sid) == (seq, stream, call, account)
    assert dict(start.custom_parameters) == params
    stop = wire.parse_inbound(
        wire.stop_message(stream_sid=stream, call_sid=call, account_sid=account, sequence_number=seq)
    )
    assert stop == wire.Stop(seq, stream, account, call)


@given(stream=sids, name=names, digit=st.sampled_from(sorted(wire.DTMF_DIGITS)), seq=st.integers(0, 10**15))
def test_mark_and_dtmf_round_trip(stream: str, name: str, digit: str, seq: int) -> None:
    mark = wire.parse_inbound(wire.inbound_mark_message(stream_sid=stream, sequence_number=seq, name=name))
    assert mark == wire.Mark(seq, stream, name)
    dtmf = wire.parse_inbound(wire.dtmf_message(stream_sid=stream, sequence_number=seq, digit=digit))
    assert isinstance(dtmf, wire.Dtmf)
    assert (dtmf.sequence_number, dtmf.stream_sid, dtmf.digit) == (seq, stream, digit)


GOLDEN: dict[str, dict[str, Any]] = {
    "start": orjson.loads(
        wire.start_message(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", custom_parameters={"token": "t"})
    ),
    "media": orjson.loads(
        wire.inbound_media_message(stream_sid="MZ1", sequence_number=3, chunk=2, timestamp_ms=20, audio=b"\x7f" * 160)
    ),
    "mark": orjson.loads(wire.inbound_mark_message(stream_sid="MZ1", sequence_number=4, name="g1.s0.m1")),
    "dtmf": orjson.loads(wire.dtmf_message(stream_sid="MZ1", sequence_number=5, digit="7")),
    "stop": orjson.loads(wire.stop_message(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", sequence_number=6)),
    "connected": orjson.loads(wire.connected_message()),
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
DELETE = object()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _check_event(event: wire.InboundEvent) -> None:
    """Whatever parses is well-typed: what the session relies on without checking again."""
    if isinstance(event, wire.Connected):
        return
    assert isinstance(event.sequence_number, int) and event.sequence_number >= 0
    assert isinstance(event.stream_sid, str) and 0 < len(event.stream_sid) <= wire.MAX_SID_LENGTH
    if isinstance(event, wire.Media):
        assert isinstance(event.payload, bytes)
        assert isinstance(event.chunk, int) and isinstance(event.timestamp, int)
    elif isinstance(event, wire.Mark):
        assert isinstance(event.name, str) and 0 < len(event.name) <= wire.MAX_MARK_NAME_LENGTH
    elif isinstance(event, wire.Dtmf):
        assert event.digit in wire.DTMF_DIGITS
    elif isinstance(event, wire.Start):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.custom_parameters.items())
        assert (event.encoding, event.sample_rate, event.channels) == ("audio/x-mulaw", 8000, 1)


@given(data=st.data(), kind=st.sampled_from(sorted(GOLDEN)))
def test_any_mutation_of_a_valid_message_parses_well_typed_or_raises_wire_error(data: st.DataObject, kind: str) -> None:
    msg = orjson.loads(orjson.dumps(GOLDEN[kind]))  # a deep copy
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(msg)
        path = data.draw(st.sampled_from(paths), label="path")
        value = data.draw(st.just(DELETE) | json_values, label="value")
        parent = msg
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        if not isinstance(msg, dict) or not _paths(msg):
            break
    try:
        event = wire.parse_inbound(orjson.dumps(msg))
    except wire.WireError:
        return
    _check_event(event)
