"""`gateway serve`'s event loop: uvloop when installed (GATEWAY_EVENT_LOOP=auto), asyncio's
when asked or when uvloop is missing; asking for uvloop without it is a config error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError
from gateway.cli import event_loop
from tests.conftest import AGENT_TOKEN

ROOT = Path(__file__).resolve().parent.parent


def _serve_start_line(tmp_path: Path, choice: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gw.db",
           "GATEWAY_HTTP_PORT": "0", "GATEWAY_SIP_PORT": "0", "GATEWAY_LOG_LEVEL": "WARNING",
           "GATEWAY_AGENT_TOKEN": AGENT_TOKEN, "GATEWAY_EVENT_LOOP": choice}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    return line


def test_gateway_serve_runs_on_uvloop_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("uvloop", reason="uvloop is a dependency; this install lacks it")
    line = _serve_start_line(tmp_path, "auto")
    assert line.startswith("gateway: listening on http://127.0.0.1:")
    assert ", event loop uvloop " in line


def test_without_uvloop_auto_falls_back_and_asking_for_it_names_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert event_loop("auto") == (None, "asyncio (uvloop is not installed)")
    assert event_loop("asyncio") == (None, "asyncio")
    with pytest.raises(ConfigError, match="GATEWAY_EVENT_LOOP"):
        event_loop("uvloop")
