"""What the benchmark measured (phases, windows) and how a phase's raw events become hops, barge-ins and
percentiles; also the Prometheus histogram and py-spy profile readers. No processes, no I/O beyond reading files."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CODE = re.compile(r"\bx[a-z]{4}\b", re.IGNORECASE)
BARGE_WINDOW_S = 3.0
"""A clear or provider abort counts for a barge-in if it comes within this long of the caller's speech onset."""
HOPS = ("stt_final_to_llm_request", "segment_to_tts_request", "tts_first_byte_to_media")
OUTSIDE = {
    "stt_final_to_llm_request": "STT final sent → LLM request received",
    "segment_to_tts_request": "LLM first token sent → TTS request received",
    "tts_first_byte_to_media": "TTS first byte sent → first media at the caller",
}


@dataclass
class Window:
    """What was measured on the server process while every call was live."""

    t0: float = 0.0
    t1: float = 0.0
    cpu_s: float = 0.0
    rss_mib: float = 0.0
    rss_idle_mib: float = 0.0
    run_delay_s: float = 0.0
    core_busy_s: float = 0.0
    load_core_busy_s: float = 0.0
    """The load generator's core (callers and emulators) busy in the window, all processes (the machine is shared)."""
    load_gen_cpu_s: float = 0.0
    """CPU of the load generator's own processes (callers and emulators) in the window."""
    live_calls: int = 0
    metrics0: str = ""
    metrics1: str = ""
    profile: list[tuple[str, int]] = field(default_factory=list)
    profile_start: float | None = None
    """When py-spy started (monotonic), if this phase was profiled; with ``profile_start_wall`` (``time.time()``)."""
    profile_start_wall: float | None = None
    profile_total: int = 0
    profile_native: list[tuple[str, int]] = field(default_factory=list)
    cpu_split: dict[str, float] = field(default_factory=dict)
    """With ``--perf``: the share of the server's CPU in the window per kind of code (:func:`cpu_split`)."""


@dataclass
class Phase:
    name: str
    calls: list[dict[str, Any]]
    events: list[dict[str, Any]]
    caller_lag_s: list[float]
    caller_cpu_s: float
    caller_wall_s: float
    emulator_lag_s: list[float]
    emulator_cpu_s: float
    errors: list[str]
    window: Window | None = None
    caller_procs: list[tuple[float, float | None]] = field(default_factory=list)
    """Per caller process: CPU share of its wall time, its event-loop lag p99 (s)."""


PROFILE_MARGIN_S = 2.0
"""Turns whose caller stopped speaking later than this before the profiler started are left out of a phase's turn
figures: ``py-spy --native`` stops the server for every sample, so those turns measure the profiler (found in the
100-call rows: every turn 670-720 ms until py-spy started, then 5-11 s for the 10 s it ran)."""


def turn_cutoff(phase: Phase) -> tuple[float | None, float | None]:
    """(monotonic, wall-clock) time after which a turn's figures are the profiler's; (None, None) if not profiled."""
    w = phase.window
    if w is None or w.profile_start is None or w.profile_start_wall is None:
        return None, None
    return w.profile_start - PROFILE_MARGIN_S, w.profile_start_wall - PROFILE_MARGIN_S


def live_through(call: dict[str, Any], t0: float, t1: float) -> bool:
    start, end = call.get("start_sent"), call.get("ended_at")
    return start is not None and end is not None and start <= t0 and end >= t1


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def code_of(text: str) -> str | None:
    found = CODE.findall(text or "")
    return found[-1].lower() if found else None


@dataclass
class TurnTrace:
    """One turn as the emulators and the caller saw it."""

    code: str
    stt_final: float | None = None
    stt_id: str | None = None
    llm_request: float | None = None
    llm_id: str | None = None
    first_token: float | None = None
    tts_request: float | None = None
    tts_id: str | None = None
    tts_first_byte: float | None = None
    caller_media: float | None = None
    call_sid: str | None = None


