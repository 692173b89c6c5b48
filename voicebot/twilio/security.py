"""Request signatures (Twilio's ``X-Twilio-Signature``) and per-call stream tokens, sans-I/O.

Twilio signs a request as ``base64(HMAC-SHA1(auth_token, url + concat(sorted(key + value))))``
(https://www.twilio.com/docs/usage/security#validating-requests). For the Media Streams WebSocket upgrade the URL is
the public ``wss://`` URL exactly as written in ``<Stream url>``, with no params.

Stream tokens bind a ``<Connect><Stream>`` to the CallSid that the signed webhook announced. ``<Stream>`` forbids
query strings, so the token travels as a ``<Parameter>`` and arrives in ``start.customParameters``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from voicebot.logs import TOKEN_PREFIX  # one definition: the log redactor recognises tokens by it

TOKEN_TTL_S = 60.0
"""Twilio opens the stream within a second or two of fetching the TwiML; a minute leaves room for slow setups."""
_NONCE_BYTES = 12


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Compute Twilio's request signature for ``url`` and form ``params``."""
    data = url + "".join(key + value for key, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    """The URL as given, plus with the scheme's default port added or removed (Twilio's validator tries both)."""
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    variants = [url]
    if default is None or not parts.hostname:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def validate_twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str] | None, signature: str | None
) -> bool:
    """True if ``signature`` is Twilio's signature of this request (constant-time comparison)."""
    if not signature:
        return False
    given = signature.encode()
    return any(
        hmac.compare_digest(twilio_signature(auth_token, variant, params).encode(), given)
        for variant in _url_variants(url)
    )


class TokenError(ValueError):
    """A stream token that is missing, malformed, forged, expired, reused or for another call."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Mints and checks single-use, short-lived, HMAC-SHA256 stream tokens bound to a CallSid.

    Single use is enforced per process (a set of spent nonces, purged when they expire): with ``--workers N``
    a replayed token could reach another worker, but it still has to be replayed within its lifetime and for
    the same CallSid, whose real stream Twilio opens first.
    """

    def __init__(self, secret: bytes, ttl_s: float = TOKEN_TTL_S) -> None:
        self._key = hmac.new(secret, b"voicebot stream token v1", hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._spent: dict[str, float] = {}

    def _sign(self, call_sid: str, expires: int, nonce: str) -> str:
        msg = f"{TOKEN_PREFIX}|{call_sid}|{expires}|{nonce}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    def mint(self, call_sid: str, now: float | None = None) -> str:
        """A new token for ``call_sid`` valid for ``ttl_s`` seconds (wall clock: tokens may cross nodes)."""
        now = time.time() if now is None else now
        expires = int(now + self._ttl_s)
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        return f"{TOKEN_PREFIX}.{expires}.{nonce}.{self._sign(call_sid, expires, nonce)}"

    def redeem(self, token: str | None, call_sid: str, now: float | None = None) -> None:
        """Accept ``token`` for ``call_sid`` exactly once, or raise TokenError saying why (never echoing it)."""
        now = time.time() if now is None else now
        if not token:
            raise TokenError("missing stream token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not parts[1].isdigit():
            raise TokenError("malformed stream token")
        _, expires_text, nonce, mac = parts
        expires = int(expires_text)
        try:
            _unb64(nonce)
            _unb64(mac)
        except (binascii.Error, ValueError):
            raise TokenError("malformed stream token") from None
        if not hmac.compare_digest(self._sign(call_sid, expires, nonce), mac):
            raise TokenError("stream token signature does not match this call")
        if now > expires:
            raise TokenError("stream token expired")
        self._purge(now)
        if nonce in self._spent:
            raise TokenError("stream token already used")
        self._spent[nonce] = expires

    def _purge(self, now: float) -> None:
        if len(self._spent) > 64:
            for nonce in [n for n, exp in self._spent.items() if exp < now]:
                del self._spent[nonce]
