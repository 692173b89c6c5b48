"""``python -m voicebot`` as a user runs it: one process or several workers on one port, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthz(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        body: dict[str, object] = orjson.loads(resp.read())
        return body


def _wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return _healthz(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_server_serves_healthz_and_stops_on_sigterm(workers: int) -> None:
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VOICEBOT_LOG_FORMAT": "json"}
    with subprocess.Popen(
        [sys.executable, "-m", "voicebot", "--port", str(port), "--workers", str(workers)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            _check_running_server(proc, port, workers)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_running_server(proc: subprocess.Popen[bytes], port: int, workers: int) -> None:
    body = _wait_healthy(port, proc)
    assert body["status"] == "degraded"  # no API keys in this environment
    assert body["missing"] == ["DEEPGRAM_API_KEY", "OPENAI_API_KEY"]
    if workers > 1:
        # Both workers must be listening on the one port: their pids show up in the startup lines.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pids: set[int] = set()
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        buffer = b""
        while len(pids) < workers and time.monotonic() < deadline:
            buffer += proc.stderr.read() or b""
            pids = {orjson.loads(line)["pid"] for line in buffer.splitlines() if b'"server_started"' in line}
            time.sleep(0.05)
        assert len(pids) == workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STARTUP_TIMEOUT_S) == 0
