"""Twilio signatures (checked against the twilio package's RequestValidator) and stream tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from voicebot.twilio.security import TOKEN_TTL_S, StreamTokens, TokenError, twilio_signature, validate_twilio_signature

TOKEN = "12345678901234567890123456789012"
WEBHOOK_PARAMS = {"CallSid": "CA123", "AccountSid": "AC123", "From": "+15551230000", "To": "+15559870000"}


def test_webhook_signature_matches_twilio_library() -> None:
    url = "https://bot.example.com/voice"
    assert twilio_signature(TOKEN, url, WEBHOOK_PARAMS) == RequestValidator(TOKEN).compute_signature(
        url, WEBHOOK_PARAMS
    )


def test_websocket_handshake_signature_matches_twilio_library() -> None:
    url = "wss://bot.example.com/media"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert twilio_signature(TOKEN, url, {}) == signature
    assert validate_twilio_signature(TOKEN, url, {}, signature)


@pytest.mark.parametrize(
    ("signed_url", "checked_url"),
    [
        ("https://bot.example.com:443/voice", "https://bot.example.com/voice"),
        ("https://bot.example.com/voice", "https://bot.example.com:443/voice"),
    ],
)
def test_default_port_variants_validate_like_twilio(signed_url: str, checked_url: str) -> None:
    signature = twilio_signature(TOKEN, signed_url, WEBHOOK_PARAMS)
    assert RequestValidator(TOKEN).validate(checked_url, WEBHOOK_PARAMS, signature)
    assert validate_twilio_signature(TOKEN, checked_url, WEBHOOK_PARAMS, signature)


def test_wss_default_port_variant_is_also_accepted() -> None:
    # twilio 9.13's RequestValidator only adds/removes ports for http(s); we do the same for ws(s), since the
    # handshake is signed on the <Stream url> as written, with or without :443.
    signature = twilio_signature(TOKEN, "wss://bot.example.com:443/media", {})
    assert not RequestValidator(TOKEN).validate("wss://bot.example.com/media", {}, signature)
    assert validate_twilio_signature(TOKEN, "wss://bot.example.com/media", {}, signature)


def test_tampered_or_missing_signature_is_invalid() -> None:
    url = "https://bot.example.com/voice"
    signature = twilio_signature(TOKEN, url, WEBHOOK_PARAMS)
    assert not validate_twilio_signature(TOKEN, url, {**WEBHOOK_PARAMS, "From": "+1999"}, signature)
    assert not validate_twilio_signature(TOKEN, "https://evil.example.com/voice", WEBHOOK_PARAMS, signature)
    assert not validate_twilio_signature("another-token", url, WEBHOOK_PARAMS, signature)
    assert not validate_twilio_signature(TOKEN, url, WEBHOOK_PARAMS, None)
    assert not validate_twilio_signature(TOKEN, url, WEBHOOK_PARAMS, "")


@given(
    params=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=30), max_size=6),
    path=st.text(alphabet="abcdefghij/-_", max_size=20),
)
def test_signature_agrees_with_twilio_library_property(params: dict[str, str], path: str) -> None:
    url = f"https://bot.example.com/{path}"
    expected = RequestValidator(TOKEN).compute_signature(url, params)
    assert twilio_signature(TOKEN, url, params) == expected
    assert validate_twilio_signature(TOKEN, url, params, expected) == RequestValidator(TOKEN).validate(
        url, params, expected
    )


NOW = 1_800_000_000.0


def test_token_redeems_once_for_its_call() -> None:
    tokens = StreamTokens(b"secret")
    token = tokens.mint("CA1", now=NOW)
    tokens.redeem(token, "CA1", now=NOW + 1)
    with pytest.raises(TokenError, match="already used"):
        tokens.redeem(token, "CA1", now=NOW + 2)


def test_token_is_bound_to_the_call_sid() -> None:
    tokens = StreamTokens(b"secret")
    token = tokens.mint("CA1", now=NOW)
    with pytest.raises(TokenError, match="does not match"):
        tokens.redeem(token, "CA2", now=NOW)


def test_token_expires() -> None:
    tokens = StreamTokens(b"secret")
    token = tokens.mint("CA1", now=NOW)
    with pytest.raises(TokenError, match="expired"):
        tokens.redeem(token, "CA1", now=NOW + TOKEN_TTL_S + 1)


def test_token_from_another_secret_is_forged() -> None:
    token = StreamTokens(b"attacker").mint("CA1", now=NOW)
    with pytest.raises(TokenError, match="does not match"):
        StreamTokens(b"secret").redeem(token, "CA1", now=NOW)


def test_token_with_altered_expiry_is_forged() -> None:
    tokens = StreamTokens(b"secret")
    prefix, expires, nonce, mac = tokens.mint("CA1", now=NOW).split(".")
    forged = ".".join([prefix, str(int(expires) + 3600), nonce, mac])
    with pytest.raises(TokenError, match="does not match"):
        tokens.redeem(forged, "CA1", now=NOW)


@pytest.mark.parametrize("token", [None, "", "garbage", "vbt1.x.y.z", "vbt1.123.!!.??", "vbt2.1.a.b", "vbt1.1.a"])
def test_missing_or_malformed_token(token: str | None) -> None:
    with pytest.raises(TokenError, match=r"missing|malformed|does not match"):
        StreamTokens(b"secret").redeem(token, "CA1", now=NOW)


def test_token_error_never_echoes_the_token() -> None:
    tokens = StreamTokens(b"secret")
    token = tokens.mint("CA1", now=NOW)
    for call_sid, now in (("CA2", NOW), ("CA1", NOW + 10_000)):
        with pytest.raises(TokenError) as info:
            tokens.redeem(token, call_sid, now=now)
        assert token not in str(info.value)


def test_spent_nonces_are_purged_after_expiry() -> None:
    tokens = StreamTokens(b"secret", ttl_s=10)
    for i in range(100):
        tokens.redeem(tokens.mint(f"CA{i}", now=NOW), f"CA{i}", now=NOW)
    later = NOW + 100
    tokens.redeem(tokens.mint("CAlast", now=later), "CAlast", now=later)
    assert len(tokens._spent) == 1
