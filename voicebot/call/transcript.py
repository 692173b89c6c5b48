"""Per-call transcript: one JSON object per line, flushed line by line, in ``transcript_dir/<CallSid>.jsonl``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import IO, Any

import orjson

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class TranscriptWriter:
    """Appends user finals, heard assistant text, tool calls and per-turn latencies; each line hits the disk at once."""

    def __init__(self, directory: Path, call_sid: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{_SAFE_NAME.sub('_', call_sid)[:64]}.jsonl"
        self._file: IO[bytes] | None = self.path.open("ab", buffering=0)

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = orjson.dumps({"ts": round(time.time(), 3), "kind": kind, **fields}, default=str)
        # Unbuffered file: one write() per line, so a crash loses at most the line being written.
        self._file.write(line + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
