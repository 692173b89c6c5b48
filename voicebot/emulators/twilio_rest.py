"""Twilio REST emulator: the call update ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from .common import Runtime, accepts, basic_credentials, json_response, sleep_ms
from .config import TwilioConfig
from .faults import Faults, wait_stall
from .log import Event

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

    @property
    def updates(self) -> list[Event]:
        """The ``update`` events recorded so far (data: account_sid, call_sid, form)."""
        return self._runtime.log.select("twilio", "update")

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json``."""
        with self._runtime.handler():
            try:
                return await self._handle(request)
            except asyncio.CancelledError:
                self._runtime.record_cancel("twilio", path=request.path)
                raise

    async def _handle(self, request: web.Request) -> web.Response:
        log, faults = self._runtime.log, self.faults
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        creds = basic_credentials(request)
        user_ok = creds is not None and accepts(creds[0], self.account_sid) and creds[0] == account_sid
        if creds is None or not user_ok or not accepts(creds[1] or None, self.auth_token):
            log.append("twilio", "rejected", status=401, call_sid=call_sid)
            return _error(401, request.path)
        await sleep_ms(faults.latency_ms)
        await wait_stall(faults.stall_s)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        status = faults.take_error()
        if status is not None:
            log.append("twilio", "rejected", status=status, call_sid=call_sid, form=form)
            return _error(status, request.path, faults.error_headers())
        log.append("twilio", "update", account_sid=account_sid, call_sid=call_sid, form=form)
        call_status = form.get("Status") or self.config.call_status_on_twiml
        return json_response(200, _call_resource(account_sid, call_sid, call_status))


def _error(status: int, path: str, headers: dict[str, str] | None = None) -> web.Response:
    code, message = _ERRORS.get(status, (status * 100, "Error"))
    body = {
        "code": code,
        "message": message.format(path=path),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return json_response(status, body, headers)


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
