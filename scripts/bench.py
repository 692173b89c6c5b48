"""``make bench``: server overhead per turn, barge-in reaction, cost per call, the floor, and Pipecat side by side.

    .venv/bin/python scripts/bench.py                 # about 4-5 minutes on 2 cores
    .venv/bin/python scripts/bench.py --full          # longer windows, more samples (about 15 minutes)
    .venv/bin/python scripts/bench.py --skip-pipecat --calls 50

Processes (all on 127.0.0.1, ports 18711-18714 by default):

- the emulators with the benchmark hooks (``scripts/bench_load.py emulators``), pinned to core 1;
- the server under test, pinned to core 0: ``python -m voicebot``, then the floor relay (``scripts/bench_relay.py``),
  then Pipecat (``.venv-pipecat/bin/python scripts/pipecat_bot.py``), one after the other;
- the simulated callers (``scripts/bench_load.py callers``), pinned to core 1.

Every utterance carries a unique code through STT transcript, LLM request, LLM reply and first TTS request, so each
turn's hops are measured twice: by the server itself (``server_hops_ms`` in its transcript) and from outside, from
the emulators' and the caller's timestamps (one ``time.monotonic()`` clock on one machine). See BENCHMARKS.md.
Writes the Markdown report to stdout and ``--out`` (default build/bench/results.md), raw numbers next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
PIPECAT_PY = ROOT / ".venv-pipecat" / "bin" / "python"
PYSPY = ROOT / ".venv" / "bin" / "py-spy"
LOAD = str(ROOT / "scripts" / "bench_load.py")
SERVER_CORE, LOAD_CORE = "0", "1"
AUTH_TOKEN = "bench-token"
ACCOUNT_SID = "AC" + "0" * 32
CODE = re.compile(r"\bx[a-z]{4}\b", re.IGNORECASE)
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 8.0
LIVE_TIMEOUT_S = 60.0
BARGE_WINDOW_S = 3.0
"""A clear or provider abort counts for a barge-in if it comes within this long of the caller's speech onset."""
RSS_SAMPLES = 3
HOPS = ("stt_final_to_llm_request", "segment_to_tts_request", "tts_first_byte_to_media")
OUTSIDE = {
    "stt_final_to_llm_request": "STT final sent → LLM request received",
    "segment_to_tts_request": "LLM first token sent → TTS request received",
    "tts_first_byte_to_media": "TTS first byte sent → first media at the caller",
}

# Emulator settings per phase (see bench_load.py): realistic latency, except the 1-call phase, which trims the
# provider waits to fit more turns in the same time (the server's hops do not depend on them).
QUICK = {"reply": "short", "llm_tokens_per_second": None, "tts_bytes_per_second": 32000.0, "llm_ttft_ms": 100.0,
         "tts_ttfb_ms": 50.0}  # fmt: skip
BARGE = {"reply": "long", "llm_tokens_per_second": 10.0, "tts_bytes_per_second": 8000.0, "llm_ttft_ms": 300.0,
         "tts_ttfb_ms": 150.0}  # fmt: skip
LOADED = {"reply": "hours", "llm_tokens_per_second": None, "tts_bytes_per_second": 32000.0, "llm_ttft_ms": 300.0,
          "tts_ttfb_ms": 150.0}  # fmt: skip


@dataclass
class Timing:
    one_call_s: float
    barge_s: float
    settle_s: float
    window_s: float
    profile_s: float
    pipecat_one_call_s: float


DEFAULT = Timing(one_call_s=40, barge_s=25, settle_s=4, window_s=25, profile_s=10, pipecat_one_call_s=30)
SMOKE = Timing(one_call_s=12, barge_s=12, settle_s=2, window_s=6, profile_s=3, pipecat_one_call_s=12)
FULL = Timing(one_call_s=180, barge_s=90, settle_s=8, window_s=120, profile_s=30, pipecat_one_call_s=120)


# --- processes ------------------------------------------------------------------------------------------------


