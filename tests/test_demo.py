"""`make demo` keeps working: the scripted calls (backchannel, barge-in, hang-up; a booking with its filler) run to
the end and exit 0."""

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
    # The booking call: the tool ran once, its filler was heard before the answer, and the call ended cleanly.
    assert "booked: yes; call ended by: server_closed" in out.stdout
    assert "assistant: Let me book that for you. You're all set" in out.stdout
    assert "| turn | stt_final |" in out.stdout
