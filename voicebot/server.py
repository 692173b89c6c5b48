"""The aiohttp application: the Twilio webhook, the Media Streams WebSocket, health and metrics."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import WSCloseCode, web

from voicebot.access import bearer_matches, is_direct_local
from voicebot.call.services import SERVICES, services_context
from voicebot.call.session import CallSession
from voicebot.call.state import STATE, AppState
from voicebot.call.transcript import TranscriptWriter
from voicebot.devpage.page import DEV_HUB, CallEventHub, add_dev_routes, dev_page_enabled
from voicebot.logs import get_logger
from voicebot.metrics import Metrics
from voicebot.settings import Settings
from voicebot.twilio import outbound, twiml
from voicebot.twilio.security import StreamTokens, validate_twilio_signature
from voicebot.twilio.status import PATH as STATUS_PATH
from voicebot.twilio.status import handle_status

log = get_logger("voicebot.server")
MAX_NUMBER_LENGTH = 64
"""From/To are phone numbers or client identities; anything longer is cut."""

MAX_WEBHOOK_BYTES = 64 * 1024
MAX_CALL_SID_LENGTH = 64
NOT_CONFIGURED_TEXT = "Sorry, this phone assistant is not configured yet. Please try again later. Goodbye."
BUSY_TEXT = "Sorry, all of our lines are busy right now. Please call again in a few minutes. Goodbye."
DRAINING_TEXT = "Sorry, this service is restarting. Please call again in a minute. Goodbye."


def token_secret(settings: Settings) -> bytes:
    """The stream-token key: explicit, else derived from the Twilio auth token, else random per process."""
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value().encode()
    if settings.twilio_auth_token is not None:
        auth = settings.twilio_auth_token.get_secret_value().encode()
        return hmac.new(auth, b"voicebot stream token secret", hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _twiml(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=twiml.CONTENT_TYPE)


async def voice(request: web.Request) -> web.Response:
    """Twilio's voice webhook: answer with a signed ``<Connect><Stream>``, or a polite refusal."""
    state = request.app[STATE]
    settings = state.settings
    form = await request.post()
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    if settings.twilio_auth_token is not None:
        url = settings.public_http_url(request.path_qs)
        signature = request.headers.get("X-Twilio-Signature")
        if not validate_twilio_signature(settings.twilio_auth_token.get_secret_value(), url, params, signature):
            state.metrics.reject("bad_signature")
            log.warning("webhook_rejected", reason="bad_signature", has_signature=signature is not None)
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    call_sid = params.get("CallSid", "")
    if not call_sid or len(call_sid) > MAX_CALL_SID_LENGTH:
        state.metrics.reject("bad_request")
        raise web.HTTPBadRequest(text="CallSid is required")
    if outbound.is_machine(params.get("AnsweredBy")):
        log.info("call_answered_by_machine", call_sid=call_sid, answered_by=params.get("AnsweredBy"))
        return _twiml(twiml.say_and_hang_up(settings.machine_message))
    context = _call_context(request, settings, call_sid)
    if state.draining:
        state.metrics.reject("draining")
        log.info("call_rejected", reason="draining", call_sid=call_sid)
        return _twiml(twiml.say_and_hang_up(DRAINING_TEXT))
    if missing := settings.missing():
        state.metrics.reject("not_configured")
        log.warning("call_rejected", reason="not_configured", missing=missing, call_sid=call_sid)
        return _twiml(twiml.say_and_hang_up(NOT_CONFIGURED_TEXT))
    if len(state.sessions) >= settings.max_calls:
        state.metrics.reject("capacity")
        log.warning("call_rejected", reason="capacity", active=len(state.sessions), call_sid=call_sid)
        return _twiml(twiml.say_and_hang_up(BUSY_TEXT))
    log.info("call_answered", call_sid=call_sid)
    # From/To ride along as stream parameters: custom tools receive them with every request.
    parameters = {
        "token": state.tokens.mint(call_sid),
        **state.seal.parameters(call_sid, context),
        "from": params.get("From", "")[:MAX_NUMBER_LENGTH],
        "to": params.get("To", "")[:MAX_NUMBER_LENGTH],
    }
    return _twiml(twiml.connect_stream(settings.stream_url, parameters))


def _call_context(request: web.Request, settings: Settings, call_sid: str) -> str | None:
    """An outbound call's context from the webhook URL, trusted only when Twilio signed that URL."""
    if outbound.CONTEXT_PARAM not in request.query:
        return None
    if settings.twilio_auth_token is None:
        log.warning("call_context_ignored", reason="unsigned: set TWILIO_AUTH_TOKEN", call_sid=call_sid)
        return None
    try:
        return outbound.context_from_query(request.query_string)
    except outbound.ContextError as exc:
        log.warning("call_context_ignored", reason=str(exc), call_sid=call_sid)
        return None