def trace_turns(phase: Phase) -> dict[str, TurnTrace]:
    """Follow each code through the event log, then to its call and its first media at the caller."""
    traces: dict[str, TurnTrace] = {}
    first_token: dict[str, float] = {}
    first_byte: dict[str, float] = {}
    opens: list[tuple[float, str]] = []
    for e in phase.events:
        s, k = e["s"], e["k"]
        if (s, k) == ("stt", "open"):
            opens.append((e["t"], e["id"]))
        elif k in ("first_token", "first_byte"):
            (first_token if k == "first_token" else first_byte).setdefault(e["id"], e["t"])
        elif (s, k) in (("stt", "results"), ("llm", "request"), ("tts", "request")):
            code = code_of(e.get("text", ""))
            if code is None:
                continue
            tr = traces.setdefault(code, TurnTrace(code))
            if s == "stt" and tr.stt_final is None:
                tr.stt_final, tr.stt_id = e["t"], e["id"]
            elif s == "llm" and tr.llm_request is None:
                tr.llm_request, tr.llm_id = e["t"], e["id"]
            elif s == "tts" and tr.tts_request is None:
                tr.tts_request, tr.tts_id = e["t"], e["id"]
    # Each call opens one STT stream right after its start message, and calls start spacing_s apart: pair them in
    # order of time (each call with the first unpaired stream opened after its start).
    by_stream: dict[str, dict[str, Any]] = {}
    calls = sorted((c for c in phase.calls if c.get("start_sent") is not None), key=lambda c: c["start_sent"])
    pending = sorted(opens)
    for call in calls:
        i = next((i for i, (t, _) in enumerate(pending) if t >= call["start_sent"]), None)
        if i is not None:
            by_stream[pending.pop(i)[1]] = call
    for tr in traces.values():
        tr.first_token = first_token.get(tr.llm_id or "")
        tr.tts_first_byte = first_byte.get(tr.tts_id or "")
        call = by_stream.get(tr.stt_id or "")
        if call is None or tr.stt_final is None:
            continue
        tr.call_sid = call["call_sid"]
        # The utterance this final belongs to: the last one that ended before it.
        ended = [u for u in call["utterances"] if u[1] <= tr.stt_final]
        if ended and ended[-1][2] is not None:
            tr.caller_media = ended[-1][2]
    cut, _ = turn_cutoff(phase)
    if cut is not None:
        traces = {code: tr for code, tr in traces.items() if tr.stt_final is not None and tr.stt_final < cut}
    return traces


