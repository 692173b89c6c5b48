"""Contract tests: the real deepgram-sdk live client against the Deepgram STT emulator over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from deepgram.core.api_error import ApiError
from deepgram.listen.v1.types import (
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from websockets.exceptions import ConnectionClosedError

from tests.emulator_fixtures import (
    DEEPGRAM_KEY,
    EVENT_TIMEOUT_S,
    SdkClients,
    fast_config,
    frames,
    sdk_clients,
    tone,
    utterance,
)
from voicebot.audio import silence
from voicebot.emulators import IDLE_CLOSE_CODE, Emulators, running_emulators
from voicebot.providers.deepgram_socket import opened

LISTEN_KW: dict[str, Any] = {
    "model": "nova-3",
    "encoding": "mulaw",
    "sample_rate": 8000,
    "channels": 1,
    "language": "en-US",
    "interim_results": True,
    "endpointing": 300,
    "utterance_end_ms": 1000,
    "vad_events": True,
    "punctuate": True,
    "smart_format": True,
}
AUDIO_TIME_TOLERANCE_S = 0.025
"""Audio-time positions are exact to one 20 ms frame."""
SHORT_IDLE_TIMEOUT_S = 0.3
KEEPALIVE_IDLE_TIMEOUT_S = 0.6
KEEPALIVE_INTERVAL_S = 0.15
KEEPALIVE_COUNT = 6
"""KeepAlives span 0.9 s, longer than the idle timeout: the socket survives only if each one resets it."""


async def transcribe(sdk: SdkClients, audio: bytes, **overrides: Any) -> list[Any]:
    """Stream ``audio`` in 20 ms frames (faster than real time), then CloseStream; every message received."""
    received: list[Any] = []
    async with sdk.deepgram().listen.v1.connect(**{**LISTEN_KW, **overrides}) as conn:

        async def send() -> None:
            for frame in frames(audio):
                await conn.send_media(frame)
            await conn.send_close_stream()

        async with asyncio.timeout(EVENT_TIMEOUT_S), asyncio.TaskGroup() as tg:
            tg.create_task(send())
            async for message in conn:
                received.append(message)
    return received


async def drain(conn: Any) -> list[Any]:
    """Every message until the server closes the socket."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return [m async for m in conn]


async def send_then_drain(conn: Any, audio: bytes) -> list[Any]:
    """Send all frames first (a socket closed meanwhile makes a send raise), then read to the end."""
    for frame in frames(audio):
        await conn.send_media(frame)
    return await drain(conn)


def of_type(messages: Sequence[Any], kind: type) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


async def test_utterance_gives_speech_started_interims_final_utterance_end_metadata(
    emu: Emulators, sdk: SdkClients
) -> None:
    emu.stt.script.append("What are your hours?")
    messages = await transcribe(sdk, utterance(200, 1200, 1200))

    kinds = [type(m) for m in messages]
    assert kinds[0] is ListenV1SpeechStarted
    assert kinds[-2:] == [ListenV1UtteranceEnd, ListenV1Metadata]
    started = messages[0]
    assert started.channel == [0]
    assert started.timestamp == pytest.approx(0.2, abs=AUDIO_TIME_TOLERANCE_S)

    results = of_type(messages, ListenV1Results)
    interims = [r for r in results if not r.is_final]
    finals = [r for r in results if r.is_final]
    assert len(interims) >= 2
    transcripts = [r.channel.alternatives[0].transcript for r in interims]
    assert all("What are your hours?".startswith(t) for t in transcripts)
    assert [len(t) for t in transcripts] == sorted(len(t) for t in transcripts)  # words are revealed
    assert len(finals) == 1
    final = finals[0]
    assert final.speech_final is True
    assert final.from_finalize is False
    assert final.channel_index == [0, 1]
    alt = final.channel.alternatives[0]
    assert alt.transcript == "What are your hours?"
    assert [w.punctuated_word for w in alt.words] == ["What", "are", "your", "hours?"]
    assert [w.word for w in alt.words] == ["what", "are", "your", "hours"]
    assert alt.words[0].start == pytest.approx(0.2, abs=AUDIO_TIME_TOLERANCE_S)
    assert alt.words[-1].end == pytest.approx(1.4, abs=AUDIO_TIME_TOLERANCE_S)
    # speech_final comes `endpointing` ms of silence after the speech, in audio time.
    assert final.start + final.duration == pytest.approx(1.7, abs=AUDIO_TIME_TOLERANCE_S)
    assert final.metadata.model_info.arch == "nova-3"

    utterance_end = of_type(messages, ListenV1UtteranceEnd)[0]
    assert utterance_end.channel == [0, 1]
    assert utterance_end.last_word_end == pytest.approx(1.4, abs=AUDIO_TIME_TOLERANCE_S)
    metadata = messages[-1]
    assert metadata.duration == pytest.approx(2.6, abs=AUDIO_TIME_TOLERANCE_S)
    assert metadata.request_id == final.metadata.request_id

    closed = await emu.wait_for_kind("stt", "close", EVENT_TIMEOUT_S)
    assert closed.data["initiator"] == "server"
    assert closed.data["code"] == 1000


