"""Who may reach what: classify each request once as direct from this machine, or from outside.

"Bound to loopback" does not mean "only local people can reach it": a reverse proxy or a tunnel (Caddy, nginx,
cloudflared, ngrok) on the same machine turns every request from the internet into a loopback connection. So a
request counts as *direct* only when all three hold:

- the TCP peer is a loopback address (a Unix socket or an unknown peer is not);
- it carries no forwarding header of any kind (``Forwarded``, ``Via``, ``X-Forwarded-*``, ``X-Real-IP``,
  ``CF-*``, ``True-Client-IP``, …): every common proxy and tunnel adds at least one of them;
- its ``Host`` is a loopback name (``localhost``, ``127.x.y.z``, ``[::1]``): a proxy that forwards the public
  Host is caught here even if it adds no header.

Everything else is *outside*: from there only Twilio's signed endpoints answer, ``/healthz`` says only ok or not
ok, and ``/metrics`` needs its bearer token. A proxy that strips every forwarding header *and* rewrites Host to
``localhost`` is indistinguishable from a local process; the README says not to configure one like that.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from aiohttp import web

LOOPBACK_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

FORWARDING_HEADERS = frozenset(
    {
        "forwarded",
        "via",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-proxyuser-ip",
        "x-envoy-external-address",
        "ngrok-trace-id",
    }
)
"""Headers that only a proxy or tunnel adds (matched case-insensitively), besides the prefixes below."""
FORWARDING_PREFIXES = ("x-forwarded-", "x-original-", "cf-", "x-amzn-", "x-envoy-")
"""``X-Forwarded-For/Proto/Host/…``, ``X-Original-Forwarded-For``, Cloudflare's ``CF-Connecting-IP``/``CF-Ray``, …"""


def is_loopback_host(host: str) -> bool:
    """True for a loopback name or address, with or without a port (``localhost:8080``, ``[::1]:80``)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.endswith("."):
        name = name[:-1]
    if name in LOOPBACK_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def has_forwarding_header(headers: Mapping[str, str]) -> bool:
    """True if any header shows that a proxy or tunnel relayed the request."""
    for name in headers:
        lowered = name.lower()
        if lowered in FORWARDING_HEADERS or lowered.startswith(FORWARDING_PREFIXES):
            return True
    return False


def _peer_is_loopback(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return False  # a Unix socket or an unknown peer: not provably this machine's own client
    try:
        return ipaddress.ip_address(str(peer[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_direct_local(request: web.Request) -> bool:
    """True only for a request made on this machine straight to the bot (see the module docstring)."""
    host = request.headers.get("Host")
    return (
        host is not None
        and is_loopback_host(host)
        and not has_forwarding_header(request.headers)
        and _peer_is_loopback(request)
    )


def bearer_matches(request: web.Request, token: str) -> bool:
    """True if the request carries ``Authorization: Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
