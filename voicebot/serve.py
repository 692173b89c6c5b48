"""Serving: one process on uvloop, or N worker processes sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import secrets
import signal
from typing import Any

import orjson
import uvloop
from aiohttp import web
from pydantic import SecretStr

from voicebot.logs import configure_logging, get_logger
from voicebot.settings import Settings

log = get_logger("voicebot")
GC_THRESHOLDS = (10_000, 20, 20)


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    """Run one server process until SIGINT/SIGTERM, then shut down gracefully."""
    from voicebot.server import create_app  # imported late: the settings are validated before any SDK loads

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
    await site.start()
    # Everything allocated at startup (modules, SDK clients) lives for the whole process: keep it out of every
    # future collection, and collect the young generation less often (GC was 10 % of a busy process's CPU).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info(
        "server_started", host=settings.host, port=settings.port, pid=os.getpid(),
        public_url=settings.public_url, missing=settings.missing(),
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server_stopping")
    await runner.cleanup()
    log.info("server_stopped")


def _worker(settings_json: bytes) -> None:
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    uvloop.run(serve(settings, reuse_port=True))


def run_workers(settings: Settings, workers: int) -> int:
    # Workers must share the stream-token key, or a token minted by one could not be redeemed by another.
    if settings.token_secret is None and settings.twilio_auth_token is None:
        settings = settings.model_copy(update={"token_secret": SecretStr(secrets.token_urlsafe(32))})
    data = orjson.dumps(_reveal(settings))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(data,), name=f"voicebot-worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


def _reveal(settings: Settings) -> dict[str, Any]:
    """The settings as plain JSON with secrets in clear, for handing to worker processes (never logged)."""
    out: dict[str, Any] = settings.model_dump(mode="json")
    for name in ("deepgram_api_key", "openai_api_key", "twilio_auth_token", "token_secret"):
        value = getattr(settings, name)
        out[name] = value.get_secret_value() if value is not None else None
    return out
