"""An example tool service for config/tools.example.toml: opening hours (a lookup) and a table booking (a side
effect). It checks X-Voicebot-Signature when VOICEBOT_TOOLS_SECRET is set, as a real service should.

    .venv/bin/python scripts/example_tool_service.py --port 8091 [--booking-delay-ms 1500]

What a receiving service gets: POST JSON {"tool", "arguments", "call_sid", "from", "to"} (GET: the arguments as
query parameters); it answers 2xx with JSON or plain text, which the model reads as the tool's result.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import os
import sys

from aiohttp import web

HOURS = {
    "monday": "9:00 to 18:00", "tuesday": "9:00 to 18:00", "wednesday": "9:00 to 18:00",
    "thursday": "9:00 to 21:00", "friday": "9:00 to 21:00", "saturday": "10:00 to 14:00", "sunday": "closed",
}  # fmt: skip
SIGNATURE_HEADER = "X-Voicebot-Signature"


def signed(secret: str | None, header: str | None, signed_bytes: bytes) -> bool:
    """True when there is no secret, or the header is sha256=<HMAC of the exact bytes> (constant-time compare)."""
    if not secret:
        return True
    expected = "sha256=" + hmac.new(secret.encode(), signed_bytes, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(header, expected)


def make_app(*, booking_delay_s: float = 0.0, secret: str | None = None) -> web.Application:
    references = itertools.count(1001)
    bookings: list[dict[str, object]] = []

    async def hours(request: web.Request) -> web.Response:
        if not signed(secret, request.headers.get(SIGNATURE_HEADER), request.rel_url.raw_query_string.encode()):
            raise web.HTTPUnauthorized(text="bad signature")
        day = request.query.get("day", "").strip().lower()
        if day not in HOURS:
            return web.json_response({"error": f"unknown day {day!r}"}, status=400)
        return web.json_response({"day": day, "hours": HOURS[day]})

    async def book(request: web.Request) -> web.Response:
        body = await request.read()
        if not signed(secret, request.headers.get(SIGNATURE_HEADER), body):
            raise web.HTTPUnauthorized(text="bad signature")
        call = await request.json()
        await asyncio.sleep(booking_delay_s)
        booking = {"booked": True, "reference": f"B{next(references)}", **call["arguments"]}
        bookings.append(booking)
        return web.json_response(booking)

    app = web.Application()
    app.router.add_get("/hours", hours)
    app.router.add_post("/book", book)
    app["bookings"] = bookings
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--booking-delay-ms", type=float, default=0.0, help="how long a booking takes")
    args = parser.parse_args()
    app = make_app(booking_delay_s=args.booking_delay_ms / 1000, secret=os.environ.get("VOICEBOT_TOOLS_SECRET"))
    web.run_app(app, host=args.host, port=args.port, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
