"""deepgram-sdk builds its headers on every request, reading package metadata each time; our shared client does not.

The SDK half pins a finding (see voicebot/providers/deepgram_client.py): if a release stops doing it, the first test
fails and the work-around can go.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import httpx
import pytest
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

from tests.emulator_fixtures import DEEPGRAM_KEY, EVENT_TIMEOUT_S, SdkClients
from voicebot.emulators import Emulators, synthesize
from voicebot.providers.deepgram_client import deepgram_client

MODEL = "aura-2-thalia-en"
SPEAK_KW: dict[str, Any] = {"model": MODEL, "encoding": "mulaw", "sample_rate": 8000, "container": "none"}
LISTEN_KW: dict[str, Any] = {"model": "nova-3", "encoding": "mulaw", "sample_rate": 8000, "channels": 1}


@pytest.fixture
def metadata_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``importlib.metadata.version`` lookup made while the test runs."""
    reads: list[str] = []
    real = importlib.metadata.version

    def counting(name: str) -> str:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", counting)
    return reads


async def _speak_twice(client: AsyncDeepgramClient) -> list[bytes]:
    return [b"".join([c async for c in client.speak.v1.audio.generate(text=t, **SPEAK_KW)]) for t in ("One.", "Two.")]


async def test_the_sdk_reads_package_metadata_on_every_request(sdk: SdkClients, metadata_reads: list[str]) -> None:
    await _speak_twice(sdk.deepgram())
    assert metadata_reads.count("deepgram-sdk") >= 2


async def test_our_client_reads_it_once_and_sends_the_same_headers(emu: Emulators, metadata_reads: list[str]) -> None:
    env = DeepgramClientEnvironment(base=emu.base_url, production=emu.ws_url, agent=emu.ws_url, agent_rest=emu.base_url)
    async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as http:
        client = deepgram_client(api_key=DEEPGRAM_KEY, environment=env, httpx_client=http)
        assert metadata_reads == ["deepgram-sdk"]  # at construction, once
        plain = AsyncDeepgramClient(api_key=DEEPGRAM_KEY, environment=env, httpx_client=http)
        ours, theirs = client._client_wrapper.get_headers(), plain._client_wrapper.get_headers()
        assert ours.pop("x-deepgram-session-id") == client.session_id  # one per client, fixed for its lifetime
        assert theirs.pop("x-deepgram-session-id") == plain.session_id
        assert ours == theirs
        metadata_reads.clear()

        assert await _speak_twice(client) == [synthesize("One.", MODEL), synthesize("Two.", MODEL)]
        async with client.listen.v1.connect(**LISTEN_KW) as conn:  # the socket path takes the same headers
            await conn.send_close_stream()
        # A caller of get_headers may change what it gets; the next request's headers are whole again.
        client._client_wrapper.get_headers().clear()
        assert "Authorization" in client._client_wrapper.get_headers()
    assert metadata_reads == []
    assert [r.data["text"] for r in emu.select("tts", "request")] == ["One.", "Two."]
