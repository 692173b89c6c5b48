"""Deepgram Aura REST TTS emulator: ``POST /v1/speak`` streaming deterministic mu-law audio."""

from __future__ import annotations

import array
import asyncio
import functools
import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web

from voicebot.audio import BYTES_PER_MS, FRAME_BYTES, SAMPLE_RATE, pcm16_to_ulaw

from .common import Runtime, abort_connection, accepts, credential, json_response, new_request_id, sleep_ms
from .config import DEFAULT_MS_PER_CHAR, DEFAULT_TTS_MODEL, TtsConfig
from .faults import TtsFaults, wait_stall

_PEAK = 9000.0  # about -11 dBFS: clearly voiced for an energy VAD, far from clipping
_MIN_LEVEL = 0.25  # the syllable envelope never falls below this, so there are no runs of 0xFF silence
_TWO_PI = 2 * math.pi

_ERROR_CODES = {
    400: "INVALID_QUERY_PARAMETER",
    401: "INVALID_AUTH",
    413: "PAYLOAD_TOO_LARGE",
    429: "TOO_MANY_REQUESTS",
}
MAX_TEXT_CHARS = 2000
"""Deepgram's limit per request (and per Speak message on the socket)."""
TEXT_TOO_LONG = f"text is longer than {MAX_TEXT_CHARS} characters"


def synthesize(text: str, model: str = DEFAULT_TTS_MODEL, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> bytes:
    """The mu-law audio the emulator speaks for ``text``: pure and deterministic.

    ``ms_per_char`` ms per character (at least one 20 ms frame); a voiced, vibrato tone whose pitch, vibrato
    and syllable rhythm come from a hash of model and text, so distinct texts give distinct bytes.
    """
    return _synthesize(text, model, ms_per_char)


@functools.lru_cache(maxsize=512)
def _synthesize(text: str, model: str, ms_per_char: float) -> bytes:
    nbytes = max(FRAME_BYTES, round(len(text) * ms_per_char * BYTES_PER_MS))
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    unit = [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 16, 4)]
    f0 = 140.0 + 260.0 * unit[0]  # Hz, a speaking voice's range
    vibrato_hz = 1.5 + 2.0 * unit[1]
    syllable_hz = 3.0 + 2.5 * unit[2]
    offset = _TWO_PI * unit[3]
    phase = 0.0
    samples = array.array("h", bytes(2 * nbytes))
    for n in range(nbytes):
        t = n / SAMPLE_RATE
        freq = f0 * (1.0 + 0.12 * math.sin(_TWO_PI * vibrato_hz * t + offset))
        phase += _TWO_PI * freq / SAMPLE_RATE
        level = _MIN_LEVEL + (1.0 - _MIN_LEVEL) * (0.5 + 0.5 * math.sin(_TWO_PI * syllable_hz * t - offset))
        samples[n] = int(_PEAK * level * (math.sin(phase) + 0.3 * math.sin(2 * phase + offset)) / 1.3)
    return pcm16_to_ulaw(samples.tobytes())


@dataclass(slots=True)
class Progress:
    """Audio bytes sent so far for one request."""

    sent: int = 0


