"""The benchmark's Markdown report (and raw JSON numbers) from the phases it ran."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_analysis import (
    CODE_KINDS,
    HOPS,
    OUTSIDE,
    Phase,
    Window,
    barge_ins,
    caller_latency,
    counter_total,
    emulator_legs,
    histogram,
    histogram_merged,
    histogram_quantile,
    outside_hops,
    pct,
    server_barge_lines,
    server_hops,
    server_log_events,
    trace_turns,
    turn_cutoff,
)
from bench_procs import LOAD_CORE, SERVER_CORE

if TYPE_CHECKING:
    from bench import Bench


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


INTERPRETER = (
    "import platform, sys, sysconfig; a = sysconfig.get_config_var('CONFIG_ARGS') or ''; "
    "maps = open('/proc/self/maps').read(); "
    "print(platform.python_implementation(), platform.python_version(), 'from', sys.base_prefix + ';', "
    "'libpython shared' if 'libpython' in maps else 'libpython static', "
    "'(configured with --enable-optimizations)' if '--enable-optimizations' in a else '')"
)
"""Which CPython runs a server, and how it is built: the bot costs 7-13 % more CPU on a plain pyenv build (no
profile-guided optimisation, libpython shared) than on the distro's python3 that deploy/install.sh installs, a
pure-Python loop 20 % more (BENCHMARKS.md, Round 6)."""


def interpreter(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", INTERPRETER], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{python}: unknown ({type(exc).__name__})"
    return f"{python}: {out.stdout.strip()}"


def report(bench: Bench, started: float) -> tuple[str, dict[str, Any]]:
    args, ph = bench.args, bench.phases
    lines = [f"# voicebot benchmark ({'full' if args.full else 'default'} run)", "", *environment()]
    servers = {"voicebot and the relays": bench.python("voicebot")}
    if getattr(args, "baseline", None) is not None:
        servers["the baseline server"] = bench.python("base")
    lines += [f"- interpreter of {who}: {interpreter(py)}" for who, py in servers.items()]
    raw: dict[str, Any] = {}
    n = args.calls

    # Server overhead per turn.
    lines += ["", "## Server overhead per turn (ms: p50 / p95 / p99, n = turns)", ""]
    lines += ["| hop | load | measured by | p50 / p95 / p99 | target p99 | result |", "|---|---|---|---|---|---|"]
    for key, label, limit in (("vb_1", "1 call", 10.0), ("vb_n", f"{n} calls", 25.0)):
        phase = ph.get(key)
        if phase is None:
            continue
        inside, owner = server_hops(bench.transcripts, [c["call_sid"] for c in phase.calls], turn_cutoff(phase)[1])
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
    vb, relay, pc = ph.get("vb_n") or ph.get(f"sweep_{n}"), ph.get("relay_n"), ph.get("pc_n")
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
            f"| floor relay, listening only: CPU per call-minute ({rw.live_calls} calls, {rw.t1 - rw.t0:.0f} s) | "
            f"{fmt(relay_cpm, 3)} CPU-s | | |",
            f"| floor relay: RSS per added call | {(rw.rss_mib - rw.rss_idle_mib) / max(rw.live_calls, 1):.2f} MiB |||",
            f"| voicebot CPU per call ÷ floor relay (listening only) | {fmt(ratio, 2)}× | | |",
        ]
    answering = ph.get("relay_turns_n")
    if answering is not None and answering.window is not None:
        answering_cpm = cpu_per_call_minute(answering)
        ratio = vb_cpm / answering_cpm if vb_cpm and answering_cpm else None
        aw = answering.window
        lines += [
            f"| floor relay, answering (LLM, TTS, media out): CPU per call-minute ({aw.live_calls} calls, "
            f"{aw.t1 - aw.t0:.0f} s) | {fmt(answering_cpm, 3)} CPU-s | | |",
            f"| answering relay: bot turns per call-minute in the window | {fmt(turns_per_call_minute(answering))} |||",
            f"| voicebot CPU per call ÷ answering floor relay (the same conversation) | {fmt(ratio, 2)}× | ≤ 1.3× | "
            f"{verdict(ratio, 1.3)} |",
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

    # The load sweep.
    sweep_lines, raw["sweep"] = sweep_section(bench)
    lines += sweep_lines
    rounds_lines, raw["cost_rounds"] = cost_rounds_section(bench)
    lines += rounds_lines

    # Load generator health.
    lines += ["", "## Load generator health (if these lag, the figures above are pessimistic)", ""]
    lines += ["| phase | calls ok / placed | failures | callers CPU | callers lag p99 | emulators CPU | "
              "emulators lag p99 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    raw["health"] = {}
    for phase in ph.values():
        ok = sum(1 for c in phase.calls if c["ok"])
        failures = Counter(f.split(":")[0] + ":" + f.split(":")[1][:40] for c in phase.calls for f in c["failures"])
        greeted = sum(1 for c in phase.calls if c["first_media"] is not None)  # heard the server's audio at all
        raw["health"][phase.name] = {
            "ok": ok,
            "placed": len(phase.calls),
            "greeted": greeted,
            "failures": dict(failures),
        }
        top = "; ".join(f"{k} ×{v}" for k, v in failures.most_common(2)) or "none"
        lines.append(
            f"| {phase.name} | {ok} / {len(phase.calls)} | {top} | "
            f"{100 * phase.caller_cpu_s / max(phase.caller_wall_s, 1e-9):.0f}% | "
            f"{fmt(_ms(pct(phase.caller_lag_s, 99)))} ms | {phase.emulator_cpu_s:.0f} CPU-s total | "
            f"{fmt(_ms(pct(phase.emulator_lag_s, 99)))} ms |"
        )

    # Profiles.
    for phase in ph.values():
        w = phase.window
        if w is None or not w.profile:
            continue
        lines += ["", f"## Profile: {phase.name}, {len(phase.calls)} calls (py-spy --native, {w.profile_total} busy "
                  "samples)", ""]  # fmt: skip
        lines += ["Self time per Python function (time in C called from it is charged to it; idle left out):", ""]
        lines += ["| function (module) | % of busy samples |", "|---|---|"]
        lines += [f"| `{name}` | {100 * count / w.profile_total:.1f} |" for name, count in w.profile]
        lines += ["", "Native leaves (where the CPU itself was):", ""]
        lines += [f"- `{name}`: {100 * c / w.profile_total:.1f}%" for name, c in w.profile_native]

    lines += ["", *[f"- note: {note}" for note in bench.notes]]
    lines.append(f"- run took {time.monotonic() - started:.0f} s; raw data in {bench.args.out.parent}")
    return "\n".join(lines) + "\n", raw


def busy(w: Window, field: str) -> float:
    """A core's busy share in the window, in per cent (``core_busy_s``: the server's core; ``load_core_busy_s``)."""
    return 100 * getattr(w, field) / max(w.t1 - w.t0, 1e-9)


def cost_rounds_section(bench: Bench) -> tuple[list[str], list[dict[str, Any]]]:
    """``--cost-rounds``: voicebot's CPU per call-minute against the relay's, round by round, and the median ratio."""
    rows: list[dict[str, Any]] = []
    for r in range(1, getattr(bench.args, "cost_rounds", 0) + 1):
        vb, relay = bench.phases.get(f"cost_vb_{r}"), bench.phases.get(f"cost_relay_{r}")
        if vb is None or relay is None or vb.window is None or relay.window is None:
            continue
        a, b = cpu_per_call_minute(vb), cpu_per_call_minute(relay)
        rows.append({
            "round": r, "voicebot": a, "relay": b, "ratio": a / b if a and b else None,
            "turns": turns_per_call_minute(vb), "relay_turns": turns_per_call_minute(relay),
            "core_busy": (busy(vb.window, "core_busy_s"), busy(relay.window, "core_busy_s")),
            "load_busy": (busy(vb.window, "load_core_busy_s"), busy(relay.window, "load_core_busy_s")),
        })  # fmt: skip
    if not rows:
        return [], rows
    relay_kind = "answering" if bench.args.sweep_script == "talk" else "listening"
    lines = ["", f"## Cost in rounds: voicebot and the {relay_kind} relay, {bench.args.calls} calls, ABBA order", ""]
    lines += ["| round | voicebot CPU-s per call-minute (bot turns) | relay (its turns) | voicebot ÷ relay | "
              "server core busy, all processes (voicebot; relay) | load core busy (voicebot; relay) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['round']} | {fmt(row['voicebot'], 3)} ({fmt(row['turns'])}) | {fmt(row['relay'], 3)} "
            f"({fmt(row['relay_turns'])}) | {fmt(row['ratio'], 2)}× | {fmt(row['core_busy'][0], 0)}%; "
            f"{fmt(row['core_busy'][1], 0)}% | {fmt(row['load_busy'][0], 0)}%; {fmt(row['load_busy'][1], 0)}% |"
        )
    ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
    a = statistics.median(row["voicebot"] for row in rows if row["voicebot"] is not None)
    b = statistics.median(row["relay"] for row in rows if row["relay"] is not None)
    median_ratio = statistics.median(ratios) if ratios else None
    lines += [f"| median | {fmt(a, 3)} | {fmt(b, 3)} | {fmt(median_ratio, 2)}× (spread {fmt(min(ratios), 2)}-"
              f"{fmt(max(ratios), 2)}×; target ≤ 1.3×: {verdict(median_ratio, 1.3)}) | | |"]  # fmt: skip
    lines += cpu_split_lines(bench, [row["round"] for row in rows])
    return lines, rows


def cpu_split_lines(bench: Bench, rounds: Sequence[int]) -> list[str]:
    """``--perf``: each server's CPU per call-minute split by the kind of code that ran, round by round."""
    kinds = [k for k, _ in CODE_KINDS] + ["other C"]
    out = []
    for r in rounds:
        vb, relay = bench.phases[f"cost_vb_{r}"], bench.phases[f"cost_relay_{r}"]
        if vb.window is None or relay.window is None or not vb.window.cpu_split or not relay.window.cpu_split:
            continue
        a, b = cpu_per_call_minute(vb) or 0.0, cpu_per_call_minute(relay) or 0.0
        cells = [
            f"{a * vb.window.cpu_split.get(k, 0.0):.3f} / {b * relay.window.cpu_split.get(k, 0.0):.3f}" for k in kinds
        ]
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    if not out:
        return []
    return [
        "",
        "Where each server's CPU went (`perf record` in the same window; CPU-s per call-minute, voicebot / relay):",
        "",
        "| round | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        *out,
    ]