async def test_script_is_consumed_one_item_per_utterance(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.extend(["First one.", "Second one."])
    audio = utterance(100, 600, 400) + tone(600) + silence(400)
    messages = await transcribe(sdk, audio)

    finals = [m for m in of_type(messages, ListenV1Results) if m.is_final]
    assert [f.channel.alternatives[0].transcript for f in finals] == ["First one.", "Second one."]
    assert len(of_type(messages, ListenV1SpeechStarted)) == 2
    assert emu.stt.script == []
    # Final results tile the audio: each starts where the previous one ended.
    assert finals[1].start == pytest.approx(finals[0].start + finals[0].duration)


async def test_empty_script_item_is_noise_without_words_or_utterance_end(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.append("")
    messages = await transcribe(sdk, utterance(200, 500, 1500))

    assert len(of_type(messages, ListenV1SpeechStarted)) == 1
    results = of_type(messages, ListenV1Results)
    assert [r.is_final for r in results] == [True]
    assert results[0].channel.alternatives[0].transcript == ""
    assert results[0].channel.alternatives[0].words == []
    assert of_type(messages, ListenV1UtteranceEnd) == []


async def test_query_options_are_honoured(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.append("Hello, World.")
    messages = await transcribe(
        sdk,
        utterance(200, 800, 600),
        interim_results=False,
        vad_events=False,
        punctuate=False,
        smart_format=False,
    )

    assert of_type(messages, ListenV1SpeechStarted) == []
    assert of_type(messages, ListenV1UtteranceEnd) == []  # needs interim_results
    results = of_type(messages, ListenV1Results)
    assert [r.is_final for r in results] == [True]
    assert results[0].channel.alternatives[0].transcript == "hello world"


async def test_finalize_flushes_pending_speech_with_from_finalize(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.append("Please hold on.")
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        for frame in frames(silence(100) + tone(700)):
            await conn.send_media(frame)
        await conn.send_finalize()
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            async for message in conn:
                if isinstance(message, ListenV1Results) and message.is_final:
                    break
        await conn.send_close_stream()
    assert message.from_finalize is True
    assert message.speech_final is False
    assert message.channel.alternatives[0].transcript == "Please hold on."


async def test_keepalive_gets_no_reply_and_resets_the_idle_timer(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.config.idle_timeout_s = KEEPALIVE_IDLE_TIMEOUT_S
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        for _ in range(KEEPALIVE_COUNT):
            await conn.send_keep_alive()
            await asyncio.sleep(KEEPALIVE_INTERVAL_S)  # pacing the client, not synchronising
        await conn.send_close_stream()
        messages = await drain(conn)
    assert [type(m) for m in messages] == [ListenV1Metadata]
    assert emu.select("stt", "idle_timeout") == []
    controls = [e.data["type"] for e in emu.select("stt", "control")]
    assert controls == ["KeepAlive"] * KEEPALIVE_COUNT + ["CloseStream"]


async def test_idle_socket_is_closed_1011_net0001(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.config.idle_timeout_s = SHORT_IDLE_TIMEOUT_S
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        with pytest.raises(ConnectionClosedError) as caught:
            await drain(conn)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == IDLE_CLOSE_CODE
    assert "NET-0001" in caught.value.rcvd.reason
    assert emu.select("stt", "idle_timeout")


async def test_wrong_key_is_refused_with_401(emu: Emulators, sdk: SdkClients) -> None:
    with pytest.raises(ApiError) as caught:
        async with sdk.deepgram(api_key="wrong").listen.v1.connect(**LISTEN_KW) as conn:
            await opened(conn)  # the handshake (the SDK's custom-transport hook opens lazily)
    assert caught.value.status_code == 401
    assert emu.select("stt", "rejected")[0].data["status"] == 401


@pytest.mark.parametrize(
    ("override", "problem"),
    [({"encoding": "linear16"}, "encoding"), ({"sample_rate": 16000}, "sample_rate")],
)
async def test_non_telephone_audio_is_refused_with_400(
    emu: Emulators, sdk: SdkClients, override: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ApiError) as caught:
        async with sdk.deepgram().listen.v1.connect(**{**LISTEN_KW, **override}) as conn:
            await opened(conn)  # the handshake (the SDK's custom-transport hook opens lazily)
    assert caught.value.status_code == 400
    assert problem in emu.select("stt", "rejected")[0].data["error"]


async def test_injected_upgrade_error_then_recovery(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.faults.fail_next = 1
    emu.stt.faults.fail_status = 429
    with pytest.raises(ApiError) as caught:
        async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
            await opened(conn)  # the handshake (the SDK's custom-transport hook opens lazily)
    assert caught.value.status_code == 429
    messages = await transcribe(sdk, silence(200))
    assert [type(m) for m in messages] == [ListenV1Metadata]


@pytest.mark.parametrize("abrupt", [False, True])
async def test_drop_after_audio_ms_breaks_the_socket(emu: Emulators, sdk: SdkClients, abrupt: bool) -> None:
    emu.stt.faults.drop_after_audio_ms = 400
    emu.stt.faults.drop_abrupt = abrupt
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        with pytest.raises(ConnectionClosedError) as caught:
            await send_then_drain(conn, silence(2000))
    expected = None if abrupt else 1011
    assert (caught.value.rcvd.code if caught.value.rcvd else None) == expected
    drop = await emu.wait_for_kind("stt", "drop", EVENT_TIMEOUT_S)
    assert drop.data["audio_s"] == pytest.approx(0.4, abs=AUDIO_TIME_TOLERANCE_S)


async def test_client_disconnect_is_logged(emu: Emulators, sdk: SdkClients) -> None:
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        await conn.send_media(silence(100))
    event = await emu.wait_for(lambda e: e.service == "stt" and e.kind in {"close", "abort"}, EVENT_TIMEOUT_S)
    assert event.kind == "close"
    assert event.data["initiator"] == "client"
    assert event.data["audio_s"] == pytest.approx(0.1)


async def test_result_delay_holds_messages_back() -> None:
    config = fast_config()
    config.stt.result_delay_ms = 200
    async with running_emulators(config) as emu, sdk_clients(emu) as sdk:
        async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
            mark = emu.mark()
            await conn.send_close_stream()
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                messages = [m async for m in conn]
        assert [type(m) for m in messages] == [ListenV1Metadata]
        control = emu.log.first(lambda e: e.kind == "control", since=mark)
        sent = emu.log.first(lambda e: e.kind == "metadata", since=mark)
        assert control is not None
        assert sent is not None
        assert sent.t - control.t >= 0.2


async def test_speech_started_key_and_callbacks_style(emu: Emulators, sdk: SdkClients) -> None:
    """The callback style (start_listening) sees the same typed messages."""
    from deepgram.core.events import EventType

    got: list[Any] = []
    closed = asyncio.Event()
    async with sdk.deepgram(api_key=DEEPGRAM_KEY).listen.v1.connect(**LISTEN_KW) as conn:
        conn.on(EventType.MESSAGE, got.append)
        conn.on(EventType.CLOSE, lambda _: closed.set())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(conn.start_listening())
            for frame in frames(utterance(100, 600, 400)):
                await conn.send_media(frame)
            await conn.send_close_stream()
            await asyncio.wait_for(closed.wait(), EVENT_TIMEOUT_S)
    assert isinstance(got[0], ListenV1SpeechStarted)
    assert isinstance(got[-1], ListenV1Metadata)


STALL_S = 0.3


async def test_stall_holds_every_message(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.faults.stall_s = STALL_S
    async with sdk.deepgram().listen.v1.connect(**LISTEN_KW) as conn:
        await conn.send_close_stream()
        messages = await drain(conn)
    assert [type(m) for m in messages] == [ListenV1Metadata]
    opened = emu.select("stt", "open")[0]
    sent = emu.select("stt", "metadata")[0]
    assert sent.t - opened.t >= STALL_S
