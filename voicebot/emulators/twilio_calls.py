"""Outbound calls the Twilio REST emulator places (``POST …/Calls.json``): ring, answer, webhook, stream, callbacks.

A created call is really placed: the emulator sends the status callbacks the request asked for, "answers" with the
configured :class:`~voicebot.emulators.config.Callee` (a person or an answering machine), fetches the call's
``Url`` with a valid ``X-Twilio-Signature`` (form with ``Direction=outbound-api`` and, with AMD, ``AnsweredBy``),
and runs the :class:`~voicebot.caller.SimulatedCaller` on the TwiML it gets back; when the callee's side ends it
posts ``completed`` with ``CallDuration``. A REST hang-up (``Status=completed``) ends the callee's side too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voicebot.caller import SimulatedCaller
from voicebot.twilio.security import twilio_signature

from .config import TwilioConfig
from .log import EventLog

CALLBACK_TIMEOUT_S = 15.0
"""Twilio waits this long for a callback's answer."""
UNANSWERED = frozenset({"no-answer", "busy", "failed"})
EVENT_STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress", "completed": "completed"}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _path_qs(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass
class PlacedCall:
    """One outbound call: the REST request's parameters and what happened to it."""

    sid: str
    account_sid: str
    auth_token: str
    to: str
    from_: str
    url: str
    status_callback: str
    events: frozenset[str]
    machine_detection: str
    async_amd_callback: str
    status: str = "queued"
    answered_by: str | None = None
    answered_at: float | None = None
    sequence: int = 0
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_form(
        cls, sid: str, account_sid: str, auth_token: str, form: Mapping[str, str], events: list[str]
    ) -> PlacedCall:
        wanted = frozenset(e.strip().lower() for e in events if e.strip()) or frozenset({"completed"})
        return cls(
            sid=sid, account_sid=account_sid, auth_token=auth_token, to=form["To"], from_=form["From"],
            url=form.get("Url", ""), status_callback=form.get("StatusCallback", ""), events=wanted,
            machine_detection=form.get("MachineDetection", ""),
            async_amd_callback=form.get("AsyncAmdStatusCallback", "") if form.get("AsyncAmd") == "true" else "",
        )  # fmt: skip

    def resource(self) -> dict[str, Any]:
        """The Call as the REST API returns it."""
        now = format_datetime(datetime.now(UTC), usegmt=True)
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "status": self.status,
            "direction": "outbound-api",
            "answered_by": self.answered_by,
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "start_time": None,
            "end_time": None,
            "duration": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}.json",
        }

    def base_params(self) -> dict[str, str]:
        """What every webhook and callback of this call carries."""
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.sid,
            "CallStatus": self.status,
            "Called": self.to,
            "Caller": self.from_,
            "Direction": "outbound-api",
            "From": self.from_,
            "To": self.to,
        }


class CallPlacer:
    """Runs placed calls as tasks owned here (cancelled at shutdown) and records each step in the log."""

    def __init__(self, config: TwilioConfig, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.calls: dict[str, PlacedCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def place(self, call: PlacedCall) -> None:
        self.calls[call.sid] = call
        task = asyncio.create_task(self._run(call), name=f"placed-call-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def hang_up(self, call_sid: str) -> bool:
        """A REST ``Status=completed`` for a placed call; False if it is not one of ours."""
        call = self.calls.get(call_sid)
        if call is None:
            return False
        call.hung_up.set()
        return True

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _session(self) -> aiohttp.ClientSession:
        connector = self.config.connector() if self.config.connector is not None else None
        return aiohttp.ClientSession(connector=connector)

    async def _run(self, call: PlacedCall) -> None:
        callee = self.config.callee
        async with self._session() as http:
            call.status = "initiated"
            await self._callback(http, call, "initiated")
            call.status = "ringing"
            await self._callback(http, call, "ringing")
            if callee.ring_ms > 0:
                await asyncio.sleep(callee.ring_ms / 1000)
            if callee.answered_by in UNANSWERED:
                call.status = callee.answered_by
                self.log.append("twilio", "call_ended", call_sid=call.sid, status=call.status, ended_by="unanswered")
                await self._callback(http, call, "completed", final=True)
                return
            call.status = "in-progress"
            call.answered_at = time.monotonic()
            if call.machine_detection:
                call.answered_by = callee.answered_by
            await self._callback(http, call, "answered")
            if call.async_amd_callback:
                await self._post(http, call, call.async_amd_callback, {"AnsweredBy": callee.answered_by}, "amd")
        result = await self._answer(call)
        call.status = "completed"
        ended_by = "rest_hang_up" if call.hung_up.is_set() else result.ended_by
        self.log.append(
            "twilio", "call_ended", call_sid=call.sid, status=call.status, ended_by=ended_by,
            rejected=result.rejected, say_text=result.say_text, failures=list(result.failures),
        )  # fmt: skip
        async with self._session() as http:
            await self._callback(http, call, "completed", final=True)

    async def _answer(self, call: PlacedCall) -> Any:
        """The callee's side: the signed webhook, then the stream, until either side hangs up."""
        origin = _origin(call.url)
        extra = {"CallStatus": "in-progress", "Direction": "outbound-api"}
        if call.answered_by is not None:
            extra["AnsweredBy"] = call.answered_by
        caller = SimulatedCaller(
            self.config.reach.get(origin, origin),
            self.config.callee.script(),
            auth_token=call.auth_token,
            public_url=origin,
            from_number=call.from_,
            to_number=call.to,
            voice_path=_path_qs(call.url),
            call_sid=call.sid,
            account_sid=call.account_sid,
            webhook_parameters=extra,
            connector=self.config.connector,
        )
        task = asyncio.create_task(caller.run(timeout=self.config.callee.timeout_s))
        hung_up = asyncio.create_task(call.hung_up.wait())
        try:
            await asyncio.wait({task, hung_up}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # hung up through the REST API: Twilio ends the stream
                await caller.hang_up()
            return await task
        finally:
            hung_up.cancel()
            if not task.done():
                task.cancel()

    async def _callback(
        self, http: aiohttp.ClientSession, call: PlacedCall, event: str, *, final: bool = False
    ) -> None:
        if not call.status_callback or event not in call.events:
            return
        params: dict[str, str] = {}
        if final and call.answered_at is not None:
            params["CallDuration"] = str(round(time.monotonic() - call.answered_at))
        if call.answered_by is not None:
            params["AnsweredBy"] = call.answered_by
        await self._post(http, call, call.status_callback, params, event)

    async def _post(
        self, http: aiohttp.ClientSession, call: PlacedCall, url: str, extra: Mapping[str, str], event: str
    ) -> None:
        call.sequence += 1
        params = {
            **call.base_params(),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.sequence - 1),
            "Timestamp": format_datetime(datetime.now(UTC), usegmt=True),
            **extra,
        }
        headers = {"X-Twilio-Signature": twilio_signature(call.auth_token, url, params)}
        target = self.config.reach.get(_origin(url), _origin(url)) + _path_qs(url)
        status: int | str
        try:
            async with asyncio.timeout(CALLBACK_TIMEOUT_S):
                async with http.post(target, data=params, headers=headers) as resp:
                    status = resp.status
                    await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        self.log.append(
            "twilio", "callback", call_sid=call.sid, event=event, call_status=params["CallStatus"], url=url,
            http_status=status, answered_by=params.get("AnsweredBy"),
        )  # fmt: skip
