"""``POST /twilio/status``: Twilio's call status callbacks (and async AMD results), signed like the webhook.

An accepted callback is logged (``twilio_status``), counted in ``voicebot_twilio_status_callbacks_total`` by call
status, and appended to the call's transcript file, whether or not its media stream is still open (the final
``completed`` usually arrives after the stream has ended). A request without a valid ``X-Twilio-Signature`` gets
403, and so does every request when no ``TWILIO_AUTH_TOKEN`` is set: an unsigned one proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from voicebot.logs import get_logger
from voicebot.metrics import Metrics
from voicebot.settings import Settings
from voicebot.twilio.security import validate_twilio_signature

log = get_logger("voicebot.twilio.status")

PATH = "/twilio/status"
CALL_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"}
)
MAX_FIELD_CHARS = 64
_FIELDS = {  # form parameter -> transcript/log field
    "CallStatus": "status",
    "AnsweredBy": "answered_by",
    "CallDuration": "duration_s",
    "SequenceNumber": "sequence",
    "Direction": "direction",
    "StreamEvent": "stream_event",
    "ErrorCode": "error_code",
    "Timestamp": "timestamp",
}


def signed_form(settings: Settings, request: web.Request, form: dict[str, str]) -> bool:
    """True if ``form`` came from Twilio: a signature over the public URL of this exact request target."""
    if settings.twilio_auth_token is None:
        return False
    url = settings.public_http_url(request.raw_path)
    signature = request.headers.get("X-Twilio-Signature")
    return validate_twilio_signature(settings.twilio_auth_token.get_secret_value(), url, form, signature)


AppendLine = Callable[[Settings, str, str, dict[str, str]], None]
"""Appends one line (kind, fields) to a call's transcript file: the server's, as twilio/ never imports call/."""


async def handle_status(
    request: web.Request, settings: Settings, metrics: Metrics, append_line: AppendLine
) -> web.Response:
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not signed_form(settings, request, form):
        metrics.twilio_status.labels("forbidden").inc()
        log.warning(
            "status_callback_rejected", reason="bad_signature" if settings.twilio_auth_token else "no_auth_token",
            has_signature="X-Twilio-Signature" in request.headers,
        )  # fmt: skip
        raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    call_sid = form.get("CallSid", "")
    if not call_sid or len(call_sid) > MAX_FIELD_CHARS:
        raise web.HTTPBadRequest(text="CallSid is required")
    fields = {name: form[param][:MAX_FIELD_CHARS] for param, name in _FIELDS.items() if form.get(param)}
    status = fields.get("status", "")
    metrics.twilio_status.labels(status if status in CALL_STATUSES else "other").inc()
    log.info("twilio_status", call_sid=call_sid, **fields)
    append_line(settings, call_sid, "twilio_status", fields)
    return web.Response(status=204)
