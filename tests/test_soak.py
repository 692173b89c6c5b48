"""The short soak: a few concurrent calls for a few seconds, twice; every call completes, nothing leaks.

The long version is documented in the README (`python scripts/soak.py --calls 20 --minutes 5`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
SOAK_TIMEOUT_S = 240
RSS_DRIFT_PCT = 2.0


@pytest.mark.timeout(SOAK_TIMEOUT_S + 10)
def test_short_soak_completes_every_call_and_returns_to_baseline() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/soak.py", "--calls", "3", "--minutes", "0.2", "--turns", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S,
    )  # fmt: skip
    report = orjson.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout + out.stderr
    assert report["errors"] == 0, report["failures"]
    assert report["completed"] >= 3
    assert not report["leaked"]
    assert report["after"]["tasks"] == report["baseline"]["tasks"]
    assert report["after_second_round"]["active_calls"] == 0
    # RSS flat in the last half of the round: within RSS_DRIFT_PCT of its value at the half (a leak of a few
    # hundred KiB per call shows; pymalloc arenas that a burst allocated and kept do not, they are reused).
    assert report["rss_last_half_drift_pct"] is not None
    assert report["rss_last_half_drift_pct"] <= RSS_DRIFT_PCT, report["rss_mib_over_time"]
