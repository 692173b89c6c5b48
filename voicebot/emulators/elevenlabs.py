"""ElevenLabs REST streaming TTS emulator: ``POST /v1/text-to-speech/{voice_id}/stream`` (PROVIDERS-2.md §3).

Same knobs, faults and events as the Deepgram REST emulator; the audio is the shared deterministic synthesiser's,
keyed by ``model_id``. Errors in ElevenLabs' shape: ``{"detail": {"status": ..., "message": ...}}``.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from .common import Runtime, json_response, new_request_id, sleep_ms
from .deepgram_tts import TtsService

OUTPUT_FORMAT = "ulaw_8000"
MAX_TEXT_CHARS = 40_000
"""Flash v2.5's documented limit per request."""
_STATUS = {
    400: "invalid_request",
    401: "invalid_api_key",
    413: "text_too_long",
    422: "validation_error",
    429: "too_many_concurrent_requests",
}


class ElevenLabsService:
    def __init__(self, tts: TtsService, runtime: Runtime, key: str | None) -> None:
        self.tts = tts
        self.key = key
        self._runtime = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log, faults = self._runtime.log, self.tts.faults
        request_id = new_request_id()
        given = request.headers.get("xi-api-key")
        if not given or (self.key is not None and given != self.key):
            log.append("tts", "rejected", status=401, request_id=request_id, provider="elevenlabs")
            return _error(401, "Invalid API key.")
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("tts", "rejected", status=status, request_id=request_id, provider="elevenlabs")
            return _error(status, f"Injected error {status}.", faults.error_headers())
        output_format = request.query.get("output_format", "mp3_44100_128")
        if output_format != OUTPUT_FORMAT:
            return _error(400, f"this emulator speaks {OUTPUT_FORMAT} only, got {output_format!r}")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "body must be JSON")
        text = body.get("text") if isinstance(body, dict) else None
        model = body.get("model_id") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or not isinstance(model, str) or not model:
            log.append("tts", "rejected", status=422, request_id=request_id, provider="elevenlabs")
            return _error(422, "text and model_id are required")
        if len(text) > MAX_TEXT_CHARS:
            return _error(413, f"text is longer than {MAX_TEXT_CHARS} characters")
        voice_id = request.match_info["voice_id"]
        log.append("tts", "request", request_id=request_id, text=text, model=model, voice_id=voice_id)
        # ulaw_8000 is raw mu-law: no header, as Twilio needs it.
        headers = {"content-type": "audio/basic", "request-id": request_id}
        return await self.tts.serve_audio(request, text, model, request_id, headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    detail = {"status": _STATUS.get(status, "error"), "message": message}
    return json_response(status, {"detail": detail}, headers=headers)
