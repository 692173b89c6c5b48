"""The voices against their emulators: the real deepgram-sdk ``speak.v1`` socket (contract), our ElevenLabs and
Cartesia clients (aiohttp, no vendor SDK), the per-call voices' guarantees, and the voice settings."""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog.testing
from deepgram.core.api_error import ApiError
from deepgram.speak.v1.types import SpeakV1Text, SpeakV1Warning

from tests.emulator_fixtures import DEEPGRAM_KEY, EVENT_TIMEOUT_S, SdkClients
from tests.voices import CARTESIA_KEY, ELEVENLABS_KEY, VOICE_ID
from voicebot.emulators import Emulators, synthesize
from voicebot.emulators.deepgram_speak import FLUSH_LIMIT
from voicebot.errors import ProviderError
from voicebot.providers import deepgram_tts_ws
from voicebot.providers.cartesia_tts import CartesiaTts
from voicebot.providers.deepgram_socket import opened
from voicebot.providers.deepgram_tts import DeepgramTts
from voicebot.providers.deepgram_tts_ws import DeepgramSpeakCall, DeepgramSpeakVoice
from voicebot.providers.elevenlabs_tts import ElevenLabsTts
from voicebot.providers.pools import PoolUse, aiohttp_session
from voicebot.settings import Settings, SettingsError, load_settings

MODEL = "aura-2-thalia-en"
ONE = "Hello from the socket."
TWO = "And a second sentence."
SLOW_BYTES_PER_SECOND = 8000.0


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


# --- Deepgram's speak socket through the real SDK ----------------------------------------------------------------


async def receive_until(conn: Any, kind: str) -> tuple[bytes, list[Any]]:
    """Audio and messages up to and including the first message whose ``type`` is ``kind``."""
    audio, messages = bytearray(), []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            message = await conn.recv()
            if isinstance(message, bytes):
                audio += message
                continue
            messages.append(message)
            if getattr(message, "type", None) == kind:
                return bytes(audio), messages


def speak_socket(sdk: SdkClients, api_key: str = DEEPGRAM_KEY) -> Any:
    return sdk.deepgram(api_key).speak.v1.connect(model=MODEL, encoding="mulaw", sample_rate=8000)


async def test_sdk_speak_flush_gives_the_texts_audio_in_order_then_flushed(emu: Emulators, sdk: SdkClients) -> None:
    async with speak_socket(sdk) as conn:
        await conn.send_text(SpeakV1Text(text=ONE))
        await conn.send_text(SpeakV1Text(text=TWO))
        await conn.send_flush()
        audio, messages = await receive_until(conn, "Flushed")
    assert audio == synthesize(ONE, MODEL) + synthesize(TWO, MODEL)
    assert [m.type for m in messages] == ["Metadata", "Flushed"]
    assert messages[-1].sequence_id == 1
    requests = emu.select("tts", "request")
    assert [(e.data["text"], e.data["model"]) for e in requests] == [(ONE, MODEL), (TWO, MODEL)]


