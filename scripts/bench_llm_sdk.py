"""What the OpenAI SDK costs per streamed request, and what the first request of a process costs, before and after
the bot's changes (the chat body in ``extra_body``, then serialised by orjson through ``client.post``; the startup
warm-up).

    .venv/bin/python scripts/bench_llm_sdk.py [--requests 60]

The LLM emulator runs in its own process (``python -m voicebot.emulators --fast``: first token at once), so the
figures are the client's time from ``create()`` to the response headers (``create``) and to the first chunk, on
loopback. Each variant runs in a fresh interpreter, so "first request" really is the process's first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson

VARIANTS = ("sdk-params", "extra-body", "post-orjson")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def child(base_url: str, variant: str, history: int, requests: int, warm: bool) -> dict[str, Any]:
    import httpx2
    import openai

    from voicebot.providers.openai_llm import JSON, OpenAiChat

    client = openai.AsyncOpenAI(
        api_key="sk-bench",
        base_url=base_url,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=10)),
    )
    if warm:
        await OpenAiChat(client, model="m", temperature=0.4, max_tokens=300).warm_up()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a friendly phone assistant."}]
    for i in range(history):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": "When are you open on Friday evening, and do I need to book?"})
    tools = [
        {
            "type": "function",
            "function": {
                "name": "end_call",
                "description": "End the call.",
                "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}, "required": []},
            },
        }
    ]
    body = {
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
        "stream_options": {"include_usage": True},
        "temperature": 0.4,
        "max_completion_tokens": 300,
    }
    create: Any = client.chat.completions.create
    created, first_chunk = [], []
    for _ in range(requests):
        t0 = time.perf_counter()
        if variant == "post-orjson":  # what the bot does now (voicebot/providers/openai_llm.py)
            content = orjson.dumps({"model": "m", "stream": True, **body})
            raw = await client.post("/chat/completions", cast_to=httpx2.Response, content=content, options=JSON,
                                    stream=True)  # fmt: skip
            t1 = time.perf_counter()
            async for _line in raw.aiter_lines():
                break
            t2 = time.perf_counter()
            await raw.aclose()
        else:
            if variant == "sdk-params":
                stream = await create(model="m", stream=True, **body)
            else:
                stream = await create(model="m", messages=[], stream=True, extra_body=body)
            t1 = time.perf_counter()
            async for _chunk in stream:
                break
            t2 = time.perf_counter()
            await stream.close()
        created.append((t1 - t0) * 1000)
        first_chunk.append((t2 - t0) * 1000)
    await client.close()
    return {"first_create_ms": created[0], "first_chunk_ms": first_chunk[0], "create_ms": created[1:]}


def run_child(port: int, variant: str, history: int, requests: int, warm: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", variant, str(history), str(requests), str(int(warm)), str(port)]
    out = subprocess.run(args, check=True, capture_output=True, timeout=120)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, history, requests, warm, port = sys.argv[2:7]
        base_url = f"http://127.0.0.1:{port}/v1"
        result = asyncio.run(child(base_url, variant, int(history), int(requests), warm == "1"))
        sys.stdout.write(orjson.dumps(result).decode())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()
    port = free_port()
    emulators = subprocess.Popen(
        [sys.executable, "-m", "voicebot.emulators", "--port", str(port), "--fast"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ},
    )
    try:
        time.sleep(2.0)
        print(
            "| variant | history (messages) | first request: create / first chunk (ms) | later create() p50 / p90, ms |"
        )
        print("|---|---|---|---|")
        for warm in (False, True):
            for history in (2, 30):
                for variant in VARIANTS:
                    r = run_child(port, variant, history, args.requests, warm)
                    later = sorted(r["create_ms"])
                    label = f"{variant}{' + warm-up' if warm else ''}"
                    print(
                        f"| {label} | {history} | {r['first_create_ms']:.1f} / {r['first_chunk_ms']:.1f} "
                        f"| {statistics.median(later):.2f} / {later[int(0.9 * (len(later) - 1))]:.2f} |",
                        flush=True,
                    )
    finally:
        emulators.send_signal(signal.SIGTERM)
        emulators.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