async def media(request: web.Request) -> web.StreamResponse:
    """The Media Streams WebSocket: one CallSession per connection."""
    state = request.app[STATE]
    settings = state.settings
    signature = request.headers.get("X-Twilio-Signature")
    dev_token_only = False
    if settings.twilio_auth_token is not None:
        if signature is None and not is_direct_local(request):
            # From outside only Twilio may open a stream, and Twilio always signs the upgrade.
            state.metrics.reject("bad_signature")
            log.warning("stream_rejected", reason="unsigned")
            raise web.HTTPForbidden(text="X-Twilio-Signature is required")
        if signature is None:
            dev_token_only = True  # direct from this machine: only the dev page's own calls
        elif not validate_twilio_signature(
            settings.twilio_auth_token.get_secret_value(), settings.stream_url, {}, signature
        ):
            state.metrics.reject("bad_signature")
            log.warning("stream_rejected", reason="bad_signature")
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    if state.draining:
        state.metrics.reject("draining")
        raise web.HTTPServiceUnavailable(text="draining")
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_message_bytes,
        compress=False,  # mu-law does not compress; deflate would only cost CPU
        decode_text=False,  # orjson parses bytes directly: no str copy per frame
        autoping=True,
    )
    await ws.prepare(request)
    session = CallSession(ws, state, request.app.get(SERVICES), request.transport, dev_token_only=dev_token_only)
    state.sessions.add(session)
    state.metrics.active_calls.inc()
    try:
        await session.run()
    except Exception:
        # The one place per call that catches everything: log once, end this call only.
        log.exception("call_crashed")
        state.metrics.calls_total.labels("crashed").inc()
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        state.sessions.discard(session)
        state.metrics.active_calls.dec()
        if session.start is not None:
            state.publish(session.start.call_sid, {"type": "call_ended", "reason": session.end_reason or "crashed"})
    return ws


def append_to_transcript(settings: Settings, call_sid: str, kind: str, fields: dict[str, str]) -> None:
    """One line in the call's transcript file, whether or not the call is still live."""
    transcript = TranscriptWriter(settings.transcript_dir, call_sid)
    try:
        transcript.write(kind, **fields)
    finally:
        transcript.close()


async def twilio_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await handle_status(request, state.settings, state.metrics, append_to_transcript)


async def healthz(request: web.Request) -> web.Response:
    """Health: the detail (counts, missing settings) only for this machine; from outside, ok or not ok."""
    state = request.app[STATE]
    missing = state.settings.missing()
    status = "draining" if state.draining else ("degraded" if missing else "ok")
    if not is_direct_local(request):
        healthy = status == "ok"
        return web.Response(
            body=orjson.dumps({"status": "ok" if healthy else "not ok"}),
            status=200 if healthy else 503,
            content_type="application/json",
        )
    body = {"status": status, "active_calls": len(state.sessions), "missing": missing}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: direct local requests, or anyone with ``VOICEBOT_METRICS_TOKEN`` as a bearer token."""
    settings = request.app[STATE].settings
    allowed = is_direct_local(request) or (
        settings.metrics_token is not None and bearer_matches(request, settings.metrics_token.get_secret_value())
    )
    if not allowed:
        raise web.HTTPNotFound()  # not 403: do not advertise it
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def drain(app: web.Application) -> None:
    """Graceful shutdown: refuse new calls, give live calls ``drain_timeout_s``, then end the rest (1001)."""
    state = app[STATE]
    state.draining = True
    if not state.sessions:
        return
    log.info("draining", active=len(state.sessions), timeout_s=state.settings.drain_timeout_s)
    waiters = [asyncio.ensure_future(s.finished.wait()) for s in state.sessions]
    try:
        await asyncio.wait(waiters, timeout=state.settings.drain_timeout_s)
    finally:
        for waiter in waiters:
            waiter.cancel()
    remaining = list(state.sessions)
    for session in remaining:
        session.shut_down()
    if remaining:
        await asyncio.wait([asyncio.ensure_future(s.finished.wait()) for s in remaining], timeout=10.0)


LOOP_LAG_PERIOD_S = 0.1


async def loop_lag_monitor(app: web.Application) -> AsyncIterator[None]:
    """Measure event-loop lag: how late a 100 ms sleep wakes up. Exported as a histogram."""
    histogram = app[STATE].metrics.loop_lag

    async def monitor() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LOOP_LAG_PERIOD_S
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            histogram.observe(max(0.0, loop.time() - due))

    task = asyncio.create_task(monitor(), name="loop-lag-monitor")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def gc_monitor(app: web.Application) -> AsyncIterator[None]:
    """Time every garbage collection (``gc.callbacks``): a collection stops the event loop for all calls at once."""
    pauses = [app[STATE].metrics.gc_pause.labels(str(generation)) for generation in range(3)]
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
    yield
    gc.callbacks.remove(callback)


def create_app(settings: Settings) -> web.Application:
    """Build the application."""
    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    secret = token_secret(settings)
    app[STATE] = AppState(
        settings=settings, metrics=Metrics(), tokens=StreamTokens(secret), seal=outbound.ContextSeal(secret)
    )
    state = app[STATE]
    hub = CallEventHub()
    app[DEV_HUB] = hub
    state.listeners.append(hub.publish)
    state.is_dev_call = hub.is_dev_call
    if dev_page_enabled(settings):
        add_dev_routes(app, hub)
    app.router.add_post("/voice", voice)
    app.router.add_get("/media", media)
    app.router.add_post(STATUS_PATH, twilio_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.on_shutdown.append(drain)
    app.cleanup_ctx.append(services_context(settings, app[STATE].metrics))
    app.cleanup_ctx.append(loop_lag_monitor)
    app.cleanup_ctx.append(gc_monitor)
    return app
