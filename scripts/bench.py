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

This file runs the phases; the rest of the harness, each readable on its own: ``bench_procs.py`` (child processes,
/proc figures, ports), ``bench_analysis.py`` (a phase's events → hops, barge-ins, percentiles, profile),
``bench_report.py`` (the Markdown and JSON), ``bench_load.py`` (emulators and callers), ``bench_relay.py`` (the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_analysis import Phase, Window, cpu_split, live_through, pct, top_functions
from bench_procs import (
    LOAD_CORE,
    ROOT,
    SERVER_CORE,
    Procs,
    core_busy_s,
    cpu_seconds,
    http_json,
    http_text,
    pick_ports,
    run_delay_s,
    tree_cpu_seconds,
    tree_rss_mib,
    wait_http,
)
from bench_report import report

PY = str(ROOT / ".venv" / "bin" / "python")
PIPECAT_PY = ROOT / ".venv-pipecat" / "bin" / "python"
PYSPY = ROOT / ".venv" / "bin" / "py-spy"
LOAD = str(ROOT / "scripts" / "bench_load.py")
AUTH_TOKEN = "bench-token"
ACCOUNT_SID = "AC" + "0" * 32
STARTUP_TIMEOUT_S = 60.0
LIVE_TIMEOUT_S = 60.0
RSS_SAMPLES = 3

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


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.timing = FULL if args.full else SMOKE if args.smoke else DEFAULT
        self.procs = Procs(work)
        emu, vb, relay, pc, base = pick_ports(args.base_port, 5)
        self.emu_url = f"http://127.0.0.1:{emu}"
        self.emu_port = emu
        self.ports = {"voicebot": vb, "relay": relay, "pipecat": pc, "base": base}
        self.transcripts = work / "transcripts"
        self.transcripts_base = work / "transcripts-base"
        self.phases: dict[str, Phase] = {}
        self.server_log = work / "voicebot.log"
        self.notes: list[str] = []
        self.perf_runs = 0

    # --- servers ---

    async def start_emulators(self) -> None:
        argv = [PY, LOAD, "emulators", "--port", str(self.emu_port), "--max-s", "3600"]
        await self.procs.start("emulators", argv, LOAD_CORE)
        await wait_http(f"{self.emu_url}/bench/events", lambda s, _: s == 200, STARTUP_TIMEOUT_S)

    async def start_server(self, kind: str, *, turns: bool = False) -> asyncio.subprocess.Process:
        port = self.ports[kind]
        public = f"https://127.0.0.1:{port}"
        if kind in ("voicebot", "base"):
            env = {
                "DEEPGRAM_API_KEY": "bench", "OPENAI_API_KEY": "bench",
                "DEEPGRAM_BASE_URL": self.emu_url, "OPENAI_BASE_URL": f"{self.emu_url}/v1",
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": self.emu_url,
                "VOICEBOT_PORT": str(port), "VOICEBOT_PUBLIC_URL": public, "VOICEBOT_MAX_CALLS": "2000",
                "VOICEBOT_TRANSCRIPT_DIR": str(self.transcripts), "VOICEBOT_LOG_FORMAT": "json",
                # info, not warning: the barge-in phase reads the server's barge_in_clear lines (a few per call).
                "VOICEBOT_LOG_LEVEL": "info",
            }  # fmt: skip
            env |= env_pairs(getattr(self.args, "server_env", []))  # bench_voices.py's args have none
            cwd = ROOT
            if kind == "base":  # the same server from another source tree, for before/after in one run
                cwd = self.args.baseline.resolve()
                env |= {"PYTHONPATH": str(cwd), "VOICEBOT_TRANSCRIPT_DIR": str(self.transcripts_base)}
                env |= env_pairs(self.args.baseline_env)
            argv, core = [self.python(kind), "-m", "voicebot"], SERVER_CORE
            workers = getattr(self.args, "server_workers", 1)  # bench_voices.py builds its own args
            if workers > 1:  # the whole machine: calls per machine, not per core
                argv, core = [*argv, "--workers", str(workers)], f"{SERVER_CORE},{LOAD_CORE}"
            proc = await self.procs.start(kind, argv, core, env, cwd=cwd)
            await wait_http(f"http://127.0.0.1:{port}/healthz", lambda s, t: s == 200 and '"ok"' in t, 60)
            await asyncio.sleep(1.0)  # the fixed phrases are synthesised at startup
        elif kind == "relay":
            argv = [self.python(kind), str(ROOT / "scripts" / "bench_relay.py"), "--port", str(port), "--emulator-url",
                    self.emu_url, "--public-url", public,
                    "--batch-frames", str(self.args.relay_batch_frames)]  # fmt: skip
            if turns:
                argv.append("--turns")
            proc = await self.procs.start("relay", argv, SERVER_CORE)
        else:
            argv = [str(PIPECAT_PY), str(ROOT / "scripts" / "pipecat_bot.py"), "--port", str(port),
                    "--emulator-url", self.emu_url, "--public-url", public, "--log-level", "WARNING",
                    "--turn", self.args.pipecat_turn]  # fmt: skip
            proc = await self.procs.start("pipecat", argv, SERVER_CORE)
        if kind not in ("voicebot", "base"):
            await wait_http(f"http://127.0.0.1:{port}/voice", lambda s, _: s in (200, 405), STARTUP_TIMEOUT_S)
        return proc

    def python(self, kind: str) -> str:
        """The interpreter for a server under test: ``--server-python`` (the relays' too, so that the ratio compares
        like with like), ``--baseline-python`` for the base server; .venv's by default."""
        server = getattr(self.args, "server_python", None)  # bench_voices.py's args have none
        if kind == "base" and getattr(self.args, "baseline_python", None) is not None:
            return str(self.args.baseline_python)
        return str(server) if server is not None else PY

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
        await http_json("GET", f"{self.emu_url}/bench/events")  # start this phase's event log afresh
        window = None
        if measure is not None:
            window = Window(rss_idle_mib=tree_rss_mib(server.pid))
        procs = self.caller_processes(calls)
        started = []
        for i in range(procs):
            share = calls // procs + (1 if i < calls % procs else 0)
            out = self.work / f"{name}.{i}.calls.json"
            argv = [PY, LOAD, "callers", "--server", f"http://127.0.0.1:{port}", "--public-url",
                    f"https://127.0.0.1:{port}", "--calls", str(share), "--duration-s", str(duration_s),
                    "--spacing-s", str(self.args.spacing_s * procs), "--offset-s", str(self.args.spacing_s * i),
                    "--script", script, "--out", str(out)]  # fmt: skip
            if kind in ("voicebot", "base"):
                argv += ["--auth-token", AUTH_TOKEN]
            started.append((out, await self.procs.start(f"callers-{name}-{i}", argv, LOAD_CORE, stdout=True)))
        print(f"bench: {name}: {calls} call(s) of {duration_s:.0f} s ({script}) against {kind}, {procs} caller "
              f"process(es)", file=sys.stderr)  # fmt: skip
        if measure is not None and window is not None:
            async with asyncio.timeout(LIVE_TIMEOUT_S + calls * self.args.spacing_s):
                for _, callers in started:
                    assert callers.stdout is not None
                    while not (line := await callers.stdout.readline()).startswith(b"LIVE"):
                        if not line:
                            raise RuntimeError(f"{name}: the callers exited before all calls were live")
            await self.measure(kind, server.pid, window, measure, profile)
        results = []
        async with asyncio.timeout(duration_s + calls * self.args.spacing_s + 60):
            for i, (out, callers) in enumerate(started):
                await callers.communicate()
                self.procs.running.pop(f"callers-{name}-{i}", None)
                results.append(orjson.loads(out.read_bytes()))
        emu = await http_json("GET", f"{self.emu_url}/bench/events")
        phase = Phase(
            name=name, calls=[c for r in results for c in r["calls"]], events=emu["events"],
            caller_lag_s=[x for r in results for x in r["lag_s"]], caller_cpu_s=sum(r["cpu_s"] for r in results),
            caller_wall_s=max(r["wall_s"] for r in results), emulator_lag_s=emu["lag_s"], emulator_cpu_s=emu["cpu_s"],
            errors=[e for r in results for e in r["errors"]], window=window,
            caller_procs=[(r["cpu_s"] / max(r["wall_s"], 1e-9), pct(r["lag_s"], 99)) for r in results],
        )  # fmt: skip
        if window is not None:
            window.live_calls = sum(1 for c in phase.calls if live_through(c, window.t0, window.t1))
        self.phases[name] = phase
        return phase

    def caller_processes(self, calls: int) -> int:
        """Callers are spread over processes, ``--calls-per-process`` each, so that no caller loop lags."""
        return max(1, -(-calls // self.args.calls_per_process))

    async def measure(self, kind: str, pid: int, window: Window, timing: Timing, profile: bool) -> None:
        await asyncio.sleep(timing.settle_s)
        metrics_url = f"http://127.0.0.1:{self.ports[kind]}/metrics"
        if kind in ("voicebot", "base"):
            window.metrics0 = await http_text(metrics_url)
        window.t0, cpu0 = time.monotonic(), tree_cpu_seconds(pid)
        delay0, busy0, load0 = run_delay_s(pid), core_busy_s(SERVER_CORE), core_busy_s(LOAD_CORE)
        gen = [p.pid for name, p in self.procs.running.items() if name.startswith(("callers-", "emulators"))]
        gen0 = sum(cpu_seconds(g) for g in gen)
        # bench_voices.py's args have neither option; the split is reported for --cost-rounds only
        split = getattr(self.args, "perf", False) and getattr(self.args, "cost_rounds", 0)
        perf = await self.perf_start(pid, timing.window_s) if split else None
        rss = []
        for _ in range(RSS_SAMPLES):
            await asyncio.sleep(timing.window_s / RSS_SAMPLES)
            rss.append(tree_rss_mib(pid))
        window.t1, cpu1 = time.monotonic(), tree_cpu_seconds(pid)
        if perf is not None:
            window.cpu_split = await self.perf_split(*perf)
        window.cpu_s = cpu1 - cpu0
        window.run_delay_s = run_delay_s(pid) - delay0
        window.core_busy_s = core_busy_s(SERVER_CORE) - busy0
        window.load_core_busy_s = core_busy_s(LOAD_CORE) - load0
        window.load_gen_cpu_s = sum(cpu_seconds(g) for g in gen) - gen0
        window.rss_mib = sorted(rss)[len(rss) // 2]
        if kind in ("voicebot", "base"):
            window.metrics1 = await http_text(metrics_url)
        if profile:
            await self.profile(kind, pid, window, timing.profile_s)

    async def perf_start(self, pid: int, seconds: float) -> tuple[asyncio.subprocess.Process, Path] | None:
        """``perf record`` on the server for the CPU window, sampling its CPU clock without stopping it (unlike
        ``py-spy --native``, which pauses the process at each sample and so over-weights its system calls)."""
        if shutil.which("perf") is None:
            note = "perf not installed (apt-get install linux-perf): no --perf split"
            if note not in self.notes:
                self.notes.append(note)
            return None
        self.perf_runs += 1
        data = self.work / f"perf-{self.perf_runs}.data"
        argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-p", str(pid), "-o", str(data), "--",
                "sleep", f"{seconds:.1f}"]  # fmt: skip
        return await self.procs.start(f"perf-{self.perf_runs}", argv, LOAD_CORE), data

    async def perf_split(self, proc: asyncio.subprocess.Process, data: Path) -> dict[str, float]:
        async with asyncio.timeout(60):
            await proc.wait()
        report = await asyncio.create_subprocess_exec(
            "perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await report.communicate()
        split = cpu_split(out.decode(errors="replace"))
        if not split:
            self.notes.append(f"perf recorded nothing in {data.name} (exit {proc.returncode})")
        return split

    async def profile(self, kind: str, pid: int, window: Window, seconds: float) -> None:
        """py-spy on the loaded server, after the CPU window (sampling pauses the process)."""
        if not PYSPY.exists():
            self.notes.append("py-spy not installed in .venv: no profile (`.venv/bin/pip install py-spy`)")
            return
        raw = self.work / ("profile.txt" if kind == "voicebot" else f"profile-{kind}.txt")
        argv = [str(PYSPY), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw",
                "--native", "-o", str(raw)]  # fmt: skip
        window.profile_start, window.profile_start_wall = time.monotonic(), time.time()
        proc = await self.procs.start("py-spy", argv, LOAD_CORE)
        async with asyncio.timeout(seconds + 30):
            await proc.wait()
        self.procs.running.pop("py-spy", None)
        if not raw.exists():
            self.notes.append(f"py-spy failed (exit {proc.returncode}); see {self.work / 'py-spy.log'}")
            return
        shutil.copy(raw, self.args.out.parent / raw.name)
        window.profile, window.profile_native, window.profile_total = top_functions(raw.read_text())

    # --- the whole run ---

    async def run(self) -> None:
        if self.args.sweep:
            await self.run_sweep()
            return
        if self.args.cost_rounds:
            await self.run_cost_rounds()
            return
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
        await self.relays(n, "talk")
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

    async def run_sweep(self) -> None:
        """voicebot at each N of ``--sweep-calls`` (the same talk script and provider latency), then the floor relay
        at ``--calls``; the server profiled at ``--calls``."""
        t = self.timing
        await self.start_emulators()
        await self.start_server("voicebot")
        if self.args.baseline:
            await self.start_server("base")  # idle while the other runs (0.2 % of a core)
        loaded = {**LOADED, "tts_chunk_bytes": self.args.tts_chunk_bytes}
        await self.configure(loaded)
        base_chunk = self.args.baseline_tts_chunk_bytes
        script = self.args.sweep_script
        for n in self.args.sweep_calls:
            profile = n == self.args.calls
            duration = n * self.args.spacing_s + t.settle_s + t.window_s + (t.profile_s if profile else 0) + 3
            if self.args.baseline:
                if base_chunk is not None:
                    await self.configure({**loaded, "tts_chunk_bytes": base_chunk})
                await self.run_phase(f"base_{n}", "base", calls=n, script=script, duration_s=duration, measure=t,
                                     profile=profile)  # fmt: skip
            if base_chunk is not None:
                await self.configure(loaded)
            await self.run_phase(f"sweep_{n}", "voicebot", calls=n, script=script, duration_s=duration, measure=t,
                                 profile=profile)  # fmt: skip
        await self.procs.stop("voicebot")
        await self.procs.stop("base")
        if self.args.skip_relay:
            return
        await self.relays(self.args.calls, script)

    async def run_cost_rounds(self) -> None:
        """voicebot and the answering relay at ``--calls``, ``--cost-rounds`` times each, in ABBA order (voicebot
        first in odd rounds, the relay first in even ones), so that a drift of the shared machine falls on both: the
        ratio per round and its median, instead of one window of each."""
        t = self.timing
        n, script = self.args.calls, self.args.sweep_script
        await self.start_emulators()
        await self.start_server("voicebot")
        await self.start_server("relay", turns=script == "talk")  # both idle-waiting while the other runs
        await self.configure({**LOADED, "tts_chunk_bytes": self.args.tts_chunk_bytes})
        duration = n * self.args.spacing_s + t.settle_s + t.window_s + 3
        for r in range(1, self.args.cost_rounds + 1):
            order = (("cost_vb", "voicebot"), ("cost_relay", "relay"))
            for name, kind in order if r % 2 else order[::-1]:
                await self.run_phase(f"{name}_{r}", kind, calls=n, script=script, duration_s=duration, measure=t)

    async def relays(self, n: int, script: str) -> None:
        """The floor relay at ``n`` calls: listening only (``relay_n``), then, for a script in which the callers
        talk, also answering them (``relay_turns_n``, the floor for the same conversation as the bot's)."""
        t = self.timing
        duration_s = n * self.args.spacing_s + t.settle_s + t.window_s + 3
        for phase, turns in (("relay_n", False), ("relay_turns_n", True)):
            if turns and (script == "listen" or self.args.relay_no_turns):
                continue
            await self.start_server("relay", turns=turns)
            await self.run_phase(phase, "relay", calls=n, script=script, duration_s=duration_s, measure=t)
            await self.procs.stop("relay")


# --- main ---------------------------------------------------------------------------------------------------


SWEEP = (1, 10, 25, 50, 100, 150)


def env_pairs(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict."""
    return dict(item.split("=", 1) for item in items)


def parse_calls(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="longer windows and more samples (about 15 minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny windows: checks the harness, not the bot (1 min)")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls for the cost phase (default 100)")
    p.add_argument("--pipecat-calls", type=int, default=5, help="concurrent calls for Pipecat (default 5)")
    p.add_argument("--pipecat-turn", choices=["smart-turn", "speech-timeout"], default="smart-turn")
    p.add_argument("--skip-pipecat", action="store_true")
    p.add_argument("--spacing-s", type=float, default=0.05, help="between call starts")
    p.add_argument(
        "--sweep", action="store_true", help="the load sweep: voicebot at each --sweep-calls, then the relay"
    )
    p.add_argument(
        "--sweep-calls", type=parse_calls, default=SWEEP, help="comma-separated (default 1,10,25,50,100,150)"
    )
    p.add_argument("--baseline", type=Path, help="with --sweep: also run the server from this source tree, per N")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set this in the environment of every voicebot server of the run (--baseline-env overrides it)",
    )
    p.add_argument(
        "--sweep-script",
        choices=["talk", "listen"],
        default="talk",
        help="with --sweep: the callers' script (listen: silent after the greeting, the per-frame cost)",
    )
    p.add_argument(
        "--tts-chunk-bytes",
        type=int,
        default=800,
        help="with --sweep: the TTS emulator's read size (800: 100 ms of audio, a read each)",
    )
    p.add_argument(
        "--baseline-tts-chunk-bytes",
        type=int,
        help="with --baseline: the TTS emulator's read size during the base server's phases",
    )
    p.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --baseline: set this in the base server's environment (e.g. the main tree with "
        "another setting: --baseline . --baseline-env DEEPGRAM_TTS_TRANSPORT=websocket)",
    )
    p.add_argument(
        "--server-python",
        type=Path,
        help="the interpreter of the servers under test, voicebot's and the relays' (a venv's python with voicebot "
        "installed, e.g. one made from the distro's python3 as deploy/install.sh does: `make bench-venv`)",
    )
    p.add_argument(
        "--baseline-python",
        type=Path,
        help="with --baseline: the base server's interpreter (default --server-python's); "
        "`--baseline . --baseline-python .venv/bin/python` compares two interpreters on one tree",
    )
    p.add_argument(
        "--cost-rounds",
        type=int,
        default=0,
        metavar="R",
        help="only the cost: voicebot and the answering relay at --calls, R windows each in ABBA order, the ratio "
        "per round and its median (--sweep-script listen: the listening relay)",
    )
    p.add_argument(
        "--perf",
        action="store_true",
        help="with --cost-rounds: `perf record` each server in its CPU window, and split its CPU into the "
        "interpreter, the kernel, the event loop's C and other C (needs perf)",
    )
    p.add_argument("--skip-relay", action="store_true", help="with --sweep: no floor relay phase")
    p.add_argument("--relay-batch-frames", type=int, default=3, help="20 ms frames per STT message in the floor relay")
    p.add_argument("--relay-no-turns", action="store_true", help="no answering relay phase (relay_turns_n)")
    p.add_argument("--server-workers", type=int, default=1, help="voicebot --workers N, on both cores")
    p.add_argument("--calls-per-process", type=int, default=25, help="simulated callers per load process")
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
