"""A test that pytest-timeout stops shows where every asyncio task waits.

pytest-timeout dumps the stacks of the *other* threads; the test's own thread runs the event
loop, and what hangs there is a coroutine. This plugin (loaded by tests/conftest.py) adds
every running loop's tasks to that dump, each with the chain of awaits it is stuck in.
Nothing of it runs unless a timeout fires."""

from __future__ import annotations

import asyncio
import gc
import io
from typing import Any

import pytest

from gateway.tasks import await_chain


def pytest_configure(config: pytest.Config) -> None:
    """Wrap pytest-timeout's thread dump (both its signal and its thread method call it)."""
    try:
        import pytest_timeout
    except ImportError:
        return
    dump_threads = pytest_timeout.dump_stacks

    def dump_stacks(terminal: Any) -> None:
        dump_threads(terminal)
        terminal.write(asyncio_tasks_report())

    pytest_timeout.dump_stacks = dump_stacks


def asyncio_tasks_report() -> str:
    """Every task of every running event loop, each with the chain of awaits it is stuck in
    (a suspended task's own stack shows only its outermost coroutine)."""
    out = io.StringIO()
    for loop in _running_loops():
        try:
            tasks = asyncio.all_tasks(loop)
        except RuntimeError:  # the set changed while read from the timeout thread
            tasks = asyncio.all_tasks(loop)
        out.write(f"\n{'~' * 20} {len(tasks)} asyncio task(s) of {loop!r} {'~' * 20}\n")
        for task in sorted(tasks, key=lambda t: t.get_name()):
            out.write(f"\n{task!r}\n")
            for line in await_chain(task.get_coro()):
                out.write(line)
    return out.getvalue()


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    loop = asyncio._get_running_loop()  # the signal method runs in the loop's thread
    if loop is not None:
        return [loop]
    return [o for o in gc.get_objects()  # the thread method: find the loop that runs
            if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
