"""The browser softphone in headless Chromium, driven over the DevTools protocol, with a fake microphone.

Two calls: one against a strict fake Twilio consumer that checks every message the page sends and drives its
playback (marks, clear, hang-up), and one end to end against the real conversation and the provider emulators.
Chromium is Debian's (``scripts/install_browser.sh``); without it these tests skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import struct
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.chromium import Chromium, chromium, require_chromium
from tests.conftest import make_settings
from voicebot import clips
from voicebot.audio import FRAME_BYTES, SAMPLE_RATE, pcm16_to_ulaw, ulaw_to_pcm16
from voicebot.call.services import SERVICES
from voicebot.call.state import STATE, AppState
from voicebot.devpage.page import CallEventHub, add_dev_routes
from voicebot.emulators import EmulatorConfig, running_emulators
from voicebot.metrics import Metrics
from voicebot.server import create_app
from voicebot.twilio import wire
from voicebot.twilio.outbound import ContextSeal
from voicebot.twilio.security import StreamTokens

SCREENSHOT_DIR = Path(os.environ.get("VOICEBOT_ARTIFACTS", "build/artifacts"))


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    require_chromium()


# --- audio for the fake microphone ---------------------------------------------------------------------------


def write_pcm_wav(path: Path, pcm16: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)
    return path


def speech_wav(path: Path, ulaw: bytes, lead_ms: int, tail_ms: int) -> Path:
    """A mu-law clip as the 16-bit 8 kHz WAV Chromium's fake microphone plays, between stretches of silence."""
    pad = b"\x00\x00" * (SAMPLE_RATE // 1000)
    return write_pcm_wav(path, pad * lead_ms + ulaw_to_pcm16(ulaw) + pad * tail_ms, SAMPLE_RATE)


def tone(rate: int, seconds: float, hz: float = 0.0, amplitude: int = 0) -> bytes:
    n = round(rate * seconds)
    return struct.pack(f"<{n}h", *(round(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))


def rms(pcm16: bytes) -> float:
    samples = struct.unpack(f"<{len(pcm16) // 2}h", pcm16)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-9))


def tone_amplitude(pcm16: bytes, hz: float, rate: int = SAMPLE_RATE) -> float:
    """The amplitude of the ``hz`` component (a single-bin DFT): a click spreads over every bin, a tone sits in one."""
    samples = struct.unpack(f"<{len(pcm16) // 2}h", pcm16)
    step = 2 * math.pi * hz / rate
    re = sum(s * math.cos(step * i) for i, s in enumerate(samples))
    im = sum(s * math.sin(step * i) for i, s in enumerate(samples))
    return 2 * math.hypot(re, im) / max(1, len(samples))


def zero_crossing_hz(pcm16: bytes, rate: int = SAMPLE_RATE) -> float:
    samples = struct.unpack(f"<{len(pcm16) // 2}h", pcm16)
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings * rate / (2 * len(samples))


# --- a strict Twilio consumer for /media -------------------------------------------------------------------