async def test_sdk_clear_stops_the_audio_and_answers_cleared(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    async with speak_socket(sdk) as conn:
        await conn.send_text(SpeakV1Text(text=ONE * 5))
        await conn.send_flush()
        await emu.wait_for_kind("tts", "first_byte", EVENT_TIMEOUT_S)
        await conn.send_clear()
        audio, messages = await receive_until(conn, "Cleared")
        # PROVIDERS-2.md warns that a Cleared can parse as the Flushed class; with deepgram-sdk 7.17.0 it does
        # (pinned: the bot dispatches on ``type``, never on the class).
        assert messages[-1].type == "Cleared"
        assert type(messages[-1]).__name__ == "SpeakV1Flushed"
        # After Cleared, the socket serves the next text at once and nothing of the cleared one.
        await conn.send_text(SpeakV1Text(text=TWO))
        await conn.send_flush()
        after, _ = await receive_until(conn, "Flushed")
    assert 0 < len(audio) < len(synthesize(ONE * 5, MODEL))
    assert after == synthesize(TWO, MODEL)
    assert emu.select("tts", "abort")


def test_sdk_speak_socket_takes_no_container_parameter(sdk: SdkClients) -> None:
    """PROVIDERS-2.md §1 says to pass container=none on the socket; deepgram-sdk 7.17.0's connect() has no such
    parameter (the socket sends raw audio; the emulator treats a missing container as none). Pinned."""
    parameters = inspect.signature(sdk.deepgram().speak.v1.connect).parameters
    assert "container" not in parameters and {"encoding", "sample_rate", "model"} <= set(parameters)


async def test_sdk_flush_over_the_limit_gets_a_warning(emu: Emulators, sdk: SdkClients) -> None:
    async with speak_socket(sdk) as conn:
        for _ in range(FLUSH_LIMIT + 1):
            await conn.send_flush()
        _, messages = await receive_until(conn, "Warning")
    warning = messages[-1]
    assert warning.code == "FLUSH_LIMIT_EXCEEDED" and "60 seconds" in warning.description


async def test_sdk_speak_socket_with_a_wrong_key_is_refused_401(emu: Emulators, sdk: SdkClients) -> None:
    with pytest.raises(ApiError) as info:
        async with speak_socket(sdk, api_key="wrong") as conn:
            await opened(conn)  # the handshake (the SDK's custom-transport hook opens lazily)
    assert info.value.status_code == 401


async def test_sdk_rest_text_over_2000_characters_is_413(emu: Emulators, sdk: SdkClients) -> None:
    stream = sdk.deepgram().speak.v1.audio.generate(
        text="x" * 2001, model=MODEL, encoding="mulaw", sample_rate=8000, container="none"
    )
    with pytest.raises(ApiError) as info:
        await collect(stream)
    assert info.value.status_code == 413


# --- the Aura socket voice ---------------------------------------------------------------------------------------


def aura_voice(sdk: SdkClients) -> DeepgramSpeakVoice:
    client = sdk.deepgram()
    return DeepgramSpeakVoice(client, DeepgramTts(client, model=MODEL), model=MODEL)


async def test_aura_socket_voice_one_socket_per_call_segments_in_order(emu: Emulators, sdk: SdkClients) -> None:
    async with aura_voice(sdk).open_call() as call:
        turn = call.for_turn()
        async with turn.synthesize(ONE) as first, turn.synthesize(TWO) as second:
            assert await collect(first) == synthesize(ONE, MODEL)
            assert await collect(second) == synthesize(TWO, MODEL)
        async with call.for_turn().synthesize(TWO) as third:
            assert await collect(third) == synthesize(TWO, MODEL)
    assert emu.speak_socket.sockets_opened == 1


async def test_aura_socket_is_replaced_when_idle_past_its_age_limit(
    emu: Emulators, sdk: SdkClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aura_voice(sdk).open_call() as call:
        async with call.for_turn().synthesize(ONE) as chunks:
            assert await collect(chunks) == synthesize(ONE, MODEL)
        monkeypatch.setattr(deepgram_tts_ws, "REPLACE_AFTER_S", 0.0)  # stands in for Deepgram's 60 minutes
        async with call.for_turn().synthesize(TWO) as chunks:
            assert await collect(chunks) == synthesize(TWO, MODEL)
    assert emu.speak_socket.sockets_opened == 2
    closed = await emu.wait_for_kind("tts", "socket_closed", EVENT_TIMEOUT_S)
    assert closed.data["code"] == 1000, "the old socket was closed cleanly"


async def test_aura_socket_failure_puts_the_rest_of_the_turn_on_rest(emu: Emulators, sdk: SdkClients) -> None:
    async with aura_voice(sdk).open_call() as call:
        turn = call.for_turn()
        async with turn.synthesize(ONE) as chunks:
            assert await collect(chunks) == synthesize(ONE, MODEL)
        emu.tts.faults.fail_next = 1  # the next text on the open socket: the socket closes with 1011
        with pytest.raises(ProviderError):
            async with turn.synthesize(TWO) as chunks:
                await collect(chunks)
        rest_before = len([e for e in emu.select("tts", "request") if "transport" not in e.data])
        async with turn.synthesize(TWO) as chunks:  # the bot turn's retry
            assert await collect(chunks) == synthesize(TWO, MODEL)
        rest_requests = [e for e in emu.select("tts", "request") if "transport" not in e.data]
        assert len(rest_requests) == rest_before + 1, "the retry went over REST"
        async with call.for_turn().synthesize(ONE) as chunks:  # the next turn: a new socket
            assert await collect(chunks) == synthesize(ONE, MODEL)
    assert emu.speak_socket.sockets_opened == 2


async def test_aura_socket_barge_in_sends_clear_and_drops_what_follows(emu: Emulators, sdk: SdkClients) -> None:
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    async with aura_voice(sdk).open_call() as call:
        async with call.for_turn().synthesize(ONE * 5) as chunks:
            async for chunk in chunks:
                if chunk:
                    break  # the bot turn is cancelled with audio still coming
        await emu.wait_for_kind("tts", "abort", EVENT_TIMEOUT_S)
        emu.tts.config.bytes_per_second = None
        async with call.for_turn().synthesize(TWO) as chunks:
            assert await collect(chunks) == synthesize(TWO, MODEL)


def test_aura_socket_warnings_are_logged_under_either_field_naming(sdk: SdkClients) -> None:
    speak_call = DeepgramSpeakCall(sdk.deepgram(), DeepgramTts(sdk.deepgram(), model=MODEL), model=MODEL)
    new_style = SpeakV1Warning(type="Warning", description="more than 20 Flush messages", code="FLUSH_LIMIT_EXCEEDED")
    old_style = SimpleNamespace(type="Warning", model_extra={"warn_code": "OLD_CODE", "warn_msg": "old message"})
    with structlog.testing.capture_logs() as logs:
        speak_call._on_message(new_style)
        speak_call._on_message(old_style)
    warnings = [(e["code"], e["description"]) for e in logs if e["event"] == "tts_socket_warning"]
    assert warnings == [("FLUSH_LIMIT_EXCEEDED", "more than 20 Flush messages"), ("OLD_CODE", "old message")]


# --- ElevenLabs (aiohttp, REST streaming) ------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp_session(PoolUse("test", 10)) as session:
        yield session


def elevenlabs(emu: Emulators, http: aiohttp.ClientSession, key: str = ELEVENLABS_KEY) -> ElevenLabsTts:
    return ElevenLabsTts(http, base_url=emu.base_url, api_key=key, voice_id=VOICE_ID, model="eleven_flash_v2_5")


async def test_elevenlabs_streams_ulaw_8000_for_the_voice_and_model(
    emu: Emulators, http: aiohttp.ClientSession
) -> None:
    async with elevenlabs(emu, http).synthesize(ONE) as chunks:
        assert await collect(chunks) == synthesize(ONE, "eleven_flash_v2_5")
    request = emu.select("tts", "request")[-1]
    assert request.data["voice_id"] == VOICE_ID and request.data["model"] == "eleven_flash_v2_5"


@pytest.mark.parametrize(("status", "transient"), [(401, False), (429, True), (500, True)])
async def test_elevenlabs_errors_are_translated(
    emu: Emulators, http: aiohttp.ClientSession, status: int, transient: bool
) -> None:
    key = "wrong" if status == 401 else ELEVENLABS_KEY
    if status != 401:
        emu.tts.faults.fail_next, emu.tts.faults.fail_status = 1, status
    with pytest.raises(ProviderError) as info:
        async with elevenlabs(emu, http, key).synthesize(ONE) as chunks:
            await collect(chunks)
    assert (info.value.status, info.value.transient) == (status, transient)
    assert key not in str(info.value)


async def test_elevenlabs_multi_context_socket_closes_1008_on_a_sixth_context(
    emu: Emulators, http: aiohttp.ClientSession
) -> None:
    url = emu.ws_url + f"/v1/text-to-speech/{VOICE_ID}/multi-stream-input"
    query = {"model_id": "eleven_flash_v2_5", "output_format": "ulaw_8000"}
    async with http.ws_connect(url, params=query, headers={"xi-api-key": ELEVENLABS_KEY}) as ws:
        await ws.send_json({"text": " ", "context_id": "c0"})
        await ws.send_json({"text": ONE, "context_id": "c0", "flush": True})
        audio = bytearray()
        while len(audio) < len(synthesize(ONE, "eleven_flash_v2_5")):
            message = await ws.receive_json(timeout=EVENT_TIMEOUT_S)
            assert message["contextId"] == "c0"
            audio += base64.b64decode(message["audio"])
        assert bytes(audio) == synthesize(ONE, "eleven_flash_v2_5")
        await ws.send_json({"context_id": "c0", "close_context": True})
        assert (await ws.receive_json(timeout=EVENT_TIMEOUT_S)) == {"isFinal": True, "contextId": "c0"}
        for i in range(1, 6):  # five open contexts: the limit
            await ws.send_json({"text": " ", "context_id": f"c{i}"})
        await ws.send_json({"text": " ", "context_id": "c6"})
        closing = await ws.receive(timeout=EVENT_TIMEOUT_S)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert (closing.data, closing.extra) == (1008, "max_active_conversations")


# --- Cartesia (aiohttp, WebSocket contexts) ----------------------------------------------------------------------


def cartesia(emu: Emulators, http: aiohttp.ClientSession, key: str = CARTESIA_KEY) -> CartesiaTts:
    return CartesiaTts(
        http,
        ws_url=emu.ws_url + "/tts/websocket",
        api_key=key,
        voice_id=VOICE_ID,
        model="sonic-2",
        version="2025-04-16",
    )


async def test_cartesia_contexts_in_parallel_on_one_socket(emu: Emulators, http: aiohttp.ClientSession) -> None:
    async with cartesia(emu, http).open_call() as call:
        turn = call.for_turn()
        async with turn.synthesize(ONE) as first, turn.synthesize(TWO) as second:
            assert await collect(second) == synthesize(TWO, "sonic-2")
            assert await collect(first) == synthesize(ONE, "sonic-2")
    assert emu.cartesia.sockets_opened == 1


async def test_cartesia_cancel_keeps_generating_and_the_client_drops_it(
    emu: Emulators, http: aiohttp.ClientSession
) -> None:
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    async with cartesia(emu, http).open_call() as call:
        async with call.for_turn().synthesize(ONE * 3) as chunks:
            async for chunk in chunks:
                if chunk:
                    break  # barge-in
        await emu.wait_for_kind("tts", "abort", EVENT_TIMEOUT_S)
        emu.tts.config.bytes_per_second = None  # the pacing is read per chunk: the rest comes at once
        # Audio already generating keeps arriving (Cartesia's cancel does not stop it); none reaches a segment.
        await emu.wait_for_kind("tts", "complete", EVENT_TIMEOUT_S)
        async with call.for_turn().synthesize(TWO) as chunks:
            assert await collect(chunks) == synthesize(TWO, "sonic-2")
        # The socket is ordered: with the next sentence's audio in, every late chunk of the cancelled one was seen.
        assert call.dropped_bytes > 0


async def test_cartesia_refused_socket_and_context_errors(emu: Emulators, http: aiohttp.ClientSession) -> None:
    with pytest.raises(ProviderError) as info:
        async with cartesia(emu, http, key="wrong").synthesize(ONE) as chunks:
            await collect(chunks)
    assert (info.value.status, info.value.transient) == (401, False)
    emu.cartesia.max_contexts = 1
    emu.tts.config.bytes_per_second = SLOW_BYTES_PER_SECOND
    async with cartesia(emu, http).open_call() as call:
        turn = call.for_turn()
        async with turn.synthesize(ONE) as first:
            await anext(aiter(first))
            with pytest.raises(ProviderError) as info:
                async with turn.synthesize(TWO) as second:
                    await collect(second)
    assert (info.value.status, info.value.transient) == (429, True)


# --- settings ----------------------------------------------------------------------------------------------------


def test_only_the_chosen_voice_s_settings_are_required() -> None:
    keys = {"deepgram_api_key": "d", "openai_api_key": "o"}
    assert Settings(**keys).missing() == []
    assert Settings(**keys, tts_provider="elevenlabs").missing() == ["ELEVENLABS_API_KEY", "ELEVENLABS_VOICE_ID"]
    assert Settings(**keys, tts_provider="cartesia", cartesia_api_key="c").missing() == ["CARTESIA_VOICE_ID"]
    assert Settings(**keys, elevenlabs_voice_id="").missing() == []  # not chosen: not needed


def test_socket_urls_derive_from_the_base_urls() -> None:
    settings = Settings(cartesia_base_url="https://api.cartesia.ai", deepgram_base_url="http://127.0.0.1:9")
    assert settings.cartesia_ws_url == "wss://api.cartesia.ai/tts/websocket"
    assert settings.deepgram_ws_url == "ws://127.0.0.1:9"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VOICEBOT_TTS_PROVIDER": "polly"}, "VOICEBOT_TTS_PROVIDER"),
        ({"DEEPGRAM_TTS_TRANSPORT": "grpc"}, "DEEPGRAM_TTS_TRANSPORT"),
        ({"CARTESIA_VERSION": "latest"}, "CARTESIA_VERSION"),
        ({"ELEVENLABS_BASE_URL": "api.elevenlabs.io"}, "ELEVENLABS_BASE_URL"),
    ],
)
def test_a_wrong_voice_setting_is_a_startup_error_naming_it(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(environ=env, env_file=None, config_path=None)


def test_voice_keys_are_secrets() -> None:
    settings = Settings(elevenlabs_api_key="el-secret-1", cartesia_api_key="ca-secret-2")
    assert {"el-secret-1", "ca-secret-2"} <= set(settings.secret_values())
    redacted = settings.redacted()
    assert redacted["ELEVENLABS_API_KEY"] == "<set>" and redacted["CARTESIA_API_KEY"] == "<set>"
