"""Secrets never reach a log line: API keys, the Twilio auth token, the token secret and stream tokens, including
inside exception messages and tracebacks, from our loggers and from third-party (stdlib) ones."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests.conftest import AUTH_TOKEN
from tests.world import World
from voicebot.caller import HangUp, Say, WaitForBotAudio, WaitForBotSilence
from voicebot.logs import REDACTED, configure_logging

DEEPGRAM_KEY = "dg-secret-4f1c2a9e7b"
OPENAI_KEY = "sk-secret-8d3e6b1f0a"
TOKEN_SECRET = "token-secret-5e2d9c7a"
WAIT_S = 15.0


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", [DEEPGRAM_KEY, OPENAI_KEY, AUTH_TOKEN, TOKEN_SECRET], stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def _assert_clean(text: str) -> None:
    for secret in (DEEPGRAM_KEY, OPENAI_KEY, AUTH_TOKEN, TOKEN_SECRET):
        assert secret not in text
    assert "vbt1." not in text


def test_secrets_in_exception_messages_and_tracebacks_are_redacted(captured: io.StringIO) -> None:
    log = structlog.get_logger("voicebot.test")
    try:
        raise RuntimeError(f"provider said: bad key {OPENAI_KEY} for token vbt1.123.abc_DEF.xyz-9")
    except RuntimeError:
        log.exception("provider_failed", detail={"headers": {"Authorization": f"Token {DEEPGRAM_KEY}"}})
    logging.getLogger("aiohttp.server").error("handler failed with %s", AUTH_TOKEN, exc_info=ValueError(TOKEN_SECRET))
    text = captured.getvalue()
    assert "provider_failed" in text
    assert "RuntimeError" in text  # the traceback is there, only the secrets are gone
    assert "handler failed with" in text
    assert text.count(REDACTED) >= 5
    _assert_clean(text)


def test_console_renderer_redacts_too() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", [OPENAI_KEY], stream=stream)
    try:
        structlog.get_logger("voicebot.test").warning("oops", key=OPENAI_KEY)
    finally:
        logging.getLogger().handlers.clear()
    assert "oops" in stream.getvalue()
    assert OPENAI_KEY not in stream.getvalue()


async def test_a_whole_call_logs_no_secret(start_world: Any, captured: io.StringIO) -> None:
    world: World = await start_world(
        deepgram_api_key=DEEPGRAM_KEY, openai_api_key=OPENAI_KEY, token_secret=TOKEN_SECRET
    )
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("From nine to six.")
    result = await world.call(
        [
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=400),
            Say("hours"),
            WaitForBotAudio(WAIT_S),
            WaitForBotSilence(WAIT_S, quiet_ms=400),
            HangUp(),
        ]
    )
    assert result.ok, result.format_timeline()
    # The stream token travelled in the TwiML and the start message; it must not be logged either.
    token = result.custom_parameters["token"]
    text = captured.getvalue()
    assert '"call_started"' in text
    assert '"turn_completed"' in text
    assert token not in text
    _assert_clean(text)


async def test_refused_provider_errors_log_no_secret(start_world: Any, captured: io.StringIO) -> None:
    world: World = await start_world(deepgram_api_key=DEEPGRAM_KEY, openai_api_key=OPENAI_KEY)
    world.emu.stt.faults.error_status = 401  # Deepgram refuses the bot's key
    result = await world.call([WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400)], timeout=20)
    text = captured.getvalue()
    assert '"stt_unavailable"' in text, result.format_timeline()
    _assert_clean(text)