class StrictMediaServer:
    """``/media`` that checks every message the page sends as Twilio's, and lets the test send the bot's side."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.start: asyncio.Future[wire.Start] = asyncio.get_running_loop().create_future()
        self.stopped: asyncio.Future[wire.Stop] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.frames: list[wire.Media] = []
        self.sequence: list[int] = []
        self.problems: list[str] = []
        self.echoes: dict[str, asyncio.Future[float]] = {}
        self._frame_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.ws: web.WebSocketResponse | None = None

    def echo(self, name: str) -> asyncio.Future[float]:
        """Resolves with the arrival time (monotonic) of the page's echo of mark ``name``."""
        if name not in self.echoes:
            self.echoes[name] = asyncio.get_running_loop().create_future()
        return self.echoes[name]

    async def frames_received(self, count: int) -> None:
        if len(self.frames) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._frame_waiters.append((count, future))
        await future

    async def send(self, message: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_str(message.decode())

    async def play(self, stream_sid: str, audio: bytes, mark: str) -> float:
        """Send ``audio`` as 20 ms media messages back to back, then a mark; returns when the mark was sent."""
        for i in range(0, len(audio), FRAME_BYTES):
            await self.send(wire.media_message(stream_sid, audio[i : i + FRAME_BYTES]))
        await self.send(wire.mark_message(stream_sid, mark))
        return time.monotonic()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        try:
            async for msg in ws:
                self._on_text(msg.data if msg.type is aiohttp.WSMsgType.TEXT else None)
        finally:
            self.closed.set()
        return ws

    def _on_text(self, data: str | None) -> None:
        if data is None:
            self.problems.append("a non-text frame")
            return
        try:
            event = wire.parse_inbound(data)
        except wire.WireError as exc:
            self.problems.append(f"malformed: {exc}: {data[:200]}")
            return
        if self.stopped.done():
            self.problems.append(f"{event.event} after stop")
        if not isinstance(event, wire.Connected):
            self.sequence.append(event.sequence_number)
        if not self.start.done() and not isinstance(event, wire.Connected | wire.Start):
            self.problems.append(f"{event.event} before start")
        match event:
            case wire.Connected():
                if self.sequence or self.start.done():
                    self.problems.append("connected is not the first message")
            case wire.Start():
                self.start.set_result(event)
            case wire.Media():
                self.frames.append(event)
                for count, future in list(self._frame_waiters):
                    if len(self.frames) >= count and not future.done():
                        future.set_result(None)
            case wire.Mark(name=name):
                future = self.echo(name)
                if future.done():
                    self.problems.append(f"mark {name} echoed twice")
                else:
                    future.set_result(time.monotonic())
            case wire.Stop():
                self.stopped.set_result(event)
            case wire.Dtmf():
                self.problems.append("unexpected dtmf")


# --- the page against a strict Twilio consumer -----------------------------------------------------------------

MIC_TONE_HZ = 1000.0
MIC_ALIAS_HZ = 5000.0
"""Above the 4 kHz telephone Nyquist: decimating to 8 kHz without a low-pass would fold it down to 3 kHz."""
MIC_AMPLITUDE = 8192  # -12 dBFS
MIC_RATE = 48000
BOT_TONE_HZ = 440.0
MARK_EARLY_S = 0.05
"""A mark may come back this much before its audio's nominal end (the audio thread renders ahead a little)."""
MARK_LATE_S = 0.5
"""...and at most this much after it (message hops, render quantum, a busy 2-core CI machine)."""
CLEAR_ECHO_S = 0.3
PAGE_TIMEOUT_S = 15.0
DEV_EVENTS: list[dict[str, Any]] = [
    {"type": "user", "text": "what are", "final": False},
    {"type": "user", "text": "What are your opening hours?", "final": True},
    {"type": "user", "text": "wait", "final": False},  # the caller interrupts...
    {"type": "barge_in", "stage": "clear"},
    {"type": "assistant", "text": "We are open from nine", "interrupted": True},  # ...the turn before it ends
    {"type": "turn", "latency_ms": {"stt_final": 210.0, "first_token": 400.5, "first_media": 610.0}},
    {"type": "call_ended", "reason": "test"},
]
TRANSCRIPT_JS = "Array.from(document.querySelectorAll('#transcript li'), li => [li.className, li.textContent])"


def mic_test_wav(path: Path) -> Path:
    """1 s silence, 1.5 s of 1 kHz, 0.5 s silence, 1.5 s of 5 kHz, then silence."""
    return write_pcm_wav(
        path,
        tone(MIC_RATE, 1.0)
        + tone(MIC_RATE, 1.5, MIC_TONE_HZ, MIC_AMPLITUDE)
        + tone(MIC_RATE, 0.5)
        + tone(MIC_RATE, 1.5, MIC_ALIAS_HZ, MIC_AMPLITUDE)
        + tone(MIC_RATE, 10.0),
        MIC_RATE,
    )


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    server = TestServer(app, host="127.0.0.1", port=None)
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


def strict_app(hub: CallEventHub) -> tuple[web.Application, StrictMediaServer]:
    settings = make_settings()
    state = AppState(
        settings=settings,
        metrics=Metrics(),
        tokens=StreamTokens(b"browser-test-secret"),
        seal=ContextSeal(b"browser-test-secret"),
    )
    app = web.Application()
    app[STATE] = state
    add_dev_routes(app, hub)
    media = StrictMediaServer(state)
    app.router.add_get("/media", media.handle)
    return app, media


async def wait(awaitable: Any, what: str, browser: Chromium, timeout: float = PAGE_TIMEOUT_S) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}\n{browser.context()}") from None


