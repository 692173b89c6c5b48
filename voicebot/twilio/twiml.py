"""TwiML responses for the voice webhook (https://www.twilio.com/docs/voice/twiml), built with ElementTree
so every attribute and text is escaped."""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree.ElementTree import Element, SubElement, tostring

CONTENT_TYPE = "text/xml"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def _render(response: Element) -> bytes:
    body: bytes = tostring(response, encoding="utf-8", xml_declaration=False)
    return _DECLARATION + body


def connect_stream(url: str, parameters: Mapping[str, str]) -> bytes:
    """``<Connect><Stream url>`` with ``<Parameter>``s: a bidirectional Media Stream (no query strings allowed)."""
    response = Element("Response")
    stream = SubElement(SubElement(response, "Connect"), "Stream", url=url)
    for name, value in parameters.items():
        SubElement(stream, "Parameter", name=name, value=value)
    return _render(response)


def say_and_hang_up(text: str) -> bytes:
    """A polite spoken refusal, then the end of the call."""
    response = Element("Response")
    SubElement(response, "Say").text = text
    SubElement(response, "Hangup")
    return _render(response)


def dial(number: str) -> str:
    """Redirect a live call to ``number`` (used through the REST API's ``Twiml`` parameter)."""
    response = Element("Response")
    SubElement(response, "Dial").text = number
    return _render(response).decode()


def hang_up() -> str:
    response = Element("Response")
    SubElement(response, "Hangup")
    return _render(response).decode()
