"""ElevenLabs REST streaming TTS emulator: ``POST /v1/text-to-speech/{voice_id}/stream`` (PROVIDERS-2.md §3).

Same knobs, faults and events as the Deepgram REST emulator; the audio is the shared deterministic synthesiser's,
keyed by ``model_id``. Errors in ElevenLabs' shape: ``{"detail": {"status": ..., "message": ...}}``.
"""

from __future__ import annotations

import base64

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


class _Endpoint:
    """An ElevenLabs endpoint on the shared TTS service; ``handle`` is the aiohttp handler, registered with the
    runtime so that shutdown can cancel it."""

    def __init__(self, tts: TtsService, runtime: Runtime, key: str | None) -> None:
        self.tts = tts
        self.key = key
        self._runtime = runtime

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class ElevenLabsService(_Endpoint):
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


MAX_CONTEXTS = 5
"""Active contexts per multi-context socket; one more closes the socket with 1008 (PROVIDERS-2.md §3)."""
POLICY_VIOLATION = 1008


class ElevenLabsSocketService(_Endpoint):
    """``GET /v1/text-to-speech/{voice_id}/multi-stream-input``: the multi-context socket, shapes from the elevenlabs
    SDK's types (client: ``context_id``, ``text``, ``flush``, ``close_context``, ``close_socket``; server: ``audio``,
    ``contextId``, ``isFinal``). voicebot speaks to ElevenLabs over REST; this emulator pins the socket's context
    limit, which repeated barge-ins reach when contexts are not closed."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log = self._runtime.log
        given = request.headers.get("xi-api-key")
        if not given or (self.key is not None and given != self.key):
            log.append("tts", "rejected", status=401, provider="elevenlabs")
            return _error(401, "Invalid API key.")
        if request.query.get("output_format") != OUTPUT_FORMAT or not request.query.get("model_id"):
            return _error(400, f"model_id and output_format={OUTPUT_FORMAT} are required by this emulator")
        model = request.query["model_id"]
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        contexts: dict[str, list[str]] = {}
        async for msg in ws:
            if msg.type is not web.WSMsgType.TEXT:
                continue
            message = orjson.loads(msg.data)
            if message.get("close_socket"):
                await ws.close(code=1000)
                break
            context_id = str(message.get("context_id") or "default")
            if message.get("close_context"):
                contexts.pop(context_id, None)
                await ws.send_str(orjson.dumps({"isFinal": True, "contextId": context_id}).decode())
                continue
            if context_id not in contexts:
                if len(contexts) >= MAX_CONTEXTS:
                    log.append(
                        "tts", "rejected", status=POLICY_VIOLATION, provider="elevenlabs", contexts=len(contexts)
                    )
                    await ws.close(code=POLICY_VIOLATION, message=b"max_active_conversations")
                    break
                contexts[context_id] = []
            text = message.get("text")
            if isinstance(text, str) and text.strip():
                contexts[context_id].append(text)
            if message.get("flush") and contexts[context_id]:
                spoken = "".join(contexts[context_id]).strip()
                contexts[context_id] = []
                request_id = new_request_id()
                log.append("tts", "request", request_id=request_id, text=spoken, model=model, transport="websocket")
                await sleep_ms(self.tts.ttfb_ms(spoken))
                audio = self.tts.audio(spoken, model)
                step = max(1, self.tts.config.chunk_bytes)
                for i in range(0, len(audio), step):
                    data = base64.b64encode(audio[i : i + step]).decode()
                    await ws.send_str(orjson.dumps({"audio": data, "isFinal": None, "contextId": context_id}).decode())
                log.append("tts", "complete", request_id=request_id, bytes=len(audio))
        return ws
