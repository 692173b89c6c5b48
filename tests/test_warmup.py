"""Startup warm-up: the LLM connection and the SDKs' lazy paths are ready before the server answers /healthz."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.world import World
from voicebot.providers.openai_llm import OpenAiChat


async def test_the_llm_is_warmed_before_healthz_answers_and_kept_warm(start_world: Any) -> None:
    world: World = await start_world()
    # start_world returns once the server listens: the one-token warm-up request was made before that.
    [warmup] = world.emu.select("llm", "warmup")
    assert warmup.data["body"]["max_completion_tokens"] == 1
    assert world.emu.llm.requests == []  # not counted as a turn
    async with aiohttp.ClientSession() as http, http.get(world.server.url("/healthz")) as resp:
        assert (await resp.json())["status"] == "ok"
    llm = world.services.llm
    assert isinstance(llm, OpenAiChat)
    await llm.keep_warm()
    assert world.emu.select("llm", "models")
