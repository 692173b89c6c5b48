"""The Twilio Media Streams wire layer: golden messages from Twilio's docs, round trips, malformed input."""

from __future__ import annotations

import base64
import contextlib

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from voicebot.twilio import wire

# Verbatim examples from twilio.com/docs/voice/media-streams/websocket-messages (via shared/PROVIDERS.md §4.2).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    '{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC...","streamSid":"MZ...","callSid":"CA...",'
    '"tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    '"customParameters":{"FirstName":"Jane","LastName":"Doe"}},"streamSid":"MZ..."}'
)
MEDIA = (
    '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
    '"payload":"no+JhoaJjpzS"},"streamSid":"MZ..."}'
)
DTMF = '{"event":"dtmf","streamSid":"MZ...","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}'
MARK = '{"event":"mark","sequenceNumber":"4","streamSid":"MZ...","mark":{"name":"my label"}}'
STOP = '{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC...","callSid":"CA..."},"streamSid":"MZ..."}'


def test_golden_connected() -> None:
    assert wire.parse_inbound(CONNECTED) == wire.Connected(protocol="Call", version="1.0.0")


def test_golden_start() -> None:
    event = wire.parse_inbound(START)
    assert event == wire.Start(
        sequence_number=1,
        stream_sid="MZ...",
        call_sid="CA...",
        account_sid="AC...",
        tracks=("inbound",),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        custom_parameters={"FirstName": "Jane", "LastName": "Doe"},
    )


def test_golden_media_decodes_payload_and_string_numbers() -> None:
    event = wire.parse_inbound(MEDIA)
    assert isinstance(event, wire.Media)
    assert (event.sequence_number, event.chunk, event.timestamp, event.track) == (4, 2, 5, "inbound")
    assert event.payload == base64.b64decode("no+JhoaJjpzS")


def test_golden_dtmf_mark_stop() -> None:
    assert wire.parse_inbound(DTMF) == wire.Dtmf(
        sequence_number=5, stream_sid="MZ...", track="inbound_track", digit="1"
    )
    assert wire.parse_inbound(MARK) == wire.Mark(sequence_number=4, stream_sid="MZ...", name="my label")
    assert wire.parse_inbound(STOP) == wire.Stop(
        sequence_number=5, stream_sid="MZ...", account_sid="AC...", call_sid="CA..."
    )


def test_parse_accepts_bytes() -> None:
    assert isinstance(wire.parse_inbound(MEDIA.encode()), wire.Media)