class Procs:
    """Every child process, each in its own session so that stopping it stops what it started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, name: str, argv: Sequence[str], core: str, env: dict[str, str] | None = None, stdout: bool = False
    ) -> asyncio.subprocess.Process:
        log = (self.logs / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", core, *argv,
            stdout=asyncio.subprocess.PIPE if stdout else log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.running[name] = proc
        return proc

    async def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                async with asyncio.timeout(wait_s):
                    await proc.wait()
                return
            except TimeoutError:
                continue

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_delay_s(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but waiting for a CPU (/proc/PID/schedstat, second field)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def core_busy_s(core: str) -> float:
    """Busy (non-idle, non-iowait) seconds of one CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / TICKS
    return 0.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_ports(base: int, count: int) -> list[int]:
    """``count`` free ports from ``base`` upwards (bounded search in 18000-19999)."""
    out: list[int] = []
    port = base
    while len(out) < count and port < 20000:
        if port_free(port):
            out.append(port)
        port += 1
    if len(out) < count:
        raise SystemExit("bench: no free ports in 18000-19999")
    return out


async def wait_http(url: str, ok: Callable[[int, str], bool], timeout: float) -> None:  # noqa: ASYNC109 (startup bound)
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if ok(resp.status, await resp.text()):
                        return
            await asyncio.sleep(0.25)


async def http_json(method: str, url: str, body: Any = None) -> Any:
    async with asyncio.timeout(30), aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
        resp.raise_for_status()
        return orjson.loads(await resp.read())


async def http_text(url: str) -> str:
    async with asyncio.timeout(10), aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text()


