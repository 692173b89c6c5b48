"""The local browser softphone: the page at ``/``, its dev-only call endpoint and its per-call event stream.

The page (``voicebot/devpage/web/``) acts exactly like Twilio toward ``/media``; the server only has to hand it what the
``/voice`` webhook would: a CallSid and a stream token. Everything here exists only when the page is enabled
(by default only when the server is bound to loopback): a stream token is the right to spend provider credits.

``CallEventHub`` is a per-process pub/sub of dev events (transcripts, latency chains) keyed by CallSid. With
``--workers N`` the event stream and the media socket may land in different processes; the page is a
single-process development tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from voicebot.access import is_direct_local
from voicebot.call.state import STATE, AppState
from voicebot.logs import get_logger
from voicebot.settings import LOOPBACK_NAMES, Settings

log = get_logger("voicebot.devpage.page")

WEB_DIR = Path(__file__).with_name("web")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SUBSCRIBER_QUEUE_EVENTS = 256
"""Events buffered per event-stream subscriber; on overflow the oldest is dropped (a slow page never blocks a call)."""
MAX_DEV_CALLS = 64
"""CallSids minted by ``/dev/call`` that may be subscribed to; the oldest is forgotten first."""
HEARTBEAT_S = 15.0
"""An SSE comment this often keeps proxies from closing an idle stream and notices a page that left."""
WRITE_TIMEOUT_S = 10.0
STREAM_GRACE_S = 60.0
"""An event stream outlives the longest possible call by this much, then ends even without ``call_ended``."""
DEV_ACCOUNT_SID = "AC" + "0" * 32
"""The ``accountSid`` the page puts in ``start`` when no Twilio account is configured."""
DEV_HEADER = "X-Voicebot-Dev"
"""Required on ``POST /dev/call``: a cross-site form cannot set it without a CORS preflight, which we never allow."""
END_EVENT = "call_ended"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def dev_page_enabled(settings: Settings) -> bool:
    """The ``dev_page`` setting if set, else enabled only when the server is bound to loopback."""
    return settings.is_loopback if settings.dev_page is None else settings.dev_page


# --- the hub ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    data: bytes
    last: bool


class Subscription:
    """One listener's bounded queue of serialised events for one call."""

    def __init__(self, maxlen: int) -> None:
        # Bounded: when full, the oldest event is dropped (counted in ``dropped``).
        self._items: deque[_Item] = deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def push(self, item: _Item) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> _Item | None:
        """The next event, waiting for one; None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class CallEventHub:
    """Per-process pub/sub of dev events by CallSid; bounded per subscriber, dropping the oldest on overflow."""

    def __init__(self, queue_events: int = SUBSCRIBER_QUEUE_EVENTS, max_dev_calls: int = MAX_DEV_CALLS) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}
        self._queue_events = queue_events
        self._dev_calls: OrderedDict[str, None] = OrderedDict()
        self._max_dev_calls = max_dev_calls

    def publish(self, call_sid: str, event: dict[str, Any]) -> None:
        """Send ``event`` (a JSON-able dict with a ``type``) to everyone watching ``call_sid``; cheap if nobody is."""
        subscribers = self._subscribers.get(call_sid)
        if not subscribers:
            return
        # Serialised once, now: a caller that mutates its dict afterwards cannot change what was published.
        item = _Item(orjson.dumps(event, default=str), event.get("type") == END_EVENT)
        for subscription in subscribers:
            subscription.push(item)

    @contextlib.contextmanager
    def subscribe(self, call_sid: str) -> Iterator[Subscription]:
        """Listen to ``call_sid`` for the duration of the block."""
        subscription = Subscription(self._queue_events)
        self._subscribers.setdefault(call_sid, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            subscribers = self._subscribers.get(call_sid)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[call_sid]

    def listening(self, call_sid: str) -> bool:
        """True if someone watches ``call_sid`` (skip building costly events otherwise)."""
        return bool(self._subscribers.get(call_sid))

    def register_dev_call(self, call_sid: str) -> None:
        """Remember a CallSid minted for the page: only those may be watched."""
        self._dev_calls[call_sid] = None
        self._dev_calls.move_to_end(call_sid)
        while len(self._dev_calls) > self._max_dev_calls:
            self._dev_calls.popitem(last=False)

    def is_dev_call(self, call_sid: str) -> bool:
        """True for a call placed from the page (no real Twilio call exists: end it by closing the socket)."""
        return call_sid in self._dev_calls

    def close(self) -> None:
        """End every event stream (server shutdown)."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.close()


DEV_HUB = web.AppKey("dev_hub", CallEventHub)


# --- requests ---------------------------------------------------------------------------------------------


def _hostname(netloc: str) -> str:
    return (urlsplit("//" + netloc).hostname or "").lower()


def _allowed_hosts(settings: Settings) -> frozenset[str]:
    hosts = {*LOOPBACK_NAMES, "127.0.0.1", "::1", _hostname(urlsplit(settings.public_url).netloc)}
    if settings.host not in ("", "0.0.0.0", "::"):
        hosts.add(settings.host.lower().strip("[]"))
    return frozenset(hosts)


def _app_state(app: web.Application) -> AppState:
    return app[STATE]


