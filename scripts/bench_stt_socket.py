"""What a Deepgram socket costs the bot: deepgram-sdk's default ``websockets`` transport against ours on aiohttp.

voicebot installs :class:`voicebot.providers.deepgram_socket.AiohttpSocket` through deepgram-sdk's
``transport_factory`` hook. This measures, in this process, against a server in another, each variant through the
same SDK client calls the bot makes (the hook is process-wide: the rounds switch it with the SDK's own
``restore_transport``/``install_transport``, interleaved):

- **send**: one 60 ms audio message (480 bytes, what the bot sends) through ``send_media``, ``--concurrency``
  sockets at once, client CPU per message (median of the rounds);
- **receive**: one Nova ``Results`` and one Flux ``TurnInfo`` message (8 words each): the SDK's parse
  (``json.loads`` + ``construct_type`` over its response union) against the bot's own decode of the JSON into its
  event (``_decoded`` in ``voicebot.providers.deepgram_stt`` and ``deepgram_flux``);
- **open** (``wss://``, a self-signed certificate added to the system's trust store through ``SSL_CERT_FILE``):
  client CPU per socket opened and closed, handshakes included. The SDK's path builds a new default SSL context
  (the whole trust store read again) for every connection.

    .venv/bin/python scripts/bench_stt_socket.py [--rounds 5] [--messages 2000] [--concurrency 10] [--opens 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "bench"
AUDIO = b"\xff" * 480
"""60 ms of mu-law silence: one of the bot's STT messages."""
WORDS = ["I", "would", "like", "to", "know", "your", "opening", "hours"]
RESULTS = json.dumps({
    "type": "Results", "channel_index": [0, 1], "duration": 1.02, "start": 3.5, "is_final": False,
    "speech_final": False, "from_finalize": False,
    "channel": {"alternatives": [{"transcript": " ".join(WORDS), "confidence": 0.98, "words": [
        {"word": w, "start": 1.0, "end": 1.2, "confidence": 0.9, "punctuated_word": w} for w in WORDS]}]},
    "metadata": {"request_id": "x", "model_info": {"name": "n", "version": "v", "arch": "a"}, "model_uuid": "u"},
})  # fmt: skip
TURN_INFO = json.dumps({
    "type": "TurnInfo", "request_id": "x", "sequence_id": 7, "event": "Update", "turn_index": 0,
    "audio_window_start": 0.0, "audio_window_end": 2.4, "transcript": " ".join(WORDS),
    "words": [{"word": w, "confidence": 0.9} for w in WORDS], "end_of_turn_confidence": 0.02,
})  # fmt: skip
VARIANTS = ("websockets", "aiohttp")


def clients(base: str, ws_base: str, http: Any) -> dict[str, Any]:
    """One SDK client per variant, as the bot makes it (its headers computed once)."""
    from deepgram import DeepgramClientEnvironment

    from voicebot.providers.deepgram_client import deepgram_client

    env = DeepgramClientEnvironment(base=base, production=ws_base, agent=ws_base, agent_rest=base)
    return {name: deepgram_client(api_key=KEY, environment=env, httpx_client=http) for name in VARIANTS}


def use(variant: str) -> None:
    """Route every SDK socket of the process through ``variant`` from now on."""
    from deepgram.transport import install_transport, restore_transport

    from voicebot.providers.deepgram_socket import AiohttpSocket

    restore_transport()
    if variant == "aiohttp":
        install_transport(async_factory=AiohttpSocket)


async def one_socket(client: Any, messages: int) -> None:
    from bench_relay import STT_QUERY

    from voicebot.providers.deepgram_socket import opened

    async with client.listen.v1.connect(**STT_QUERY) as conn:
        await opened(conn)
        for _ in range(messages):
            await conn.send_media(AUDIO)
            await asyncio.sleep(0)  # let the loop run, as between the bot's messages


async def sends(base: str, rounds: int, messages: int, concurrency: int) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with httpx.AsyncClient() as http:
        sdk = clients(base, base.replace("http", "ws", 1), http)
        for _ in range(rounds):
            for name in VARIANTS:
                use(name)
                cpu0 = time.process_time()
                await asyncio.gather(*(one_socket(sdk[name], messages) for _ in range(concurrency)))
                out[name].append((time.process_time() - cpu0) / (messages * concurrency) * 1e6)
    return out


