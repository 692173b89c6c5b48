"""Pure tests of the emulators' sans-I/O parts: STT engine, options, tokenizer, faults, event log, CLI config."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.emulator_fixtures import DEEPGRAM_KEY, EVENT_TIMEOUT_S, fast_config, tone, utterance
from voicebot.audio import silence
from voicebot.emulators import EventLog, Faults, LlmReply, SttConfig, ToolCall, running_emulators, tokenize
from voicebot.emulators.__main__ import build_config, build_parser, load_script
from voicebot.emulators.stt_engine import ListenOptions, SttEngine

QUERY = {
    "encoding": "mulaw",
    "sample_rate": "8000",
    "interim_results": "true",
    "endpointing": "300",
    "utterance_end_ms": "1000",
    "vad_events": "true",
    "punctuate": "true",
    "model": "nova-3",
}
SHORT_WAIT_S = 0.05


def engine(script: list[str], **query: str) -> SttEngine:
    options = ListenOptions.parse({**QUERY, **query})
    return SttEngine(options, SttConfig(), lambda: script.pop(0), request_id="req-1")


def run(eng: SttEngine, audio: bytes, chunk: int) -> list[dict[str, Any]]:
    out = []
    for i in range(0, len(audio), chunk):
        out.extend(eng.feed(audio[i : i + chunk]))
    return out


def test_options_defaults_follow_deepgram() -> None:
    options = ListenOptions.parse({"encoding": "mulaw", "sample_rate": "8000"})
    assert options.endpointing_ms == 10
    assert options.interim_results is False
    assert options.vad_events is False
    assert options.utterance_end_ms is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"encoding": "opus"}, "encoding must be 'mulaw'"),
        ({"sample_rate": "8000.0"}, "sample_rate must be an integer"),
        ({"sample_rate": "16000"}, "sample_rate must be 8000"),
        ({"channels": "2"}, "channels must be 1"),
        ({"interim_results": "yes"}, "interim_results must be 'true' or 'false'"),
    ],
)
def test_options_reject_with_a_clear_message(query: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ListenOptions.parse({**QUERY, **query})


@given(chunk=st.integers(min_value=1, max_value=2000))
def test_results_do_not_depend_on_how_audio_is_chunked(chunk: int) -> None:
    audio = utterance(200, 900, 1300)
    reference = run(engine(["Hello there."]), audio, 160)
    assert run(engine(["Hello there."]), audio, chunk) == reference


def test_endpointing_false_gives_a_final_without_speech_final() -> None:
    eng = engine(["Hello."], endpointing="false")
    out = run(eng, utterance(100, 400, 1200), 160)
    finals = [m for m in out if m["type"] == "Results" and m["is_final"]]
    assert [f["speech_final"] for f in finals] == [False]
    assert finals[0]["start"] + finals[0]["duration"] == pytest.approx(0.5 + 1.0)


def test_short_click_is_not_speech() -> None:
    eng = engine(["never used"])
    out = run(eng, silence(100) + tone(20) + silence(500), 160)
    assert out == []
    assert not eng.in_speech


def test_finalize_without_speech_is_an_empty_from_finalize_final() -> None:
    eng = engine([])
    run(eng, silence(300), 160)
    [msg] = eng.finalize()
    assert msg["is_final"] is True
    assert msg["from_finalize"] is True
    assert msg["channel"]["alternatives"][0]["transcript"] == ""
    assert msg["duration"] == pytest.approx(0.3)


def test_close_stream_flushes_unfinished_speech_then_metadata() -> None:
    eng = engine(["Cut short."])
    run(eng, silence(100) + tone(500), 160)
    final, metadata = eng.close_stream()
    assert final["is_final"] is True
    assert final["channel"]["alternatives"][0]["transcript"] == "Cut short."
    assert metadata["type"] == "Metadata"
    assert metadata["duration"] == pytest.approx(0.6)


def test_speech_resuming_inside_the_gap_suppresses_utterance_end() -> None:
    eng = engine(["One.", "Two."])
    out = run(eng, utterance(100, 400, 500) + tone(400) + silence(1200), 160)
    ends = [m for m in out if m["type"] == "UtteranceEnd"]
    assert len(ends) == 1
    assert ends[0]["last_word_end"] == pytest.approx(1.4)


@given(st.text(max_size=80))
def test_tokenize_round_trips(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_tokenize_gives_word_pieces() -> None:
    assert tokenize("Hi, Bob! It's 9.") == ["Hi", ",", " Bob", "!", " It's", " 9", "."]


def test_faults_fail_next_then_error_status() -> None:
    faults = Faults(fail_next=2, fail_status=503, error_status=None, retry_after_s=1, retry_after_ms=1500.5)
    assert [faults.take_error() for _ in range(3)] == [503, 503, None]
    faults.error_status = 401
    assert faults.take_error() == 401
    assert faults.error_headers() == {"retry-after": "1", "retry-after-ms": "1500.5"}


async def test_event_log_wait_for_past_future_and_timeout() -> None:
    log = EventLog()
    log.append("tts", "request", text="a")
    assert (await log.wait_for(lambda e: e.kind == "request", SHORT_WAIT_S)).data["text"] == "a"
    mark = log.mark()
    waiter = asyncio.create_task(log.wait_for_kind("tts", "request", 1.0, since=mark, text="b"))
    await asyncio.sleep(0)  # let the waiter register
    log.append("tts", "request", text="c")
    log.append("tts", "request", text="b")
    assert (await waiter).data["text"] == "b"
    with pytest.raises(TimeoutError):
        await log.wait_for(lambda e: e.kind == "never", SHORT_WAIT_S)
    assert [e.data["text"] for e in log.select("tts", "request", since=mark)] == ["c", "b"]


def test_script_file_and_cli_flags(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    llm_items = ["Plain.", {"text": "Bye!", "tool_calls": [{"name": "end_call", "arguments": {"reason": "done"}}]}]
    script.write_bytes(orjson.dumps({"stt": ["Hello.", ""], "llm": llm_items}))
    stt, llm = load_script(script)
    assert stt == ["Hello.", ""]
    assert llm == [LlmReply("Plain."), LlmReply("Bye!", (ToolCall("end_call", {"reason": "done"}),))]

    args = build_parser().parse_args(["--fast", "--port", "9", "--tts-ttfb-ms", "80", "--llm-tokens-per-second", "0"])
    config = build_config(args)
    assert config.tts.ttfb_ms == 80
    assert config.llm.tokens_per_second is None
    assert config.stt.result_delay_ms == 0


SHUTDOWN_BOUND_S = 1.0
"""Leaving running_emulators with hung handlers must be quicker than aiohttp's own grace period."""


async def test_shutdown_cancels_stalled_handlers_promptly() -> None:
    async with aiohttp.ClientSession() as session:
        async with running_emulators(fast_config()) as emu:
            emu.tts.faults.stall_s = math.inf
            speak_url = f"{emu.base_url}/v1/speak?encoding=mulaw&sample_rate=8000&container=none"
            pending = asyncio.ensure_future(
                session.post(speak_url, json={"text": "hi"}, headers={"Authorization": f"Token {DEEPGRAM_KEY}"})
            )
            await emu.wait_for_kind("tts", "request", EVENT_TIMEOUT_S)
            ws = await session.ws_connect(
                f"{emu.ws_url}/v1/listen?encoding=mulaw&sample_rate=8000",
                headers={"Authorization": f"Token {DEEPGRAM_KEY}"},
            )
            await emu.wait_for_kind("stt", "open", EVENT_TIMEOUT_S)
            started = time.monotonic()
        elapsed = time.monotonic() - started
        with pytest.raises(aiohttp.ClientError):
            await pending
        await ws.close()
    assert elapsed < SHUTDOWN_BOUND_S
    assert emu.select(kind="abort") == []
    assert emu.select("stt", "close")[0].data["initiator"] == "shutdown"
