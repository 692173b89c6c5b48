"""Contract tests: the real twilio SDK (async call update) against the Twilio REST emulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from tests.emulator_fixtures import CALL_SID, TWILIO_SID, TWILIO_TOKEN
from voicebot.emulators import Emulators

HANGUP_TWIML = "<Response><Hangup/></Response>"

# twilio 9.13's AsyncTwilioHttpClient passes auth=aiohttp.BasicAuth(...), both deprecated in aiohttp 3.14: two
# DeprecationWarnings on every request (errors under filterwarnings=error). Not ours to fix; reported to the lead.
pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]


@pytest.fixture
async def twilio_for(emu: Emulators) -> AsyncIterator[list[AsyncTwilioHttpClient]]:
    """Collects the SDK's HTTP clients so that their aiohttp sessions are closed after the test."""
    made: list[AsyncTwilioHttpClient] = []
    yield made
    for http in made:
        await http.close()


def client(emu: Emulators, made: list[AsyncTwilioHttpClient], token: str = TWILIO_TOKEN) -> Client:
    http = AsyncTwilioHttpClient()
    made.append(http)
    tw = Client(TWILIO_SID, token, http_client=http)
    tw.api.base_url = emu.base_url  # PROVIDERS.md §4.6
    return tw


async def test_status_completed_is_recorded(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    call = await client(emu, twilio_for).calls(CALL_SID).update_async(status="completed")
    assert call.sid == CALL_SID
    assert call.status == "completed"
    [update] = emu.twilio.updates
    assert update.data == {"account_sid": TWILIO_SID, "call_sid": CALL_SID, "form": {"Status": "completed"}}


async def test_twiml_update_is_recorded(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    call = await client(emu, twilio_for).calls(CALL_SID).update_async(twiml=HANGUP_TWIML)
    assert call.status == "in-progress"
    assert emu.twilio.updates[0].data["form"] == {"Twiml": HANGUP_TWIML}


async def test_unknown_call_knob_gives_20404(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    emu.twilio.faults.error_status = 404
    with pytest.raises(TwilioRestException) as caught:
        await client(emu, twilio_for).calls(CALL_SID).update_async(status="completed")
    assert caught.value.status == 404
    assert caught.value.code == 20404
    assert "was not found" in caught.value.msg
    assert emu.twilio.updates == []


async def test_fail_next_500_then_recovery(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    emu.twilio.faults.fail_next = 1
    tw = client(emu, twilio_for)
    with pytest.raises(TwilioRestException) as caught:
        await tw.calls(CALL_SID).update_async(status="completed")
    assert caught.value.status == 500
    await tw.calls(CALL_SID).update_async(status="completed")
    assert len(emu.twilio.updates) == 1


async def test_wrong_token_is_401(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await client(emu, twilio_for, token="wrong").calls(CALL_SID).update_async(status="completed")
    assert caught.value.status == 401
    assert emu.select("twilio", "rejected")[0].data["status"] == 401