async def opens(port: int, rounds: int, count: int) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with httpx.AsyncClient() as http:
        sdk = clients(f"https://127.0.0.1:{port}", f"wss://127.0.0.1:{port}", http)
        for _ in range(rounds):
            for name in VARIANTS:
                use(name)
                cpu0 = time.process_time()
                for _ in range(count):
                    await one_socket(sdk[name], 1)
                out[name].append((time.process_time() - cpu0) / count * 1e3)
    return out


def parse_costs() -> dict[str, tuple[float, float]]:
    """Per message, us: the SDK's parse and the bot's decode, for a Nova ``Results`` and a Flux ``TurnInfo``."""
    from deepgram.core.unchecked_base_model import construct_type
    from deepgram.listen.v1.socket_client import V1SocketClientResponse
    from deepgram.listen.v2.socket_client import V2SocketClientResponse

    from voicebot.providers import deepgram_flux, deepgram_stt

    n = 2000
    out = {}
    cases = [
        ("Results", RESULTS, V1SocketClientResponse, deepgram_stt._decoded),
        ("TurnInfo", TURN_INFO, V2SocketClientResponse, deepgram_flux._decoded),
    ]
    for name, text, union, decode in cases:
        sdk = timeit.timeit(lambda: construct_type(type_=union, object_=json.loads(text)), number=n)  # noqa: B023
        ours = timeit.timeit(lambda: decode(text), number=n)  # noqa: B023
        out[name] = (sdk / n * 1e6, ours / n * 1e6)
    return out


def tls_server(port: int, cert: str, key: str) -> None:
    """A ``wss://`` endpoint that accepts the socket and reads until it closes (run in its own process)."""
    import uvloop
    from aiohttp import web

    async def listen(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/v1/listen", listen)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None)


def child(kind: str, argv: list[str]) -> None:
    import uvloop

    if kind == "tls-server":
        tls_server(int(argv[0]), argv[1], argv[2])
        return
    rounds, count, port = (int(a) for a in argv)
    result = uvloop.run(opens(port, rounds, count))
    sys.stdout.write(json.dumps(result))


def started(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=2000, help="per socket and round")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--opens", type=int, default=30, help="wss sockets opened per variant and round")
    p.add_argument("--port", type=int, default=18796)
    args = p.parse_args()
    import uvloop

    emulators = started([sys.executable, "-m", "voicebot.emulators", "--port", str(args.port), "--quiet",
                         "--deepgram-key", KEY, "--openai-key", KEY])  # fmt: skip
    try:
        time.sleep(3.0)
        sent = uvloop.run(sends(f"http://127.0.0.1:{args.port}", args.rounds, args.messages, args.concurrency))
    finally:
        stop(emulators)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)  # fmt: skip
        # The system's trust store plus this certificate: the client loads what it loads in production.
        bundle = f"{tmp}/bundle.pem"
        Path(bundle).write_bytes(
            Path(ssl.get_default_verify_paths().openssl_cafile).read_bytes() + Path(cert).read_bytes()
        )
        tls_port = args.port + 1
        server = started([sys.executable, __file__, "--child", "tls-server", str(tls_port), cert, key])
        try:
            time.sleep(2.0)
            out = subprocess.run([sys.executable, __file__, "--child", "opens", str(args.rounds), str(args.opens),
                                  str(tls_port)], env={**os.environ, "SSL_CERT_FILE": bundle},
                                 check=True, capture_output=True, timeout=300)  # fmt: skip
            opened_ms: dict[str, list[float]] = json.loads(out.stdout)
        finally:
            stop(server)
    parses = parse_costs()
    print(f"client CPU per Deepgram socket operation (median of {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    ws, aio = (statistics.median(sent[name]) for name in VARIANTS)
    print(f"send 480 bytes ({args.concurrency} sockets at once): websockets {ws:.1f} us | aiohttp {aio:.1f} us "
          f"| {ws - aio:.1f} us saved per message, {ws - aio:.1f} ms per call-minute (1000 messages)")  # fmt: skip
    for name, (parse_sdk, parse_ours) in parses.items():
        print(f"receive one {name} (8 words): the SDK's parse {parse_sdk:.1f} us | ours {parse_ours:.1f} us")
    ws_open, aio_open = (statistics.median(opened_ms[name]) for name in VARIANTS)
    print(f"open + close a wss:// socket: websockets {ws_open:.2f} ms | aiohttp {aio_open:.2f} ms "
          f"| {ws_open - aio_open:.2f} ms saved per socket (every call opens one)")  # fmt: skip


if __name__ == "__main__":
    main()
