"""Outbound calls: the per-call context carried in the signed webhook URL, and answering-machine verdicts.

``python -m voicebot twilio call +1NNN --context "remind Ana about her 3 pm appointment"`` puts the context in the
call's ``Url`` (``/voice?context=<base64url>``). Twilio signs that URL, query included, so the bot trusts the
context only from a webhook whose ``X-Twilio-Signature`` checked out; without an auth token nothing is signed and
the context is ignored. The webhook hands it to the stream as a ``<Parameter>`` together with an HMAC seal bound
to the CallSid, so a ``start`` message cannot bring a context the signed webhook did not announce (this works
across worker processes, which share the seal's key like the stream tokens').
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

CONTEXT_PARAM = "context"
SEAL_PARAM = "context_seal"
MAX_CONTEXT_CHARS = 500
"""Enough for a reminder or a few facts; keeps the URL well under Twilio's limits."""
MACHINE_VERDICTS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"})


class ContextError(ValueError):
    """A context that is too long, not text, or badly encoded."""


def encode_context(text: str) -> str:
    text = text.strip()
    if not text:
        raise ContextError("the context is empty")
    if len(text) > MAX_CONTEXT_CHARS:
        raise ContextError(f"the context has {len(text)} characters; the limit is {MAX_CONTEXT_CHARS}")
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_context(value: str) -> str:
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ContextError("the context is not valid base64url UTF-8") from None
    if not text.strip() or len(text) > MAX_CONTEXT_CHARS:
        raise ContextError("the context is empty or too long")
    return text


def voice_url(public_url: str, context: str | None = None) -> str:
    """The ``Url`` of an outbound call: ``PUBLIC_URL/voice``, with the encoded context if any."""
    url = public_url.rstrip("/") + "/voice"
    return f"{url}?{CONTEXT_PARAM}={encode_context(context)}" if context else url


def context_from_query(query: str) -> str | None:
    """The context of a webhook's (signed) query string; None if there is none; ContextError if it is bad."""
    values = parse_qs(query, keep_blank_values=True).get(CONTEXT_PARAM)
    if not values:
        return None
    if len(values) > 1:
        raise ContextError("more than one context")
    return decode_context(values[0])


def context_from_url(url: str) -> str | None:
    return context_from_query(urlsplit(url).query)


def is_machine(answered_by: str | None) -> bool:
    """True for AMD's machine and fax verdicts (``human`` and ``unknown`` get the conversation)."""
    return answered_by in MACHINE_VERDICTS


class ContextSeal:
    """HMAC-SHA256 over (CallSid, context), keyed like the stream tokens."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"voicebot call context v1", hashlib.sha256).digest()

    def seal(self, call_sid: str, context: str) -> str:
        mac = hmac.new(self._key, f"{call_sid}\n{context}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def parameters(self, call_sid: str, context: str | None) -> dict[str, str]:
        """The ``<Parameter>``s that carry ``context`` to the stream (none without a context)."""
        if context is None:
            return {}
        return {CONTEXT_PARAM: context, SEAL_PARAM: self.seal(call_sid, context)}

    def open(self, call_sid: str, custom_parameters: Mapping[str, str]) -> str | None:
        """The context of a ``start`` message if its seal is valid for this call; None if it has none.

        Raises ContextError for a context without a valid seal (a forged or replayed parameter).
        """
        context = custom_parameters.get(CONTEXT_PARAM)
        if context is None:
            return None
        seal = custom_parameters.get(SEAL_PARAM, "")
        if not hmac.compare_digest(self.seal(call_sid, context).encode(), seal.encode()):
            raise ContextError("the call context's seal does not match this call")
        return context
