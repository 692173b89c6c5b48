"""A whole offline world for conversation tests: emulated providers, a real voicebot server, a simulated caller."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer
from voicebot.call.chunker import TextChunker
from voicebot.call.services import SERVICES, Services
from voicebot.caller import CallResult, SimulatedCaller
from voicebot.caller.script import Step
from voicebot.emulators import Emulators, synthesize

TTS_MODEL = "aura-2-asteria-en"
CALL_TIMEOUT_S = 30.0


def audio_of(text: str) -> bytes:
    """What the TTS emulator says for ``text`` with the bot's voice."""
    return synthesize(text, TTS_MODEL)


def segments_of(reply: str) -> list[str]:
    """The segments the bot's chunker cuts ``reply`` into (what it sends to TTS, in order)."""
    chunker = TextChunker()
    return [*chunker.feed(reply), *chunker.flush()]


@dataclass
class World:
    emu: Emulators
    server: RunningServer
    transcripts: Path

    @property
    def services(self) -> Services:
        return self.server.app[SERVICES]

    def caller(self, script: Sequence[Step] = ()) -> SimulatedCaller:
        return SimulatedCaller(
            self.server.url("/").rstrip("/"), list(script), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
        )

    async def call(self, script: Sequence[Step], timeout: float = CALL_TIMEOUT_S) -> CallResult:
        return await self.caller(script).run(timeout=timeout)
