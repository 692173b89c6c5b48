"""WAV files in and out for the simulated caller: 8 kHz mono 16-bit PCM, converted to and from mu-law.

The stdlib ``wave`` module only handles PCM (format tag 1), so heard audio is decoded before writing and input
files must already be 16-bit PCM at 8000 Hz mono (``sox in.wav -r 8000 -c 1 -b 16 out.wav`` converts one).
"""

from __future__ import annotations

import array
import sys
import wave
from pathlib import Path

from voicebot.audio import SAMPLE_RATE, pcm16_to_ulaw, ulaw_to_pcm16

SAMPLE_WIDTH = 2


class WavFormatError(ValueError):
    """A WAV file the caller cannot use as-is."""


def _swap_if_big_endian(pcm: bytes) -> bytes:
    # WAV is little-endian; audio.py's codec works on native-endian samples.
    if sys.byteorder == "little":
        return pcm
    samples = array.array("h")
    samples.frombytes(pcm)
    samples.byteswap()
    return samples.tobytes()


def write_wav(path: str | Path, ulaw: bytes) -> None:
    """Write mu-law audio to ``path`` as an 8 kHz mono 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(SAMPLE_WIDTH)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(_swap_if_big_endian(ulaw_to_pcm16(ulaw)))


def read_wav(path: str | Path) -> bytes:
    """Read an 8 kHz mono 16-bit PCM WAV as mu-law bytes; WavFormatError says what else it is."""
    try:
        with wave.open(str(path), "rb") as src:
            rate, channels, width = src.getframerate(), src.getnchannels(), src.getsampwidth()
            if (rate, channels, width) != (SAMPLE_RATE, 1, SAMPLE_WIDTH):
                raise WavFormatError(
                    f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; need 8000 Hz mono 16-bit PCM "
                    f"(convert with: sox {path} -r 8000 -c 1 -b 16 out.wav)"
                )
            frames = src.readframes(src.getnframes())
    except wave.Error as exc:
        raise WavFormatError(f"{path}: not a PCM WAV file ({exc})") from None
    return pcm16_to_ulaw(_swap_if_big_endian(frames))
