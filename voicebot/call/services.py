"""Provider clients shared by every call of one process, created at startup and closed at shutdown.

Shared clients keep their HTTP connections alive between turns (``KEEPALIVE_S``), so a turn does not pay a new
TCP and TLS handshake; the fixed-phrase warm-up at startup opens the first TTS connection. Each client's pool is
sized from the call limit (:func:`pool_limits`), so no request waits for a connection inside this process
(:mod:`voicebot.providers.pools`); their use is exported in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import openai
from aiohttp import web
from deepgram import DeepgramClientEnvironment

from voicebot.call.bot_turn import MAX_TTS_IN_FLIGHT
from voicebot.call.phrases import PhraseCache
from voicebot.errors import ProviderError
from voicebot.logs import REDACTOR, get_logger
from voicebot.metrics import Metrics
from voicebot.providers.base import LanguageModel, SpeechToText, Telephony, Voice
from voicebot.providers.deepgram_client import deepgram_client
from voicebot.providers.deepgram_flux import DeepgramFlux, warm_stt_paths
from voicebot.providers.deepgram_socket import release_session, socket_connector, use_session
from voicebot.providers.deepgram_stt import DeepgramStt
from voicebot.providers.openai_llm import OpenAiChat
from voicebot.providers.pools import PoolUse, aiohttp_httpx2_transport, aiohttp_httpx_transport, aiohttp_session
from voicebot.providers.voices import open_voice
from voicebot.settings import Settings
from voicebot.tools import ToolRegistry, load_tool_specs
from voicebot.twilio.rest import TwilioRest

log = get_logger("voicebot.call.services")

KEEPALIVE_S = 120.0
KEEP_WARM_S = 50.0
"""Period of the free keep-warm request: well inside KEEPALIVE_S and the providers' own idle timeouts."""
WARMUP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
LLM_READ_TIMEOUT_S = 10.0
TTS_READ_TIMEOUT_S = 10.0
LLM_MAX_RETRIES = 1
"""One retry before the stream starts (429 honouring retry-after, 5xx, connection errors); the turn's own
first-token deadline bounds the total wait."""
TTS_REQUESTS_PER_CALL = MAX_TTS_IN_FLIGHT + 1
"""A turn's segments in synthesis, plus one from the turn a barge-in just cut (cancelled, its response closing)."""
LLM_REQUESTS_PER_CALL = 2
"""The turn's stream, plus the one a barge-in just cut (closed without waiting, see ``bot_turn``)."""
REST_REQUESTS_PER_CALL = 1
"""Hang up or transfer: one Twilio REST request at a time per call."""
SOCKETS_PER_CALL = 3
"""Deepgram WebSockets: the recogniser, one replacing it after a drop while the old one closes, and Aura's socket."""
POOL_SPARE = 8
"""Beyond the calls: the fixed-phrase warm-up at startup, a phrase synthesised again after a failed warm-up."""
DEFAULT_SYSTEM_PROMPT = "You are a friendly, concise phone assistant. Answer in one to three short sentences."


@dataclass
class Services:
    stt: SpeechToText
    llm: LanguageModel
    tts: Voice
    telephony: Telephony | None
    phrases: PhraseCache
    system_prompt: str
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    pools: tuple[PoolUse, ...] = ()
    """The provider clients' connection pools (exported in /metrics)."""