def loop_lag_p99_ms(w: Window) -> float | None:
    """The server's event-loop lag p99 in a window, from two scrapes of its /metrics histogram."""
    name = "voicebot_event_loop_lag_seconds"
    lag, _n = histogram_quantile(histogram(w.metrics0, name), histogram(w.metrics1, name), 0.99)
    return _ms(lag)


def gc_figures(w: Window) -> tuple[int, float | None, float]:
    """Garbage collections in a window: how many, the p99 pause (ms) and the share of the window they took."""
    name = "voicebot_gc_pause_seconds"
    (b0, s0), (b1, s1) = histogram_merged(w.metrics0, name), histogram_merged(w.metrics1, name)
    p99, n = histogram_quantile(b0, b1, 0.99)
    return n, _ms(p99), (s1 - s0) / max(w.t1 - w.t0, 1e-9)


LOST = ("tts_segment_skipped", "llm_failed")
"""Server log events that mean the caller lost part of a reply, or heard the apology instead of one."""
TAIL_BUSY = 0.70
"""The tail target holds wherever the server's core is less busy than this."""
TAIL_P99_SLACK_MS = 50.0
TAIL_LAG_P99_MS = 10.0


def sweep_section(bench: Bench) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per N of the sweep: the caller's whole turn, the server's own hops, its CPU and loop lag, and the
    load generator's health beside every figure."""
    phases = [p for name, p in bench.phases.items() if name.startswith(("sweep_", "base_")) and p.window is not None]
    if not phases:
        return [], []
    one = {p.name.split("_")[0]: pct(caller_latency(p), 99) for p in phases if len(p.calls) == 1}
    lines = ["", f"## Load sweep (server on core {SERVER_CORE}; callers and emulators on core {LOAD_CORE})", ""]
    lines += [
        "Whole turn = caller speech end → first bot media (ms, every turn of the phase). Server hops p99 from its "
        "transcripts: STT final → LLM request / segment → TTS request / TTS first byte → media; in brackets the same "
        "hops from outside (emulators' and caller's timestamps, see Method). Tail target (where the "
        f"server's core is < {TAIL_BUSY:.0%} busy): whole-turn p99 ≤ 1-call p99 + {TAIL_P99_SLACK_MS:.0f} ms and "
        f"loop lag p99 ≤ {TAIL_LAG_P99_MS:.0f} ms.",
        "",
        "| N | live | whole turn p50 / p95 / p99 (n) | server hops p99 | server CPU (waiting) | CPU / call-min "
        "| loop lag p99 | GC: count, pause p99, share "
        "| load generator CPU (load core busy, all processes) | caller procs: max CPU, max lag p99 "
        "| emulators lag p99; their own LLM first token / TTS first byte p99 | calls ok "
        "| pool waits, TTS segments skipped, LLM failures | tail |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    if any(p.name.startswith("base_") for p in phases):
        env = " ".join(getattr(bench.args, "baseline_env", []))
        chunk = getattr(bench.args, "baseline_tts_chunk_bytes", None)
        env = " ".join(x for x in (env, f"TTS chunks of {chunk} bytes" if chunk else "") if x)
        with_env = f" with `{env}`" if env else ""
        lines[5:5] = [f"Rows marked *base* ran the server from `{bench.args.baseline}`{with_env} (before), interleaved "
                      "with this tree's server (after) in the same run, against the same emulators.", ""]  # fmt: skip
    raw = []
    for phase in phases:
        w = phase.window
        assert w is not None
        span = max(w.t1 - w.t0, 1e-9)
        lat = caller_latency(phase)
        which = phase.name.split("_")[0]
        transcripts = bench.transcripts_base if which == "base" else bench.transcripts
        inside, _ = server_hops(transcripts, [c["call_sid"] for c in phase.calls], turn_cutoff(phase)[1])
        base_p99 = one.get(which)
        hops = " / ".join(fmt(pct(inside[h], 99)) for h in HOPS)
        outside = outside_hops(trace_turns(phase).values())
        legs = emulator_legs(phase)
        hops += " (outside: " + " / ".join(fmt(pct(outside[h], 99)) for h in HOPS) + ")"
        busy = w.cpu_s / span
        lag = loop_lag_p99_ms(w)
        gcs = gc_figures(w)
        name = "voicebot_provider_pool_waits_total"
        waits = counter_total(w.metrics1, name) - counter_total(w.metrics0, name)
        lost = server_log_events(bench.server_log, [c["call_sid"] for c in phase.calls], LOST)
        proc_cpu = max((c for c, _ in phase.caller_procs), default=0.0)
        proc_lag = max((lg for _, lg in phase.caller_procs if lg is not None), default=None)
        ok = sum(1 for c in phase.calls if c["ok"])
        p99 = pct(lat, 99)
        if busy >= TAIL_BUSY:
            tail = f"n/a (core {busy:.0%})"
        elif p99 is None or base_p99 is None or lag is None:
            tail = "n/a"
        else:
            good = p99 <= base_p99 + TAIL_P99_SLACK_MS and lag <= TAIL_LAG_P99_MS
            tail = "PASS" if good else "MISS"
        lines.append(
            f"| {len(phase.calls)}{' *base*' if which == 'base' else ''} | {w.live_calls} | {p3(lat)} | {hops} | "
            f"{busy:.0%} ({w.run_delay_s / span:.0%}) | "
            f"{fmt(cpu_per_call_minute(phase), 3)} | {fmt(lag)} ms | {gcs[0]}, {fmt(gcs[1])} ms, {gcs[2]:.1%} | "
            f"{w.load_gen_cpu_s / span:.0%} "
            f"({w.load_core_busy_s / span:.0%}) | "
            f"{len(phase.caller_procs)}: {proc_cpu:.0%}, {fmt(_ms(proc_lag))} ms | "
            f"{fmt(_ms(pct(phase.emulator_lag_s, 99)))} ms; "
            f"{fmt(pct(legs['llm'], 99))} / {fmt(pct(legs['tts'], 99))} ms | "
            f"{ok} / {len(phase.calls)} | "
            f"{waits:.0f}, {lost['tts_segment_skipped']}, {lost['llm_failed']} | {tail} |"
        )
        raw.append({
            "phase": phase.name, "calls": len(phase.calls), "live": w.live_calls, "whole_turn_ms": lat,
            "server_hops_ms": inside,
            "server_busy": busy, "cpu_per_call_minute": cpu_per_call_minute(phase), "loop_lag_p99_ms": lag,
            "outside_hops_ms": outside, "emulator_legs_ms": legs,
            "gc": gcs, "pool_waits": waits, "lost": dict(lost),
            "load_core_busy": w.load_core_busy_s / span, "load_gen_cpu": w.load_gen_cpu_s / span,
            "server_run_delay": w.run_delay_s / span, "caller_procs": phase.caller_procs,
            "emulator_lag_p99_ms": _ms(pct(phase.emulator_lag_s, 99)), "ok": ok, "rss_mib": w.rss_mib,
            "rss_idle_mib": w.rss_idle_mib, "cpu_s": w.cpu_s, "window_s": span,
        })  # fmt: skip
    return lines, raw


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000
