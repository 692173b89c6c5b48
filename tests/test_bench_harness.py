"""The benchmark harness itself: `scripts/bench.py --smoke --cost-rounds 1` at a few calls, for both caller scripts.

Speed is not asserted here (BENCHMARKS.md holds the figures); this pins down that the harness the figures come from
runs: voicebot and the floor relay each carry every call of the phase without a caller-side failure, and every caller
hears the server's greeting (the listening relay's too: without it the listen script's callers wait 15 s for audio
that never comes and, in a window longer than the smoke run's, record a step timeout each), and the round reports a CPU
figure for both servers, with bot turns in the talking script and none in the listening one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT_S = 180
CALLS = 4
BASE_PORT = {"talk": 19500, "listen": 19520}
"""Each script its own range (the bench picks free ports upwards from it), so the two can run on two workers."""


@pytest.mark.timeout(BENCH_TIMEOUT_S + 10)
@pytest.mark.parametrize("script", ["talk", "listen"])
def test_smoke_cost_round_carries_every_call_on_both_servers(script: str, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    argv = [sys.executable, "scripts/bench.py", "--smoke", "--cost-rounds", "1", "--calls", str(CALLS)]
    argv += ["--skip-pipecat", "--sweep-script", script, "--base-port", str(BASE_PORT[script]), "--out", str(out)]
    if script == "listen":
        argv += ["--server-env", "VOICEBOT_IDLE_TIMEOUT_S=3600"]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    raw = orjson.loads(out.with_suffix(".json").read_bytes())

    assert raw["health"] == {
        "cost_vb_1": {"ok": CALLS, "placed": CALLS, "greeted": CALLS, "failures": {}},
        "cost_relay_1": {"ok": CALLS, "placed": CALLS, "greeted": CALLS, "failures": {}},
    }
    (round_,) = raw["cost_rounds"]
    assert round_["voicebot"] > 0 and round_["relay"] > 0
    assert round_["ratio"] == pytest.approx(round_["voicebot"] / round_["relay"])
    if script == "talk":
        assert round_["turns"] > 0 and round_["relay_turns"] > 0
    else:
        assert round_["turns"] == 0 and round_["relay_turns"] == 0
    assert "Cost in rounds" in out.read_text()
