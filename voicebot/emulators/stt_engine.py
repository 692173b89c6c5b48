"""Sans-I/O core of the Deepgram live STT emulator: query options in, audio and control messages in,
Deepgram JSON messages (as dicts) out. Everything is in audio time (bytes received / 8000), so a caller may
stream faster than real time and still see the same results.

A scripted transcript may contain ``" | "``: the parts are spoken in separate bursts of speech (a caller who
pauses mid-sentence, "I'd like to book | for Friday."). A burst starts when voice follows at least
``SttConfig.pause_ms`` of silence inside one utterance; the words of a part exist only once its burst has started,
so a ``Finalize`` sent during the pause finalises only what was said before it, and the rest comes in a later final.
"""

from __future__ import annotations

import array
import hashlib
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from voicebot.audio import BYTES_PER_SECOND, FRAME_BYTES, FRAME_MS, SAMPLE_RATE, ulaw_to_pcm16

from .config import SttConfig

Message = dict[str, Any]

# Squared sample value per mu-law byte: the per-frame energy is one C-level sum over a map, no decode.
_SQUARES = tuple(s * s for s in array.array("h", ulaw_to_pcm16(bytes(range(256)))))
_FRAME_S = FRAME_MS / 1000
_MODEL_VERSION = "2024-11-01.0"
_WORD_STRIP = re.compile(r"^[^\w']+|[^\w']+$")
_BOOL = {"true": True, "false": False}
PART_SEPARATOR = "|"


def split_parts(text: str) -> list[list[str]]:
    """A scripted transcript as bursts of words: ``"I'd like | to book."`` -> ``[["I'd", "like"], ["to", "book."]]``."""
    parts = [part.split() for part in text.split(PART_SEPARATOR)]
    return [part for part in parts if part] or [[]]


def voiced(frame: bytes, threshold: float) -> bool:
    """Whether a 20 ms mu-law frame's RMS (16-bit scale) reaches ``threshold``."""
    return sum(map(_SQUARES.__getitem__, frame)) >= threshold * threshold * len(frame)


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """The query parameters of ``GET /v1/listen`` that the emulator honours."""

    model: str
    encoding: str
    sample_rate: int
    channels: int
    language: str
    interim_results: bool
    endpointing_ms: float | None  # None: endpointing=false
    utterance_end_ms: float | None
    vad_events: bool
    punctuate: bool
    smart_format: bool

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListenOptions:
        """Validate the query like Deepgram would for raw telephone audio; ``ValueError`` says what is wrong."""
        encoding = query.get("encoding")
        if encoding != "mulaw":
            raise ValueError(f"encoding must be 'mulaw' for this emulator, got {encoding!r}")
        sample_rate = _int(query, "sample_rate", 0)
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE} for mulaw telephone audio, got {sample_rate}")
        channels = _int(query, "channels", 1)
        if channels != 1:
            raise ValueError(f"channels must be 1, got {channels}")
        endpointing_raw = query.get("endpointing", "10")
        endpointing_ms: float | None
        if endpointing_raw == "false":
            endpointing_ms = None
        elif endpointing_raw == "true":
            endpointing_ms = 10.0
        else:
            endpointing_ms = float(_int(query, "endpointing", 10))
        utterance_end = query.get("utterance_end_ms")
        return cls(
            model=query.get("model", "base"),
            encoding=encoding,
            sample_rate=sample_rate,
            channels=channels,
            language=query.get("language", "en"),
            interim_results=_bool(query, "interim_results"),
            endpointing_ms=endpointing_ms,
            utterance_end_ms=None if utterance_end is None else float(_int(query, "utterance_end_ms", 0)),
            vad_events=_bool(query, "vad_events"),
            punctuate=_bool(query, "punctuate"),
            smart_format=_bool(query, "smart_format"),
        )


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _bool(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "false")
    try:
        return _BOOL[raw]
    except KeyError:
        raise ValueError(f"{name} must be 'true' or 'false', got {raw!r}") from None