def test_inbound_builders_round_trip() -> None:
    audio = bytes(range(160))
    start = wire.parse_inbound(
        wire.start_message(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", custom_parameters={"token": "t"})
    )
    assert isinstance(start, wire.Start)
    assert (start.stream_sid, start.call_sid, start.custom_parameters) == ("MZ1", "CA1", {"token": "t"})
    media = wire.parse_inbound(
        wire.inbound_media_message(stream_sid="MZ1", sequence_number=7, chunk=3, timestamp_ms=40, audio=audio)
    )
    assert media == wire.Media(
        sequence_number=7, stream_sid="MZ1", track="inbound", chunk=3, timestamp=40, payload=audio
    )
    mark = wire.parse_inbound(wire.inbound_mark_message(stream_sid="MZ1", sequence_number=8, name="g1-s0-0"))
    assert mark == wire.Mark(sequence_number=8, stream_sid="MZ1", name="g1-s0-0")
    dtmf = wire.parse_inbound(wire.dtmf_message(stream_sid="MZ1", sequence_number=9, digit="#"))
    assert isinstance(dtmf, wire.Dtmf)
    assert dtmf.digit == "#"
    stop = wire.parse_inbound(
        wire.stop_message(stream_sid="MZ1", call_sid="CA1", account_sid="AC1", sequence_number=10)
    )
    assert stop == wire.Stop(sequence_number=10, stream_sid="MZ1", account_sid="AC1", call_sid="CA1")
    assert wire.parse_inbound(wire.connected_message()) == wire.Connected(protocol="Call", version="1.0.0")


def test_outbound_messages_match_twilio_shapes_and_round_trip() -> None:
    audio = b"\x00\x7f\xff" * 100
    assert orjson.loads(wire.media_message("MZ1", audio)) == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": base64.b64encode(audio).decode()},
    }
    assert orjson.loads(wire.mark_message("MZ1", "m1")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "m1"}}
    assert orjson.loads(wire.clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
    assert wire.parse_outbound(wire.media_message("MZ1", audio)) == wire.OutMedia("MZ1", audio)
    assert wire.parse_outbound(wire.mark_message("MZ1", "m1")) == wire.OutMark("MZ1", "m1")
    assert wire.parse_outbound(wire.clear_message("MZ1")) == wire.OutClear("MZ1")


def _with(base: str, path: list[str], value: object) -> str:
    msg = orjson.loads(base)
    target = msg
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return orjson.dumps(msg).decode()


MALFORMED = [
    ("not json", "{event: media", "not JSON"),
    ("not an object", "[1, 2]", "JSON list"),
    ("no event", '{"streamSid": "MZ1"}', "'event' must be a string"),
    ("event not a string", '{"event": 5}', "'event' must be a string"),
    ("unknown event", '{"event": "dance"}', "unknown event 'dance'"),
    (
        "sequenceNumber not digits",
        _with(MEDIA, ["sequenceNumber"], "4a"),
        "'sequenceNumber' must be a string of decimal",
    ),
    ("sequenceNumber a float", _with(MEDIA, ["sequenceNumber"], 4.5), "'sequenceNumber' must be"),
    ("sequenceNumber a bool", _with(MEDIA, ["sequenceNumber"], True), "'sequenceNumber' must be"),
    ("chunk negative", _with(MEDIA, ["media", "chunk"], "-1"), "media.'chunk'"),
    ("timestamp missing", _with(MEDIA, ["media", "timestamp"], KeyError), "media.'timestamp'"),
    ("media not an object", _with(MEDIA, ["media"], "x"), "'media' must be an object"),
    ("payload not base64", _with(MEDIA, ["media", "payload"], "%%%"), "not valid base64"),
    ("payload bad padding", _with(MEDIA, ["media", "payload"], "abc"), "not valid base64"),
    ("payload not ASCII", _with(MEDIA, ["media", "payload"], "\x80"), "not valid base64"),
    ("payload a number", _with(MEDIA, ["media", "payload"], 12), "base64 string"),
    ("streamSid missing", _with(MEDIA, ["streamSid"], KeyError), "'streamSid' must be a non-empty string"),
    ("streamSid too long", _with(MEDIA, ["streamSid"], "M" * 100), "longer than"),
    ("start without mediaFormat", _with(START, ["start", "mediaFormat"], KeyError), "'mediaFormat' must be an object"),
    ("start wrong encoding", _with(START, ["start", "mediaFormat", "encoding"], "audio/l16"), "unsupported media"),
    ("start wrong rate", _with(START, ["start", "mediaFormat", "sampleRate"], 16000), "unsupported media"),
    ("start without callSid", _with(START, ["start", "callSid"], KeyError), "start.'callSid'"),
    ("start params not strings", _with(START, ["start", "customParameters"], {"a": 1}), "customParameters"),
    ("start params not object", _with(START, ["start", "customParameters"], [1]), "customParameters"),
    ("start streamSid mismatch", _with(START, ["streamSid"], "MZother"), "differ"),
    ("start tracks not list", _with(START, ["start", "tracks"], "inbound"), "'tracks'"),
    ("dtmf bad digit", _with(DTMF, ["dtmf", "digit"], "x"), "'digit' must be one of"),
    ("dtmf two digits", _with(DTMF, ["dtmf", "digit"], "12"), "'digit' must be one of"),
    ("mark without name", _with(MARK, ["mark", "name"], KeyError), "mark.'name'"),
    ("mark name too long", _with(MARK, ["mark", "name"], "n" * 300), "longer than"),
    ("stop without callSid", _with(STOP, ["stop", "callSid"], KeyError), "stop.'callSid'"),
    ("connected without version", _with(CONNECTED, ["version"], KeyError), "'version'"),
]


@pytest.mark.parametrize(("case", "data", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_inbound_raises_precise_wire_error(case: str, data: str, message: str) -> None:
    with pytest.raises(wire.WireError, match=None) as info:
        wire.parse_inbound(data)
    assert message in str(info.value), (case, str(info.value))


def test_outbound_parse_rejects_unknown_event() -> None:
    with pytest.raises(wire.WireError, match="unknown outbound event"):
        wire.parse_outbound('{"event": "stop", "streamSid": "MZ1"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@given(
    event=st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "x"]),
    body=st.dictionaries(
        st.sampled_from(
            ["sequenceNumber", "streamSid", "start", "media", "dtmf", "mark", "stop", "protocol", "version"]
        ),
        json_values,
    ),
)
def test_any_json_object_parses_or_raises_wire_error(event: str, body: dict[str, object]) -> None:
    data = orjson.dumps({**body, "event": event})
    try:
        parsed = wire.parse_inbound(data)
    except wire.WireError:
        return
    assert parsed.event == event


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.parse_inbound(data)


@given(
    payload=st.binary(max_size=400),
    seq=st.integers(min_value=0, max_value=10**12),
    chunk=st.integers(min_value=1, max_value=10**9),
)
def test_media_round_trip_property(payload: bytes, seq: int, chunk: int) -> None:
    data = wire.inbound_media_message(
        stream_sid="MZ1", sequence_number=seq, chunk=chunk, timestamp_ms=chunk * 20, audio=payload
    )
    event = wire.parse_inbound(data)
    assert event == wire.Media(seq, "MZ1", "inbound", chunk, chunk * 20, payload)


_MEDIA_FIELD = st.one_of(
    st.none(),
    st.integers(min_value=-1, max_value=10**20),
    st.booleans(),
    st.text(alphabet="0123456789", max_size=20),
    st.text(max_size=5),  # non-ASCII digits ("²", "٣") and anything else
    st.just(base64.b64encode(b"\xff" * 160).decode()),
    st.just("not base64!"),
    st.lists(st.integers(), max_size=1),
)


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=19)


