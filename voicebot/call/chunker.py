"""Streaming text segmentation for TTS (sans-I/O).

LLM token deltas pass through two streaming stages:

1. ``_Cleaner`` strips markdown and pictographs and collapses every whitespace run to one space, or to one
   newline when the run holds a newline;
2. ``_Segmenter`` cuts that clean text into segments. The first segment ends at the first clause boundary
   (``, ; : — –`` or a sentence end) once it is ``first_min_chars`` long, so the first audio starts early.
   Later segments end at a sentence end once they are ``min_chars`` long (shorter sentences are joined:
   they are queued behind audio already playing, so joining costs no latency and gives the TTS more prosody
   context). Every newline ends a segment (list items, headings, table rows). A run-on sentence is cut near
   ``max_chars`` at the last clause boundary, else the last word; never inside a word, so never inside a URL.

A sentence ends at ``. ! ? …`` (plus closing quotes or brackets) followed by a space, or at a newline. A dot
is not an end inside a token ("3.5", "example.com/a?b", "help@acme.co.uk"), after an abbreviation ("Dr.",
"e.g.", "No."), after a list marker that starts a sentence ("1. Open the app"), or when the next word starts
in lower case ("etc. and", "wait... what"). Fenced code keeps its text, only the fences go. A piece with
nothing to say (punctuation, leftovers of a stripped line) is never returned on its own: it is carried into
the next segment, and dropped at the end of the stream.

Each stage holds back only what it cannot decide yet (one character after punctuation, the start of a line,
a link's ``](url)`` tail, a table row), and every decision depends only on the text, never on where the
deltas were split: any split of the same text yields the same segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkerConfig:
    """Segment length targets, in characters of cleaned text."""

    first_min_chars: int = 12  # the first segment: cut at the first clause boundary at or after this length
    min_chars: int = 40  # later segments: cut at the first sentence end at or after this length
    max_chars: int = 250  # a run-on is cut at the last clause boundary (else word) before this length

    def __post_init__(self) -> None:
        if not 0 <= self.first_min_chars <= self.max_chars or not 0 <= self.min_chars <= self.max_chars:
            raise ValueError("need 0 <= first_min_chars, min_chars <= max_chars")
        if self.max_chars < 2:
            raise ValueError("max_chars must be at least 2")


# Emoji and other pictographs, plus the invisible parts of emoji sequences (joiner, variation selectors,
# keycap, tags). Removed one code point at a time, so a delta may end inside a sequence.
_PICTOGRAPHS = (
    "\u200d\u20e3"
    "\u2300-\u23ff"  # watch, hourglass, alarm clock...
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2b00-\u2bff"  # stars, squares, arrows
    "\ufe00-\ufe0f"
    "\U0001f000-\U0001faff"  # emoji, flags (regional indicators), skin tones
    "\U000e0000-\U000e007f"
)
_INLINE_SPECIAL = re.compile(f"[\n*_`~\\[\\]!|{_PICTOGRAPHS}]")
# What may open a line before its text: indentation, quote, heading, bullet, rule characters.
_MARKER_RUN = re.compile(r"[ \t\r>#*+\-_•]*")
_LINE_PREFIX = re.compile(r"[ \t\r]*(?:>[ \t\r]*)*(?:#{1,6}[ \t\r]+|[-*+•][ \t\r]+)?")
_HORIZONTAL_RULE = re.compile(r"[ \t\r]*(?:[-*_][ \t\r]*){3,}")
_TABLE_RULE_CELL = re.compile(r"[\s:\-]*")
_MAX_URL_CHARS = 2000  # bounds how long "](" can hold the stream back
_WHITESPACE_OR_WORD = re.compile(r"(\s+)|\S+")


def _match_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    m = pattern.match(text, pos)
    assert m is not None  # only used with patterns that match the empty string or the character at pos
    return m.end()


def _link_tail_end(raw: str, i: int) -> int | None:
    """End of the "](url)" at ``i``; -1 if it is not one, None if the text so far cannot tell."""
    if i + 1 == len(raw):
        return None
    if raw[i + 1] != "(":
        return -1
    depth = 0  # balanced parentheses, as in Wikipedia urls: ](https://en.wikipedia.org/wiki/X_(y))
    for j in range(i + 2, min(len(raw), i + 2 + _MAX_URL_CHARS)):
        ch = raw[j]
        if ch.isspace():
            return -1
        if ch == "(":
            depth += 1
        elif ch == ")":
            if not depth:
                return j + 1
            depth -= 1
    return None if len(raw) < i + 2 + _MAX_URL_CHARS else -1


def _table_row(line: str) -> str:
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if all(_TABLE_RULE_CELL.fullmatch(cell) for cell in cells):
        return ""  # the |---|:---:| line under the header
    return ", ".join(cell for cell in cells if cell)


class _Cleaner:
    """Streaming markdown/pictograph stripper and whitespace collapser."""

    def __init__(self) -> None:
        self._raw = ""  # input not decided yet
        self._line_start = True
        self._prev = "\n"  # last consumed raw character: emphasis markers inside a word are kept
        self._ws = ""  # collapsed whitespace waiting for the next visible character
        self._started = False

    def feed(self, text: str, final: bool) -> str:
        if not (self._raw or self._line_start or final) and _INLINE_SPECIAL.search(text) is None:
            if text:  # the per-token fast path: plain words
                self._prev = text[-1]
            return self._collapse(text)
        raw = self._raw + text
        out: list[str] = []
        pos = 0
        while pos < len(raw):
            if self._line_start:
                step = self._line(raw, pos, final)
                if step is None:
                    break
                raw, pos = step
                continue
            m = _INLINE_SPECIAL.search(raw, pos)
            if m is None:
                out.append(raw[pos:])
                pos = len(raw)
                break
            i = m.start()
            if i > pos:
                out.append(raw[pos:i])
            nxt = self._inline(raw, i, final, out)
            if nxt < 0:
                pos = i
                break
            pos = nxt
        if pos:
            self._prev = raw[pos - 1]
        self._raw = raw[pos:]
        return self._collapse("".join(out))

    def _line(self, raw: str, pos: int, final: bool) -> tuple[str, int] | None:
        """Consume line-start markdown; None to wait for more text."""
        n = len(raw)
        run_end = _match_end(_MARKER_RUN, raw, pos)
        if run_end == n and not final:
            return None
        nxt = raw[run_end] if run_end < n else "\n"
        if not raw[pos:run_end].strip():  # indentation only
            if nxt in "`~":
                if n - run_end < 3 and not final:
                    return None
                if raw.startswith(("```", "~~~"), run_end):
                    eol = raw.find("\n", run_end)
                    if eol < 0 and not final:
                        return None
                    return raw, n if eol < 0 else eol  # drop the fence line, keep its newline
            elif nxt == "|":
                eol = raw.find("\n", run_end)
                if eol < 0 and not final:
                    return None
                self._line_start = False
                self._prev = "\n"
                row = raw[run_end:] if eol < 0 else raw[run_end:eol]
                return _table_row(row) + ("" if eol < 0 else raw[eol:]), 0
        self._line_start = False
        if nxt == "\n" and _HORIZONTAL_RULE.fullmatch(raw, pos, run_end):
            return raw, run_end
        return raw, _match_end(_LINE_PREFIX, raw, pos)

    def _inline(self, raw: str, i: int, final: bool, out: list[str]) -> int:
        """Handle the special character at ``i``; the next position, or -1 to wait for more text."""
        c = raw[i]
        n = len(raw)
        if c == "\n":
            out.append("\n")
            self._line_start = True
            return i + 1
        if c in "*_~":
            j = i + 1
            while j < n and raw[j] == c:
                j += 1
            if j == n and not final:
                return -1
            if c == "~":
                if j - i == 1:
                    out.append(c)  # "~5 minutes"; "~~" is strikethrough
                return j
            before = raw[i - 1] if i else self._prev
            after = raw[j] if j < n else ""
            if before.isalnum() and after.isalnum():
                out.append(raw[i:j])  # snake_case, 2*3: not emphasis
            return j
        if c == "!":
            if i + 1 == n and not final:
                return -1
            if raw.startswith("[", i + 1):
                return i + 1  # image: ![alt](url) -> alt
            out.append(c)
            return i + 1
        if c == "]":
            end = _link_tail_end(raw, i)
            if end is None and not final:
                return -1
            return i + 1 if end is None or end < 0 else end  # [text](url) -> text
        if c == "|":
            out.append(" ")
        return i + 1  # "`", "[", pictographs: dropped

    @property
    def space_pending(self) -> bool:
        """Whitespace was read after the last character returned and is held for the next one."""
        return bool(self._ws) and self._started and not self._raw

    def _collapse(self, text: str) -> str:
        if "\n" not in text:  # the per-token fast path: spaces only
            words = text.split()
            if not words:
                if text and not self._ws:
                    self._ws = " "
                return ""
            ws = self._ws or (" " if text[0].isspace() else "")
            head = ws if self._started else ""
            self._started = True
            self._ws = " " if text[-1].isspace() else ""
            return head + " ".join(words)
        parts: list[str] = []
        for m in _WHITESPACE_OR_WORD.finditer(text):
            if m.group(1) is not None:
                if "\n" in m.group(1):
                    self._ws = "\n"
                elif not self._ws:
                    self._ws = " "
                continue
            if self._ws and self._started:
                parts.append(self._ws)
            self._ws = ""
            self._started = True
            parts.append(m.group())
        return "".join(parts)


# Words whose final dot does not end a sentence (lower case, without the final dot). Joining two sentences
# by mistake costs a little latency; splitting "Dr. | Smith" costs prosody, so the list leans long.
# fmt: off
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr", "rev", "fr", "sgt", "capt", "lt", "col", "gen",
    "gov", "sen", "rep", "hon", "mt", "ft", "ave", "blvd", "vs", "etc", "e.g", "i.e", "cf", "viz", "approx",
    "ca", "dept", "no", "nos", "vol", "fig", "inc", "ltd", "co", "corp", "bros", "u.s", "u.k", "u.n", "a.m",
    "p.m", "ph.d", "p", "pp", "ch", "sec", "art", "pt", "tel", "ext", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec",
})
# fmt: on
_CANDIDATE = re.compile("[ \n.!?…,;:—–]")
_CLOSERS = "\"'”’)]"
_TERMINAL_RUN = re.compile(f"[.!?…]+[{re.escape(_CLOSERS)}]*")
_LIST_MARKER = re.compile(r"[0-9]{1,3}|[A-Za-z]")
_OPENERS = "\"'“‘(["


def _decided_at_space(buf: str, pos: int, end: int) -> bool:
    """Whether a cut candidate followed by a space is decided without the character after the space."""
    run = buf[pos:end]
    return "!" in run or "?" in run or buf[pos] in ",;:"


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class _Segmenter:
    """Cuts collapsed clean text into segments."""

    def __init__(self, config: ChunkerConfig) -> None:
        self._cfg = config
        self._buf = ""  # the pending segment; always starts with a visible character
        self._scan = 0  # everything before this index in _buf is decided
        self._first = True
        # Where the current sentence starts in _buf. Every cut counts as a sentence start, so "Steps: | 1. Open"
        # keeps its list marker too (when unsure, joining is the cheap mistake).
        self._sentence_start = 0
        self._clause = 0  # end of the last clause boundary <= max_chars (0: none)
        self._space = 0  # index of the last space <= max_chars usable as a word cut (0: none)
        self._space_pending = False  # whitespace follows _buf, held by the cleaner
        self._skip_space = False  # a cut consumed that pending whitespace: drop it when it arrives

    def feed(self, text: str, final: bool, space_pending: bool = False) -> list[str]:
        """Add clean text; ``space_pending``: the cleaner holds whitespace after it (not yet emitted)."""
        if self._skip_space:
            stripped = text.lstrip(" \n")
            self._skip_space = not stripped and not final
            text = stripped
        self._buf += text
        self._space_pending = space_pending
        out: list[str] = []
        self._run(final, out)
        if final:
            rest = self._buf.replace("\n", " ").strip()
            if _speakable(rest):
                out.append(rest)
        return out

    def _run(self, final: bool, out: list[str]) -> None:
        cfg = self._cfg
        i = self._scan
        while True:
            buf = self._buf
            m = _CANDIDATE.search(buf, i)
            pos = len(buf) if m is None else m.start()
            # The run-on cut is triggered by position, never by how much text happens to be buffered,
            # so it lands in the same place for any split of the deltas.
            if (m is not None or final) and pos > cfg.max_chars and self._fallback_cut(out):
                i = 0
                continue
            if m is None:
                i = len(buf)
                break
            c = buf[pos]
            if c == " ":
                if pos and buf[pos - 1] != ".":  # not after "Dr." or "1."
                    self._space = pos
                i = pos + 1
                continue
            if c == "\n":
                if self._cut(pos, out):
                    i = 0
                else:
                    self._sentence_start = pos + 1
                    i = pos + 1
                continue
            terminal = c in ".!?…"
            end = _match_end(_TERMINAL_RUN, buf, pos) if terminal else pos + 1
            nxt = buf[end] if end < len(buf) else (" " if self._space_pending else "")
            after = buf[end + 1] if end + 1 < len(buf) else ""
            # Undecided until the next visible character, except where it cannot change the boundary: after "? "
            # or "! " (a space ends the terminal run, and only a dot's sentence end depends on the next word:
            # "etc. and") and after a clause mark and its space.
            if not final and (not nxt or (nxt == " " and not after and not _decided_at_space(buf, pos, end))):
                i = pos
                break
            i = end
            if nxt == "\n":
                continue  # the newline cuts anyway
            if terminal:
                if not self._sentence_end(buf, pos, end, nxt, after):
                    continue
                self._sentence_start = end + 1
                limit = cfg.first_min_chars if self._first else cfg.min_chars
                if end >= limit and self._cut(end, out):
                    i = 0
                elif end <= cfg.max_chars:
                    self._clause = end
                continue
            if c == "—" or (nxt == " " and (c != "–" or buf[pos - 1 : pos] == " ")):
                if self._first and end >= cfg.first_min_chars and self._cut(end, out):
                    i = 0
                elif end <= cfg.max_chars:
                    self._clause = end
        self._scan = i

    def _sentence_end(self, buf: str, pos: int, end: int, nxt: str, after: str) -> bool:
        if nxt not in ("", " "):  # "3.5", "e.g" inside, "example.com", "?x=1"
            return False
        run = buf[pos:end]
        if "!" in run or "?" in run:
            return True
        if after.islower():  # "etc. and", "wait... what"
            return False
        if run.rstrip(_CLOSERS) != ".":
            return True
        start = max(buf.rfind(" ", 0, pos), buf.rfind("\n", 0, pos)) + 1
        word = buf[start:pos].lstrip(_OPENERS).lower()
        if word in _ABBREVIATIONS:
            return False
        # "1. Open the app": a list marker at the start of a sentence stays with its item.
        return not (start == self._sentence_start and _LIST_MARKER.fullmatch(word))

    def _fallback_cut(self, out: list[str]) -> bool:
        """Cut a run-on segment; prefer a clause boundary in the second half, else the last word."""
        clause, space = self._clause, self._space
        if clause and (clause >= self._cfg.max_chars // 2 or not space):
            ok = self._cut(clause, out)
        elif space:
            ok = self._cut(space, out)
        else:
            return False
        if not ok:
            self._clause = self._space = 0
        return ok

    def _cut(self, end: int, out: list[str]) -> bool:
        """Emit ``_buf[:end]`` unless it has nothing to say (then it is carried into the next segment)."""
        segment = self._buf[:end]
        if not _speakable(segment):
            return False
        rest = self._buf[end:]
        self._buf = rest[1:] if rest[:1] in (" ", "\n") else rest
        if not rest and self._space_pending:
            self._skip_space = True
        self._first = False
        self._sentence_start = 0
        self._clause = self._space = 0
        out.append(segment.replace("\n", " ").strip())
        return True


class TextChunker:
    """LLM token deltas in, TTS-ready text segments out."""

    def __init__(self, config: ChunkerConfig = ChunkerConfig()) -> None:
        self._config = config
        self._cleaner = _Cleaner()
        self._segmenter = _Segmenter(config)

    def feed(self, delta: str) -> list[str]:
        """Add one delta; return the segments it completed (often none)."""
        text = self._cleaner.feed(delta, final=False)
        return self._segmenter.feed(text, final=False, space_pending=self._cleaner.space_pending) if text else []

    def flush(self) -> list[str]:
        """End of stream: return the remaining segments and reset for a new stream."""
        segments = self._segmenter.feed(self._cleaner.feed("", final=True), final=True)
        self._cleaner = _Cleaner()
        self._segmenter = _Segmenter(self._config)
        return segments


def clean_for_speech(text: str) -> str:
    """Strip markdown and emoji from ``text`` and collapse its whitespace to single spaces."""
    return _Cleaner().feed(text, final=True).replace("\n", " ")


__all__ = ["ChunkerConfig", "TextChunker", "clean_for_speech"]
