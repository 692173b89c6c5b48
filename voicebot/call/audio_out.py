"""The call's socket writer: the one place audio, marks and clears reach Twilio.

Fenced by generation (audio of a cancelled turn is dropped here, never sent), bounded by a send timeout, and with
back-pressure on audio only, so a clear is never stuck behind a backlog.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMsgType, web

from voicebot.call.playout import PlayoutLedger
from voicebot.errors import CallEnded
from voicebot.twilio import wire

OUTBOUND_BUFFER_LIMIT = 256 * 1024
"""Bytes waiting in our process for the Twilio socket; above this the writer waits (the kernel buffers the rest)."""
OUTBOUND_POLL_S = 0.02


class CallAudioOut:
    """The one place audio, marks and clears reach the socket; fenced by generation, bounded by a send timeout."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stream_sid: str,
        ledger: PlayoutLedger,
        stall_s: float,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self._stream_sid = stream_sid
        self.ledger = ledger
        self._stall_s = stall_s
        self.current_gen = 0
        self.dropped_stale = 0

    def sent_bytes(self) -> int:
        return self.ledger.sent_bytes

    async def send_media(self, gen: int, audio: bytes) -> bool:
        if gen != self.current_gen:
            self.dropped_stale += 1  # generation fencing: audio of a cancelled turn never reaches the caller
            return False
        self.ledger.audio_sent(len(audio), time.monotonic())
        await self._send(wire.media_message(self._stream_sid, audio), audio=True)
        return True

    async def send_mark(self, gen: int, name: str) -> bool:
        if gen != self.current_gen:
            return False
        self.ledger.mark_sent(name, time.monotonic())
        await self._send(wire.mark_message(self._stream_sid, name))
        return True

    async def send_clear(self) -> int:
        """Send ``clear``; return the ledger position the caller had heard up to."""
        played = self.ledger.cleared(time.monotonic())
        await self._send(wire.clear_message(self._stream_sid))
        return played

    def _over_limit(self) -> bool:
        return self._transport is not None and self._transport.get_write_buffer_size() > OUTBOUND_BUFFER_LIMIT

    async def _send(self, data: bytes, *, audio: bool = False) -> None:
        try:
            async with asyncio.timeout(self._stall_s):
                await self._ws.send_frame(data, WSMsgType.TEXT)
                # aiohttp waits for the socket only every 256 kB and only once the kernel buffer is full: bound
                # what waits in this process ourselves, so a peer that stops reading cannot grow our memory.
                # aiohttp exposes no public "writable" event; this polls only while the buffer is over the limit.
                # Only the audio writer waits: a clear or a mark must never queue behind it (the control task sends
                # them, and a barge-in cannot wait for a backlog of audio to drain).
                while audio and self._over_limit():  # noqa: ASYNC110
                    await asyncio.sleep(OUTBOUND_POLL_S)
        except TimeoutError:
            raise CallEnded("send_stalled", 1011) from None
        except ConnectionError:
            raise CallEnded("socket_closed") from None
