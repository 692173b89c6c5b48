"""The Twilio REST calls the command line needs: list and update the account's numbers, create a call.

A small aiohttp client like the one that hangs calls up (PROVIDERS-2.md §6: twilio-python has no base-URL
option, and the emulators need one); the wire format is pinned by tests against the real SDK and the emulator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

REST_TIMEOUT_S = 15.0
API = "/2010-04-01/Accounts/{sid}"
MAX_PAGES = 20


class TwilioApiError(Exception):
    """A failed REST request, with Twilio's error code and message when the answer had them."""

    def __init__(self, status: int | None, code: int | None, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


def explain(error: TwilioApiError) -> str:
    """One line a new user understands."""
    hints = {
        20003: "Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
        20404: "Twilio has no such resource on this account",
        21210: "the From number is not on this account nor a verified caller id (set TWILIO_FROM_NUMBER or --from)",
        21603: "a From number is needed: set TWILIO_FROM_NUMBER or pass --from",
    }
    detail = f"HTTP {error.status}" if error.status is not None else "no answer"
    if error.code is not None:
        detail += f", Twilio error {error.code}"
    hint = hints.get(error.code or 0)
    return f"{hint} ({detail}: {error})" if hint else f"{error} ({detail})"


class TwilioAccount:
    """``/2010-04-01/Accounts/{sid}/…`` with Basic auth, on a session the caller owns."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, account_sid: str, auth_token: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._root = self._base + API.format(sid=account_sid)
        self._headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}

    async def _request(
        self, method: str, url: str, *, form: Sequence[tuple[str, str]] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        try:
            async with self._session.request(
                method, url, data=form, params=query, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_S),
            ) as resp:  # fmt: skip
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TwilioApiError(None, None, f"cannot reach {self._base}: {type(exc).__name__} {exc}") from exc
        data: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(body)
        if status >= 300:
            code = data.get("code") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            raise TwilioApiError(status, code, str(message or body[:200].decode(errors="replace")))
        if not isinstance(data, dict):
            raise TwilioApiError(status, None, "the answer is not a JSON object")
        return data

    async def numbers(self, phone_number: str | None = None) -> list[dict[str, Any]]:
        """The account's IncomingPhoneNumbers (all pages), or just ``phone_number``."""
        query = {"PageSize": "50"}
        if phone_number is not None:
            query["PhoneNumber"] = phone_number
        page = await self._request("GET", self._root + "/IncomingPhoneNumbers.json", query=query)
        numbers = list(page.get("incoming_phone_numbers", []))
        for _ in range(MAX_PAGES):
            next_uri = page.get("next_page_uri")
            if not next_uri:
                break
            page = await self._request("GET", self._base + next_uri)
            numbers += page.get("incoming_phone_numbers", [])
        return numbers

    async def update_number(self, number_sid: str, form: Mapping[str, str]) -> dict[str, Any]:
        return await self._request(
            "POST", f"{self._root}/IncomingPhoneNumbers/{number_sid}.json", form=list(form.items())
        )

    async def create_call(self, form: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """``POST Calls.json``; ``form`` is a list of pairs because ``StatusCallbackEvent`` repeats."""
        return await self._request("POST", self._root + "/Calls.json", form=form)
