"""Twilio REST call updates (hang up, redirect) on the process's shared aiohttp session.

One form POST per call end does not justify the twilio package at run time (its async client builds its own
aiohttp session per client); the wire format is pinned by the emulator contract test.
"""

from __future__ import annotations

import contextlib

import aiohttp
import orjson

from voicebot.errors import ProviderError

PROVIDER = "twilio"
REST_TIMEOUT_S = 10.0
NOT_FOUND_CODE = 20404


class TwilioRest:
    """``POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json`` with Basic auth."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, account_sid: str, auth_token: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._account_sid = account_sid
        self._headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}

    async def _update(self, call_sid: str, form: dict[str, str]) -> bool:
        url = f"{self._base_url}/2010-04-01/Accounts/{self._account_sid}/Calls/{call_sid}.json"
        try:
            async with self._session.post(
                url, data=form, headers=self._headers, timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_S)
            ) as resp:
                body = await resp.read()
                if resp.status < 300:
                    return True
                code = None
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    code = orjson.loads(body).get("code")
                if resp.status == 404 or code == NOT_FOUND_CODE:
                    return False  # the call has already ended
                raise ProviderError(
                    PROVIDER, f"call update failed: HTTP {resp.status} code {code}", transient=resp.status >= 500,
                    status=resp.status,
                )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(PROVIDER, f"call update failed: {type(exc).__name__}", transient=True) from exc

    async def hang_up(self, call_sid: str) -> bool:
        return await self._update(call_sid, {"Status": "completed"})

    async def redirect(self, call_sid: str, twiml: str) -> bool:
        return await self._update(call_sid, {"Twiml": twiml})
