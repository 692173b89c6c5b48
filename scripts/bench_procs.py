"""The benchmark's processes and the Linux figures it reads about them (/proc), ports, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE, LOAD_CORE = "0", "1"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
STOP_TIMEOUT_S = 8.0


@contextlib.contextmanager
def paced_emulators(port: int, key: str, *, tts_chunk_bytes: int = 800) -> Iterator[str]:
    """The emulators in their own process for a client-side micro-benchmark, paced as in ``make bench`` (LLM first
    token at once, 100 tokens per second; Aura's first byte at once, 4x real time in ``tts_chunk_bytes`` chunks);
    yields their base URL and stops them on the way out."""
    argv = [sys.executable, "-m", "voicebot.emulators", "--port", str(port), "--quiet",
            "--deepgram-key", key, "--openai-key", key, "--tts-ttfb-ms", "0", "--tts-bytes-per-second", "32000",
            "--tts-chunk-bytes", str(tts_chunk_bytes), "--llm-ttft-ms", "0",
            "--llm-tokens-per-second", "100"]  # fmt: skip
    emulators = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        emulators.send_signal(signal.SIGTERM)
        emulators.wait(10)


class Procs:
    """Every child process, each in its own session so that stopping it stops what it started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        core: str,
        env: dict[str, str] | None = None,
        stdout: bool = False,
        cwd: Path = ROOT,
    ) -> asyncio.subprocess.Process:
        log = (self.logs / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", core, *argv,
            stdout=asyncio.subprocess.PIPE if stdout else log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.running[name] = proc
        return proc

    async def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                async with asyncio.timeout(wait_s):
                    await proc.wait()
                return
            except TimeoutError:
                continue

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (/proc/PID/task/*/children), e.g. a server's ``--workers`` processes."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def tree_rss_mib(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += rss_mib(p)
    return total


def run_delay_s(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but waiting for a CPU (/proc/PID/schedstat, second field)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def core_busy_s(core: str) -> float:
    """Busy (non-idle, non-iowait) seconds of one CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / TICKS
    return 0.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_ports(base: int, count: int) -> list[int]:
    """``count`` free ports from ``base`` upwards (bounded search in 18000-19999)."""
    out: list[int] = []
    port = base
    while len(out) < count and port < 20000:
        if port_free(port):
            out.append(port)
        port += 1
    if len(out) < count:
        raise SystemExit("bench: no free ports in 18000-19999")
    return out


async def wait_http(url: str, ok: Callable[[int, str], bool], timeout: float) -> None:  # noqa: ASYNC109 (startup bound)
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if ok(resp.status, await resp.text()):
                        return
            await asyncio.sleep(0.25)


async def http_json(method: str, url: str, body: Any = None) -> Any:
    async with asyncio.timeout(30), aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
        resp.raise_for_status()
        return orjson.loads(await resp.read())


async def http_text(url: str) -> str:
    async with asyncio.timeout(10), aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text()
