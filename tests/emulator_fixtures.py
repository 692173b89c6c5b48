"""Shared helpers for the emulator contract tests: configs, SDK clients pointed at the emulators, test audio.

Imported by ``tests/test_emulator_*.py`` (conftest.py belongs to the lead engineer).
"""

from __future__ import annotations

import array
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

from tests.voices import CARTESIA_KEY, ELEVENLABS_KEY
from voicebot.audio import FRAME_BYTES, SAMPLE_RATE, pcm16_to_ulaw, silence
from voicebot.emulators import EmulatorConfig, Emulators
from voicebot.providers.deepgram_socket import AiohttpSocket

DEEPGRAM_KEY = "dg-test-key"
OPENAI_KEY = "sk-test"
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "twilio-test-token"
CALL_SID = "CA" + "1" * 32

EVENT_TIMEOUT_S = 5.0
"""Upper bound for any wait on an emulator event or SDK message; far above what loopback needs."""

TONE_HZ = 300.0
TONE_AMPLITUDE = 8000


def fast_config() -> EmulatorConfig:
    """Zero-latency emulators that accept only the test credentials."""
    config = EmulatorConfig.fast(
        deepgram_key=DEEPGRAM_KEY,
        openai_key=OPENAI_KEY,
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
    )
    config.elevenlabs_key, config.cartesia_key = ELEVENLABS_KEY, CARTESIA_KEY
    return config


class SdkClients:
    """The real SDKs pointed at the emulators; every client made here is closed by :func:`sdk_clients`."""

    def __init__(self, emu: Emulators) -> None:
        self.emu = emu
        self._http: list[httpx.AsyncClient] = []
        self._openai: list[openai.AsyncOpenAI] = []

    def deepgram(self, api_key: str = DEEPGRAM_KEY) -> AsyncDeepgramClient:
        """The Deepgram SDK with an environment on the emulators (PROVIDERS.md §1.1)."""
        emu = self.emu
        env = DeepgramClientEnvironment(
            base=emu.base_url, production=emu.ws_url, agent=emu.ws_url, agent_rest=emu.base_url
        )
        http = httpx.AsyncClient(timeout=EVENT_TIMEOUT_S)
        self._http.append(http)
        # The transport every Deepgram socket of the process uses (voicebot/providers/deepgram_socket.py).
        return AsyncDeepgramClient(api_key=api_key, environment=env, httpx_client=http, transport_factory=AiohttpSocket)

    def openai(self, api_key: str = OPENAI_KEY, max_retries: int = 0) -> openai.AsyncOpenAI:
        """The OpenAI SDK with ``base_url`` on the emulators."""
        client = openai.AsyncOpenAI(
            base_url=self.emu.base_url + "/v1",
            api_key=api_key,
            max_retries=max_retries,
            timeout=openai.Timeout(EVENT_TIMEOUT_S, connect=EVENT_TIMEOUT_S),
        )
        self._openai.append(client)
        return client

    async def aclose(self) -> None:
        for http in self._http:
            await http.aclose()
        for client in self._openai:
            await client.close()


@asynccontextmanager
async def sdk_clients(emu: Emulators) -> AsyncIterator[SdkClients]:
    """SDK clients for one test, closed afterwards (unclosed sockets would fail the run)."""
    clients = SdkClients(emu)
    try:
        yield clients
    finally:
        await clients.aclose()


def tone(ms: int, hz: float = TONE_HZ, amplitude: int = TONE_AMPLITUDE) -> bytes:
    """``ms`` of a sine tone as mu-law: 'speech' for the energy-based STT emulator."""
    n = ms * SAMPLE_RATE // 1000
    pcm = array.array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)) for i in range(n)))
    return pcm16_to_ulaw(pcm.tobytes())


def utterance(lead_ms: int, speech_ms: int, tail_ms: int) -> bytes:
    """Silence, a tone, silence."""
    return silence(lead_ms) + tone(speech_ms) + silence(tail_ms)


def frames(audio: bytes) -> list[bytes]:
    """20 ms frames (160 bytes), as Twilio delivers them."""
    return [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
