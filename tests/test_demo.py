"""`make demo` keeps working: the scripted call (backchannel, barge-in, hang-up) runs to the end and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 180


@pytest.mark.timeout(DEMO_TIMEOUT_S + 10)
def test_demo_runs_the_scripted_call_and_exits_0() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/demo.py", "--fast"], cwd=REPO, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "hang-up through Twilio REST: yes; call ended by: server_closed" in out.stdout
    assert out.stdout.count("clear_received") == 2  # the backchannel pause and the real barge-in
    assert "| turn | stt_final |" in out.stdout
