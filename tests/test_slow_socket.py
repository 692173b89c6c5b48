"""A Twilio socket that stops reading: outbound buffering stays bounded and the call is closed after the stall.

The peer here is a raw TCP client with a tiny receive buffer that completes the WebSocket handshake, starts the
call, speaks, and then never reads again, so the server's writes back up through the kernel into its transport.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import aiohttp

from tests.conftest import AUTH_TOKEN
from tests.fake_twilio import STREAM_URL, new_call_sid, post_voice
from tests.world import World
from voicebot import clips
from voicebot.audio import FRAME_BYTES, silence
from voicebot.twilio import wire
from voicebot.twilio.security import twilio_signature

STALL_S = 1.0
CLOSE_BOUND_S = 30.0
TINY_BUFFER = 4096
LONG_REPLY = " ".join(
    f"This is sentence number {i} of a very long answer that keeps going on and on." for i in range(40)
)


def _frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


async def _metric(http: aiohttp.ClientSession, url: str, prefix: str) -> float:
    async with http.get(url) as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(prefix + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_peer_that_stops_reading_is_closed_after_the_stall(start_world: Any) -> None:
    world: World = await start_world(send_stall_timeout_s=STALL_S, idle_media_timeout_s=120.0)
    world.emu.stt.script.append("Tell me everything.")
    world.emu.llm.script.append(LONG_REPLY)  # minutes of audio: far more than the buffers on the way hold
    server = world.server
    async with aiohttp.ClientSession() as http:
        call_sid = new_call_sid()
        answer = await post_voice(http, server, call_sid)
        assert answer.token
        host, port = server.server.host, server.server.port
        assert port is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=TINY_BUFFER)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /media HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Twilio-Signature: {twilio_signature(AUTH_TOKEN, STREAM_URL, {})}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        stream_sid = "MZ" + os.urandom(16).hex()
        writer.write(_frame(wire.connected_message()))
        writer.write(
            _frame(
                wire.start_message(
                    stream_sid=stream_sid, call_sid=call_sid, account_sid="AC" + "0" * 32,
                    custom_parameters={"token": answer.token},
                )
            )
        )  # fmt: skip
        audio = clips.load("hours") + silence(1500)
        for n, i in enumerate(range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)):
            msg = wire.inbound_media_message(
                stream_sid=stream_sid, sequence_number=n + 3, chunk=n + 1, timestamp_ms=n * 20,
                audio=audio[i : i + FRAME_BYTES],
            )  # fmt: skip
            writer.write(_frame(msg))
        await writer.drain()
        # From here on the client never reads. The bot answers at length and its writes back up.
        metrics = server.url("/metrics")
        async with asyncio.timeout(CLOSE_BOUND_S):
            while await _metric(http, metrics, 'voicebot_calls_total{end_reason="peer_stalled"}') < 1:
                await asyncio.sleep(0.1)
        assert not server.state.sessions
        writer.close()
