"""Stopping the background tasks a component owns, and the one way their loops sleep.

`wait_event` is what a loop that sleeps until woken or until a timeout awaits. On Python 3.11
`asyncio.wait_for(event.wait(), t)` loses a cancellation that comes after the event was set
and before the task ran again: it returns True, the loop goes round, and whoever cancelled
it to stop waits for ever (a reply committed, or a phone registering, just as the gateway
stops). `asyncio.timeout` has no such gap. `cancel_and_wait` stops such tasks, and names one
that still runs after its cancellation instead of hanging on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import linecache
import logging
from typing import Any

log = logging.getLogger("gateway.tasks")
STUBBORN_AFTER = 5.0  # seconds a cancelled task may take to finish before it is named


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds passed; whether it was set. A
    cancellation of the waiting task always goes through."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None,
                          warn_after: float = STUBBORN_AFTER) -> None:
    """Cancel each task, then wait until every one has finished (its cancellation included).

    A task still running `warn_after` seconds after its cancellation lost or swallowed it:
    a warning says where it waits, and it is cancelled again. A cancellation of the caller
    is not swallowed here."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        while not task.done():
            await asyncio.wait({task}, timeout=warn_after)
            if not task.done():
                log.warning("%s did not stop %.0f s after it was cancelled (it lost or "
                            "swallowed the cancellation); cancelling it again. It waits at:\n%s",
                            task.get_name(), warn_after, "".join(await_chain(task.get_coro())))
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            task.result()  # a task that failed while stopping says so


def await_chain(awaitable: Any) -> list[str]:
    """Where a suspended coroutine waits, traceback style: each coroutine it awaits in turn,
    down to the future (a task's own stack shows only its outermost coroutine)."""
    lines: list[str] = []
    while awaitable is not None:
        frame = (getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
                 or getattr(awaitable, "ag_frame", None))
        if frame is None:
            inner = None if isinstance(awaitable, asyncio.Future) else _behind(awaitable)
            if inner is not None:
                awaitable = inner
                continue
            if not any(hasattr(awaitable, a) for a in ("cr_frame", "gi_frame", "ag_frame")):
                lines.append(f"  awaiting {awaitable!r}\n")
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, frame.f_lineno).strip()
        if source:
            lines.append(f"    {source}\n")
        awaitable = (getattr(awaitable, "cr_await", None)
                     or getattr(awaitable, "gi_yieldfrom", None)
                     or getattr(awaitable, "ag_await", None))
    return lines


def _behind(step: Any) -> Any:
    """The async generator behind an `anext()`/`athrow()` step, or the future behind an
    `await future` (neither says so but to the garbage collector)."""
    for ref in gc.get_referents(step):
        if inspect.isasyncgen(ref) or isinstance(ref, asyncio.Future):
            return ref
    return None
