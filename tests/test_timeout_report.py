"""A test that hangs is killed by pytest-timeout; its report then says which coroutine waited
(tests/timeout_tasks.py, loaded by tests/conftest.py, adds every asyncio task's await chain
to pytest-timeout's thread dump)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANGING = '''
import asyncio
import pytest


async def wait_for_a_wakeup_that_never_comes(event):
    await event.wait()


@pytest.fixture
async def stuck_teardown():
    yield
    await wait_for_a_wakeup_that_never_comes(asyncio.Event())


async def test_hangs_in_teardown(stuck_teardown):
    pass
'''


def test_a_test_that_hangs_in_teardown_shows_the_coroutine_that_waited(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.timeout_tasks",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "--timeout", "3",
         str(tmp_path / "test_hanging.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "Timeout" in out and "asyncio task(s)" in out, out
    # The await chain down to the wait itself, with the source lines.
    chain = out[out.index("asyncio task(s)"):]
    assert "in stuck_teardown" in chain, out
    assert "in wait_for_a_wakeup_that_never_comes\n    await event.wait()" in chain, out
    assert "/asyncio/locks.py" in chain and "in wait" in chain, out
