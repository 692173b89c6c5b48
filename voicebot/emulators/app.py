"""The emulators object (knobs + log + aiohttp app) and ``running_emulators`` to serve it on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from .cartesia import CartesiaService
from .common import Runtime
from .config import EmulatorConfig
from .deepgram_speak import SpeakSocketService
from .deepgram_stt import SttService
from .deepgram_tts import TtsService
from .elevenlabs import ElevenLabsService
from .log import Event, EventLog, Predicate, Service
from .openai_chat import LlmService
from .twilio_rest import TwilioService

SHUTDOWN_TIMEOUT_S = 2.0
"""``AppRunner`` grace period; our ``on_shutdown`` hook already cancels every handler, so this is a backstop."""


class Emulators:
    """Deepgram STT + TTS (REST and socket), ElevenLabs, Cartesia, OpenAI chat and Twilio REST: one aiohttp app."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.log = EventLog()
        self._runtime = Runtime(self.log)
        cfg = self.config
        self.stt = SttService(cfg.stt, self._runtime, cfg.deepgram_key)
        self.tts = TtsService(cfg.tts, self._runtime, cfg.deepgram_key)
        # The other voices share the Deepgram TTS knobs, faults and events: ``tts`` means "the voice", whichever.
        self.speak_socket = SpeakSocketService(self.tts, self._runtime)
        self.elevenlabs = ElevenLabsService(self.tts, self._runtime, cfg.elevenlabs_key)
        self.cartesia = CartesiaService(self.tts, self._runtime, cfg.cartesia_key)
        self.llm = LlmService(cfg.llm, self._runtime, cfg.openai_key)
        self.twilio = TwilioService(cfg.twilio, self._runtime, cfg.twilio_account_sid, cfg.twilio_auth_token)
        self.base_url = ""
        """``http://host:port`` once served by :func:`running_emulators` (set it yourself otherwise)."""
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self.stt.handle)
        app.router.add_get("/v2/listen", self.stt.handle_v2)
        app.router.add_post("/v1/speak", self.tts.handle)
        app.router.add_get("/v1/speak", self.speak_socket.handle)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self.elevenlabs.handle)
        app.router.add_get("/tts/websocket", self.cartesia.handle)
        app.router.add_post("/v1/chat/completions", self.llm.handle)
        app.router.add_get("/v1/models", self.llm.models)
        account = "/2010-04-01/Accounts/{account_sid}"
        app.router.add_post(account + "/Calls/{call_sid}.json", self.twilio.handle, name="call")
        app.router.add_post(account + "/Calls.json", self.twilio.handle, name="calls")
        app.router.add_get(account + "/IncomingPhoneNumbers.json", self.twilio.handle, name="numbers")
        app.router.add_post(account + "/IncomingPhoneNumbers/{number_sid}.json", self.twilio.handle, name="number")
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.twilio.placer.shutdown()
        await self._runtime.shutdown()

    @property
    def ws_url(self) -> str:
        """The base URL with the ``ws://`` scheme, for Deepgram's ``production`` environment."""
        return "ws://" + self.base_url.removeprefix("http://")

    @property
    def events(self) -> list[Event]:
        """Every event recorded so far, oldest first (the live list)."""
        return self.log.events

    def mark(self) -> int:
        """An index for ``since=``: only later events will match."""
        return self.log.mark()

    def select(self, service: Service | None = None, kind: str | None = None, since: int = 0) -> list[Event]:
        """Events filtered by service and/or kind."""
        return self.log.select(service, kind, since)

    async def wait_for(self, predicate: Predicate, timeout: float, since: int = 0) -> Event:  # noqa: ASYNC109 (public API: tests must pass a bound)
        """Wait (without polling) for the first event matching ``predicate``; ``TimeoutError`` after timeout."""
        return await self.log.wait_for(predicate, timeout, since)

    async def wait_for_kind(
        self,
        service: Service,
        kind: str,
        timeout: float,  # noqa: ASYNC109 (the lead's API; a bound is mandatory so tests cannot hang)
        since: int = 0,
        **match: Any,
    ) -> Event:
        """Wait for a ``service``/``kind`` event whose data contains every ``match`` item."""
        return await self.log.wait_for_kind(service, kind, timeout, since, **match)


@asynccontextmanager
async def running_emulators(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Emulators]:
    """Serve a fresh :class:`Emulators` on ``host:port`` (0: a free port) for the duration of the block."""
    emu = Emulators(config)
    # handler_cancellation: a client that disconnects cancels its handler at once, which is how "abort"
    # events appear immediately even while a handler is sleeping (time to first byte, stalls).
    runner = web.AppRunner(emu.app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        emu.base_url = f"http://{bound_host}:{bound_port}"
        yield emu
    finally:
        await runner.cleanup()