async def test_page_codec_matches_python(tmp_path: Path) -> None:
    """The page's G.711 tables are bit-exact with voicebot.audio, and its resampler filters what would alias."""
    hub = CallEventHub()
    app, _ = strict_app(hub)
    async with serve(app) as url, chromium(mic_test_wav(tmp_path / "mic.wav")) as browser:
        await browser.goto(url)
        samples = list(range(-32768, 32768, 3))
        decoded, encoded, response = await browser.evaluate(
            f"""Promise.all([import("/static/mulaw.js"), import("/static/resampler.js")]).then(([m, r]) => {{
                const samples = {samples};
                const sine = (rate, hz) =>
                    Float32Array.from({{length: rate}}, (_, i) => Math.sin(2 * Math.PI * hz * i / rate));
                const level = (hz) => {{
                    const out = new r.Resampler(48000, 8000).process(sine(48000, hz)).slice(400);
                    return Math.sqrt(out.reduce((a, x) => a + x * x, 0) / out.length) * Math.SQRT2;
                }};
                return [Array.from(m.DECODE_INT16), samples.map(m.encodeSample),
                        [300, 3400, 4400, 5000, 12000].map(level)];
            }})"""
        )
    assert decoded == list(struct.unpack("<256h", ulaw_to_pcm16(bytes(range(256)))))
    assert encoded == list(pcm16_to_ulaw(struct.pack(f"<{len(samples)}h", *samples)))
    passband_300, passband_3400, stop_4400, stop_5000, stop_12000 = (db(x) for x in response)
    assert abs(passband_300) < 0.1 and abs(passband_3400) < 0.5
    assert stop_4400 < -50 and stop_5000 < -60 and stop_12000 < -60


async def test_page_behaves_like_twilio(tmp_path: Path) -> None:
    """Handshake, 20 ms mu-law frames of the filtered microphone, gap-free playback, mark timing, clear, stop."""
    hub = CallEventHub()
    app, media = strict_app(hub)
    async with serve(app) as url, chromium(mic_test_wav(tmp_path / "mic.wav")) as browser:
        await browser.goto(url)
        await browser.evaluate("document.getElementById('call').click()")
        start = await wait(media.start, "start", browser)
        dialled = await browser.evaluate("voicebot.until('dialled')")

        # The handshake: what the /voice webhook would have put in <Parameter>, redeemable once for this call.
        assert start.call_sid == dialled["callSid"] and hub.is_dev_call(start.call_sid)
        assert start.account_sid == media.state.settings.twilio_account_sid
        assert start.stream_sid.startswith("MZ") and len(start.stream_sid) == 34
        assert start.tracks == ("inbound",) and start.sequence_number == 1
        media.state.tokens.redeem(start.custom_parameters.get("token"), start.call_sid)
        sid = start.stream_sid
        for event in DEV_EVENTS:
            hub.publish(start.call_sid, event)

        # Playback: 1 s in 50 messages plays as one gap-free run; its mark comes back when it has played.
        await wait(browser.evaluate("voicebot.until('started')"), "the page to start", browser)
        sent = await media.play(sid, pcm16_to_ulaw(tone(SAMPLE_RATE, 1.0, BOT_TONE_HZ, 8000)), "tone")
        echoed = await wait(media.echo("tone"), "the echo of mark 'tone'", browser)
        assert 1.0 - MARK_EARLY_S <= echoed - sent <= 1.0 + MARK_LATE_S, echoed - sent
        stop = await wait(browser.evaluate("voicebot.until('audio_stop')"), "the end of playback", browser)
        assert stop["cut"] is False
        assert len(await browser.evaluate("voicebot.journal.filter(e => e.kind === 'audio_start')")) == 1

        # A mark with nothing buffered comes back at once.
        await media.send(wire.mark_message(sid, "idle"))
        sent = time.monotonic()
        assert await wait(media.echo("idle"), "the echo of mark 'idle'", browser) - sent < CLEAR_ECHO_S

        # clear: the unplayed audio is dropped at once and every pending mark comes back at once.
        await media.play(sid, pcm16_to_ulaw(tone(SAMPLE_RATE, 3.0, BOT_TONE_HZ, 8000)), "long")
        await media.send(wire.mark_message(sid, "after-long"))
        await wait(browser.evaluate("voicebot.until('audio_start', 2)"), "the second run", browser)
        await media.send(wire.clear_message(sid))
        cleared = time.monotonic()
        for name in ("long", "after-long"):
            assert await wait(media.echo(name), f"the echo of {name}", browser) - cleared < CLEAR_ECHO_S
        stop = await wait(browser.evaluate("voicebot.until('audio_stop', 2)"), "the cut", browser)
        assert stop["cut"] is True and stop["unplayedMs"] > 1500

        # The microphone: 8 kHz mu-law, 20 ms per message, numbered like Twilio's; 1 kHz passes, 5 kHz does not.
        await wait(media.frames_received(250), "5 s of microphone audio", browser)
        await wait(browser.evaluate("voicebot.until('event:call_ended')"), "the dev events", browser)
        lines = await browser.evaluate(TRANSCRIPT_JS)
        await browser.evaluate("document.getElementById('hang-up').click()")
        stopped = await wait(media.stopped, "stop", browser)
        await wait(media.closed.wait(), "the socket to close", browser)

    assert stopped.call_sid == start.call_sid and stopped.account_sid == start.account_sid
    assert media.problems == []
    assert media.sequence == list(range(1, len(media.sequence) + 1))
    assert [f.chunk for f in media.frames] == list(range(1, len(media.frames) + 1))
    assert all(f.timestamp % 20 == 0 and len(f.payload) == FRAME_BYTES for f in media.frames)
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(media.frames))
    assert browser.errors == []
    assert [line for line in lines if "note" not in line[0]] == [
        ["line user final", "YouWhat are your opening hours?"],
        ["line assistant interrupted", "BotWe are open from nineinterrupted"],
        ["line user interim", "Youwait"],
    ]
    assert [line[1] for line in lines if "note" in line[0]][-2:] == ["barge-in: clear", "call ended: test"]
    check_microphone([ulaw_to_pcm16(f.payload) for f in media.frames])


def check_microphone(frames: list[bytes]) -> None:
    """The 1 kHz tone arrives at its level and pitch; the 5 kHz tone that follows is filtered out."""
    levels = [rms(f) for f in frames]
    loud = [i for i, level in enumerate(levels) if level > MIC_AMPLITUDE / math.sqrt(2) / 4]
    assert loud, f"no tone in the microphone audio: {[round(x) for x in levels]}"
    first, last = loud[0], loud[-1]
    # 1.5 s = 75 frames, plus one partly loud frame at each edge when the tone does not start on a frame boundary
    assert 70 <= last - first + 1 <= 77, (first, last)
    tone_pcm = b"".join(frames[first + 2 : last - 1])
    assert abs(db(rms(tone_pcm) / (MIC_AMPLITUDE / math.sqrt(2)))) < 1.5
    assert abs(zero_crossing_hz(tone_pcm) - MIC_TONE_HZ) < 10
    # 5 kHz from 0.5 s after the 1 kHz tone, for 1.5 s: without the low-pass it folds to 3 kHz at the tone's level.
    # Measured at 3 kHz, not as broadband level: on a starved CI machine Chromium's fake microphone can drop a few
    # samples, and the step that makes is a click whose energy spreads across the band (seen once at -43.5 dB rms).
    alias = b"".join(frames[last + 30 : last + 95])
    folded = tone_amplitude(alias, SAMPLE_RATE - MIC_ALIAS_HZ) / tone_amplitude(tone_pcm, MIC_TONE_HZ)
    assert db(folded) < -50, db(folded)


# --- end to end: the real conversation against the emulated providers --------------------------------------

LEAD_SILENCE_MS = 4000
"""The fake caller speaks this long after the microphone opens: after the greeting has played."""
TAIL_SILENCE_MS = 20000
GREETING_MS_PER_CHAR = 30.0
"""Shorter synthesized speech than the emulator's default keeps the test quick; the protocol is the same."""
GREETING_WITHIN_S = 3.0
"""Click to greeting audio: about 0.3 s on a 2-core machine (microphone, worklets, token, socket, cached audio)."""
WARMUP_TIMEOUT_S = 10.0
E2E_TIMEOUT_S = 20.0


def with_dev_page(app: web.Application) -> web.Application:
    """The dev page on ``app``, unless create_app already serves it."""
    if not any(route.resource is not None and route.resource.canonical == "/dev/call" for route in app.router.routes()):
        hub = CallEventHub()
        add_dev_routes(app, hub)
        app[STATE].listeners.append(hub.publish)
    return app


async def test_call_from_the_browser_end_to_end(tmp_path: Path) -> None:
    """Click Call: the greeting plays, the caller's speech reaches the bot, both sides show, the reply plays."""
    config = EmulatorConfig.fast()
    config.tts.ms_per_char = GREETING_MS_PER_CHAR
    mic = speech_wav(tmp_path / "caller.wav", clips.load("hours"), LEAD_SILENCE_MS, TAIL_SILENCE_MS)
    async with running_emulators(config) as emu:
        emu.stt.script = [clips.text("hours")]
        settings = make_settings(
            deepgram_base_url=emu.base_url,
            openai_base_url=emu.base_url + "/v1",
            twilio_api_base_url=emu.base_url,
            transcript_dir=tmp_path / "transcripts",
        )
        app = with_dev_page(create_app(settings))
        async with serve(app) as url, chromium(mic) as browser:
            async with asyncio.timeout(WARMUP_TIMEOUT_S):
                await app[SERVICES].phrases.warmed.wait()
            await browser.goto(url)
            await browser.evaluate("document.getElementById('call').click()")
            click = await browser.evaluate("voicebot.until('click')")
            greeting = await wait(browser.evaluate("voicebot.until('audio_start')"), "the greeting", browser)
            heard_greeting = await wait(browser.evaluate("voicebot.until('event:assistant')"), "greeting", browser)
            user = await wait(
                browser.evaluate("voicebot.until('event:user', 1, e => e.event.final)"),
                "the caller's words", browser, E2E_TIMEOUT_S,
            )  # fmt: skip
            reply = await wait(browser.evaluate("voicebot.until('audio_start', 2)"), "the reply", browser)
            await wait(browser.evaluate("voicebot.until('audio_stop', 2)"), "the end of the reply", browser)
            heard_reply = await wait(browser.evaluate("voicebot.until('event:assistant', 2)"), "reply", browser)
            turn = await wait(
                browser.evaluate("voicebot.until('event:turn', 1, e => 'stt_final' in e.event.latency_ms)"),
                "the reply's latency chain", browser,
            )  # fmt: skip
            shown = await browser.evaluate(
                "Array.from(document.querySelectorAll('#transcript .line:not(.note)'), li => li.textContent)"
            )
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            await browser.screenshot(SCREENSHOT_DIR / "browser-call.png")
            await browser.evaluate("document.getElementById('hang-up').click()")
            closed = await wait(browser.evaluate("voicebot.until('ws_closed')"), "the socket to close", browser)
            stats = await browser.evaluate("voicebot.stats")
            assert browser.errors == []

    # The speech reached the bot (the STT emulator only transcribes detected speech) and both sides show.
    click_to_greeting_s = (greeting["t"] - click["t"]) / 1000
    print(f"click -> greeting audio played: {click_to_greeting_s * 1000:.0f} ms")
    assert click_to_greeting_s < GREETING_WITHIN_S
    assert heard_greeting["event"] == {"type": "assistant", "text": settings.greeting, "interrupted": False}
    assert user["event"]["text"] == clips.text("hours")
    assert reply["t"] > user["t"]
    assert heard_reply["event"]["interrupted"] is False and "open" in heard_reply["event"]["text"]
    assert shown == [f"Bot{settings.greeting}", f"You{clips.text('hours')}", f"Bot{heard_reply['event']['text']}"]
    assert turn["event"]["latency_ms"]["first_media"] > turn["event"]["latency_ms"]["stt_final"] > 0
    assert closed["byUs"] is True and stats["framesSent"] > 0 and stats["marksEchoed"] > 0
