"""The Flux emulator (``/v2/listen``) through the real deepgram-sdk ``listen.v2`` client: TurnInfo events from the
scripted utterances, thresholds, and the protocol's edges (PROVIDERS-2.md §2)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets.exceptions
from deepgram.core.api_error import ApiError
from deepgram.listen.v2.types import ListenV2Connected, ListenV2FatalError, ListenV2TurnInfo

from tests.emulator_fixtures import EVENT_TIMEOUT_S, SdkClients, frames, tone
from voicebot.audio import silence
from voicebot.emulators import Emulators
from voicebot.providers.deepgram_socket import opened

FLUX_KW: dict[str, Any] = {"model": "flux-general-en", "encoding": "mulaw", "sample_rate": 8000}
CHUNK_FRAMES = 4  # 80 ms messages, as Flux recommends


async def stream(sdk: SdkClients, audio: bytes, **overrides: Any) -> list[Any]:
    """Send ``audio`` in 80 ms messages, then CloseStream; every message received until the server closes."""
    received: list[Any] = []
    async with sdk.deepgram().listen.v2.connect(**{**FLUX_KW, **overrides}) as conn:

        async def send() -> None:
            chunks = frames(audio)
            for i in range(0, len(chunks), CHUNK_FRAMES):
                await conn.send_media(b"".join(chunks[i : i + CHUNK_FRAMES]))
            await conn.send_close_stream()

        async with asyncio.timeout(EVENT_TIMEOUT_S), asyncio.TaskGroup() as tg:
            tg.create_task(send())
            async for message in conn:
                received.append(message)
    return received


def turn_events(messages: list[Any]) -> list[tuple[str, str]]:
    return [(m.event, m.transcript) for m in messages if isinstance(m, ListenV2TurnInfo) and m.event != "Update"]


async def test_a_turn_with_a_pause_gives_start_eager_resumed_end(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.append("Book a table | for two.")
    audio = silence(100) + tone(600) + silence(400) + tone(500) + silence(800)
    messages = await stream(sdk, audio, eager_eot_threshold=0.3)
    assert isinstance(messages[0], ListenV2Connected)
    assert [m.sequence_id for m in messages] == list(range(len(messages)))
    assert turn_events(messages) == [
        ("StartOfTurn", ""),
        ("EagerEndOfTurn", "Book a table"),  # 300 ms into the pause (mid-sentence: confidence rises slowly)
        ("TurnResumed", "Book a table"),
        ("EagerEndOfTurn", "Book a table for two."),
        ("EndOfTurn", "Book a table for two."),
    ]
    updates = [m for m in messages if isinstance(m, ListenV2TurnInfo) and m.event == "Update"]
    assert updates
    assert all("Book a table for two.".startswith(u.transcript) for u in updates)
    end = messages[-1]
    assert end.event == "EndOfTurn"
    assert end.trigger == "model"
    assert end.end_of_turn_confidence >= 0.7
    assert end.turn_index == 0


async def test_without_eager_threshold_only_the_end_of_turn(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.extend(["Hello.", "Goodbye."])
    audio = silence(100) + tone(400) + silence(600) + tone(400) + silence(600)
    messages = await stream(sdk, audio)
    ends = [m for m in messages if isinstance(m, ListenV2TurnInfo) and m.event == "EndOfTurn"]
    assert [(m.turn_index, m.transcript) for m in ends] == [(0, "Hello."), (1, "Goodbye.")]
    assert not [m for m in messages if isinstance(m, ListenV2TurnInfo) and m.event == "EagerEndOfTurn"]


async def test_eot_threshold_sets_how_much_silence_ends_the_turn(emu: Emulators, sdk: SdkClients) -> None:
    emu.stt.script.extend(["Hello.", "Hello."])
    # 300 ms of silence: 0.6 of the way to certainty; the default 0.7 does not end the turn, 0.5 does.
    audio = silence(100) + tone(400) + silence(300)
    default = await stream(sdk, audio)
    low = await stream(sdk, audio, eot_threshold=0.5)
    assert [m.trigger for m in default if isinstance(m, ListenV2TurnInfo) and m.event == "EndOfTurn"] == ["manual"]
    assert [m.trigger for m in low if isinstance(m, ListenV2TurnInfo) and m.event == "EndOfTurn"] == ["model"]


async def test_a_json_keepalive_closes_the_flux_socket(emu: Emulators, sdk: SdkClients) -> None:
    # PROVIDERS-2.md §2: KeepAlive is a /v1 message; Flux closes the socket on it. The bot sends silence instead.
    messages: list[Any] = []

    async def read(conn: Any) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            async for message in conn:
                messages.append(message)

    async with sdk.deepgram().listen.v2.connect(**FLUX_KW) as conn:
        await conn.send_configure({"type": "KeepAlive"})
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as info:
            await read(conn)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1008
    assert isinstance(messages[-1], ListenV2FatalError)


@pytest.mark.parametrize(
    ("query", "message"),
    [({"model": "nova-3"}, "model must be one of"), ({"eot_threshold": 0.7, "eager_eot_threshold": 0.8}, "eager")],
)
async def test_bad_options_are_refused_with_400(
    emu: Emulators, sdk: SdkClients, query: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as info:
        async with sdk.deepgram().listen.v2.connect(**{**FLUX_KW, **query}) as conn:
            await opened(conn)  # the handshake (the SDK's custom-transport hook opens lazily)
    assert info.value.status_code == 400
    assert message in emu.select("stt", "rejected")[-1].data["error"]