def _check_access(request: web.Request, *, places_calls: bool) -> None:
    """Answer only requests made directly on this machine, unless a setting opens the page (404 otherwise).

    ``places_calls``: the endpoint mints stream tokens or shows a call's transcript; forcing the page on
    (``VOICEBOT_DEV_PAGE=true``) is not enough for those, ``VOICEBOT_DEV_REMOTE_CALLS=true`` must say so too.
    """
    if is_direct_local(request):
        return
    settings = _app_state(request.app).settings
    opened = settings.dev_page is True and (settings.dev_remote_calls or not places_calls)
    if not opened:
        log.info("dev_request_refused", reason="not_direct_local", path=request.path[:100])
        raise web.HTTPNotFound()  # not 403: do not advertise the dev endpoints to the internet
    # Opened to other clients: still refuse Host names we do not serve under (a DNS-rebinding page).
    host = _hostname(request.host)
    if host in _allowed_hosts(settings) or host.startswith("127."):
        return
    log.warning("dev_request_refused", reason="host", host=host[:100])
    raise web.HTTPForbidden(text="unknown Host")


def _stream_url(request: web.Request, settings: Settings) -> str:
    """``/media`` on the host the browser used (the public ``wss://`` URL when it came through the tunnel)."""
    if request.host.lower() == urlsplit(settings.public_url).netloc.lower():
        return settings.stream_url
    return f"{'wss' if request.secure else 'ws'}://{request.host}/media"


async def page(request: web.Request) -> web.Response:
    """GET /: the softphone."""
    _check_access(request, places_calls=False)
    return _static_response(request.app[_FILES], "index.html")


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: the page's scripts and styles (a fixed set, loaded once)."""
    _check_access(request, places_calls=False)
    return _static_response(request.app[_FILES], request.match_info["name"])


def _static_response(files: dict[str, tuple[bytes, str]], name: str) -> web.Response:
    found = files.get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=STATIC_HEADERS)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def new_call(request: web.Request) -> web.Response:
    """POST /dev/call: what Twilio's webhook would give the stream (a CallSid and its token)."""
    _check_access(request, places_calls=True)
    if request.headers.get(DEV_HEADER) != "1":
        raise web.HTTPForbidden(text=f"{DEV_HEADER}: 1 is required")
    state = _app_state(request.app)
    settings = state.settings
    # The same refusals as the /voice webhook, as JSON the page can show.
    if state.draining:
        return _json({"error": "the server is shutting down"}, 503)
    if missing := settings.missing():
        return _json({"error": f"not configured: set {', '.join(missing)}"}, 503)
    if len(state.sessions) >= settings.max_calls:
        return _json({"error": "all lines are busy"}, 503)
    call_sid = "CA" + secrets.token_hex(16)
    request.app[DEV_HUB].register_dev_call(call_sid)
    log.info("dev_call_created", call_sid=call_sid)
    return _json(
        {
            "call_sid": call_sid,
            "account_sid": settings.twilio_account_sid or DEV_ACCOUNT_SID,
            "token": state.tokens.mint(call_sid),
            "stream_url": _stream_url(request, settings),
        }
    )


async def events(request: web.Request) -> web.StreamResponse:
    """GET /dev/events?call_sid=CA…: the call's dev events as server-sent events, until ``call_ended``."""
    _check_access(request, places_calls=True)
    hub = request.app[DEV_HUB]
    call_sid = request.query.get("call_sid", "")
    if not hub.is_dev_call(call_sid):
        raise web.HTTPNotFound(text="no such dev call")
    settings = _app_state(request.app).settings
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    deadline = time.monotonic() + settings.start_timeout_s + settings.max_call_duration_s + STREAM_GRACE_S
    # Subscribed before the headers go out: once the page sees the stream open, no event of the call is missed.
    with hub.subscribe(call_sid) as subscription:
        await response.prepare(request)
        # The page left or stopped reading: end its stream; the call itself is unaffected.
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            await _pump(response, subscription, deadline)
        if subscription.dropped:
            log.info("dev_events_dropped", call_sid=call_sid, dropped=subscription.dropped)
    return response


async def _pump(response: web.StreamResponse, subscription: Subscription, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(HEARTBEAT_S):
                item = await subscription.get()
        except TimeoutError:
            item = None
            chunk = b": keep-alive\n\n"
        else:
            if item is None:
                return
            chunk = b"data: " + item.data + b"\n\n"  # orjson never emits a raw newline
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(chunk)
        if item is not None and item.last:
            return


# --- wiring -----------------------------------------------------------------------------------------------

_FILES = web.AppKey("dev_page_files", dict[str, tuple[bytes, str]])


def load_web_files(directory: Path = WEB_DIR) -> dict[str, tuple[bytes, str]]:
    """The page's files by name, with their content types (read once: a handful of small files)."""
    files = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            files[path.name] = (path.read_bytes(), content_type)
    if "index.html" not in files:
        raise RuntimeError(f"the dev page is missing from {directory}: reinstall voicebot with its package data")
    return files


def add_dev_routes(app: web.Application, hub: CallEventHub) -> None:
    """Serve the softphone page, ``POST /dev/call`` and ``GET /dev/events`` (call once ``app[STATE]`` is set)."""
    app[DEV_HUB] = hub
    app[_FILES] = load_web_files()
    settings = _app_state(app).settings
    if settings.dev_page is True:
        # Forced on: whoever reaches the server sees the page; with dev_remote_calls they can also mint stream
        # tokens, i.e. place calls on your provider accounts.
        log.warning(
            "dev_page_forced",
            host=settings.host,
            remote_calls=settings.dev_remote_calls,
            detail="the softphone page answers every client, not only this machine"
            + ("; remote clients can place calls" if settings.dev_remote_calls else ""),
        )
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_post("/dev/call", new_call)
    app.router.add_get("/dev/events", events)

    async def close_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(close_streams)
