"""`gateway demo` tells the whole story and exits 0, as the contract says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_prints_what_the_agent_sees_and_exits_zero(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "verified by whatsapp-otp" in out and "[verified-via-escalation]" in out
    assert "identified by caller ID, not verified" in out and "[caller-id-only]" in out
    assert "Hi, my card was stolen" in out
    assert "Traceback" not in proc.stderr
