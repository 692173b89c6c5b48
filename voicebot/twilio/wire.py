"""Twilio Media Streams wire format, both directions, sans-I/O.

Inbound (Twilio → us): ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; outbound (us → Twilio):
``media``, ``mark``, ``clear``. Parsing returns frozen dataclasses and raises :class:`WireError` (a ``ValueError``)
naming what is wrong. The simulated caller uses the other half (building inbound, parsing outbound messages).

Wire quirks (https://www.twilio.com/docs/voice/media-streams/websocket-messages): ``sequenceNumber``,
``media.chunk`` and ``media.timestamp`` are JSON *strings* of decimal digits; ``payload`` is base64 of raw
mu-law/8000 with no file header.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

MAX_SID_LENGTH = 64
MAX_MARK_NAME_LENGTH = 256
MAX_PARAMETERS = 32
MAX_PARAMETER_LENGTH = 1024
MAX_NUMBER_DIGITS = 18
"""Sequence numbers, chunks and timestamps: a 64-bit integer's worth of decimal digits."""


class WireError(ValueError):
    """A Media Streams message that does not follow the protocol."""


# --- inbound events (Twilio → server) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str
    event: Literal["connected"] = "connected"


@dataclass(frozen=True, slots=True)
class Start:
    sequence_number: int
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    event: Literal["start"] = "start"


@dataclass(slots=True)
class Media:
    """Not frozen, unlike the other events: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, 1 us of the 50 per second per call this is built (twice the cost of a plain one)."""

    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp: int
    payload: bytes
    event: Literal["media"] = "media"


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence_number: int
    stream_sid: str
    track: str
    digit: str
    event: Literal["dtmf"] = "dtmf"


@dataclass(frozen=True, slots=True)
class Mark:
    sequence_number: int
    stream_sid: str
    name: str
    event: Literal["mark"] = "mark"


@dataclass(frozen=True, slots=True)
class Stop:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    event: Literal["stop"] = "stop"


InboundEvent = Connected | Start | Media | Dtmf | Mark | Stop

DTMF_DIGITS = frozenset("0123456789*#ABCDabcdw")