@settings(max_examples=400)
@given(
    sid=st.one_of(st.text(min_size=1, max_size=70), _MEDIA_FIELD),
    seq=st.one_of(_DIGITS, _MEDIA_FIELD),
    chunk=st.one_of(_DIGITS, _MEDIA_FIELD),
    timestamp=st.one_of(_DIGITS, _MEDIA_FIELD),
    payload=st.one_of(st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()), _MEDIA_FIELD),
    track=st.one_of(st.just("inbound"), _MEDIA_FIELD),
    media_is_object=st.sampled_from([True, True, True, False]),
)
@example(sid="MZ1", seq="7", chunk="6", timestamp="120", payload="/w==", track="inbound", media_is_object=True)
@example(sid="MZ1", seq="7", chunk="6", timestamp="120", payload="/w=", track="inbound", media_is_object=True)
@example(sid="MZ1", seq="7", chunk="٣", timestamp="120", payload="/w==", track="inbound", media_is_object=True)
def test_media_fast_path_agrees_with_the_checked_path(
    sid: object, seq: object, chunk: object, timestamp: object, payload: object, track: object, media_is_object: bool
) -> None:
    """The hot path builds Twilio's usual shape directly; for any message it returns what the field-by-field path
    returns, or raises the same error."""
    media = {"chunk": chunk, "timestamp": timestamp, "payload": payload, "track": track}
    msg = {"event": "media", "streamSid": sid, "sequenceNumber": seq, "media": media if media_is_object else [media]}
    outcomes = []
    for parse in (wire._parse_media, wire._parse_media_checked):
        try:
            outcomes.append(parse(msg))
        except wire.WireError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
