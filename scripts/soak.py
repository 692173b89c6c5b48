"""Soak and leak check: N concurrent simulated calls for M minutes against the emulators.

    python scripts/soak.py --calls 20 --minutes 5
    python scripts/soak.py --calls 20 --minutes 5 --tracemalloc build/mem   # what the server holds, by site

Starts the emulators and the bot as separate processes (127.0.0.1 only), keeps N calls going (each call: the
greeting, then a question every few seconds, then a hang-up; a new call starts when one ends) until the time is
up, and reports calls completed, errors, the server's RSS over time, and its asyncio tasks and open file
descriptors at the baseline (after one warm-up call), after the soak, and after a second, shorter round (a leak
shows as growth between the two rounds). Prints one JSON object last; exit status 1 if any call failed or
anything leaked. ``rss_last_half_drift_pct`` is the largest distance of the RSS in the second half of the main
round from its value at the half (a flat line is near 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from voicebot.caller import HangUp, Say, SimulatedCaller, WaitForBotAudio, WaitForBotSilence
from voicebot.caller.script import Step

REPO = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://soak.voicebot.test"
AUTH_TOKEN = "soak-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
STARTUP_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 5.0
SAMPLES_PER_ROUND = 40
"""A short round samples more often (every ``seconds / SAMPLES_PER_ROUND``, at most every SAMPLE_EVERY_S)."""
SNAPSHOT_TIMEOUT_S = 120.0
TOP_SITES = 12
SETTLE_S = 2.0
FD_SLACK = 2
"""Pooled keep-alive connections to the providers may differ by one or two between two idle moments."""
CLIPS = ("hours", "question")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    async with http.get(base + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def _wait_up(http: aiohttp.ClientSession, url: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status < 500:  # anything that answers HTTP is up (the emulators have no /healthz)
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        await asyncio.sleep(0.2)


def _script(turns: int) -> list[Step]:
    steps: list[Step] = [WaitForBotAudio(15), WaitForBotSilence(15, quiet_ms=300)]
    for i in range(turns):
        steps += [Say(CLIPS[i % len(CLIPS)]), WaitForBotAudio(15), WaitForBotSilence(15, quiet_ms=300)]
    return [*steps, HangUp()]


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


async def _caller_loop(base: str, until: float, turns: int, tally: Tally) -> None:
    while time.monotonic() < until:
        caller = SimulatedCaller(base, _script(turns), auth_token=AUTH_TOKEN, public_url=PUBLIC_URL)
        result = await caller.run(timeout=30 + 15 * turns)
        if result.ok and result.ended_by == "hangup":
            tally.completed += 1
        else:
            tally.failed += 1
            tally.failures.append(f"{result.ended_by}: {'; '.join(result.failures)[:200]}")


async def _round(base: str, calls: int, seconds: float, turns: int) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    async with asyncio.TaskGroup() as tg:
        for i in range(calls):
            tg.create_task(_start_later(i * 0.2, _caller_loop(base, until, turns, tally)))
    return tally


async def _start_later(delay: float, coro: Any) -> None:
    await asyncio.sleep(delay)  # stagger the calls, as real traffic is
    await coro


def rss_last_half_drift_pct(samples: list[tuple[float, float]]) -> float | None:
    """Largest |RSS - RSS at the half| over the second half of the samples, in % of RSS at the half."""
    if len(samples) < 4:
        return None
    half_t = samples[-1][0] / 2
    later = [rss for t, rss in samples if t >= half_t]
    return round(100 * max(abs(r - later[0]) for r in later) / later[0], 2)


class Snapshots:
    """Asks the server (run by scripts/memtrace.py) for tracemalloc snapshots and compares them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.taken: list[str] = []

    async def take(self, pid: int, label: str) -> None:
        path = self.out / f"snap-{len(self.taken)}.txt"
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no snapshot {path}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the .tracemalloc file is written before the .txt
        self.taken.append(label)

    def report(self) -> list[dict[str, Any]]:
        out = []
        for i in range(1, len(self.taken)):
            if not (self.out / f"snap-{i}.tracemalloc").exists():  # MEMTRACE_TRIM=1: figures only
                out.append({"to": self.taken[i], "figures": (self.out / f"snap-{i}.txt").read_text().strip()})
                continue
            before = tracemalloc.Snapshot.load(str(self.out / f"snap-{i - 1}.tracemalloc"))
            after = tracemalloc.Snapshot.load(str(self.out / f"snap-{i}.tracemalloc"))
            diff = after.compare_to(before, "traceback")
            out.append({
                "from": self.taken[i - 1], "to": self.taken[i],
                "traced": [(self.out / f"snap-{k}.txt").read_text().strip() for k in (i - 1, i)],
                "grew_kib": round(sum(d.size_diff for d in diff) / 1024, 1),
                "top": [{"kib": round(d.size_diff / 1024, 1), "count": d.count_diff,
                         "where": [f"{f.filename}:{f.lineno}" for f in d.traceback][-6:]}
                        for d in diff[:TOP_SITES]],
            })  # fmt: skip
        return out