def load_prompt(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        log.warning("system_prompt_missing", path=str(path))
        return DEFAULT_SYSTEM_PROMPT
    return text or DEFAULT_SYSTEM_PROMPT


SERVICES = web.AppKey("services", Services)


def pool_limits(max_calls: int) -> tuple[PoolUse, PoolUse, PoolUse, PoolUse]:
    """The TTS, LLM, Twilio REST and Deepgram socket pools, each large enough for ``max_calls`` calls at their
    busiest."""
    return (
        PoolUse("deepgram_tts", max_calls * TTS_REQUESTS_PER_CALL + POOL_SPARE),
        PoolUse("openai", max_calls * LLM_REQUESTS_PER_CALL + POOL_SPARE),
        PoolUse("twilio_rest", max_calls * REST_REQUESTS_PER_CALL + POOL_SPARE),
        PoolUse("deepgram_ws", max_calls * SOCKETS_PER_CALL + POOL_SPARE),
    )


def services_context(settings: Settings, metrics: Metrics) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that owns the clients for the application's lifetime."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        if settings.missing():
            log.warning("providers_not_configured", missing=settings.missing())
            yield
            return
        assert settings.deepgram_api_key is not None
        assert settings.openai_api_key is not None
        tts_pool, llm_pool, rest_pool, ws_pool = pool_limits(settings.max_calls)
        metrics.watch_pools((tts_pool, llm_pool, rest_pool, ws_pool))
        ws_http = aiohttp.ClientSession(connector=socket_connector(ws_pool.limit))
        use_session(ws_http, ws_pool)  # every Deepgram socket of this process (STT, Flux, Aura's socket)
        dg_http = httpx.AsyncClient(
            timeout=httpx.Timeout(TTS_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=aiohttp_httpx_transport(tts_pool, KEEPALIVE_S),
        )
        deepgram = deepgram_client(
            api_key=settings.deepgram_api_key.get_secret_value(),
            environment=DeepgramClientEnvironment(
                base=settings.deepgram_base_url,
                production=settings.deepgram_ws_url,
                agent=settings.deepgram_ws_url,
                agent_rest=settings.deepgram_base_url,
            ),
            httpx_client=dg_http,
        )
        oa_http = openai.DefaultAsyncHttpxClient(transport=aiohttp_httpx2_transport(llm_pool, KEEPALIVE_S))
        llm_client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=openai.Timeout(LLM_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            max_retries=LLM_MAX_RETRIES,
            http_client=oa_http,
        )
        specs = load_tool_specs(settings)  # checked at startup already (__main__); a bad file stops the app here
        REDACTOR.update([*REDACTOR.secrets, *specs.secrets])
        http = aiohttp_session(rest_pool)
        tools = ToolRegistry.build(specs, settings, http)
        telephony: Telephony | None = None
        if settings.twilio_account_sid and settings.twilio_auth_token is not None:
            telephony = TwilioRest(
                http,
                base_url=settings.twilio_api_base_url,
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token.get_secret_value(),
            )
        else:
            log.warning("twilio_rest_not_configured", effect="calls end by closing the stream, not via the REST API")
        stack = AsyncExitStack()
        tts = await stack.enter_async_context(open_voice(settings, deepgram, tts_pool))
        phrases = PhraseCache(tts)
        stt: SpeechToText
        if settings.flux:
            stt = DeepgramFlux(
                deepgram,
                model=settings.deepgram_stt_model,
                eot_threshold=settings.deepgram_eot_threshold,
                eager_eot_threshold=settings.deepgram_eager_eot_threshold,
                eot_timeout_ms=settings.deepgram_eot_timeout_ms,
            )
        else:
            stt = DeepgramStt(
                deepgram,
                model=settings.deepgram_stt_model,
                language=settings.deepgram_language,
                endpointing_ms=settings.deepgram_endpointing_ms,
                utterance_end_ms=settings.deepgram_utterance_end_ms,
            )
        llm = OpenAiChat(
            llm_client,
            model=settings.openai_model,
            temperature=settings.openai_temperature,
            max_tokens=settings.openai_max_tokens,
        )
        app[SERVICES] = Services(
            stt=stt,
            llm=llm,
            tts=tts,
            telephony=telephony,
            phrases=phrases,
            system_prompt=load_prompt(settings.prompt_file),
            tools=tools,
            pools=(tts_pool, llm_pool, rest_pool, ws_pool),
        )
        # Before the server listens (so before /healthz answers): the first turn of the process must not pay the
        # LLM connection and the SDKs' lazy model building.
        await _warm_up(llm)
        fixed = [settings.greeting, settings.apology, settings.idle_prompt, settings.goodbye, TRANSFER_TEXT]
        if len(tools):
            fixed += [settings.tool_filler, settings.tool_still_working, *tools.phrases()]
        warmup = asyncio.create_task(phrases.warm(fixed), name="phrase-warmup")
        keep_warm = asyncio.create_task(_keep_warm(llm), name="llm-keep-warm")
        try:
            yield
        finally:
            for task in (warmup, keep_warm):
                task.cancel()
            await asyncio.gather(warmup, keep_warm, return_exceptions=True)
            await llm_client.close()
            await dg_http.aclose()
            await http.close()
            await stack.aclose()
            release_session(ws_http)
            await ws_http.close()

    return context


TRANSFER_TEXT = "One moment, I'm transferring your call."


async def _warm_up(llm: OpenAiChat) -> None:
    started = time.monotonic()
    warm_stt_paths()
    try:
        async with asyncio.timeout(WARMUP_TIMEOUT_S):
            await llm.warm_up()
    except (ProviderError, TimeoutError) as exc:
        log.warning("llm_warmup_failed", error=str(exc) or "timed out", effect="the first turn pays the connection")
        return
    log.info("providers_warmed", ms=round((time.monotonic() - started) * 1000, 1))


async def _keep_warm(llm: OpenAiChat) -> None:
    """Keep the pooled LLM connection from expiring between calls (KEEPALIVE_S) with a free request."""
    while True:
        await asyncio.sleep(KEEP_WARM_S)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + LLM_READ_TIMEOUT_S):
                await llm.keep_warm()
        except (ProviderError, TimeoutError) as exc:
            log.info("llm_keep_warm_failed", error=str(exc) or "timed out")
