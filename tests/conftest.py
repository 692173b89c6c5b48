"""Shared fixtures: a real voicebot server on loopback, built from explicit settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.emulator_fixtures import SdkClients, fast_config, sdk_clients
from tests.voices import DEFAULT_VOICE, VOICES, VoiceCase
from voicebot.call.services import SERVICES
from voicebot.call.state import STATE, AppState
from voicebot.emulators import EmulatorConfig, Emulators, running_emulators
from voicebot.server import create_app
from voicebot.settings import Settings

if TYPE_CHECKING:
    from tests.world import World

# The machines are noisy (2 cores shared with emulators and helpers): no per-example deadline, no speed health check.
hypothesis_settings.register_profile("voicebot", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("voicebot")

PUBLIC_URL = "https://voicebot.test"
"""Tests serve on 127.0.0.1 but sign and build URLs with this public address, as behind a tunnel."""
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "0" * 32


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test server: no config file, keys set, generous limits unless overridden."""
    base: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "deepgram_api_key": "dg-test-key",
        "openai_api_key": "sk-test-key",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "log_format": "json",
        # No test may reach the internet: providers point at a closed loopback port unless a test sets emulators.
        "deepgram_base_url": "http://127.0.0.1:9",
        "openai_base_url": "http://127.0.0.1:9/v1",
        "twilio_api_base_url": "http://127.0.0.1:9",
        # Speculative replies pop the LLM emulator's script too: tests that script replies opt in (test_preemptive).
        "preemptive_generation": False,
    }
    base.update(overrides)
    return Settings.model_validate({k: v for k, v in base.items() if v is not None})


class RunningServer:
    """A voicebot app served by aiohttp's TestServer on 127.0.0.1 and a free port."""

    def __init__(self, app: web.Application, server: TestServer) -> None:
        self.app = app
        self.server = server

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    @property
    def settings(self) -> Settings:
        return self.state.settings

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def ws_url(self, path: str = "/media") -> str:
        return self.url(path).replace("http://", "ws://", 1)


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[TestServer] = []

    async def factory(settings: Settings | None = None, **overrides: Any) -> RunningServer:
        app = create_app(settings or make_settings(**overrides))
        server = TestServer(app, host="127.0.0.1", port=None)
        await server.start_server()
        servers.append(server)
        return RunningServer(app, server)

    yield factory
    for server in servers:
        await server.close()


WARMUP_TIMEOUT_S = 10.0


@pytest.fixture
async def emulators() -> AsyncIterator[Emulators]:
    async with running_emulators(EmulatorConfig.fast()) as emu:
        yield emu


@pytest.fixture
def voice(request: pytest.FixtureRequest) -> VoiceCase:
    """The voice a world speaks with: the default unless the test is marked ``@all_voices`` (tests/voices.py)."""
    return VOICES[getattr(request, "param", DEFAULT_VOICE)]


@pytest.fixture
async def start_world(
    emulators: Emulators, start_server: ServerFactory, tmp_path: Path, voice: VoiceCase
) -> AsyncIterator[Callable[..., Awaitable[World]]]:
    async def factory(**overrides: Any) -> World:
        settings: dict[str, Any] = {
            "deepgram_base_url": emulators.base_url,
            "openai_base_url": emulators.base_url + "/v1",
            "twilio_api_base_url": emulators.base_url,
            "transcript_dir": tmp_path / "transcripts",
            "idle_timeout_s": 30.0,
            **voice.configure(emulators.base_url),
        }
        settings.update(overrides)
        server = await start_server(**settings)
        from tests.world import World  # here: tests.world imports this module

        world = World(emulators, server, tmp_path / "transcripts")
        async with asyncio.timeout(WARMUP_TIMEOUT_S):
            await server.app[SERVICES].phrases.warmed.wait()
        return world

    yield factory
    # Every LLM request of every conversation test was a valid message sequence (the real API would refuse it).
    invalid = emulators.select("llm", "invalid_messages")
    assert invalid == [], [e.data for e in invalid]


@pytest.fixture
async def emu() -> AsyncIterator[Emulators]:
    """Emulators with the keys the emulator contract tests use (tests/emulator_fixtures.py)."""
    async with running_emulators(fast_config()) as emulators:
        yield emulators


@pytest.fixture
async def sdk(emu: Emulators) -> AsyncIterator[SdkClients]:
    """The real deepgram-sdk and openai clients pointed at ``emu``."""
    async with sdk_clients(emu) as clients:
        yield clients
