"""A finished call is freed at once: none of its objects waits for a full run of the cycle collector.

A call whose objects sit in a reference cycle stays in memory until the next full collection, which at 20 calls
came every few hundred calls: hundreds of finished calls' objects held at once, and the allocator's arenas pinned
by them (the soak's RSS plateau and steps, BENCHMARKS.md "Round 3")."""

from __future__ import annotations

import asyncio
import gc
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.world import World
from voicebot.call.session import CallSession
from voicebot.caller import HangUp, Say, WaitForBotAudio, WaitForBotSilence

WAIT_S = 10.0


@contextmanager
def no_automatic_collections() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def describe(obj: Any) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_qualname} ({obj.f_code.co_filename.rsplit('/', 2)[-1]}:{obj.f_lineno})"
    return f"{type(obj).__qualname__} {repr(obj)[:100]}"


def referrer_tree(obj: Any, ignore: list[Any], depth: int = 7) -> list[str]:
    """Who holds ``obj``, and who holds them, ``depth`` levels out (objects in the oldest generation marked ``OLD``:
    a cycle through one of them waits for a full collection), for the failure message."""
    lines: list[str] = []
    old = {id(o) for o in gc.get_objects(generation=2)}
    seen = {id(obj), *(id(x) for x in ignore), id(lines), id(old)}

    def walk(o: Any, level: int) -> None:
        if level == depth:
            return
        for r in gc.get_referrers(o):
            if id(r) in seen or type(r).__name__ in ("list_iterator", "dict_itemiterator"):
                continue
            seen.add(id(r))
            lines.append("  " * level + ("OLD " if id(r) in old else "") + describe(r))
            walk(r, level + 1)

    walk(obj, 0)
    return lines


@pytest.mark.parametrize("hang_up", ["after_the_reply", "during_the_reply"])
async def test_a_finished_call_is_freed_without_a_full_collection(start_world: Any, hang_up: str) -> None:
    world: World = await start_world()
    world.emu.stt.script.append("When are you open?")
    world.emu.llm.script.append("We are open from nine to six.")
    state = world.server.state
    with no_automatic_collections():
        heard = [WaitForBotAudio(WAIT_S), WaitForBotSilence(WAIT_S, quiet_ms=400)]
        # Hanging up while the bot speaks ends the call with its turn cancelled mid-reply.
        reply = heard if hang_up == "after_the_reply" else [WaitForBotAudio(WAIT_S)]
        call = asyncio.create_task(world.call([*heard, Say("hours"), *reply, HangUp()]))
        async with asyncio.timeout(WAIT_S):
            while not state.sessions or next(iter(state.sessions)).conversation is None:
                await asyncio.sleep(0.01)
        session: CallSession = next(iter(state.sessions))
        refs = {"session": weakref.ref(session)}
        refs["conversation"] = weakref.ref(session.conversation)
        refs["websocket"] = weakref.ref(session.ws)
        del session
        await asyncio.sleep(1.0)  # the greeting plays
        # A full collection moves every live object of the call to the oldest generation, as a long call's objects
        # get there in a busy server; a cycle among them is then freed only by the next full collection.
        gc.collect()
        result = await call
        assert result.ok, result.format_timeline()
        async with asyncio.timeout(WAIT_S):
            while state.sessions:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the handler's last steps after the session leaves the set
        gc.collect(1)  # the young generations only: what the interpreter collects every few thousand allocations
        alive = {name: ref() for name, ref in refs.items() if ref() is not None}
        held = {name: referrer_tree(obj, [alive, refs]) for name, obj in alive.items()}
        del alive
        assert not held, "\n".join(f"{name}:\n" + "\n".join(lines) for name, lines in held.items())
