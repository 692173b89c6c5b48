"""The webhook half of a simulated call: Twilio's form parameters, the TwiML reply, and where the stream is."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def webhook_params(*, call_sid: str, account_sid: str, from_number: str, to_number: str) -> dict[str, str]:
    """The form parameters Twilio POSTs to the voice webhook of an incoming call (the ones a bot may use)."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "Caller": from_number,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }


@dataclass(frozen=True, slots=True)
class StreamTwiml:
    """``<Connect><Stream url>`` with its ``<Parameter>`` children."""

    url: str
    parameters: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What real Twilio would refuse about this stream URL (errors 31922 and 31920)."""
        parts = urlsplit(self.url)
        out = []
        if parts.scheme != "wss":
            out.append(f"<Stream url> must be wss:// (Twilio error 31922, 'URL Schema Not Supported'), got {self.url}")
        if parts.query:
            out.append(f"<Stream url> must not have a query string (Twilio error 31920): {self.url}")
        return out


@dataclass(frozen=True, slots=True)
class RejectTwiml:
    """TwiML that turns the call away: ``<Say>`` text and/or ``<Hangup/>``/``<Reject/>``."""

    say_text: str


def parse_twiml(text: str) -> StreamTwiml | RejectTwiml:
    """Read the webhook's TwiML; ValueError if it is neither a stream nor a rejection."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"TwiML is not XML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, expected <Response>")
    stream = root.find("./Connect/Stream")
    if stream is not None:
        url = stream.get("url")
        if not url:
            raise ValueError("<Stream> has no url")
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return StreamTwiml(url, {k: v for k, v in params.items() if k})
    says = [" ".join("".join(say.itertext()).split()) for say in root.iter("Say")]
    if says or root.find("Hangup") is not None or root.find("Reject") is not None:
        return RejectTwiml(" ".join(says))
    raise ValueError("TwiML has neither <Connect><Stream> nor <Say>/<Hangup>/<Reject>")


def _origin(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(parts.scheme)
    return (parts.hostname or "", parts.port or default)


def reachable_stream_url(stream_url: str, public_url: str, server_url: str) -> str:
    """Where to connect for ``stream_url``: the server's real address when the URL names the public host.

    Twilio reaches the public ``wss://`` host (a tunnel or TLS proxy); offline, the caller goes straight to the
    server, over ``ws://`` when the server speaks plain HTTP.
    """
    if _origin(stream_url) != _origin(public_url):
        return stream_url
    server = urlsplit(server_url)
    stream = urlsplit(stream_url)
    scheme = "wss" if server.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, server.netloc, stream.path, stream.query, ""))