async def soak(
    calls: int, seconds: float, turns: int, trace: Path | None = None, server_env: dict[str, str] | None = None
) -> dict[str, Any]:
    emu_port, bot_port = _free_port(), _free_port()
    emu = f"http://127.0.0.1:{emu_port}"
    base = f"http://127.0.0.1:{bot_port}"
    with tempfile.TemporaryDirectory(prefix="voicebot-soak-") as tmp:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DEEPGRAM_API_KEY": "soak",
            "OPENAI_API_KEY": "soak",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "DEEPGRAM_BASE_URL": emu,
            "OPENAI_BASE_URL": emu + "/v1",
            "TWILIO_API_BASE_URL": emu,
            "VOICEBOT_PORT": str(bot_port),
            "VOICEBOT_PUBLIC_URL": PUBLIC_URL,
            "VOICEBOT_LOG_LEVEL": "warning",
            "VOICEBOT_LOG_FORMAT": "json",
            "VOICEBOT_TRANSCRIPT_DIR": tmp,
            "VOICEBOT_MAX_CALLS": str(calls * 2 + 10),
        }
        bot_env = {**env, **(server_env or {})}
        emulator_args = [sys.executable, "-m", "voicebot.emulators", "--port", str(emu_port), "--quiet", "--fast"]
        emulator_args += ["--tts-bytes-per-second", "16000", "--llm-tokens-per-second", "50"]
        bot_args = [sys.executable, "-m", "voicebot"]
        snaps = None
        if trace is not None:
            bot_args = [sys.executable, str(REPO / "scripts" / "memtrace.py"), str(trace)]
            snaps = Snapshots(trace)
        with (
            _process(emulator_args, env),
            _process(bot_args, bot_env) as bot,
        ):
            async with aiohttp.ClientSession() as http:
                await _wait_up(http, emu + "/healthz")
                await _wait_up(http, base + "/healthz", STARTUP_TIMEOUT_S * (4 if trace else 1))  # tracemalloc: slow
                warm = await _round(base, 1, 0.1, 1)  # one call: pools and caches warm, then the baseline
                await asyncio.sleep(SETTLE_S)
                baseline = {
                    "rss_mib": round(_rss_mib(bot.pid), 1),
                    "fds": _fds(bot.pid),
                    "tasks": await _metric(http, base, "voicebot_asyncio_tasks"),
                }
                if snaps is not None:
                    await snaps.take(bot.pid, "baseline")
                samples: list[tuple[float, float]] = []
                started = time.monotonic()

                async def sample() -> None:
                    while True:
                        samples.append((round(time.monotonic() - started, 1), round(_rss_mib(bot.pid), 1)))
                        await asyncio.sleep(min(SAMPLE_EVERY_S, seconds / SAMPLES_PER_ROUND))

                sampler = asyncio.ensure_future(sample())
                try:
                    main = await _round(base, calls, seconds, turns)
                finally:
                    sampler.cancel()
                await asyncio.sleep(SETTLE_S)
                after = {
                    "rss_mib": round(_rss_mib(bot.pid), 1),
                    "fds": _fds(bot.pid),
                    "tasks": await _metric(http, base, "voicebot_asyncio_tasks"),
                    "active_calls": await _metric(http, base, "voicebot_active_calls"),
                }
                if snaps is not None:
                    await snaps.take(bot.pid, "after")
                second = await _round(base, calls, min(seconds, 20.0), turns)
                await asyncio.sleep(SETTLE_S)
                after_second = {
                    "rss_mib": round(_rss_mib(bot.pid), 1),
                    "fds": _fds(bot.pid),
                    "tasks": await _metric(http, base, "voicebot_asyncio_tasks"),
                    "active_calls": await _metric(http, base, "voicebot_active_calls"),
                }
                if snaps is not None:
                    await snaps.take(bot.pid, "after_second_round")
    leaked = (
        after["tasks"] != baseline["tasks"]
        or after_second["tasks"] != baseline["tasks"]
        or after_second["fds"] > after["fds"] + FD_SLACK
        or after["active_calls"] != 0
        or after_second["active_calls"] != 0
    )
    return {
        "calls": calls,
        "seconds": seconds,
        "completed": main.completed + second.completed + warm.completed,
        "errors": main.failed + second.failed + warm.failed,
        "failures": (warm.failures + main.failures + second.failures)[:10],
        "baseline": baseline,
        "after": after,
        "after_second_round": after_second,
        "rss_mib_over_time": samples,
        "rss_last_half_drift_pct": rss_last_half_drift_pct(samples),
        "leaked": leaked,
        "tracemalloc": snaps.report() if snaps is not None else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the main round (default 2)")
    parser.add_argument("--turns", type=int, default=2, help="questions per call (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tracemalloc", type=Path, help="run the server under tracemalloc, snapshots in this folder")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server only; repeatable")  # fmt: skip
    args = parser.parse_args()
    random.seed(args.seed)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    report = asyncio.run(soak(args.calls, args.minutes * 60, args.turns, args.tracemalloc, server_env))
    keys = ("calls", "seconds", "completed", "errors", "baseline", "after", "after_second_round", "leaked",
            "rss_last_half_drift_pct")  # fmt: skip
    for key in keys:
        print(f"{key:>20}: {report[key]}")
    print(orjson.dumps(report).decode())
    return 1 if report["errors"] or report["leaked"] else 0


if __name__ == "__main__":
    sys.exit(main())
