"""Headless Chromium driven over the DevTools protocol (no Playwright: Debian's browser and aiohttp suffice).

The browser gets a fake microphone that plays a WAV file once (``%noloop``) and grants it without a prompt.
Without Chromium a test skips, or fails when ``CI=true``, where a missing browser is a broken setup.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = os.environ.get("VOICEBOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_TIMEOUT_S = 20.0
CDP_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",
    "--window-size=1200,900",
    "--remote-debugging-port=0",
)


def require_chromium() -> str:
    """Chromium's path; skip without it, but fail in CI, where a missing browser is a broken setup."""
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM}: run scripts/install_browser.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class BrowserError(AssertionError):
    """A page-side failure (exception, failed evaluation), with the page's console for context."""


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol (flattened sessions)."""

    def __init__(self, mic_wav: Path, profile: Path) -> None:
        self.args = [
            require_chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
            "about:blank",
        ]
        self.console: deque[str] = deque(maxlen=400)
        self.stderr: deque[str] = deque(maxlen=200)
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._load: asyncio.Event = asyncio.Event()
        self._session_id = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Chromium:
        try:
            await self._launch()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _launch(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stderr is not None
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._read_stderr(self._proc.stderr, listening)))
        async with asyncio.timeout(LAUNCH_TIMEOUT_S):
            url = await listening
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._tasks.append(asyncio.create_task(self._read_cdp(self._ws)))
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self._session_id = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.page(f"{domain}.enable")

    async def _read_stderr(self, stream: asyncio.StreamReader, listening: asyncio.Future[str]) -> None:
        # Drained for the browser's whole life: a full pipe would block Chromium.
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            if line.startswith("DevTools listening on ") and not listening.done():
                listening.set_result(line.removeprefix("DevTools listening on "))
        if not listening.done():
            listening.set_exception(BrowserError("Chromium exited:\n" + "\n".join(self.stderr)))

    async def _read_cdp(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(BrowserError(f"CDP error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            self._on_event(data.get("method", ""), data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.errors.append(text)
            self.console.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Page.loadEventFired":
            self._load.set()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str = "",
        timeout: float = CDP_TIMEOUT_S,
    ) -> dict[str, Any]:
        """One DevTools command (to the browser, or to ``session``); its result, or BrowserError."""
        assert self._ws is not None
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            await self._ws.send_json(message)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise BrowserError(f"{method} timed out after {timeout} s\n{self.context()}") from None
        finally:
            self._pending.pop(msg_id, None)

    async def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page's session."""
        return await self.send(method, params, self._session_id)

    async def goto(self, url: str) -> None:
        self._load.clear()
        await self.page("Page.navigate", {"url": url})
        async with asyncio.timeout(CDP_TIMEOUT_S):
            await self._load.wait()

    async def evaluate(self, expression: str, timeout: float = CDP_TIMEOUT_S) -> Any:
        """The value of ``expression`` in the page (awaited if it is a promise), run as a user gesture."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True}
        result = await self.send("Runtime.evaluate", params, self._session_id, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression}: {text}\n{self.context()}")
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> None:
        data = await self.page("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def context(self) -> str:
        return "page console:\n  " + "\n  ".join(self.console)

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(BrowserError, aiohttp.ClientError, ConnectionError):
                await self.send("Browser.close", timeout=CLOSE_TIMEOUT_S)
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def chromium(mic_wav: Path) -> AsyncIterator[Chromium]:
    with tempfile.TemporaryDirectory(prefix="voicebot-chromium-") as profile:
        async with Chromium(mic_wav, Path(profile)) as browser:
            yield browser