def outside_hops(traces: Iterable[TurnTrace]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for tr in traces:
        pairs = (
            ("stt_final_to_llm_request", tr.stt_final, tr.llm_request),
            ("segment_to_tts_request", tr.first_token, tr.tts_request),
            ("tts_first_byte_to_media", tr.tts_first_byte, tr.caller_media),
        )
        for hop, a, b in pairs:
            if a is not None and b is not None and b >= a - 0.001:
                out[hop].append((b - a) * 1000)
    return out


def emulator_legs(phase: Phase) -> dict[str, list[float]]:
    """The emulators' own provider latency per request, from their events (ms): LLM request received → first token
    written, TTS request received → first audio byte written. Against the configured latency (LOADED: 300 / 150 ms)
    the excess is the load generator's own lateness, which the bot's whole turn inherits."""
    start: dict[tuple[str, str], float] = {}
    out: dict[str, list[float]] = {"llm": [], "tts": []}
    for e in phase.events:
        s, k = e["s"], e["k"]
        if s in out and k == "request":
            start.setdefault((s, e["id"]), e["t"])
        elif (s, k) in (("llm", "first_token"), ("tts", "first_byte")) and (s, e["id"]) in start:
            out[s].append((e["t"] - start.pop((s, e["id"]))) * 1000)
    return out


def server_hops(
    transcripts: Path, call_sids: Iterable[str], before_wall: float | None = None
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The server's own ``server_hops_ms`` per hop (turns logged before ``before_wall``, if given), and code →
    CallSid from its ``user`` lines."""
    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    owner: dict[str, str] = {}
    for sid in call_sids:
        path = transcripts / f"{sid}.jsonl"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line)
            if rec.get("kind") == "turn" and (before_wall is None or rec.get("ts", 0) < before_wall):
                for hop, ms in rec.get("server_hops_ms", {}).items():
                    out.setdefault(hop, []).append(ms)
            elif rec.get("kind") == "user" and (code := code_of(rec.get("text", ""))):
                owner[code] = sid
    return out, owner


def caller_latency(phase: Phase) -> list[float]:
    """Caller speech end → first bot media after it, ms (the whole turn as the caller hears it, network-free); not
    the turns the profiler disturbed (:data:`PROFILE_MARGIN_S`)."""
    cut, _ = turn_cutoff(phase)
    return [
        (u[2] - u[1]) * 1000
        for c in phase.calls
        for u in c["utterances"]
        if u[2] is not None and (cut is None or u[1] < cut)
    ]


@dataclass
class Barge:
    onset_to_clear: list[float] = field(default_factory=list)
    onset_to_llm_abort: list[float] = field(default_factory=list)
    onset_to_tts_abort: list[float] = field(default_factory=list)
    barges: int = 0
    missed_clear: int = 0


def barge_ins(phase: Phase) -> Barge:
    """Per barge-in utterance (every utterance after the first): onset → clear, → LLM and last TTS abort."""
    out = Barge()
    llm_requests = sorted(e["t"] for e in phase.events if (e["s"], e["k"]) == ("llm", "request"))
    aborts = [(e["t"], e["s"]) for e in phase.events if e["k"] == "abort" and e["s"] in ("llm", "tts")]
    for call in phase.calls:
        for onset, _end, _media in call["utterances"][1:]:
            out.barges += 1
            limit = onset + BARGE_WINDOW_S
            # Requests made after this onset belong to the reply to this barge-in, not to the interrupted turn.
            limit = min([limit, *(t for t in llm_requests if t > onset)])
            clear = next((t for t in call["clears"] if onset <= t <= onset + BARGE_WINDOW_S), None)
            if clear is None:
                out.missed_clear += 1
            else:
                out.onset_to_clear.append((clear - onset) * 1000)
            llm = [t for t, s in aborts if s == "llm" and onset <= t <= limit]
            tts = [t for t, s in aborts if s == "tts" and onset <= t <= limit]
            if llm:
                out.onset_to_llm_abort.append((min(llm) - onset) * 1000)
            if tts:
                out.onset_to_tts_abort.append((max(tts) - onset) * 1000)
    return out


def server_log_events(log: Path, call_sids: Iterable[str], events: Sequence[str]) -> Counter[str]:
    """How many of the server's log lines with these ``event`` names belong to these calls."""
    sids, wanted, out = set(call_sids), set(events), Counter[str]()
    if log.exists():
        for line in log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(line)
                if rec.get("event") in wanted and rec.get("call_sid") in sids:
                    out[rec["event"]] += 1
    return out


def counter_total(text: str, name: str) -> float:
    """A Prometheus counter added up over its label sets."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE))


def server_barge_lines(log: Path, call_sids: Iterable[str]) -> list[float]:
    """``since_speech_onset_ms`` of the server's ``barge_in_clear`` lines for these calls."""
    sids = set(call_sids)
    out = []
    if log.exists():
        for line in log.read_bytes().splitlines():
            if b"barge_in_clear" in line:
                with contextlib.suppress(orjson.JSONDecodeError):
                    rec = orjson.loads(line)
                    ms = rec.get("since_speech_onset_ms")
                    if rec.get("call_sid") in sids and isinstance(ms, int | float):
                        out.append(float(ms))
    return out


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of a Prometheus histogram without labels: upper bound → count."""
    out = {}
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} ([0-9.e+]+)$', re.MULTILINE)
    for le, count in pattern.findall(text):
        out[float(le)] = float(count)
    return out


def histogram_merged(text: str, name: str) -> tuple[dict[float, float], float]:
    """A labelled Prometheus histogram with its label sets added up: upper bound → count, and the sum."""
    out: dict[float, float] = {}
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{(?:[^}}]*,)?le="([^"]+)"\}} ([0-9.e+]+)$', re.MULTILINE)
    for le, count in pattern.findall(text):
        out[float(le)] = out.get(float(le), 0.0) + float(count)
    sums = re.findall(rf"^{re.escape(name)}_sum(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return out, sum(float(v) for v in sums)


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float | None, int]:
    """Quantile of the observations between two scrapes, interpolated in its bucket as Prometheus does."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None, 0
    total = counts[-1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound, int(total)
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9), int(total)
        prev_bound, prev_count = bound, count
    return None, int(total)


IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "select (", "poll (")
IDLE_FRAMES = ("_worker (concurrent/futures/thread.py",)
"""A thread-pool worker waiting for work (py-spy counts a lock wait as busy)."""


def top_functions(raw: str, limit: int = 15) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """From py-spy's raw (collapsed, ``--native``) output, idle stacks left out: self samples per Python function
    (native time charged to the nearest Python caller), self samples per native leaf, and the busy total."""
    own: Counter[str] = Counter()
    native: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE_LEAVES) or any(i in f for f in frames for i in IDLE_FRAMES):
            continue
        count = int(count_s)
        total += count
        python = [f for f in frames if _is_python(f)]
        own[_short(python[-1]) if python else "(no Python frame)"] += count
        if not _is_python(frames[-1]):
            native[_short(frames[-1])] += count
    return own.most_common(limit), native.most_common(10), total


CODE_KINDS = (
    ("interpreter", ("libpython", "python3")),
    ("kernel", ("[kernel",)),
    ("event loop", ("uvloop", "loop.cpython")),
)
"""How ``perf report --sort dso`` names a shared object, by the kind of code it is: CPython's interpreter (a shared
libpython, or the executable itself for a statically linked one), the kernel (system calls, TCP on loopback), and
uvloop's C loop; everything else (aiohttp's and orjson's C, webrtcvad, libc...) is "other C"."""


def cpu_split(report: str) -> dict[str, float]:
    """``perf report --sort dso --stdio`` output → share of the samples (0-1) per kind of code."""
    split: dict[str, float] = {}
    for line in report.splitlines():
        pct_s, _, dso = line.strip().partition("%")
        try:
            share = float(pct_s) / 100
        except ValueError:
            continue  # headers and comments
        dso = dso.strip()
        kind = next((k for k, marks in CODE_KINDS if any(m in dso for m in marks)), "other C")
        split[kind] = split.get(kind, 0.0) + share
    return split


def _is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen" in frame or "(<string>" in frame


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (pkg/file.py)``."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"
