"""``python -m voicebot twilio numbers|connect|call`` and ``doctor`` against the Twilio REST emulator."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ACCOUNT_SID, PUBLIC_URL, make_settings
from voicebot import doctor
from voicebot.emulators import Callee, EmulatedNumber, Emulators
from voicebot.settings import Settings
from voicebot.twilio import cli, outbound

NUMBER = "+15550100002"
CALLEE = "+15550109999"
EVENT_TIMEOUT_S = 10.0


def settings_for(emulators: Emulators, **overrides: Any) -> Settings:
    return make_settings(**{"twilio_api_base_url": emulators.base_url, "twilio_from_number": NUMBER, **overrides})


async def twilio(argv: list[str], settings: Settings) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = await cli.run(argv, settings=settings, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "argv", [["twilio"], ["twilio", "numbers"], ["twilio", "connect"], ["twilio", "call"], ["doctor"]]
)
def test_every_command_has_help(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", *argv, "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m voicebot " + argv[0])


def test_the_entry_point_runs_a_command_and_gives_a_one_line_reason() -> None:
    env = {"PATH": "/usr/bin:/bin", "TWILIO_ACCOUNT_SID": ""}  # run in / : no config file, no .env
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", "twilio", "numbers"], capture_output=True, text=True, check=False,
        timeout=60, env=env, cwd="/",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "voicebot twilio numbers: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (Twilio console -> Account info)\n"
    )


async def test_numbers_lists_where_each_number_points(emulators: Emulators) -> None:
    emulators.twilio.config.numbers = [
        EmulatedNumber(NUMBER, voice_url=PUBLIC_URL + "/voice", status_callback=PUBLIC_URL + "/twilio/status"),
        EmulatedNumber("+15550100003", voice_url="https://demo.twilio.com/welcome/voice/",
                       voice_application_sid="AP" + "1" * 32),
    ]  # fmt: skip
    status, out, err = await twilio(["numbers"], settings_for(emulators))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"{NUMBER}  {emulators.twilio.number(NUMBER).sid}  {NUMBER}",
        f"    voice webhook:   POST {PUBLIC_URL}/voice  <- this bot",
        f"    status callback: {PUBLIC_URL}/twilio/status  <- this bot",
        f"+15550100003  {emulators.twilio.number('+15550100003').sid}  +15550100003",
        "    voice webhook:   POST https://demo.twilio.com/welcome/voice/",
        "    status callback: (none)",
        f"    ! voice application AP{'1' * 32} is set: Twilio ignores the voice webhook; remove it in the console "
        "(Phone number -> Voice configuration -> Configure with: Webhook)",
    ]


async def test_numbers_with_a_wrong_token_says_so(emu: Emulators) -> None:
    status, out, err = await twilio(["numbers"], settings_for(emu, twilio_account_sid="AC" + "0" * 32))
    assert (status, out) == (1, "")
    assert err == (
        "voicebot twilio numbers: Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
        "(HTTP 401, Twilio error 20003: Authenticate)\n"
    )


async def test_connect_points_the_number_at_this_bot(emulators: Emulators) -> None:
    status, out, err = await twilio(["connect", NUMBER], settings_for(emulators))
    assert (status, err) == (0, "")
    number = emulators.twilio.number(NUMBER)
    assert (number.voice_url, number.voice_method) == (PUBLIC_URL + "/voice", "POST")
    assert (number.status_callback, number.status_callback_method) == (PUBLIC_URL + "/twilio/status", "POST")
    before, after = out.split("after:\n")
    assert "voice webhook:   POST (none)" in before
    assert f"voice webhook:   POST {PUBLIC_URL}/voice  <- this bot" in after
    [event] = emulators.select("twilio", "number_updated")
    assert event.data["form"] == {
        "VoiceUrl": PUBLIC_URL + "/voice", "VoiceMethod": "POST",
        "StatusCallback": PUBLIC_URL + "/twilio/status", "StatusCallbackMethod": "POST",
    }  # fmt: skip


async def test_connect_warns_about_an_application_that_overrides_the_webhook(emulators: Emulators) -> None:
    emulators.twilio.config.numbers = [EmulatedNumber(NUMBER, trunk_sid="TK" + "2" * 32)]
    status, _, err = await twilio(["connect", NUMBER], settings_for(emulators))
    assert status == 0
    assert err.startswith(f"warning: SIP trunk TK{'2' * 32} is set: Twilio routes calls to the trunk")


@pytest.mark.parametrize(
    ("argv", "overrides", "code", "reason"),
    [
        (["connect", "+15550000000"], {}, 1, f"no number +15550000000 on account {ACCOUNT_SID}"),
        (["connect", "5550100002"], {}, 2, "number '5550100002' is not an E.164 phone number"),
        (["connect", NUMBER], {"public_url": "http://bot.example.com"}, 1, "VOICEBOT_PUBLIC_URL is http://bot"),
        (["call", CALLEE], {"twilio_from_number": ""}, 2, "no caller id: set TWILIO_FROM_NUMBER or pass --from"),
        (["call", CALLEE, "--from", "+15550000000"], {}, 1, "the From number is not on this account"),
        (["call", CALLEE, "--context", "x" * 501], {}, 2, "--context: the context has 501 characters"),
        (["call", CALLEE], {"twilio_auth_token": None}, 2, "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
    ],
)
async def test_commands_refuse_with_a_one_line_reason(
    emulators: Emulators, argv: list[str], overrides: dict[str, Any], code: int, reason: str
) -> None:
    status, out, err = await twilio(argv, settings_for(emulators, **overrides))
    assert (status, out) == (code, "")
    assert err.startswith(f"voicebot twilio {argv[0]}: {reason}")
    assert err.count("\n") == 1
    assert emulators.select("twilio", "number_updated") == emulators.select("twilio", "call_created") == []


async def test_connect_force_accepts_an_http_public_url(emulators: Emulators) -> None:
    settings = settings_for(emulators, public_url="http://127.0.0.1:8080")
    status, _, _ = await twilio(["connect", NUMBER, "--force"], settings)
    assert status == 0
    assert emulators.twilio.number(NUMBER).voice_url == "http://127.0.0.1:8080/voice"


async def test_call_creates_the_call_twilio_needs(emulators: Emulators) -> None:
    emulators.twilio.config.callee = Callee(answered_by="no-answer")  # the placing itself is tested in test_outbound
    context = "Remind Ana about her 3 pm appointment."
    status, out, err = await twilio(["call", CALLEE, "--amd", "--context", context], settings_for(emulators))
    assert (status, err) == (0, "")
    [created] = emulators.select("twilio", "call_created")
    assert out == (
        f"calling {CALLEE} from {NUMBER}: {created.data['call_sid']} (queued), answering-machine detection, "
        "with context\n"
    )
    form = created.data["form"]
    assert form["Url"] == f"{PUBLIC_URL}/voice?context={outbound.encode_context(context)}"
    assert outbound.context_from_url(form["Url"]) == context
    assert (form["To"], form["From"], form["Method"]) == (CALLEE, NUMBER, "POST")
    assert (form["StatusCallback"], form["MachineDetection"]) == (PUBLIC_URL + "/twilio/status", "DetectMessageEnd")
    assert created.data["events"] == ["answered", "completed", "initiated", "ringing"]
    await emulators.wait_for_kind("twilio", "call_ended", EVENT_TIMEOUT_S, call_sid=created.data["call_sid"])


async def test_doctor_explains_a_fresh_configuration() -> None:
    settings = Settings.model_validate({"port": 9, "twilio_api_base_url": "http://127.0.0.1:9"})
    out = io.StringIO()
    assert await doctor.run([], settings=settings, out=out) == 1
    text = out.getvalue()
    for expected in (
        "PROBLEM  DEEPGRAM_API_KEY and OPENAI_API_KEY not set",
        "PROBLEM  VOICEBOT_PUBLIC_URL is http://127.0.0.1:9: Twilio needs an https:// address",
        "PROBLEM  TWILIO_AUTH_TOKEN not set",
        "PROBLEM  nothing answers on 127.0.0.1:9",
        "PROBLEM  TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN not set",
        "5 problem(s): a call would fail until they are fixed.",
    ):
        assert expected in text, text


async def test_doctor_finds_the_number_pointing_elsewhere_and_an_unreachable_url(
    emulators: Emulators, start_server: Any
) -> None:
    emulators.twilio.config.numbers = [EmulatedNumber(NUMBER, voice_url="https://old-host.example/voice")]
    server = await start_server(twilio_api_base_url=emulators.base_url)
    settings = settings_for(emulators, port=server.server.port)
    out = io.StringIO()
    assert await doctor.run([], settings=settings, out=out) == 1
    lines = out.getvalue().splitlines()
    assert "ok       Deepgram and OpenAI keys are set" in lines
    assert f"ok       the bot answers on 127.0.0.1:{server.server.port} (healthz: HTTP 200)" in lines
    assert any(line.startswith(f"PROBLEM  cannot reach {PUBLIC_URL}/voice") for line in lines)
    assert f"warning  {NUMBER} sends its calls elsewhere: https://old-host.example/voice" in lines
    assert (
        f"PROBLEM  no number sends its calls to {PUBLIC_URL}/voice: run `python -m voicebot twilio connect +1NNN`"
        " with one of yours" in lines
    )
