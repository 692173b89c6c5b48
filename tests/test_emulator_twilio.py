"""Contract tests: the real twilio SDK (async call update) against the Twilio REST emulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from tests.emulator_fixtures import CALL_SID, EVENT_TIMEOUT_S, TWILIO_SID, TWILIO_TOKEN
from voicebot.emulators import Callee, EmulatedNumber, Emulators
from voicebot.twilio.security import validate_twilio_signature

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


# --- numbers and outbound calls (PROVIDERS-2.md §6) ---------------------------------------------------------------

NUMBER = "+15550100002"
CALLEE = "+15550109999"


async def test_numbers_list_filter_and_update(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    emu.twilio.config.numbers.append(EmulatedNumber("+15550100003", voice_application_sid="AP" + "1" * 32))
    tw = client(emu, twilio_for)
    every = await tw.incoming_phone_numbers.list_async()
    assert [n.phone_number for n in every] == [NUMBER, "+15550100003"]
    [one] = await tw.incoming_phone_numbers.list_async(phone_number=NUMBER)
    assert one.sid.startswith("PN") and len(one.sid) == 34
    assert (one.voice_url, one.voice_method, one.voice_application_sid, one.trunk_sid) == ("", "POST", None, None)
    assert await tw.incoming_phone_numbers.list_async(phone_number="+15550000000") == []
    updated = await tw.incoming_phone_numbers(one.sid).update_async(
        voice_url="https://bot.example.com/voice", voice_method="POST",
        status_callback="https://bot.example.com/twilio/status", status_callback_method="POST",
    )  # fmt: skip
    assert updated.voice_url == "https://bot.example.com/voice"
    assert updated.status_callback == "https://bot.example.com/twilio/status"
    assert emu.twilio.number(NUMBER).voice_url == "https://bot.example.com/voice"
    [event] = emu.select("twilio", "number_updated")
    assert event.data["form"]["VoiceMethod"] == "POST"


async def test_number_update_unknown_sid_is_404(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await client(emu, twilio_for).incoming_phone_numbers("PN" + "9" * 32).update_async(voice_url="https://x/voice")
    assert (caught.value.status, caught.value.code) == (404, 20404)


async def test_numbers_wrong_token_is_401(emu: Emulators, twilio_for: list[AsyncTwilioHttpClient]) -> None:
    # twilio 9.13 raises a bare TwilioException("Unable to fetch page", response) for a failed list page.
    with pytest.raises(TwilioException) as caught:
        await client(emu, twilio_for, token="wrong").incoming_phone_numbers.list_async()
    response = caught.value.args[1]
    assert response.status_code == 401
    assert orjson.loads(response.text)["code"] == 20003


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"to": CALLEE, "from_": "", "url": "https://x/voice"}, 21603),
        ({"to": "", "from_": NUMBER, "url": "https://x/voice"}, 21201),
        ({"to": "555", "from_": NUMBER, "url": "https://x/voice"}, 21211),
        ({"to": CALLEE, "from_": "+15550000000", "url": "https://x/voice"}, 21210),
        ({"to": CALLEE, "from_": NUMBER}, 21205),
    ],
)
async def test_call_create_errors(
    emu: Emulators, twilio_for: list[AsyncTwilioHttpClient], params: dict[str, str], code: int
) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await client(emu, twilio_for).calls.create_async(**params)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert emu.select("twilio", "call_created") == []


class Webhooks:
    """A stand-in for the bot's HTTP side: checks every signature and records what Twilio sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bool]] = []
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        url = self.base_url + request.raw_path
        valid = validate_twilio_signature(TWILIO_TOKEN, url, form, request.headers.get("X-Twilio-Signature"))
        self.received.append((request.path, form, valid))
        if request.path == "/voice":
            return web.Response(text="<Response><Say>You have reached a robot.</Say><Hangup/></Response>")
        return web.Response(status=204)


@pytest.fixture
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    app = web.Application()
    app.router.add_post("/{tail:.*}", hooks.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hooks.base_url = str(server.make_url("")).rstrip("/")
    yield hooks
    await server.close()


async def test_created_call_is_placed_with_signed_webhook_and_callbacks(
    emu: Emulators, twilio_for: list[AsyncTwilioHttpClient], webhooks: Webhooks
) -> None:
    emu.twilio.config.callee = Callee(answered_by="machine_end_beep")
    call = await client(emu, twilio_for).calls.create_async(
        to=CALLEE, from_=NUMBER, url=webhooks.base_url + "/voice?context=abc",
        status_callback=webhooks.base_url + "/status",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        machine_detection="DetectMessageEnd",
    )  # fmt: skip
    assert (call.status, call.direction, call.to, call._from) == ("queued", "outbound-api", CALLEE, NUMBER)
    ended = await emu.wait_for_kind("twilio", "call_ended", EVENT_TIMEOUT_S, call_sid=call.sid)
    assert ended.data["rejected"] and ended.data["say_text"] == "You have reached a robot."
    await emu.wait_for_kind("twilio", "callback", EVENT_TIMEOUT_S, call_sid=call.sid, event="completed")
    assert all(valid for _, _, valid in webhooks.received)
    statuses = [(path, form["CallStatus"]) for path, form, _ in webhooks.received]
    assert statuses == [
        ("/status", "initiated"), ("/status", "ringing"), ("/status", "in-progress"), ("/voice", "in-progress"),
        ("/status", "completed"),
    ]  # fmt: skip
    voice = webhooks.received[3][1]
    assert (voice["CallSid"], voice["Direction"], voice["AnsweredBy"]) == (call.sid, "outbound-api", "machine_end_beep")
    completed = webhooks.received[-1][1]
    assert completed["CallDuration"].isdigit() and completed["SequenceNumber"] == "3"


async def test_unanswered_call_reports_its_status(
    emu: Emulators, twilio_for: list[AsyncTwilioHttpClient], webhooks: Webhooks
) -> None:
    emu.twilio.config.callee = Callee(answered_by="busy")
    call = await client(emu, twilio_for).calls.create_async(
        to=CALLEE, from_=NUMBER, url=webhooks.base_url + "/voice", status_callback=webhooks.base_url + "/status"
    )
    event = await emu.wait_for_kind("twilio", "callback", EVENT_TIMEOUT_S, call_sid=call.sid)
    assert (event.data["event"], event.data["call_status"], event.data["http_status"]) == ("completed", "busy", 204)
    assert [path for path, _, _ in webhooks.received] == ["/status"]  # default events: completed only; no webhook