@dataclass(slots=True)
class _Utterance:
    parts: list[list[str]]  # the scripted words as spoken, e.g. "Hours.", one list per burst of speech
    start: float
    voiced_ms: float = 0.0  # in the current burst
    burst: int = 0  # the part being spoken
    final_parts: int = 0  # parts already sent in a final result
    silent_ms: float = 0.0  # silence since the last voiced frame

    @property
    def finalized(self) -> bool:
        """Everything said so far has been sent in a final result."""
        return self.final_parts > self.burst

    @property
    def pending(self) -> list[str]:
        """Words said so far and not yet in a final result."""
        return [word for part in self.parts[self.final_parts : self.burst + 1] for word in part]


class SttEngine:
    """One live transcription stream: ``feed()`` audio, ``finalize()``, ``close_stream()``; each returns the
    Deepgram messages to send, in order. ``next_transcript`` supplies the text of each detected utterance.
    """

    def __init__(
        self,
        options: ListenOptions,
        config: SttConfig,
        next_transcript: Callable[[], str],
        request_id: str | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.request_id = request_id or str(uuid.uuid4())
        self._next_transcript = next_transcript
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, options.model))
        self._created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._sha = hashlib.sha256()
        self._pending = b""
        self.audio_bytes = 0
        self._frames = 0
        self._cursor = 0.0  # end of the audio covered by the last final result
        self._onset_ms = 0.0  # consecutive voiced audio before an utterance starts
        self._utterance: _Utterance | None = None
        self._last_voiced_end = 0.0
        self._next_interim = 0.0
        self._utterance_end_due: float | None = None  # last_word_end of a finalized utterance awaiting its gap

    @property
    def audio_s(self) -> float:
        """Audio received so far, in seconds."""
        return self.audio_bytes / BYTES_PER_SECOND

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is in progress (voiced audio without enough silence after it)."""
        return self._utterance is not None

    def feed(self, data: bytes) -> list[Message]:
        """Take a chunk of mu-law audio of any size; returns the messages it triggers."""
        self.audio_bytes += len(data)
        self._sha.update(data)
        out: list[Message] = []
        buf = self._pending + data if self._pending else data
        end = len(buf) - len(buf) % FRAME_BYTES
        for offset in range(0, end, FRAME_BYTES):
            self._frame(buf[offset : offset + FRAME_BYTES], out)
        self._pending = buf[end:]
        return out

    def finalize(self) -> list[Message]:
        """Answer a ``Finalize``: one ``from_finalize`` final for the pending speech (empty if none)."""
        now = self.audio_s
        utt = self._utterance
        if utt is not None and not utt.finalized:
            return [self._final(utt, now, speech_final=False, from_finalize=True)]
        return [self._results([], now, is_final=True, speech_final=False, from_finalize=True, advance=True)]

    def control(self, kind: str | None, message: Mapping[str, object]) -> tuple[list[Message], bool]:
        """A client text message; returns the messages to send and whether the socket closes after them."""
        if kind == "KeepAlive":
            return [], False
        if kind == "Finalize":
            return self.finalize(), False
        if kind == "CloseStream":
            return self.close_stream(), True
        error = {"type": "Error", "variant": "SchemaError", "description": "Unknown message type.", "message": kind}
        return [error], False

    def close_stream(self) -> list[Message]:
        """Answer a ``CloseStream``: the remaining final, then ``Metadata``."""
        now = self.audio_s
        out: list[Message] = []
        utt = self._utterance
        if utt is not None and not utt.finalized:
            out.append(self._final(utt, now, speech_final=False, from_finalize=False))
        out.append(self.metadata())
        return out

    def metadata(self) -> Message:
        """The ``Metadata`` message sent before a normal close."""
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha.hexdigest(),
            "created": self._created,
            "duration": round(self.audio_s, 3),
            "channels": self.options.channels,
            "models": [self._model_uuid],
            "model_info": {self._model_uuid: self._model_info()},
        }

    # -- per 20 ms frame -------------------------------------------------------------------------------

    def _frame(self, frame: bytes, out: list[Message]) -> None:
        self._frames += 1
        t = self._frames * _FRAME_S
        utt = self._utterance
        if voiced(frame, self.config.speech_rms_threshold):
            if utt is None:
                self._onset_ms += FRAME_MS
                if self._onset_ms >= self.config.min_speech_ms:
                    utt = self._start_utterance(t - self._onset_ms / 1000, out)
            if utt is not None:
                if utt.silent_ms >= self.config.pause_ms and utt.burst + 1 < len(utt.parts):
                    utt.burst += 1  # the caller goes on after a pause: the next part of the sentence
                    utt.voiced_ms = 0.0
                utt.silent_ms = 0.0
                utt.voiced_ms += FRAME_MS
                self._last_voiced_end = t
                if self.options.interim_results and not utt.finalized and utt.pending and t >= self._next_interim:
                    self._next_interim = t + self.config.interim_interval_ms / 1000
                    out.append(self._interim(utt, t))
            return
        self._onset_ms = 0.0
        if utt is not None:
            utt.silent_ms += FRAME_MS
            silence_ms = (t - self._last_voiced_end) * 1000
            endpointing = self.options.endpointing_ms
            limit = self.config.no_endpointing_final_ms if endpointing is None else endpointing
            if silence_ms >= limit:
                self._utterance = None
                if not utt.finalized:
                    out.append(self._final(utt, t, speech_final=endpointing is not None, from_finalize=False))
        due = self._utterance_end_due
        if due is not None and self._utterance is None:
            assert self.options.utterance_end_ms is not None
            if (t - due) * 1000 >= self.options.utterance_end_ms:
                self._utterance_end_due = None
                out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(due, 3)})

    def _start_utterance(self, start: float, out: list[Message]) -> _Utterance:
        text = self._next_transcript()
        utt = _Utterance(split_parts(text), start)
        self._utterance = utt
        self._utterance_end_due = None  # speech resumed inside the gap: no UtteranceEnd for the previous one
        self._next_interim = start + self.config.interim_interval_ms / 1000
        if self.options.vad_events:
            out.append({"type": "SpeechStarted", "channel": [0], "timestamp": round(start, 3)})
        return utt

    def _interim(self, utt: _Utterance, now: float) -> Message:
        earlier = [word for part in utt.parts[utt.final_parts : utt.burst] for word in part]
        current = utt.parts[utt.burst]
        revealed = min(len(current), max(1, math.floor(utt.voiced_ms / self.config.ms_per_word)))
        words = self._words(earlier + current[:revealed], self._part_start(utt), now)
        return self._results(words, now, is_final=False, speech_final=False, from_finalize=False, advance=False)

    def _final(self, utt: _Utterance, now: float, *, speech_final: bool, from_finalize: bool) -> Message:
        pending = utt.pending
        utt.final_parts = utt.burst + 1
        start = self._part_start(utt)
        end = max(self._last_voiced_end, start)
        words = self._words(pending, start, end)
        if words and self.options.interim_results and self.options.utterance_end_ms is not None:
            self._utterance_end_due = words[-1]["end"]
        return self._results(
            words, now, is_final=True, speech_final=speech_final, from_finalize=from_finalize, advance=True
        )

    def _part_start(self, utt: _Utterance) -> float:
        # Words of a later part start where the previous final ended.
        return utt.start if utt.final_parts == 0 else max(utt.start, self._cursor)

    def _words(self, punctuated: list[str], start: float, end: float) -> list[Message]:
        if not punctuated:
            return []
        slot = max(end - start, 0.0) / len(punctuated)
        confidence = self.config.confidence
        keep_punctuation = self.options.punctuate or self.options.smart_format
        words = []
        for i, token in enumerate(punctuated):
            word = _WORD_STRIP.sub("", token).lower() or token.lower()
            words.append(
                {
                    "word": word,
                    "start": round(start + i * slot, 3),
                    "end": round(start + (i + 1) * slot, 3),
                    "confidence": confidence,
                    "punctuated_word": token if keep_punctuation else word,
                }
            )
        return words

    def _results(
        self,
        words: list[Message],
        now: float,
        *,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
        advance: bool,
    ) -> Message:
        start = self._cursor
        if advance:
            self._cursor = now
        transcript = " ".join(w["punctuated_word"] for w in words)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(max(now - start, 0.0), 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": self.config.confidence if words else 0.0,
                        "words": words,
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": self._model_info(),
                "model_uuid": self._model_uuid,
            },
        }

    def _model_info(self) -> Message:
        return {"name": self.config.model_name, "version": _MODEL_VERSION, "arch": self.options.model}