class TtsService:
    """The Deepgram TTS emulator: knobs (``config``, incl. ``ttfb_overrides``) and ``faults``."""

    def __init__(self, config: TtsConfig, runtime: Runtime, key: str | None) -> None:
        self.config = config
        self.faults = TtsFaults()
        self.key = key
        self._runtime = runtime

    def audio(self, text: str, model: str) -> bytes:
        """The audio every emulated voice speaks for ``text`` (the module's ``synthesize``, looked up per call)."""
        return synthesize(text, model, self.config.ms_per_char)

    def ttfb_ms(self, text: str) -> float:
        """Time to first byte for ``text``: the first matching override, else the global knob."""
        for needle, ms in self.config.ttfb_overrides.items():
            if needle in text:
                return ms
        return self.config.ttfb_ms

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/speak``."""
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log, faults = self._runtime.log, self.faults
        request_id = new_request_id()
        if not accepts(credential(request, "Token") or credential(request, "Bearer"), self.key):
            log.append("tts", "rejected", status=401, request_id=request_id)
            return _error(401, "Invalid credentials.", request_id)
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("tts", "rejected", status=status, request_id=request_id)
            return _error(status, f"Injected error {status}.", request_id, faults.error_headers())
        text, problem = _validate(request.query, await request.read())
        if problem is not None:
            status = 413 if problem is TEXT_TOO_LONG else 400
            log.append("tts", "rejected", status=status, request_id=request_id, error=problem)
            return _error(status, problem, request_id)
        assert text is not None
        model = request.query.get("model", DEFAULT_TTS_MODEL)
        log.append("tts", "request", request_id=request_id, text=text, model=model)
        headers = {
            "content-type": "audio/mulaw",
            "dg-request-id": request_id,
            "dg-model-name": model,
            "dg-char-count": str(len(text)),
        }
        return await self.serve_audio(request, text, model, request_id, headers)

    async def serve_audio(
        self, request: web.Request, text: str, model: str, request_id: str, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """Stream ``text``'s audio as an HTTP body with the shared knobs: stall, time to first byte, pacing, drop."""
        log = self._runtime.log
        progress = Progress()
        response = web.StreamResponse(headers=headers)
        try:
            await wait_stall(self.faults.stall_s)
            await sleep_ms(self.ttfb_ms(text))
            audio = synthesize(text, model, self.config.ms_per_char)
            # Headers go out with the first audio byte, as the real service starts answering once it speaks.
            await response.prepare(request)
            await self.pace(audio, response.write, request_id, progress)
            if progress.sent < len(audio):
                abort_connection(request)
                return response  # dropped on purpose
            await response.write_eof()
        except ConnectionError:
            # The client went away mid-stream; aiohttp finishes the dead response quietly.
            log.append("tts", "abort", request_id=request_id, bytes_sent=progress.sent)
            return response
        except asyncio.CancelledError:
            self._runtime.record_cancel("tts", request_id=request_id, bytes_sent=progress.sent)
            raise
        log.append("tts", "complete", request_id=request_id, bytes=progress.sent)
        return response

    async def pace(
        self, audio: bytes, write: Callable[[bytes], Awaitable[object]], request_id: str, progress: Progress
    ) -> None:
        """Write ``audio`` in chunks paced from a clock origin; ``progress.sent`` counts the bytes.

        Stops early (``progress.sent < len(audio)``) when the ``drop_after_bytes`` fault is set: the caller drops
        the connection then.
        """
        log, config = self._runtime.log, self.config
        loop = asyncio.get_running_loop()
        drop_after = self.faults.drop_after_bytes
        limit = len(audio) if drop_after is None else min(drop_after, len(audio))
        chunk = max(1, config.chunk_bytes)
        origin = loop.time()
        while (sent := progress.sent) < limit:
            rate = config.bytes_per_second
            if rate:
                delay = origin + sent / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            piece = audio[sent : min(sent + chunk, limit)]
            await write(piece)
            if sent == 0:
                log.append("tts", "first_byte", request_id=request_id)
            progress.sent += len(piece)
        if progress.sent < len(audio):
            log.append("tts", "drop", request_id=request_id, bytes_sent=progress.sent)


def _validate(query: Mapping[str, str], body: bytes) -> tuple[str | None, str | None]:
    """``(text, None)`` for an acceptable request, else ``(None, problem)``."""
    # Deepgram's defaults are encoding=mp3, container=wav, sample_rate=24000: all wrong for Twilio.
    encoding = query.get("encoding", "mp3")
    if encoding != "mulaw":
        return None, f"encoding must be 'mulaw' for this emulator, got {encoding!r}"
    sample_rate = query.get("sample_rate", "24000")
    if sample_rate != str(SAMPLE_RATE):
        return None, f"sample_rate must be {SAMPLE_RATE} for mulaw telephone audio, got {sample_rate!r}"
    container = query.get("container", "wav")
    if container != "none":
        return None, f"container must be 'none' (raw mulaw for Twilio), got {container!r}"
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, 'body must be JSON like {"text": "..."}'
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str) or not text.strip():
        return None, "text must not be empty"
    if len(text) > MAX_TEXT_CHARS:
        return None, TEXT_TOO_LONG
    return text, None


def _error(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> web.Response:
    code = _ERROR_CODES.get(status, "REQUEST_FAILED")
    return json_response(
        status,
        {"err_code": code, "err_msg": message, "request_id": request_id},
        headers={"dg-request-id": request_id, **(headers or {})},
    )