def _load(data: str | bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise WireError(f"message is a JSON {type(obj).__name__}, expected an object")
    return obj


def _obj(msg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise WireError(f"{key!r} must be an object")
    return value


def _str(msg: Mapping[str, Any], key: str, *, where: str = "", max_len: int = MAX_SID_LENGTH) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}{key!r} must be a non-empty string")
    if len(value) > max_len:
        raise WireError(f"{where}{key!r} is longer than {max_len} characters")
    return value


def _num(msg: Mapping[str, Any], key: str, *, where: str = "") -> int:
    """A decimal string (Twilio's documented form) or a JSON integer, never a bool or a float."""
    value = msg.get(key)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_NUMBER_DIGITS:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise WireError(f"{where}{key!r} must be a string of decimal digits, got {value!r:.40}")


def _payload(media: Mapping[str, Any]) -> bytes:
    value = media.get("payload")
    if not isinstance(value, str):
        raise WireError("media 'payload' must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: a non-ASCII str (found by hypothesis: "\x80")
        raise WireError(f"media 'payload' is not valid base64: {exc}") from None


def _parameters(start: Mapping[str, Any]) -> dict[str, str]:
    params = start.get("customParameters", {})
    if not isinstance(params, dict):
        raise WireError("start 'customParameters' must be an object")
    if len(params) > MAX_PARAMETERS:
        raise WireError(f"start 'customParameters' has more than {MAX_PARAMETERS} entries")
    for key, value in params.items():
        if not isinstance(value, str) or len(key) > MAX_PARAMETER_LENGTH or len(value) > MAX_PARAMETER_LENGTH:
            raise WireError(f"start 'customParameters' entry {key[:40]!r} must be a short string")
    return params


def _parse_start(msg: Mapping[str, Any]) -> Start:
    start = _obj(msg, "start")
    fmt = _obj(start, "mediaFormat")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise WireError("start 'tracks' must be a list of strings")
    encoding = _str(fmt, "encoding", where="start.mediaFormat.")
    rate = fmt.get("sampleRate")
    channels = fmt.get("channels")
    if (encoding, rate, channels) != ("audio/x-mulaw", 8000, 1):
        raise WireError(f"unsupported media format {encoding!r}/{rate!r}/{channels!r}; expected audio/x-mulaw/8000/1")
    stream_sid = _str(start, "streamSid", where="start.")
    top_sid = msg.get("streamSid", stream_sid)
    if top_sid != stream_sid:
        raise WireError("start.streamSid and streamSid differ")
    return Start(
        sequence_number=_num(msg, "sequenceNumber"),
        stream_sid=stream_sid,
        call_sid=_str(start, "callSid", where="start."),
        account_sid=_str(start, "accountSid", where="start."),
        tracks=tuple(tracks),
        encoding=encoding,
        sample_rate=8000,
        channels=1,
        custom_parameters=_parameters(start),
    )


def _parse_media(msg: dict[str, Any]) -> Media:
    """The hot path (50 messages per second per call): Twilio's usual shape is checked with a few type and length
    tests and built directly; anything else goes through :func:`_parse_media_checked`, which names the problem."""
    media = msg.get("media")
    if type(media) is dict:
        sid = msg.get("streamSid")
        seq = msg.get("sequenceNumber")
        chunk = media.get("chunk")
        timestamp = media.get("timestamp")
        payload = media.get("payload")
        track = media.get("track", "inbound")
        if (
            type(sid) is str
            and type(seq) is str
            and type(chunk) is str
            and type(timestamp) is str
            and type(payload) is str
            and type(track) is str
            and 0 < len(sid) <= MAX_SID_LENGTH
            and 0 < len(seq) <= MAX_NUMBER_DIGITS
            and 0 < len(chunk) <= MAX_NUMBER_DIGITS
            and 0 < len(timestamp) <= MAX_NUMBER_DIGITS
            and (digits := seq + chunk + timestamp).isascii()
            and digits.isdigit()
        ):
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except (binascii.Error, ValueError):
                audio = _payload(media)  # raises, naming the problem
            return Media(int(seq), sid, track, int(chunk), int(timestamp), audio)
    return _parse_media_checked(msg)


def _parse_media_checked(msg: Mapping[str, Any]) -> Media:
    media = _obj(msg, "media")
    return Media(
        sequence_number=_num(msg, "sequenceNumber"),
        stream_sid=_str(msg, "streamSid"),
        track=media.get("track", "inbound") if isinstance(media.get("track", "inbound"), str) else "",
        chunk=_num(media, "chunk", where="media."),
        timestamp=_num(media, "timestamp", where="media."),
        payload=_payload(media),
    )


def parse_inbound(data: str | bytes) -> InboundEvent:
    """Parse one Twilio → server text frame; raise WireError naming what is malformed."""
    msg = _load(data)
    event = msg.get("event")
    # Ordered by frequency: media is 50 messages per second per call.
    if event == "media":
        return _parse_media(msg)
    if event == "mark":
        mark = _obj(msg, "mark")
        return Mark(
            sequence_number=_num(msg, "sequenceNumber"),
            stream_sid=_str(msg, "streamSid"),
            name=_str(mark, "name", where="mark.", max_len=MAX_MARK_NAME_LENGTH),
        )
    if event == "start":
        return _parse_start(msg)
    if event == "dtmf":
        dtmf = _obj(msg, "dtmf")
        digit = _str(dtmf, "digit", where="dtmf.")
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise WireError(f"dtmf 'digit' must be one of 0-9 * # A-D, got {digit!r:.20}")
        return Dtmf(
            sequence_number=_num(msg, "sequenceNumber"),
            stream_sid=_str(msg, "streamSid"),
            track=dtmf.get("track", "inbound_track") if isinstance(dtmf.get("track"), str) else "inbound_track",
            digit=digit,
        )
    if event == "stop":
        stop = _obj(msg, "stop")
        return Stop(
            sequence_number=_num(msg, "sequenceNumber"),
            stream_sid=_str(msg, "streamSid"),
            account_sid=_str(stop, "accountSid", where="stop."),
            call_sid=_str(stop, "callSid", where="stop."),
        )
    if event == "connected":
        return Connected(protocol=_str(msg, "protocol"), version=_str(msg, "version"))
    if isinstance(event, str):
        raise WireError(f"unknown event {event[:40]!r}")
    raise WireError("'event' must be a string")


# --- outbound messages (server → Twilio) --------------------------------------------------------------


def media_message(stream_sid: str, audio: bytes) -> bytes:
    """A ``media`` message carrying raw mu-law ``audio`` (any length; Twilio buffers and plays in order)."""
    payload = binascii.b2a_base64(audio, newline=False).decode("ascii")
    return orjson.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> bytes:
    """A ``mark``: Twilio echoes it once the audio sent before it has played (or at once if idle)."""
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> bytes:
    """A ``clear``: Twilio drops buffered audio and echoes every pending mark."""
    return orjson.dumps({"event": "clear", "streamSid": stream_sid})


@dataclass(frozen=True, slots=True)
class OutMedia:
    stream_sid: str
    payload: bytes
    event: Literal["media"] = "media"


@dataclass(frozen=True, slots=True)
class OutMark:
    stream_sid: str
    name: str
    event: Literal["mark"] = "mark"


@dataclass(frozen=True, slots=True)
class OutClear:
    stream_sid: str
    event: Literal["clear"] = "clear"


OutboundEvent = OutMedia | OutMark | OutClear


def parse_outbound(data: str | bytes) -> OutboundEvent:
    """Parse one server → Twilio message (what the simulated caller receives)."""
    msg = _load(data)
    event = msg.get("event")
    stream_sid = _str(msg, "streamSid")
    if event == "media":
        return OutMedia(stream_sid=stream_sid, payload=_payload(_obj(msg, "media")))
    if event == "mark":
        return OutMark(stream_sid=stream_sid, name=_str(_obj(msg, "mark"), "name", max_len=MAX_MARK_NAME_LENGTH))
    if event == "clear":
        return OutClear(stream_sid=stream_sid)
    raise WireError(f"unknown outbound event {event!r:.40}")


# --- inbound builders (for the simulated caller and tests) --------------------------------------------


def connected_message() -> bytes:
    return orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    custom_parameters: Mapping[str, str],
    sequence_number: int = 1,
) -> bytes:
    return orjson.dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": dict(custom_parameters),
            },
            "streamSid": stream_sid,
        }
    )


def inbound_media_message(
    *, stream_sid: str, sequence_number: int, chunk: int, timestamp_ms: int, audio: bytes
) -> bytes:
    payload = binascii.b2a_base64(audio, newline=False).decode("ascii")
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms), "payload": payload},
            "streamSid": stream_sid,
        }
    )


def inbound_mark_message(*, stream_sid: str, sequence_number: int, name: str) -> bytes:
    return orjson.dumps(
        {"event": "mark", "sequenceNumber": str(sequence_number), "streamSid": stream_sid, "mark": {"name": name}}
    )


def dtmf_message(*, stream_sid: str, sequence_number: int, digit: str) -> bytes:
    return orjson.dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def stop_message(*, stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> bytes:
    return orjson.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )
