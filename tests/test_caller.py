"""The simulated caller against a scripted fake bot server on loopback: Twilio's behaviour over real sockets.

The fake server (a tiny aiohttp app) answers /voice with TwiML and runs a per-test scenario on /media: it sends
audio, marks and clears at moments set by what the caller does, and records everything the caller sent and when.
Tests synchronise on events and futures; timing bounds are the named constants below.
"""

from __future__ import annotations

import asyncio
import re
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import webrtcvad
from aiohttp import web

from voicebot import clips
from voicebot.audio import FRAME_BYTES, MULAW_SILENCE, ulaw_to_pcm16
from voicebot.caller import (
    CallerError,
    CallResult,
    Dtmf,
    HangUp,
    Say,
    SayWhileBotSpeaks,
    Silence,
    SimulatedCaller,
    Step,
    WaitForBotSilence,
    WavFormatError,
    parse_twiml,
    reachable_stream_url,
    read_wav,
    write_wav,
)
from voicebot.caller.__main__ import amain
from voicebot.caller.script import resolve_audio
from voicebot.twilio.security import validate_twilio_signature
from voicebot.twilio.wire import (
    Connected,
    InboundEvent,
    Mark,
    Media,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_inbound,
)
from voicebot.twilio.wire import (
    Dtmf as DtmfEvent,
)

AUTH_TOKEN = "test-auth-token-0123456789"
STREAM_TOKEN = "vbt1.stream-token-for-tests"
CALL_TIMEOUT_S = 10.0  # a whole simulated call; every test ends long before unless something hangs
WAIT_S = 5.0  # waiting for one event
MARK_LATE_S = 0.15  # how late a mark echo may reach the server after its audio finished playing
PROMPT_S = 0.15  # "at once": mark echo when idle, or after a clear
PACING_SLACK = 0.25  # frames sent may differ from elapsed/20 ms by this fraction (plus a few frames)
SPEECH_VAD_MIN = 0.8  # share of a speech clip's frames (inside the padding) that webrtcvad calls speech
VAD_MODE = 2  # 3 is stricter: it hears the pause at the comma in "Thanks, goodbye." (83% there)

SILENT = bytes([MULAW_SILENCE]) * FRAME_BYTES


@dataclass
class Inbound:
    t: float
    event: InboundEvent


@dataclass
class Peer:
    """The fake server's side of one media stream."""

    ws: web.WebSocketResponse
    inbound: list[Inbound] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_sid: str = ""

    async def read_loop(self) -> None:
        async for msg in self.ws:
            self.inbound.append(Inbound(time.monotonic(), parse_inbound(msg.data)))
            self.changed.set()
        self.changed.set()

    async def expect(self, match: Callable[[InboundEvent], bool], start: int = 0) -> Inbound:
        """The first inbound message from index ``start`` on that matches, waiting for it if needed."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for item in self.inbound[start:]:
                    if match(item.event):
                        return item
                if self.ws.closed:
                    raise AssertionError("stream closed before the expected message")
                self.changed.clear()
                await self.changed.wait()

    async def speech_then_silence(self, silent_frames: int = 3) -> float:
        """Wait until the caller has spoken and then sent ``silent_frames`` of silence; return that time."""
        spoke = await self.expect(lambda e: isinstance(e, Media) and e.payload != SILENT)
        start = self.inbound.index(spoke)
        while True:
            run = 0
            for item in self.inbound[start:]:
                if isinstance(item.event, Media):
                    run = run + 1 if item.event.payload == SILENT else 0
                    if run >= silent_frames:
                        return item.t
            self.changed.clear()
            async with asyncio.timeout(WAIT_S):
                await self.changed.wait()

    async def send(self, message: bytes) -> float:
        t = time.monotonic()
        await self.ws.send_str(message.decode())
        return t

    def events(self, kind: type[InboundEvent]) -> list[Inbound]:
        return [i for i in self.inbound if isinstance(i.event, kind)]


Scenario = Callable[[Peer], Awaitable[None]]


class FakeBotServer:
    """A scripted stand-in for the bot server: checks what Twilio must send, runs a scenario, records it all."""

    def __init__(
        self, scenario: Scenario | None = None, *, twiml: str | None = None, public_url: str | None = None
    ) -> None:
        self.scenario = scenario
        self.twiml = twiml
        self.public_url = public_url
        self.forms: list[dict[str, str]] = []
        self.webhook_signatures: list[str | None] = []
        self.ws_signatures: list[str | None] = []
        self.require_ws_signature = False
        self.peer: Peer | None = None
        self.finished: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
        self.url = ""
        app = web.Application()
        app.router.add_post("/voice", self._voice)
        app.router.add_get("/media", self._media)
        self._runner = web.AppRunner(app)

    @property
    def stream_url(self) -> str:
        return re.sub(r"^https?://", "wss://", self.public_url or self.url) + "/media"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        self.webhook_signatures.append(request.headers.get("X-Twilio-Signature"))
        twiml = self.twiml or (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{self.stream_url}"><Parameter name="token" value="{STREAM_TOKEN}" /></Stream>'
            "</Connect></Response>"
        )
        return web.Response(text=twiml, content_type="text/xml")

    async def _media(self, request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature")
        self.ws_signatures.append(signature)
        if self.require_ws_signature and not validate_twilio_signature(AUTH_TOKEN, self.stream_url, {}, signature):
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        peer = self.peer = Peer(ws)
        reader = asyncio.create_task(peer.read_loop())
        try:
            connected = await peer.expect(lambda e: True)
            assert isinstance(connected.event, Connected)
            start = await peer.expect(lambda e: isinstance(e, Start))
            assert isinstance(start.event, Start)
            assert peer.inbound.index(start) == 1, "start must come right after connected"
            assert start.event.custom_parameters["token"] == STREAM_TOKEN
            peer.stream_sid = start.event.stream_sid
            if self.scenario is not None:
                await self.scenario(peer)
            await ws.close()
            await reader
        except Exception as exc:
            if not self.finished.done():
                self.finished.set_exception(exc)
            raise
        finally:
            reader.cancel()
        if not self.finished.done():
            self.finished.set_result(peer)
        return ws


MakeServer = Callable[..., Awaitable[FakeBotServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    servers: list[FakeBotServer] = []

    async def factory(scenario: Scenario | None = None, **kwargs: str) -> FakeBotServer:
        server = FakeBotServer(scenario, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()
    for server in servers:  # surface a failed server-side check even if the test did not await it
        if server.finished.done():
            server.finished.result()


async def call(server: FakeBotServer, script: list[Step], **kwargs: Any) -> tuple[CallResult, Peer]:
    result = await SimulatedCaller(server.url, script, **kwargs).run(timeout=CALL_TIMEOUT_S)
    async with asyncio.timeout(WAIT_S):
        peer = await server.finished
    return result, peer


def audio(ms: int, byte: int = 0x2A) -> bytes:
    return bytes([byte]) * (ms * 8)


# --- marks and clear over real sockets -------------------------------------------------------------------


async def test_marks_echo_at_once_when_idle_and_after_the_audio_has_played(make_server: MakeServer) -> None:
    async def scenario(peer: Peer) -> None:
        sid = peer.stream_sid
        sent_idle = await peer.send(mark_message(sid, "idle"))
        idle = await peer.expect(lambda e: isinstance(e, Mark) and e.name == "idle")
        assert idle.t - sent_idle < PROMPT_S
        sent = await peer.send(media_message(sid, audio(300)))
        await peer.send(mark_message(sid, "first"))
        await peer.send(media_message(sid, audio(200)))
        await peer.send(mark_message(sid, "second"))
        first = await peer.expect(lambda e: isinstance(e, Mark) and e.name == "first")
        second = await peer.expect(lambda e: isinstance(e, Mark) and e.name == "second")
        assert 0.3 <= first.t - sent < 0.3 + MARK_LATE_S
        assert 0.5 <= second.t - sent < 0.5 + MARK_LATE_S

    server = await make_server(scenario)
    result, peer = await call(server, [])
    assert [m.event.name for m in peer.events(Mark)] == ["idle", "first", "second"]
    assert result.marks_echoed == ["idle", "first", "second"]
    assert result.ended_by == "server_closed"
    assert result.close_code == 1000
    assert result.ok, result.format_timeline()
    assert [e.kind for e in result.events_of("bot_audio_start")] == ["bot_audio_start"]
    assert result.events_of("bot_audio_stop")[0].detail == ""  # drained, not cut
    assert result.bytes_played == 4000
    assert result.bytes_dropped == 0


async def test_clear_on_barge_in_drops_audio_and_echoes_pending_marks_at_once(make_server: MakeServer) -> None:
    clear_sent: list[float] = []

    async def scenario(peer: Peer) -> None:
        sid = peer.stream_sid
        await peer.send(media_message(sid, audio(2000, byte=0x11)))
        await peer.send(mark_message(sid, "long-reply"))
        barge_in = await peer.expect(lambda e: isinstance(e, Media) and e.payload != SILENT)
        clear_sent.append(await peer.send(clear_message(sid)))
        echo = await peer.expect(lambda e: isinstance(e, Mark) and e.name == "long-reply")
        assert echo.t - clear_sent[0] < PROMPT_S, "a clear echoes pending marks at once"
        assert echo.t - barge_in.t < 1.0, "the 2 s reply must not have played out"
        await peer.send(media_message(sid, audio(100, byte=0x22)))
        await peer.send(mark_message(sid, "next-reply"))
        await peer.expect(lambda e: isinstance(e, Mark) and e.name == "next-reply")
        await peer.expect(lambda e: isinstance(e, Stop))

    server = await make_server(scenario)
    script = [SayWhileBotSpeaks("okay", after_ms=300), WaitForBotSilence(), HangUp()]
    result, _ = await call(server, script)
    assert result.ok, result.format_timeline()
    assert result.ended_by == "hangup"
    (clear,) = result.events_of("clear_received")
    assert [m.epoch for m in result.media] == [0, 1]
    assert all(m.t < clear.t for m in result.media if m.epoch == 0)
    assert all(m.t > clear.t for m in result.media if m.epoch == 1)
    assert [e.detail for e in result.events_of("bot_audio_stop")] == ["cut", ""]
    speech = result.events_of("caller_speech_start")[0]
    first_start = result.events_of("bot_audio_start")[0]
    assert speech.t - first_start.t >= 0.3
    # Played: the first reply up to the clear, then all of the second; the rest of the first was dropped.
    played_first = round((clear.t - first_start.t) * 8000)
    assert result.bytes_played == pytest.approx(played_first + 800, abs=80)
    assert result.bytes_played + result.bytes_dropped == 16000 + 800
    heard = result.heard
    assert heard.count(0x11) == pytest.approx(played_first, abs=80)
    assert heard.count(0x22) == 800
    assert heard.index(0x22) > heard.rindex(0x11)


# --- signatures, rejection, mapping ----------------------------------------------------------------------


async def test_signed_webhook_and_stream_on_the_public_url(make_server: MakeServer) -> None:
    public = "https://bot.example.com"
    server = await make_server(public_url=public)
    server.require_ws_signature = True
    result, _ = await call(server, [HangUp()], auth_token=AUTH_TOKEN, public_url=public)
    assert result.ok, result.format_timeline()
    form = server.forms[0]
    assert re.fullmatch(r"CA[0-9a-f]{32}", form["CallSid"])
    assert re.fullmatch(r"AC[0-9a-f]{32}", form["AccountSid"])
    assert form["CallStatus"] == "ringing"
    assert form["From"] and form["To"]
    assert validate_twilio_signature(AUTH_TOKEN, public + "/voice", form, server.webhook_signatures[0])
    assert result.stream_url == "wss://bot.example.com/media"
    assert validate_twilio_signature(AUTH_TOKEN, result.stream_url, {}, server.ws_signatures[0])
    assert result.events_of("ws_open")[0].detail == server.url.replace("http", "ws") + "/media"


async def test_no_auth_token_means_no_signature_headers(make_server: MakeServer) -> None:
    server = await make_server()
    result, _ = await call(server, [HangUp()], extra_parameters={"tenant": "acme"})
    assert result.ok, result.format_timeline()
    assert server.webhook_signatures == [None]
    assert server.ws_signatures == [None]
    assert result.custom_parameters == {"token": STREAM_TOKEN, "tenant": "acme"}


async def test_stream_handshake_refused_is_reported(make_server: MakeServer) -> None:
    server = await make_server()
    server.require_ws_signature = True
    result = await SimulatedCaller(server.url, [HangUp()], auth_token="wrong-token").run(timeout=CALL_TIMEOUT_S)
    assert not result.ok
    assert "403" in result.failures[0]
    assert result.events_of("ws_open") == []


async def test_say_hangup_twiml_is_reported_as_a_rejection(make_server: MakeServer) -> None:
    twiml = "<Response><Say voice='alice'>Sorry, we are\n  closed.</Say><Hangup/></Response>"
    server = await make_server(twiml=twiml)
    result = await SimulatedCaller(server.url, [Say("hours")]).run(timeout=CALL_TIMEOUT_S)
    assert result.rejected
    assert result.say_text == "Sorry, we are closed."
    assert result.ended_by == "rejected"
    assert not result.ok
    assert server.ws_signatures == []  # no stream was opened
    assert "rejected" in result.format_timeline()


def test_parse_twiml_and_stream_url_mapping() -> None:
    stream = parse_twiml(
        '<Response><Connect><Stream url="wss://h.example/media"><Parameter name="token" value="t"/>'
        "</Stream></Connect></Response>"
    )
    assert stream.url == "wss://h.example/media"
    assert stream.parameters == {"token": "t"}
    assert parse_twiml("<Response><Hangup/></Response>").say_text == ""
    for bad in ("not xml", "<Foo/>", "<Response><Pause/></Response>"):
        with pytest.raises(ValueError, match="TwiML"):
            parse_twiml(bad)
    assert reachable_stream_url("wss://h.example/media", "https://h.example", "http://127.0.0.1:81") == (
        "ws://127.0.0.1:81/media"
    )
    assert reachable_stream_url("wss://other.example/m", "https://h.example", "http://127.0.0.1:81") == (
        "wss://other.example/m"
    )


async def test_a_stream_url_twilio_would_refuse_is_a_failure(make_server: MakeServer) -> None:
    server = await make_server()
    server.twiml = (
        f'<Response><Connect><Stream url="{server.url}/media?x=1">'
        f'<Parameter name="token" value="{STREAM_TOKEN}"/></Stream></Connect></Response>'
    )
    result = await SimulatedCaller(server.url, [HangUp()]).run(timeout=CALL_TIMEOUT_S)
    assert any("31922" in f for f in result.failures)
    assert any("31920" in f for f in result.failures)


# --- what the caller sends -------------------------------------------------------------------------------


async def test_frames_are_paced_in_real_time_with_twilio_numbering(make_server: MakeServer) -> None:
    async def scenario(peer: Peer) -> None:
        await peer.expect(lambda e: isinstance(e, Stop))

    server = await make_server(scenario)
    spoken = resolve_audio("uh_huh")
    script = [Silence(200), Say("uh_huh"), Dtmf("5"), Silence(100), HangUp()]
    result, peer = await call(server, script)
    assert result.ok, result.format_timeline()
    events = [i.event for i in peer.inbound]
    seqs = [e.sequence_number for e in events if not isinstance(e, Connected)]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers count every message after connected"
    assert isinstance(events[-1], Stop)
    media = [e for e in events if isinstance(e, Media)]
    assert [m.chunk for m in media] == list(range(1, len(media) + 1))
    assert [m.timestamp for m in media] == [20 * i for i in range(len(media))]
    assert all(len(m.payload) == FRAME_BYTES for m in media)
    assert len(media) == result.frames_sent
    # The clip went out whole, in order, frame-aligned, after the 200 ms of silence, and nothing else was said.
    sent = b"".join(m.payload for m in media)
    at = sent.find(spoken)
    assert at >= 200 * 8
    assert at % FRAME_BYTES == 0
    assert sent[:at] + sent[at + len(spoken) :] == SILENT * (len(media) - len(spoken) // FRAME_BYTES)
    (dtmf,) = peer.events(DtmfEvent)
    assert isinstance(dtmf.event, DtmfEvent)
    assert dtmf.event.digit == "5"
    # Real time: the number of frames matches the time the stream lasted.
    times = [i.t for i in peer.inbound if isinstance(i.event, Media)]
    expected = (times[-1] - times[0]) / 0.02 + 1
    assert abs(len(media) - expected) <= expected * PACING_SLACK + 3
    assert len(media) >= (200 + len(spoken) // 8 + 100) / 20 - 1


async def test_call_timeout_hangs_up_with_stop(make_server: MakeServer) -> None:
    async def scenario(peer: Peer) -> None:
        await peer.expect(lambda e: isinstance(e, Stop))

    server = await make_server(scenario)
    result = await SimulatedCaller(server.url, []).run(timeout=0.5)
    assert result.ended_by == "timeout"
    peer = await asyncio.wait_for(server.finished, WAIT_S)
    assert isinstance(peer.inbound[-1].event, Stop)
    assert result.events_of("stop_sent")


# --- a conversation: turns, latency, waiting from test code, WAV -----------------------------------------


async def test_interactive_conversation_turn_latency_and_wav(make_server: MakeServer, tmp_path: Path) -> None:
    async def scenario(peer: Peer) -> None:
        sid = peer.stream_sid
        await peer.send(media_message(sid, audio(200, byte=0x11)))  # greeting
        await peer.send(mark_message(sid, "greeting"))
        await peer.speech_then_silence()
        await peer.send(media_message(sid, audio(300, byte=0x22)))  # the answer
        await peer.send(mark_message(sid, "answer"))
        await peer.expect(lambda e: isinstance(e, Stop))

    server = await make_server(scenario)
    caller = SimulatedCaller(server.url)
    task = asyncio.create_task(caller.run(timeout=CALL_TIMEOUT_S))
    await caller.wait_for("mark_echoed", WAIT_S, detail="greeting")
    assert not caller.bot_playing
    await caller.do(Say("okay"))
    await caller.wait_for("bot_audio_start", WAIT_S, count=2)
    await caller.do(WaitForBotSilence(timeout=WAIT_S, quiet_ms=100))
    await caller.hang_up()
    result = await asyncio.wait_for(task, WAIT_S)
    assert result.ok, result.format_timeline()
    (turn,) = result.turns()
    assert turn.latency_ms is not None
    assert 0 < turn.latency_ms < 1000
    assert result.latencies_ms == [turn.latency_ms]
    text = result.format_timeline()
    for kind in ("webhook", "ws_open", "start_sent", "caller_speech_end", "bot_audio_start", "mark_echoed"):
        assert kind in text
    assert "turn latency ms" in text
    path = tmp_path / "heard.wav"
    result.write_wav(path)
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() == len(result.heard)
    assert result.heard.count(0x11) == 1600
    assert result.heard.count(0x22) == 2400
    assert read_wav(path) == result.heard  # the mu-law → PCM → mu-law round trip is exact
    with pytest.raises(CallerError, match="ended"):
        await caller.wait_for("clear_received", WAIT_S)


async def test_cli_runs_the_default_script_and_writes_the_wav(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario(peer: Peer) -> None:
        await peer.send(media_message(peer.stream_sid, audio(100)))
        await peer.speech_then_silence()
        await peer.send(media_message(peer.stream_sid, audio(100)))
        await peer.expect(lambda e: isinstance(e, Stop))

    server = await make_server(scenario)
    path = tmp_path / "out.wav"
    argv = ["--server", server.url, "--say", "okay", "--wav", str(path), "--quiet-ms", "150"]
    assert await amain(argv) == 0
    out = capsys.readouterr().out
    assert "turn latency ms" in out
    assert path.stat().st_size > 44
    assert await amain(["--say", "no-such-clip"]) == 2


def test_read_wav_refuses_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "cd.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(b"\0" * 400)
    with pytest.raises(WavFormatError, match="8000 Hz mono 16-bit"):
        read_wav(path)
    write_wav(tmp_path / "ok.wav", clips.load("okay"))
    assert read_wav(tmp_path / "ok.wav") == clips.load("okay")


# --- clips -----------------------------------------------------------------------------------------------


def test_clips_load_and_match_the_generator_script() -> None:
    script = (Path(__file__).parents[1] / "scripts" / "make_clips.sh").read_text()
    for name in clips.names():
        data = clips.load(name)
        assert 0.3 < len(data) / 8000 < 5.0, name
        assert data[:400] == bytes([MULAW_SILENCE]) * 400, f"{name}: ~100 ms of leading silence"
        if clips.text(name):
            assert f'[{name}]="{clips.text(name)}"' in script
    with pytest.raises(KeyError):
        clips.load("nope")


@pytest.mark.parametrize("name", clips.SPEECH_CLIPS)
def test_speech_clips_are_speech_to_webrtcvad(name: str) -> None:
    data = clips.load(name)[800:-800]  # inside the ~100 ms padding
    vad = webrtcvad.Vad(VAD_MODE)
    frames = [data[i : i + FRAME_BYTES] for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES)]
    speech = sum(vad.is_speech(ulaw_to_pcm16(f), 8000) for f in frames)
    assert speech / len(frames) >= SPEECH_VAD_MIN
