"""Sans-I/O core of the Deepgram Flux emulator (``/v2/listen``): audio and control messages in, ``TurnInfo`` and
the other Flux messages (as dicts) out. Driven by the same scripted transcripts as ``/v1/listen`` (see
:mod:`.stt_engine`, including ``" | "`` for a caller who pauses mid-sentence), in audio time.

Turn model (PROVIDERS-2.md §2): voice starts a turn (``StartOfTurn``); while the caller speaks, ``Update`` every
``interim_interval_ms`` with the words so far; in silence the end-of-turn confidence rises linearly, reaching 1.0
after ``flux_complete_silence_ms`` when the whole scripted sentence has been said, or after the longer
``flux_incomplete_silence_ms`` when parts are still to come (Flux's model hears an unfinished sentence). Reaching
``eager_eot_threshold`` sends ``EagerEndOfTurn``; voice after it sends ``TurnResumed``; reaching ``eot_threshold``
(or ``eot_timeout_ms`` of silence) sends ``EndOfTurn``, whose transcript is the whole turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from voicebot.audio import BYTES_PER_SECOND, FRAME_BYTES, FRAME_MS, SAMPLE_RATE

from .config import SttConfig
from .stt_engine import Message, split_parts, voiced

_FRAME_S = FRAME_MS / 1000
FLUX_MODELS = frozenset({"flux-general-en", "flux-general-multi"})


@dataclass(frozen=True, slots=True)
class FluxOptions:
    """The query parameters of ``GET /v2/listen`` that the emulator honours."""

    model: str
    eot_threshold: float
    eager_eot_threshold: float | None
    eot_timeout_ms: float

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> FluxOptions:
        """Validate like Flux does for raw telephone audio; ``ValueError`` says what is wrong."""
        model = query.get("model", "")
        if model not in FLUX_MODELS:
            raise ValueError(f"model must be one of {sorted(FLUX_MODELS)}, got {model!r}")
        if query.get("encoding") != "mulaw" or query.get("sample_rate") != str(SAMPLE_RATE):
            raise ValueError(f"this emulator takes encoding=mulaw and sample_rate={SAMPLE_RATE} only")
        eot = _float(query, "eot_threshold", 0.7)
        if not 0.5 <= eot <= 0.9:
            raise ValueError(f"eot_threshold must be between 0.5 and 0.9, got {eot}")
        eager: float | None = None
        if "eager_eot_threshold" in query:
            eager = _float(query, "eager_eot_threshold", 0.0)
            if not 0.3 <= eager <= 0.9 or eager > eot:
                raise ValueError(f"eager_eot_threshold must be between 0.3 and 0.9 and <= eot_threshold, got {eager}")
        timeout = _float(query, "eot_timeout_ms", 5000.0)
        if not 500 <= timeout <= 10000:
            raise ValueError(f"eot_timeout_ms must be between 500 and 10000, got {timeout}")
        return cls(model=model, eot_threshold=eot, eager_eot_threshold=eager, eot_timeout_ms=timeout)


def _float(query: Mapping[str, str], name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(slots=True)
class _Turn:
    parts: list[list[str]]
    start: float
    burst: int = 0
    voiced_ms: float = 0.0  # in the current burst
    silent_ms: float = 0.0
    eager_sent: bool = False
    words: list[str] = field(default_factory=list)

    def said(self) -> list[str]:
        return [word for part in self.parts[: self.burst + 1] for word in part]

    @property
    def complete(self) -> bool:
        return self.burst + 1 >= len(self.parts)


class FluxEngine:
    """One Flux stream: ``feed()`` audio, ``control()`` text messages; each returns the messages to send."""

    def __init__(
        self,
        options: FluxOptions,
        config: SttConfig,
        next_transcript: Callable[[], str],
        request_id: str | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.request_id = request_id or str(uuid.uuid4())
        self._next_transcript = next_transcript
        self._sequence = 0
        self._pending = b""
        self.audio_bytes = 0
        self._frames = 0
        self._onset_ms = 0.0
        self._turn: _Turn | None = None
        self._turn_index = 0
        self._next_update = 0.0

    @property
    def audio_s(self) -> float:
        return self.audio_bytes / BYTES_PER_SECOND

    def connected(self) -> Message:
        """The first message on the socket."""
        return self._message({"type": "Connected", "request_id": self.request_id})

    def feed(self, data: bytes) -> list[Message]:
        """Take mu-law audio of any size; returns the messages it triggers."""
        self.audio_bytes += len(data)
        out: list[Message] = []
        buf = self._pending + data if self._pending else data
        end = len(buf) - len(buf) % FRAME_BYTES
        for offset in range(0, end, FRAME_BYTES):
            self._frame(buf[offset : offset + FRAME_BYTES], out)
        self._pending = buf[end:]
        return out

    def control(self, kind: str | None, message: Mapping[str, object]) -> tuple[list[Message], bool]:
        """A client text message; returns the messages to send and whether the socket closes after them."""
        if kind == "CloseStream":
            out = [self._end_turn("manual")] if self._turn is not None else []
            return out, True
        if kind == "ForceEndTurn":
            return ([self._end_turn("manual")] if self._turn is not None else []), False
        if kind == "Configure":
            raw = message.get("thresholds")
            changes = (
                {k: float(v) for k, v in raw.items() if isinstance(v, int | float)} if isinstance(raw, Mapping) else {}
            )
            self.options = FluxOptions(
                model=self.options.model,
                eot_threshold=changes.get("eot_threshold", self.options.eot_threshold),
                eager_eot_threshold=changes.get("eager_eot_threshold", self.options.eager_eot_threshold),
                eot_timeout_ms=changes.get("eot_timeout_ms", self.options.eot_timeout_ms),
            )
            return [self._message({"type": "ConfigureSuccess", "thresholds": changes})], False
        # A JSON KeepAlive (the /v1 habit) is not part of the Flux protocol: the real service closes the socket.
        error = {"type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE", "description": f"Unknown message type {kind!r}."}
        return [self._message(error)], True

    # -- per 20 ms frame -------------------------------------------------------------------------------

    def _frame(self, frame: bytes, out: list[Message]) -> None:
        self._frames += 1
        t = self._frames * _FRAME_S
        turn = self._turn
        if voiced(frame, self.config.speech_rms_threshold):
            if turn is None:
                self._onset_ms += FRAME_MS
                if self._onset_ms < self.config.min_speech_ms:
                    return
                turn = self._turn = _Turn(split_parts(self._next_transcript()), t - self._onset_ms / 1000)
                self._next_update = t + self.config.interim_interval_ms / 1000
                out.append(self._turn_info("StartOfTurn", turn, t, 0.0))
            if turn.silent_ms >= self.config.pause_ms and not turn.complete:
                turn.burst += 1
                turn.voiced_ms = 0.0
            if turn.eager_sent:
                turn.eager_sent = False
                out.append(self._turn_info("TurnResumed", turn, t, 0.0))
            turn.silent_ms = 0.0
            turn.voiced_ms += FRAME_MS
            if t >= self._next_update:
                self._next_update = t + self.config.interim_interval_ms / 1000
                out.append(self._turn_info("Update", turn, t, 0.0))
            return
        self._onset_ms = 0.0
        if turn is None:
            return
        turn.silent_ms += FRAME_MS
        scale = self.config.flux_complete_silence_ms if turn.complete else self.config.flux_incomplete_silence_ms
        confidence = min(1.0, turn.silent_ms / scale)
        options = self.options
        if confidence >= options.eot_threshold or turn.silent_ms >= options.eot_timeout_ms:
            trigger = "model" if confidence >= options.eot_threshold else "timeout"
            out.append(self._end_turn(trigger, confidence))
        elif (
            options.eager_eot_threshold is not None
            and confidence >= options.eager_eot_threshold
            and not turn.eager_sent
        ):
            turn.eager_sent = True
            out.append(self._turn_info("EagerEndOfTurn", turn, t, confidence))

    def _end_turn(self, trigger: str, confidence: float = 1.0) -> Message:
        turn = self._turn
        assert turn is not None
        self._turn = None
        message = self._turn_info("EndOfTurn", turn, self.audio_s, confidence)
        message["trigger"] = trigger
        self._turn_index += 1
        return message

    def _turn_info(self, event: str, turn: _Turn, now: float, confidence: float) -> Message:
        if event == "StartOfTurn":
            words: list[str] = []
        elif event in ("EagerEndOfTurn", "EndOfTurn"):
            words = turn.said()
        else:  # Update, TurnResumed: the words revealed so far at ms_per_word
            earlier = [word for part in turn.parts[: turn.burst] for word in part]
            current = turn.parts[turn.burst]
            revealed = min(len(current), int(turn.voiced_ms // self.config.ms_per_word))
            words = earlier + current[:revealed]
        return self._message(
            {
                "type": "TurnInfo",
                "request_id": self.request_id,
                "event": event,
                "turn_index": self._turn_index,
                "audio_window_start": round(turn.start, 3),
                "audio_window_end": round(now, 3),
                "transcript": " ".join(words),
                "words": [{"word": w, "confidence": self.config.confidence} for w in words],
                "end_of_turn_confidence": round(confidence, 3),
            }
        )

    def _message(self, body: Message) -> Message:
        body["sequence_id"] = self._sequence
        self._sequence += 1
        return body
