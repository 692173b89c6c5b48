"""Twilio REST emulator under ``/2010-04-01/Accounts/{AccountSid}``: call update (``Calls/{CallSid}.json``), call
create (``Calls.json``, and the call is placed: see twilio_calls.py), and the account's numbers
(``IncomingPhoneNumbers.json`` list, ``IncomingPhoneNumbers/{PN}.json`` update). Errors have Twilio's JSON shape
and codes: 401/20003 bad credentials, 404/20404 unknown resource, 400/21201, 21603, 21210, 21205 bad call
parameters."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from voicebot.caller.twiml import new_sid

from .common import Runtime, accepts, basic_credentials, json_response, sleep_ms
from .config import EmulatedNumber, TwilioConfig
from .faults import Faults, wait_stall
from .log import Event
from .twilio_calls import CallPlacer, PlacedCall

_ERRORS: dict[int, tuple[int, str]] = {
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource {path} was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
}


class TwilioService:
    """The Twilio REST emulator: knobs (``config``) and ``faults``; every update is logged as ``update``."""

    def __init__(self, config: TwilioConfig, runtime: Runtime, account_sid: str | None, auth_token: str | None) -> None:
        self.config = config
        self.faults = Faults()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._runtime = runtime
        self.placer = CallPlacer(config, runtime.log)

    @property
    def updates(self) -> list[Event]:
        """The ``update`` events recorded so far (data: account_sid, call_sid, form)."""
        return self._runtime.log.select("twilio", "update")

    def number(self, phone_number: str) -> EmulatedNumber:
        """The account's number ``phone_number`` (KeyError if it has none)."""
        for number in self.config.numbers:
            if number.phone_number == phone_number:
                return number
        raise KeyError(phone_number)

    async def handle(self, request: web.Request) -> web.Response:
        """Every route: authenticate, apply latency/stall/error faults, then dispatch on the route's name."""
        with self._runtime.handler():
            try:
                return await self._handle(request)
            except asyncio.CancelledError:
                self._runtime.record_cancel("twilio", path=request.path)
                raise

    async def _handle(self, request: web.Request) -> web.Response:
        log, faults = self._runtime.log, self.faults
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info.get("call_sid")
        creds = basic_credentials(request)
        user_ok = creds is not None and accepts(creds[0], self.account_sid) and creds[0] == account_sid
        if creds is None or not user_ok or not accepts(creds[1] or None, self.auth_token):
            log.append("twilio", "rejected", status=401, call_sid=call_sid, path=request.path)
            return _error(401, request.path)
        await sleep_ms(faults.latency_ms)
        await wait_stall(faults.stall_s)
        post = await request.post()
        form = {k: v for k, v in post.items() if isinstance(v, str)}
        status = faults.take_error()
        if status is not None:
            log.append("twilio", "rejected", status=status, call_sid=call_sid, form=form, path=request.path)
            return _error(status, request.path, faults.error_headers())
        route = request.match_info.route.name
        if route == "numbers":
            return self._list_numbers(account_sid, request)
        if route == "number":
            return self._update_number(account_sid, request.match_info["number_sid"], form, request.path)
        if route == "calls":
            events = [v for v in post.getall("StatusCallbackEvent", []) if isinstance(v, str)]
            return self._create_call(account_sid, creds[1], form, events, request.path)
        assert call_sid is not None
        log.append("twilio", "update", account_sid=account_sid, call_sid=call_sid, form=form)
        if form.get("Status") == "completed":
            self.placer.hang_up(call_sid)
        call_status = form.get("Status") or self.config.call_status_on_twiml
        return json_response(200, _call_resource(account_sid, call_sid, call_status))

    def _list_numbers(self, account_sid: str, request: web.Request) -> web.Response:
        wanted = request.query.get("PhoneNumber")
        numbers = [n for n in self.config.numbers if wanted is None or n.phone_number == wanted]
        self._runtime.log.append("twilio", "numbers_listed", phone_number=wanted, count=len(numbers))
        uri = f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json"
        page_uri = f"{uri}?PageSize=50&Page=0" + (f"&PhoneNumber={quote(wanted)}" if wanted else "")
        return json_response(
            200,
            {
                "incoming_phone_numbers": [_number_resource(account_sid, n) for n in numbers],
                "first_page_uri": page_uri, "next_page_uri": None, "previous_page_uri": None,
                "page": 0, "page_size": 50, "start": 0, "end": max(0, len(numbers) - 1), "uri": page_uri,
            },
        )  # fmt: skip

    def _update_number(self, account_sid: str, number_sid: str, form: dict[str, str], path: str) -> web.Response:
        number = next((n for n in self.config.numbers if n.sid == number_sid), None)
        if number is None:
            self._runtime.log.append("twilio", "rejected", status=404, number_sid=number_sid, form=form)
            return _error(404, path)
        for param, attr in _NUMBER_FIELDS.items():
            if param in form:
                value: str | None = form[param]
                setattr(number, attr, value if value or attr not in _NULLABLE else None)
        self._runtime.log.append("twilio", "number_updated", number_sid=number_sid, form=form)
        return json_response(200, _number_resource(account_sid, number))

    def _create_call(
        self, account_sid: str, auth_token: str, form: dict[str, str], events: list[str], path: str
    ) -> web.Response:
        problem = self._call_problem(form)
        if problem is not None:
            code, message = problem
            self._runtime.log.append("twilio", "rejected", status=400, code=code, form=form)
            return json_response(
                400, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                      "status": 400},
            )  # fmt: skip
        call = PlacedCall.from_form(new_sid("CA"), account_sid, auth_token, form, events)
        self._runtime.log.append("twilio", "call_created", call_sid=call.sid, form=form, events=sorted(call.events))
        self.placer.place(call)
        return json_response(201, call.resource())

    def _call_problem(self, form: dict[str, str]) -> tuple[int, str] | None:
        to, from_ = form.get("To", ""), form.get("From", "")
        if not to:
            return 21201, "No 'To' number is specified"
        if not from_:
            return 21603, "A 'From' phone number is required."
        if not _E164.fullmatch(to):
            return 21211, f"Invalid 'To' Phone Number: {to}"
        owned = {n.phone_number for n in self.config.numbers} | set(self.config.verified_caller_ids)
        if from_ not in owned:
            return 21210, f"The source phone number provided, {from_}, is not yet verified for your account."
        if not form.get("Url") and not form.get("Twiml"):
            return 21205, "A 'Url', 'Twiml', or 'ApplicationSid' parameter is required."
        if not form.get("Url"):
            return 21205, "This emulator places calls with a Url only (Twiml is not supported)."
        return None


