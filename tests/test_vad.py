"""The local VAD: the same decisions for Twilio's 20 ms frames (a reused decode buffer) and for any other framing."""

from __future__ import annotations

import os

import webrtcvad

from voicebot import clips
from voicebot.audio import FRAME_BYTES, SAMPLE_RATE, ulaw_to_pcm16, ulaw_to_pcm16_into
from voicebot.call.vad import DEFAULT_AGGRESSIVENESS, FrameVad

SILENCE = b"\xff"  # mu-law zero


def reference(ulaw: bytes) -> list[bool]:
    """webrtcvad straight on each frame's decoded bytes, as its documentation shows."""
    vad = webrtcvad.Vad(DEFAULT_AGGRESSIVENESS)
    return [
        bool(vad.is_speech(ulaw_to_pcm16(ulaw[i : i + FRAME_BYTES]), SAMPLE_RATE))
        for i in range(0, len(ulaw) - len(ulaw) % FRAME_BYTES, FRAME_BYTES)
    ]


def call_audio() -> bytes:
    """Silence, a question, silence, an interruption: speech and non-speech frames both."""
    gap = SILENCE * (SAMPLE_RATE // 2)
    return gap + clips.load("question") + gap + clips.load("interrupt") + gap


def test_twilio_frames_decide_as_webrtcvad_does() -> None:
    audio = call_audio()
    expected = reference(audio)
    vad = FrameVad()
    got = [
        d
        for i in range(0, len(audio) - len(audio) % FRAME_BYTES, FRAME_BYTES)
        for d in vad.frames(audio[i : i + FRAME_BYTES])
    ]
    assert got == expected
    assert any(expected) and not all(expected)  # the clip exercises both answers


def test_any_framing_decides_the_same() -> None:
    """Odd-sized and large payloads are re-framed; mixing them with 20 ms frames keeps every decision in place."""
    audio = call_audio()
    expected = reference(audio)
    sizes = [FRAME_BYTES, 100, 1000, FRAME_BYTES, 7, FRAME_BYTES * 3, 53]
    vad = FrameVad()
    got: list[bool] = []
    position, n = 0, 0
    while position < len(audio):
        size = sizes[n % len(sizes)]
        got += vad.frames(audio[position : position + size])
        position, n = position + size, n + 1
    assert got == expected


def test_decoding_into_a_reused_buffer_matches_a_fresh_decode() -> None:
    buffer = bytearray(2 * FRAME_BYTES)
    for _ in range(20):
        frame = os.urandom(FRAME_BYTES)
        ulaw_to_pcm16_into(frame, buffer)
        assert bytes(buffer) == ulaw_to_pcm16(frame)
