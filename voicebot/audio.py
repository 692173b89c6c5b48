"""Telephone audio constants and G.711 mu-law conversion (sans-I/O, no numpy).

``audioop`` is deprecated in 3.11 and gone in 3.13, so the codec is two lookup tables built once at import.
"""

from __future__ import annotations

import array
import math

SAMPLE_RATE = 8000
"""Twilio Media Streams audio is always mu-law, 8000 Hz, mono: one byte per sample."""
BYTES_PER_SECOND = SAMPLE_RATE
BYTES_PER_MS = BYTES_PER_SECOND // 1000
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS  # 160 bytes: the frame size Twilio sends and webrtcvad accepts
MULAW_SILENCE = 0xFF

_BIAS = 0x84
_CLIP = 32635


def _decode_byte(u: int) -> int:
    u = ~u & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    sample = ((mantissa << 3) + _BIAS) << exponent
    sample -= _BIAS
    return -sample if sign else sample


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    if sign:
        sample = -sample
    sample = min(sample, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


_DECODE = array.array("h", (_decode_byte(u) for u in range(256)))
# Indexed by the 16-bit sample as unsigned (sample & 0xFFFF).
_ENCODE = bytes(_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))


# Per-frame decoding is on the hot path (50 frames per second per call): two bytes.translate() calls and two
# slice assignments run in C, about 20x faster than a Python loop over the samples.
_LOW = bytes(_DECODE[u] & 0xFF for u in range(256))
_HIGH = bytes((_DECODE[u] >> 8) & 0xFF for u in range(256))


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode mu-law bytes to 16-bit little-endian signed PCM."""
    out = bytearray(2 * len(data))
    ulaw_to_pcm16_into(data, out)
    return bytes(out)


def ulaw_to_pcm16_into(data: bytes, out: bytearray) -> None:
    """Decode mu-law ``data`` into ``out``, which is exactly twice as long (a buffer reused frame after frame)."""
    out[0::2] = data.translate(_LOW)
    out[1::2] = data.translate(_HIGH)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode 16-bit native-endian signed PCM to mu-law bytes."""
    samples = array.array("h")
    samples.frombytes(pcm)
    table = _ENCODE
    return bytes(table[s & 0xFFFF] for s in samples)


def ulaw_rms(data: bytes) -> float:
    """Root-mean-square amplitude (16-bit scale) of a mu-law buffer; 0.0 for an empty one."""
    if not data:
        return 0.0
    table = _DECODE
    total = 0
    for b in data:
        s = table[b]
        total += s * s
    return math.sqrt(total / len(data))


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of mu-law silence."""
    return bytes([MULAW_SILENCE]) * (ms * BYTES_PER_MS)


def ms_of(nbytes: int) -> float:
    """Playback duration in milliseconds of ``nbytes`` of mu-law audio."""
    return nbytes / BYTES_PER_MS
