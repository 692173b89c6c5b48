"""Contract tests: the real deepgram-sdk REST TTS client against the Deepgram TTS emulator over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import httpx
import pytest
from deepgram.core.api_error import ApiError
from deepgram.errors import BadRequestError

from tests.emulator_fixtures import EVENT_TIMEOUT_S, SdkClients, sdk_clients
from voicebot.audio import BYTES_PER_MS, MULAW_SILENCE, ulaw_rms
from voicebot.emulators import Emulators, running_emulators, synthesize
from voicebot.emulators.config import DEFAULT_MS_PER_CHAR

MODEL = "aura-2-thalia-en"
SPEAK_KW: dict[str, Any] = {"model": MODEL, "encoding": "mulaw", "sample_rate": 8000, "container": "none"}
TEXT = "Hello from the bot."
LONG_TEXT = "This sentence is long enough that a slow stream takes a good while to deliver it all. " * 3
SLOW_BYTES_PER_SECOND = 8000.0
"""Real time: long enough streams for a client to abort in the middle."""
PACED_BYTES_PER_SECOND = 40000.0
PACING_TOLERANCE = 0.8
"""A paced stream may not finish faster than this share of its nominal duration."""
SLOW_TTFB_MS = 300.0
MAX_SILENCE_RUN = 8
"""Longest run of 0xFF allowed in synthesized audio (one zero crossing, not a gap)."""
SPEECH_RMS = 500.0


async def speak(sdk: SdkClients, text: str, **overrides: Any) -> bytes:
    chunks = [c async for c in sdk.deepgram().speak.v1.audio.generate(text=text, **{**SPEAK_KW, **overrides})]
    return b"".join(chunks)


def test_synthesize_is_deterministic_distinct_and_sized_by_text() -> None:
    first = synthesize(TEXT, MODEL)
    assert synthesize(TEXT, MODEL) == first
    assert synthesize(TEXT + " ", MODEL) != first[: len(synthesize(TEXT + " ", MODEL))]
    assert synthesize("Hello from the bot!", MODEL) != first  # same length, different text
    assert synthesize(TEXT, "aura-2-other-en") != first
    assert len(first) == round(len(TEXT) * DEFAULT_MS_PER_CHAR * BYTES_PER_MS)
    assert len(synthesize(TEXT, MODEL, ms_per_char=30.0)) == len(first) // 2


@pytest.mark.parametrize("text", [TEXT, "Okay.", LONG_TEXT, "x"])
def test_synthesized_audio_is_voiced_without_silence_gaps(text: str) -> None:
    audio = synthesize(text, MODEL)
    longest = max((len(m.group()) for m in re.finditer(bytes([MULAW_SILENCE]) + b"+", audio)), default=0)
    assert longest <= MAX_SILENCE_RUN
    frames = [audio[i : i + 160] for i in range(0, len(audio) - 159, 160)]
    assert min(ulaw_rms(f) for f in frames) >= SPEECH_RMS  # every 20 ms frame trips an energy VAD


async def test_stream_bytes_equal_synthesize_and_headers(emu: Emulators, sdk: SdkClients) -> None:
    assert await speak(sdk, TEXT) == synthesize(TEXT, MODEL)

    raw_call = sdk.deepgram().speak.v1.audio.with_raw_response.generate(text=TEXT, **SPEAK_KW)
    async with raw_call as raw:
        assert raw.headers["content-type"] == "audio/mulaw"
        assert raw.headers["dg-model-name"] == MODEL
        assert raw.headers["dg-char-count"] == str(len(TEXT))
        request_id = raw.headers["dg-request-id"]
        body = b"".join([c async for c in raw.data])
    assert body == synthesize(TEXT, MODEL)
    complete = await emu.wait_for_kind("tts", "complete", EVENT_TIMEOUT_S, request_id=request_id)
    assert complete.data["bytes"] == len(body)
    request = emu.select("tts", "request")[-1]
    assert request.data == {"request_id": request_id, "text": TEXT, "model": MODEL}


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"container": "wav"}, "container"),
        ({"encoding": "linear16"}, "encoding"),
        ({"sample_rate": 16000}, "sample_rate"),
    ],
)
async def test_wrong_format_is_a_bad_request(
    emu: Emulators, sdk: SdkClients, override: dict[str, Any], problem: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        await speak(sdk, TEXT, **override)
    body = caught.value.body
    assert body["err_code"] == "INVALID_QUERY_PARAMETER"
    assert problem in body["err_msg"]
    assert body["request_id"]


async def test_empty_text_is_a_bad_request(emu: Emulators, sdk: SdkClients) -> None:
    with pytest.raises(BadRequestError) as caught:
        await speak(sdk, "  ")
    assert "text" in caught.value.body["err_msg"]


async def test_wrong_key_is_401(emu: Emulators, sdk: SdkClients) -> None:
    agen = sdk.deepgram(api_key="wrong").speak.v1.audio.generate(text=TEXT, **SPEAK_KW)
    with pytest.raises(ApiError) as caught:
        await anext(agen)
    assert caught.value.status_code == 401


async def test_leaving_aclosing_early_is_an_abort(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    agen = sdk.deepgram().speak.v1.audio.generate(text=LONG_TEXT, **SPEAK_KW)
    async with contextlib.aclosing(agen):
        first = await anext(agen)
    assert first
    abort = await emu.wait_for_kind("tts", "abort", EVENT_TIMEOUT_S)
    assert 0 < abort.data["bytes_sent"] < len(synthesize(LONG_TEXT, MODEL))
    assert emu.select("tts", "complete") == []


async def test_cancelling_the_consumer_is_an_abort(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    got_audio = asyncio.Event()

    async def consume() -> None:
        async for _ in sdk.deepgram().speak.v1.audio.generate(text=LONG_TEXT, **SPEAK_KW):
            got_audio.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), EVENT_TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await emu.wait_for_kind("tts", "abort", EVENT_TIMEOUT_S)


async def test_abort_while_waiting_for_first_byte_is_logged(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.faults.stall_s = float("inf")
    task = asyncio.create_task(speak(sdk, TEXT))
    await emu.wait_for_kind("tts", "request", EVENT_TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    abort = await emu.wait_for_kind("tts", "abort", EVENT_TIMEOUT_S)
    assert abort.data["bytes_sent"] == 0


async def test_ttfb_override_makes_one_segment_slowest(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.ttfb_overrides["segment one"] = SLOW_TTFB_MS
    slow_text, fast_text = "This is segment one.", "This is segment two."
    slow, fast = await asyncio.gather(speak(sdk, slow_text), speak(sdk, fast_text))
    assert slow == synthesize(slow_text, MODEL)
    assert fast == synthesize(fast_text, MODEL)
    requests = {e.data["text"]: e for e in emu.select("tts", "request")}
    first_bytes = {e.data["request_id"]: e for e in emu.select("tts", "first_byte")}
    slow_req, fast_req = requests[slow_text], requests[fast_text]
    slow_ttfb = first_bytes[slow_req.data["request_id"]].t - slow_req.t
    fast_ttfb = first_bytes[fast_req.data["request_id"]].t - fast_req.t
    assert slow_ttfb >= SLOW_TTFB_MS / 1000
    assert fast_ttfb < slow_ttfb


async def test_byte_rate_paces_the_stream(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.bytes_per_second = PACED_BYTES_PER_SECOND
    audio = await speak(sdk, TEXT)
    request = emu.select("tts", "request")[-1]
    complete = emu.select("tts", "complete")[-1]
    nominal = len(audio) / PACED_BYTES_PER_SECOND
    assert complete.t - request.t >= PACING_TOLERANCE * nominal


async def test_injected_429_then_recovery(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.faults.fail_next = 1
    emu.tts.faults.fail_status = 429
    emu.tts.faults.retry_after_s = 1
    with pytest.raises(ApiError) as caught:
        await speak(sdk, TEXT)
    assert caught.value.status_code == 429
    assert await speak(sdk, TEXT) == synthesize(TEXT, MODEL)


async def test_drop_after_bytes_breaks_the_stream(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.faults.drop_after_bytes = 1000
    emu.tts.config.chunk_bytes = 400
    received = bytearray()

    async def collect() -> None:
        async for chunk in sdk.deepgram().speak.v1.audio.generate(text=LONG_TEXT, **SPEAK_KW):
            received.extend(chunk)

    # The SDK does not translate this: httpx's error surfaces from the iteration.
    with pytest.raises(httpx.RemoteProtocolError):
        await collect()
    drop = await emu.wait_for_kind("tts", "drop", EVENT_TIMEOUT_S)
    assert drop.data["bytes_sent"] == 1000
    assert bytes(received) == synthesize(LONG_TEXT, MODEL)[: len(received)]


async def test_default_config_has_realistic_latency() -> None:
    async with running_emulators() as emu, sdk_clients(emu) as sdk:
        audio = await speak(sdk, "Hi.")
        request = emu.select("tts", "request")[-1]
        first = emu.select("tts", "first_byte")[-1]
    assert audio == synthesize("Hi.", MODEL)
    assert first.t - request.t >= emu.config.tts.ttfb_ms / 1000