def _error(status: int, path: str, headers: dict[str, str] | None = None) -> web.Response:
    code, message = _ERRORS.get(status, (status * 100, "Error"))
    body = {
        "code": code,
        "message": message.format(path=path),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return json_response(status, body, headers)


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_NUMBER_FIELDS = {
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "VoiceApplicationSid": "voice_application_sid",
    "TrunkSid": "trunk_sid",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "FriendlyName": "friendly_name",
}
_NULLABLE = frozenset({"voice_application_sid", "trunk_sid"})


def _number_resource(account_sid: str, n: EmulatedNumber) -> dict[str, Any]:
    now = format_datetime(datetime.now(UTC), usegmt=True)
    return {
        "sid": n.sid,
        "account_sid": account_sid,
        "phone_number": n.phone_number,
        "friendly_name": n.friendly_name,
        "voice_url": n.voice_url,
        "voice_method": n.voice_method,
        "voice_fallback_url": None,
        "voice_fallback_method": "POST",
        "voice_caller_id_lookup": False,
        "voice_application_sid": n.voice_application_sid,
        "trunk_sid": n.trunk_sid,
        "status_callback": n.status_callback,
        "status_callback_method": n.status_callback_method,
        "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
        "api_version": "2010-04-01",
        "date_created": now,
        "date_updated": now,
        "uri": f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers/{n.sid}.json",
    }


def _call_resource(account_sid: str, call_sid: str, status: str) -> dict[str, Any]:
    now = format_datetime(datetime.now(UTC), usegmt=True)
    return {
        "sid": call_sid,
        "account_sid": account_sid,
        "status": status,
        "date_updated": now,
        "direction": "inbound",
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
    }