# --- a phase: N callers against one server ------------------------------------------------------------------


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
    live_calls: int = 0
    metrics0: str = ""
    metrics1: str = ""
    profile: list[tuple[str, int]] = field(default_factory=list)
    profile_total: int = 0
    profile_native: list[tuple[str, int]] = field(default_factory=list)


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


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.timing = FULL if args.full else SMOKE if args.smoke else DEFAULT
        self.procs = Procs(work)
        emu, vb, relay, pc = pick_ports(args.base_port, 4)
        self.emu_url = f"http://127.0.0.1:{emu}"
        self.emu_port = emu
        self.ports = {"voicebot": vb, "relay": relay, "pipecat": pc}
        self.transcripts = work / "transcripts"
        self.phases: dict[str, Phase] = {}
        self.server_log = work / "voicebot.log"
        self.notes: list[str] = []

    # --- servers ---

    async def start_emulators(self) -> None:
        argv = [PY, LOAD, "emulators", "--port", str(self.emu_port), "--max-s", "3600"]
        await self.procs.start("emulators", argv, LOAD_CORE)
        await wait_http(f"{self.emu_url}/bench/events", lambda s, _: s == 200, STARTUP_TIMEOUT_S)

    async def start_server(self, kind: str) -> asyncio.subprocess.Process:
        port = self.ports[kind]
        public = f"https://127.0.0.1:{port}"
        if kind == "voicebot":
            env = {
                "DEEPGRAM_API_KEY": "bench", "OPENAI_API_KEY": "bench",
                "DEEPGRAM_BASE_URL": self.emu_url, "OPENAI_BASE_URL": f"{self.emu_url}/v1",
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": self.emu_url,
                "VOICEBOT_PORT": str(port), "VOICEBOT_PUBLIC_URL": public, "VOICEBOT_MAX_CALLS": "2000",
                "VOICEBOT_TRANSCRIPT_DIR": str(self.transcripts), "VOICEBOT_LOG_FORMAT": "json",
                # info, not warning: the barge-in phase reads the server's barge_in_clear lines (a few per call).
                "VOICEBOT_LOG_LEVEL": "info",
            }  # fmt: skip
            proc = await self.procs.start("voicebot", [PY, "-m", "voicebot"], SERVER_CORE, env)
            await wait_http(f"http://127.0.0.1:{port}/healthz", lambda s, t: s == 200 and '"ok"' in t, 60)
            await asyncio.sleep(1.0)  # the fixed phrases are synthesised at startup
        elif kind == "relay":
            argv = [PY, str(ROOT / "scripts" / "bench_relay.py"), "--port", str(port), "--emulator-url",
                    self.emu_url, "--public-url", public]  # fmt: skip
            proc = await self.procs.start("relay", argv, SERVER_CORE)
        else:
            argv = [str(PIPECAT_PY), str(ROOT / "scripts" / "pipecat_bot.py"), "--port", str(port),
                    "--emulator-url", self.emu_url, "--public-url", public, "--log-level", "WARNING",
                    "--turn", self.args.pipecat_turn]  # fmt: skip
            proc = await self.procs.start("pipecat", argv, SERVER_CORE)
        if kind != "voicebot":
            await wait_http(f"http://127.0.0.1:{port}/voice", lambda s, _: s in (200, 405), STARTUP_TIMEOUT_S)
        return proc

    # --- phases ---

    async def configure(self, settings: dict[str, Any]) -> None:
        await http_json("POST", f"{self.emu_url}/bench/config", settings)

    async def run_phase(
        self,
        name: str,
        kind: str,
        *,
        calls: int,
        script: str,
        duration_s: float,
        measure: Timing | None = None,
        profile: bool = False,
    ) -> Phase:
        """Run ``calls`` callers against server ``kind``; with ``measure``, sample the server while all are live."""
        port = self.ports[kind]
        server = self.procs.running[kind]
        out = self.work / f"{name}.calls.json"
        await http_json("GET", f"{self.emu_url}/bench/events")  # start this phase's event log afresh
        window = None
        if measure is not None:
            window = Window(rss_idle_mib=rss_mib(server.pid))
        argv = [PY, LOAD, "callers", "--server", f"http://127.0.0.1:{port}", "--public-url",
                f"https://127.0.0.1:{port}", "--calls", str(calls), "--duration-s", str(duration_s),
                "--spacing-s", str(self.args.spacing_s), "--script", script, "--out", str(out)]  # fmt: skip
        if kind == "voicebot":
            argv += ["--auth-token", AUTH_TOKEN]
        callers = await self.procs.start(f"callers-{name}", argv, LOAD_CORE, stdout=True)
        assert callers.stdout is not None
        print(f"bench: {name}: {calls} call(s) of {duration_s:.0f} s ({script}) against {kind}", file=sys.stderr)
        if measure is not None and window is not None:
            async with asyncio.timeout(LIVE_TIMEOUT_S + calls * self.args.spacing_s):
                while not (line := await callers.stdout.readline()).startswith(b"LIVE"):
                    if not line:
                        raise RuntimeError(f"{name}: the callers exited before all calls were live")
            await self.measure(kind, server.pid, window, measure, profile)
        async with asyncio.timeout(duration_s + calls * self.args.spacing_s + 60):
            await callers.communicate()
        self.procs.running.pop(f"callers-{name}", None)
        result = orjson.loads(out.read_bytes())
        emu = await http_json("GET", f"{self.emu_url}/bench/events")
        phase = Phase(
            name=name, calls=result["calls"], events=emu["events"], caller_lag_s=result["lag_s"],
            caller_cpu_s=result["cpu_s"], caller_wall_s=result["wall_s"], emulator_lag_s=emu["lag_s"],
            emulator_cpu_s=emu["cpu_s"], errors=result["errors"], window=window,
        )  # fmt: skip
        if window is not None:
            window.live_calls = sum(1 for c in phase.calls if _live_through(c, window.t0, window.t1))
        self.phases[name] = phase
        return phase

    async def measure(self, kind: str, pid: int, window: Window, timing: Timing, profile: bool) -> None:
        await asyncio.sleep(timing.settle_s)
        metrics_url = f"http://127.0.0.1:{self.ports[kind]}/metrics"
        if kind == "voicebot":
            window.metrics0 = await http_text(metrics_url)
        window.t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        delay0, busy0 = run_delay_s(pid), core_busy_s(SERVER_CORE)
        rss = []
        for _ in range(RSS_SAMPLES):
            await asyncio.sleep(timing.window_s / RSS_SAMPLES)
            rss.append(rss_mib(pid))
        window.t1, cpu1 = time.monotonic(), cpu_seconds(pid)
        window.cpu_s = cpu1 - cpu0
        window.run_delay_s = run_delay_s(pid) - delay0
        window.core_busy_s = core_busy_s(SERVER_CORE) - busy0
        window.rss_mib = sorted(rss)[len(rss) // 2]
        if kind == "voicebot":
            window.metrics1 = await http_text(metrics_url)
        if profile:
            await self.profile(pid, window, timing.profile_s)

    async def profile(self, pid: int, window: Window, seconds: float) -> None:
        """py-spy on the loaded server, after the CPU window (sampling pauses the process)."""
        if not PYSPY.exists():
            self.notes.append("py-spy not installed in .venv: no profile (`.venv/bin/pip install py-spy`)")
            return
        raw = self.work / "profile.txt"
        argv = [str(PYSPY), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw",
                "--native", "-o", str(raw)]  # fmt: skip
        proc = await self.procs.start("py-spy", argv, LOAD_CORE)
        async with asyncio.timeout(seconds + 30):
            await proc.wait()
        self.procs.running.pop("py-spy", None)
        if not raw.exists():
            self.notes.append(f"py-spy failed (exit {proc.returncode}); see {self.work / 'py-spy.log'}")
            return
        shutil.copy(raw, self.args.out.parent / "profile.txt")
        window.profile, window.profile_native, window.profile_total = top_functions(raw.read_text())

    # --- the whole run ---

    async def run(self) -> None:
        t = self.timing
        n = self.args.calls
        await self.start_emulators()
        await self.start_server("voicebot")
        await self.configure(QUICK)
        await self.run_phase("vb_1", "voicebot", calls=1, script="short", duration_s=t.one_call_s)
        await self.configure(BARGE)
        await self.run_phase("vb_barge", "voicebot", calls=1, script="barge", duration_s=t.barge_s)
        await self.configure(LOADED)
        load_s = n * self.args.spacing_s + t.settle_s + t.window_s + t.profile_s + 3
        await self.run_phase("vb_n", "voicebot", calls=n, script="talk", duration_s=load_s, measure=t, profile=True)
        if not self.args.skip_pipecat:  # the same load as Pipecat gets, for the side-by-side
            m = self.args.pipecat_calls
            vb_m_s = m * self.args.spacing_s + t.settle_s + t.window_s + 3
            await self.run_phase("vb_m", "voicebot", calls=m, script="talk", duration_s=vb_m_s, measure=t)
        await self.procs.stop("voicebot")
        await self.start_server("relay")
        relay_s = n * self.args.spacing_s + t.settle_s + t.window_s + 3
        await self.run_phase("relay_n", "relay", calls=n, script="talk", duration_s=relay_s, measure=t)
        await self.procs.stop("relay")
        if self.args.skip_pipecat:
            return
        if not PIPECAT_PY.exists():
            self.notes.append("Pipecat not installed (scripts/install_pipecat.sh): no side-by-side figures")
            return
        await self.start_server("pipecat")
        await self.configure(QUICK)
        await self.run_phase("pc_1", "pipecat", calls=1, script="short", duration_s=t.pipecat_one_call_s)
        await self.configure(LOADED)
        m = self.args.pipecat_calls
        pc_s = m * self.args.spacing_s + t.settle_s + t.window_s + 3
        await self.run_phase("pc_n", "pipecat", calls=m, script="talk", duration_s=pc_s, measure=t)
        await self.procs.stop("pipecat")


def _live_through(call: dict[str, Any], t0: float, t1: float) -> bool:
    start, end = call.get("start_sent"), call.get("ended_at")
    return start is not None and end is not None and start <= t0 and end >= t1


# --- analysis -----------------------------------------------------------------------------------------------


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


def server_hops(transcripts: Path, call_sids: Iterable[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The server's own ``server_hops_ms`` per hop, and code → CallSid from its ``user`` lines."""
    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    owner: dict[str, str] = {}
    for sid in call_sids:
        path = transcripts / f"{sid}.jsonl"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line)
            if rec.get("kind") == "turn":
                for hop, ms in rec.get("server_hops_ms", {}).items():
                    out.setdefault(hop, []).append(ms)
            elif rec.get("kind") == "user" and (code := code_of(rec.get("text", ""))):
                owner[code] = sid
    return out, owner


def caller_latency(phase: Phase) -> list[float]:
    """Caller speech end → first bot media after it, ms (the whole turn as the caller hears it, network-free)."""
    return [(u[2] - u[1]) * 1000 for c in phase.calls for u in c["utterances"] if u[2] is not None]


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


# --- report -------------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def p3(values: Sequence[float]) -> str:
    if not values:
        return "– (n=0)"
    return f"{fmt(pct(values, 50), 2)} / {fmt(pct(values, 95), 2)} / {fmt(pct(values, 99), 2)} (n={len(values)})"


def verdict(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= limit if higher_is_better else value <= limit
    return "PASS" if ok else "MISS"


def cpu_per_call_minute(phase: Phase) -> float | None:
    w = phase.window
    if w is None or w.live_calls == 0 or w.t1 <= w.t0:
        return None
    return w.cpu_s / (w.live_calls * (w.t1 - w.t0) / 60)


def turns_per_call_minute(phase: Phase) -> float | None:
    w = phase.window
    if w is None or w.live_calls == 0:
        return None
    turns = sum(
        1 for c in phase.calls for u in c["utterances"] if u[2] is not None and w.t0 <= u[2] <= w.t1
    )  # fmt: skip
    return turns / (w.live_calls * (w.t1 - w.t0) / 60)


def environment() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for pkg in ("aiohttp", "uvloop", "deepgram-sdk", "openai", "httpx", "websockets", "orjson", "webrtcvad-wheels"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{pkg} {metadata.version(pkg)}")
    load = os.getloadavg()
    return [
        f"- date: {datetime.date.today().isoformat()}; nproc {os.cpu_count()}; CPU {model}; "
        f"Python {platform.python_version()} ({platform.machine()}); load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- {', '.join(versions)}",
    ]


def report(bench: Bench, started: float) -> tuple[str, dict[str, Any]]:
    args, ph = bench.args, bench.phases
    lines = [f"# voicebot benchmark ({'full' if args.full else 'default'} run)", "", *environment()]
    raw: dict[str, Any] = {}
    n = args.calls

    # Server overhead per turn.
    lines += ["", "## Server overhead per turn (ms: p50 / p95 / p99, n = turns)", ""]
    lines += ["| hop | load | measured by | p50 / p95 / p99 | target p99 | result |", "|---|---|---|---|---|---|"]
    for key, label, limit in (("vb_1", "1 call", 10.0), ("vb_n", f"{n} calls", 25.0)):
        phase = ph.get(key)
        if phase is None:
            continue
        inside, owner = server_hops(bench.transcripts, [c["call_sid"] for c in phase.calls])
        traces = trace_turns(phase)
        outside = outside_hops(traces.values())
        agree = sum(1 for code, sid in owner.items() if code in traces and traces[code].call_sid == sid)
        raw[key] = {"inside": inside, "outside": outside, "pairing_agrees": [agree, len(owner)]}
        for hop in HOPS:
            for by, values in (("server (transcript)", inside[hop]), ("outside (" + OUTSIDE[hop] + ")", outside[hop])):
                lines.append(
                    f"| {hop} | {label} | {by} | {p3(values)} | ≤ {limit:.0f} | {verdict(pct(values, 99), limit)} |"
                )
        lat = caller_latency(phase)
        lines.append(f"| whole turn at the caller (speech end → first media) | {label} | caller | {p3(lat)} | | |")
        if owner:
            lines.append(
                f"| (outside traces matched to calls: {agree}/{len(owner)} agree with the transcripts) | | | | | |"
            )

    # Barge-in.
    if (phase := ph.get("vb_barge")) is not None:
        b = barge_ins(phase)
        srv = server_barge_lines(bench.server_log, [c["call_sid"] for c in phase.calls])
        raw["barge"] = vars(b) | {"server_since_onset_ms": srv}
        lines += ["", "## Barge-in reaction, 1 call (ms: p50 / p95 / p99)", ""]
        lines += ["| from caller speech onset to | p50 / p95 / p99 | target | result |", "|---|---|---|---|"]
        lines.append(
            f"| `clear` received by the caller | {p3(b.onset_to_clear)} | p95 ≤ 150 | "
            f"{verdict(pct(b.onset_to_clear, 95), 150)} |"
        )
        lines.append(f"| the server's own `since_speech_onset_ms` (VAD onset → clear sent) | {p3(srv)} | | |")
        lines.append(f"| old LLM stream closed (emulator `abort`) | {p3(b.onset_to_llm_abort)} | | |")
        lines.append(f"| last old TTS request closed (emulator `abort`) | {p3(b.onset_to_tts_abort)} | | |")
        lines.append(f"| barge-ins attempted / without a clear | {b.barges} / {b.missed_clear} | | |")

    # Cost.
    vb, relay, pc = ph.get("vb_n"), ph.get("relay_n"), ph.get("pc_n")
    lines += [
        "",
        f"## Cost at load (server pinned to core {SERVER_CORE}; callers and emulators on core {LOAD_CORE})",
        "",
    ]
    lines += ["| figure | value | target | result |", "|---|---|---|---|"]
    vb_cpm = cpu_per_call_minute(vb) if vb else None
    relay_cpm = cpu_per_call_minute(relay) if relay else None
    pc_cpm = cpu_per_call_minute(pc) if pc else None
    if vb is not None and vb.window is not None:
        w = vb.window
        lag_p99, lag_n = histogram_quantile(
            histogram(w.metrics0, "voicebot_event_loop_lag_seconds"),
            histogram(w.metrics1, "voicebot_event_loop_lag_seconds"),
            0.99,
        )
        rss_per_call = (w.rss_mib - w.rss_idle_mib) / max(w.live_calls, 1)
        span = max(w.t1 - w.t0, 1e-9)
        per_core = 60 / vb_cpm if vb_cpm else None
        raw["vb_n_window"] = {k: v for k, v in vars(w).items() if not k.startswith("metrics")}
        lines += [
            f"| calls live through the window / window | {w.live_calls} / {w.t1 - w.t0:.0f} s | {n} | |",
            f"| server CPU in the window | {w.cpu_s:.1f} CPU-s ({100 * w.cpu_s / (w.t1 - w.t0):.0f}% of a core) | | |",
            f"| noise: server runnable but waiting for its core / its core used by other processes | "
            f"{100 * w.run_delay_s / span:.0f}% / {100 * max(0.0, w.core_busy_s - w.cpu_s) / span:.0f}% of the window"
            " | ~0 | |",
            f"| CPU per call-minute | {fmt(vb_cpm, 3)} CPU-s | ≤ 0.2 | {verdict(vb_cpm, 0.2)} |",
            f"| calls per core (60 / CPU per call-minute) | {fmt(per_core, 0)} | ≥ 300 | "
            f"{verdict(per_core, 300, higher_is_better=True)} |",
            f"| bot turns per call-minute in the window | {fmt(turns_per_call_minute(vb))} | | |",
            f"| event-loop lag p99 (/metrics histogram, {lag_n} samples) | "
            f"{fmt(None if lag_p99 is None else lag_p99 * 1000)} ms | ≤ 20 ms | "
            f"{verdict(None if lag_p99 is None else lag_p99 * 1000, 20)} |",
            f"| RSS idle → with {w.live_calls} calls | {w.rss_idle_mib:.1f} → {w.rss_mib:.1f} MiB | | |",
            f"| RSS per added call | {rss_per_call:.2f} MiB | ≤ 1.5 MiB | {verdict(rss_per_call, 1.5)} |",
        ]
    if relay is not None and relay.window is not None:
        ratio = vb_cpm / relay_cpm if vb_cpm and relay_cpm else None
        rw = relay.window
        lines += [
            f"| floor relay: CPU per call-minute ({rw.live_calls} calls, {rw.t1 - rw.t0:.0f} s) | "
            f"{fmt(relay_cpm, 3)} CPU-s | | |",
            f"| floor relay: RSS per added call | {(rw.rss_mib - rw.rss_idle_mib) / max(rw.live_calls, 1):.2f} MiB |||",
            f"| voicebot CPU per call ÷ floor relay | {fmt(ratio, 2)}× | | |",
        ]
    if pc is not None and pc.window is not None:
        pw = pc.window
        ratio = pc_cpm / vb_cpm if vb_cpm and pc_cpm else None
        lines += [
            f"| Pipecat: CPU per call-minute ({pw.live_calls} calls, {pw.t1 - pw.t0:.0f} s) | {fmt(pc_cpm, 3)} CPU-s "
            f"({100 * pw.cpu_s / (pw.t1 - pw.t0):.0f}% of a core) | | |",
            f"| Pipecat: calls per core | {fmt(60 / pc_cpm if pc_cpm else None, 0)} | | |",
            f"| Pipecat: RSS idle → with {pw.live_calls} calls; per added call | {pw.rss_idle_mib:.1f} → "
            f"{pw.rss_mib:.1f} MiB; {(pw.rss_mib - pw.rss_idle_mib) / max(pw.live_calls, 1):.2f} MiB | | |",
            f"| Pipecat: bot turns per call-minute in the window | {fmt(turns_per_call_minute(pc))} | | |",
            f"| voicebot at the same {pw.live_calls} calls: CPU per call-minute | "
            f"{fmt(cpu_per_call_minute(vbm) if (vbm := ph.get('vb_m')) else None, 3)} CPU-s | | |",
            f"| voicebot calls per core ÷ Pipecat's (voicebot at {n} calls) | {fmt(ratio, 1)}× | ≥ 10× | "
            f"{verdict(ratio, 10, higher_is_better=True)} |",
        ]

    # Pipecat side by side.
    if (pc1 := ph.get("pc_1")) is not None and (vb1 := ph.get("vb_1")) is not None:
        lines += ["", "## Pipecat side by side, outside measures (ms: p50 / p95 / p99)", ""]
        lines += ["| hop | load | voicebot | Pipecat | Pipecat p50 ÷ voicebot p50 | lower for voicebot? |"]
        lines += ["|---|---|---|---|---|---|"]
        pairs = [("1 call", vb1, pc1)]
        if (vbm := ph.get("vb_m")) is not None and pc is not None:
            pairs.append((f"{args.pipecat_calls} calls each", vbm, pc))
        for label, a, b in pairs:
            oa, ob = outside_hops(trace_turns(a).values()), outside_hops(trace_turns(b).values())
            la, lb = caller_latency(a), caller_latency(b)
            raw[f"side_by_side_{label}"] = {"voicebot": oa, "pipecat": ob, "caller_vb": la, "caller_pc": lb}
            rows = [(OUTSIDE[h], oa[h], ob[h]) for h in HOPS]
            rows.append(("whole turn at the caller (speech end → first media)", la, lb))
            for name, va, vb_ in rows:
                ma, mb = pct(va, 50), pct(vb_, 50)
                ratio_s = fmt(mb / ma, 1) + "×" if ma and mb else "–"
                lines.append(
                    f"| {name} | {label} | {p3(va)} | {p3(vb_)} | {ratio_s} | "
                    f"{'yes' if ma is not None and mb is not None and ma < mb else 'no' if ma and mb else 'n/a'} |"
                )

    # Load generator health.
    lines += ["", "## Load generator health (if these lag, the figures above are pessimistic)", ""]
    lines += ["| phase | calls ok / placed | failures | callers CPU | callers lag p99 | emulators CPU | "
              "emulators lag p99 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for phase in ph.values():
        ok = sum(1 for c in phase.calls if c["ok"])
        failures = Counter(f.split(":")[0] + ":" + f.split(":")[1][:40] for c in phase.calls for f in c["failures"])
        top = "; ".join(f"{k} ×{v}" for k, v in failures.most_common(2)) or "none"
        lines.append(
            f"| {phase.name} | {ok} / {len(phase.calls)} | {top} | "
            f"{100 * phase.caller_cpu_s / max(phase.caller_wall_s, 1e-9):.0f}% | "
            f"{fmt(_ms(pct(phase.caller_lag_s, 99)))} ms | {phase.emulator_cpu_s:.0f} CPU-s total | "
            f"{fmt(_ms(pct(phase.emulator_lag_s, 99)))} ms |"
        )

    # Profile.
    if vb is not None and vb.window is not None and vb.window.profile:
        w = vb.window
        lines += ["", f"## Profile of the server at {n} calls (py-spy --native, {w.profile_total} busy samples)", ""]
        lines += ["Self time per Python function (time in C called from it is charged to it; idle left out):", ""]
        lines += ["| function (module) | % of busy samples |", "|---|---|"]
        lines += [f"| `{name}` | {100 * count / w.profile_total:.1f} |" for name, count in w.profile]
        lines += ["", "Native leaves (where the CPU itself was):", ""]
        lines += [f"- `{name}`: {100 * c / w.profile_total:.1f}%" for name, c in w.profile_native]

    lines += ["", *[f"- note: {note}" for note in bench.notes]]
    lines.append(f"- run took {time.monotonic() - started:.0f} s; raw data in {bench.args.out.parent}")
    return "\n".join(lines) + "\n", raw


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="longer windows and more samples (about 15 minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny windows: checks the harness, not the bot (1 min)")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls for the cost phase (default 100)")
    p.add_argument("--pipecat-calls", type=int, default=5, help="concurrent calls for Pipecat (default 5)")
    p.add_argument("--pipecat-turn", choices=["smart-turn", "speech-timeout"], default="smart-turn")
    p.add_argument("--skip-pipecat", action="store_true")
    p.add_argument("--spacing-s", type=float, default=0.05, help="between call starts")
    p.add_argument("--base-port", type=int, default=18711)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "results.md")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, transcripts, call data)")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        print("bench: needs 2 cores (server on one, load on the other)", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CORE)})  # this process mostly sleeps; keep it off the server's core
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="voicebot-bench-"))
    bench = Bench(args, work)
    bench.server_log = work / "voicebot.log"
    started = time.monotonic()
    limit = 3600.0 if args.full else 900.0
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(limit):
            await bench.run()
    except (Exception, TimeoutError) as exc:  # report what was measured before the failure
        failure = exc
        bench.notes.append(f"run stopped early: {type(exc).__name__}: {exc}")
    finally:
        await bench.procs.stop_all()
    text, raw = report(bench, started)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_bytes(orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS))
    for name in ("voicebot.log", "pipecat.log", "relay.log", "emulators.log"):
        if (work / name).exists():
            shutil.copy(work / name, args.out.parent / name)
    print(text)
    if args.keep:
        print(f"bench: work directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failure is not None:
        raise failure
    return 0


def main() -> None:
    sys.exit(asyncio.run(amain(parse_args())))


if __name__ == "__main__":
    main()
