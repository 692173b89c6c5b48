"""``POST /twilio/status``: signed status callbacks are logged, counted and appended to the call's transcript."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import AUTH_TOKEN, PUBLIC_URL, RunningServer, ServerFactory
from tests.world import World
from voicebot.caller import HangUp, WaitForBotAudio, WaitForBotSilence
from voicebot.twilio.security import twilio_signature

CALL_SID = "CA" + "5" * 32


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def callback(call_sid: str = CALL_SID, status: str = "completed", **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": status,
        "Direction": "outbound-api", "From": "+15550100002", "To": "+15550109999", "SequenceNumber": "3",
        "CallbackSource": "call-progress-events", **extra,
    }  # fmt: skip


async def post_status(
    http: aiohttp.ClientSession, server: RunningServer, form: dict[str, str], *, signed_url: str | None = None,
    token: str = AUTH_TOKEN, sign: bool = True,
) -> int:  # fmt: skip
    headers = {}
    if sign:
        headers["X-Twilio-Signature"] = twilio_signature(token, signed_url or PUBLIC_URL + "/twilio/status", form)
    async with http.post(server.url("/twilio/status"), data=form, headers=headers) as resp:
        return resp.status


async def status_counts(http: aiohttp.ClientSession, server: RunningServer) -> dict[str, float]:
    async with http.get(server.url("/metrics")) as resp:
        text = await resp.text()
    prefix = "voicebot_twilio_status_callbacks_total{status="
    return {
        line[len(prefix) + 1 : line.index('"}')]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def transcript_lines(directory: Path, call_sid: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (directory / f"{call_sid}.jsonl").read_bytes().splitlines()]


async def test_signed_callback_is_counted_and_written(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(transcript_dir=tmp_path)
    assert await post_status(http, server, callback(status="ringing")) == 204
    form = callback(status="completed", CallDuration="42", AnsweredBy="human")
    assert await post_status(http, server, form) == 204
    assert await status_counts(http, server) == {"completed": 1.0, "ringing": 1.0}
    lines = transcript_lines(tmp_path, CALL_SID)
    assert [(line["kind"], line["status"]) for line in lines] == [
        ("twilio_status", "ringing"),
        ("twilio_status", "completed"),
    ]
    assert lines[1] | {"ts": 0} == {
        "ts": 0, "kind": "twilio_status", "status": "completed", "answered_by": "human", "duration_s": "42",
        "sequence": "3", "direction": "outbound-api",
    }  # fmt: skip


@pytest.mark.parametrize(
    "how",
    ["unsigned", "forged", "other_token", "signed_over_http", "signed_other_path", "tampered"],
)
async def test_unsigned_or_forged_callbacks_get_403(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path, how: str
) -> None:
    server = await start_server(transcript_dir=tmp_path)
    form = callback()
    kwargs: dict[str, Any] = {
        "unsigned": {"sign": False},
        "forged": {"token": "x" * 32},
        "other_token": {"token": AUTH_TOKEN + "0"},
        "signed_over_http": {"signed_url": PUBLIC_URL.replace("https://", "http://") + "/twilio/status"},
        "signed_other_path": {"signed_url": PUBLIC_URL + "/voice"},
        "tampered": {},
    }[how]
    if how == "tampered":
        headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, PUBLIC_URL + "/twilio/status", form)}
        async with http.post(server.url("/twilio/status"), data={**form, "CallStatus": "busy"}, headers=headers) as r:
            status = r.status
    else:
        status = await post_status(http, server, form, **kwargs)
    assert status == 403
    assert await status_counts(http, server) == {"forbidden": 1.0}
    assert not (tmp_path / f"{CALL_SID}.jsonl").exists()


async def test_without_an_auth_token_every_callback_is_refused(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = await start_server(transcript_dir=tmp_path, twilio_auth_token=None)
    assert await post_status(http, server, callback()) == 403
    assert await post_status(http, server, callback(), sign=False) == 403


async def test_callback_after_the_stream_ended_joins_the_calls_transcript(
    start_world: Any, http: aiohttp.ClientSession
) -> None:
    world: World = await start_world()
    result = await world.call([WaitForBotAudio(10), WaitForBotSilence(10, 500), HangUp()])
    assert result.ok, result.format_timeline()
    form = callback(result.call_sid, "completed", CallDuration="3", Direction="inbound")
    assert await post_status(http, world.server, form) == 204
    lines = transcript_lines(world.transcripts, result.call_sid)
    assert lines[0]["kind"] == "assistant"  # the greeting, written during the call
    assert lines[-1]["kind"] == "twilio_status" and lines[-1]["status"] == "completed"
