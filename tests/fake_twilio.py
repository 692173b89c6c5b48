"""A small, low-level Twilio-like client for edge tests: it can send anything, valid or not."""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, RunningServer
from voicebot.audio import FRAME_BYTES, silence
from voicebot.twilio import wire
from voicebot.twilio.security import twilio_signature

IO_TIMEOUT_S = 10.0


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def voice_params(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": "+15551230000",
        "To": "+15559870000",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


@dataclass
class Answer:
    status: int
    body: str
    stream_url: str | None
    token: str | None
    say: str | None


async def post_voice(
    http: aiohttp.ClientSession,
    server: RunningServer,
    call_sid: str,
    *,
    sign_with: str | None = AUTH_TOKEN,
    signature: str | None = None,
) -> Answer:
    """POST the webhook as Twilio does (signed on the public URL) and pick the TwiML apart."""
    params = voice_params(call_sid)
    headers = {}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    elif sign_with is not None:
        headers["X-Twilio-Signature"] = twilio_signature(sign_with, PUBLIC_URL + "/voice", params)
    async with http.post(server.url("/voice"), data=params, headers=headers) as resp:
        body = await resp.text()
        status = resp.status
    stream_url = token = say = None
    if status == 200:
        root = ET.fromstring(body)
        stream = root.find("./Connect/Stream")
        if stream is not None:
            stream_url = stream.get("url")
            for param in stream.findall("Parameter"):
                if param.get("name") == "token":
                    token = param.get("value")
        say_el = root.find("./Say")
        say = say_el.text if say_el is not None else None
    return Answer(status, body, stream_url, token, say)


class MediaSocket:
    """The Twilio side of one Media Streams WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, call_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.seq = 0
        self.chunk = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, data: bytes | str) -> None:
        await self.ws.send_str(data if isinstance(data, str) else data.decode())

    async def connected(self) -> None:
        self._next()
        await self.send(wire.connected_message())

    async def start(self, token: str | None, **extra: str) -> None:
        params = dict(extra)
        if token is not None:
            params["token"] = token
        await self.send(
            wire.start_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=ACCOUNT_SID,
                custom_parameters=params,
                sequence_number=self._next(),
            )
        )

    async def media(self, audio: bytes = silence(20)) -> None:
        self.chunk += 1
        await self.send(
            wire.inbound_media_message(
                stream_sid=self.stream_sid,
                sequence_number=self._next(),
                chunk=self.chunk,
                timestamp_ms=(self.chunk - 1) * 20,
                audio=audio[:FRAME_BYTES],
            )
        )

    async def stop(self) -> None:
        await self.send(
            wire.stop_message(
                stream_sid=self.stream_sid,
                call_sid=self.call_sid,
                account_sid=ACCOUNT_SID,
                sequence_number=self._next(),
            )
        )

    async def closed(self, timeout: float = IO_TIMEOUT_S) -> tuple[int | None, list[Any]]:
        """Read until the server closes; return the close code and every non-close message received."""
        received: list[Any] = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return self.ws.close_code, received
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return self.ws.close_code, received
                received.append(msg.data)


STREAM_URL = PUBLIC_URL.replace("https://", "wss://", 1) + "/media"


async def open_media(
    http: aiohttp.ClientSession, server: RunningServer, call_sid: str, headers: dict[str, str] | None = None
) -> MediaSocket:
    """Open ``/media`` as Twilio does: the upgrade signed on the public stream URL, unless ``headers`` are given."""
    if headers is None:
        headers = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, STREAM_URL, {})}
    ws = await http.ws_connect(server.ws_url("/media"), headers=headers, timeout=aiohttp.ClientWSTimeout(10))
    return MediaSocket(ws, call_sid)


async def answered_call(http: aiohttp.ClientSession, server: RunningServer) -> MediaSocket:
    """Webhook, WebSocket, connected and a valid start: a call as Twilio opens it."""
    call_sid = new_call_sid()
    answer = await post_voice(http, server, call_sid)
    assert answer.token is not None, answer.body
    sock = await open_media(http, server, call_sid)
    await sock.connected()
    await sock.start(answer.token)
    return sock
