"""Ordered work per key, concurrent across keys, every task owned.

One customer's messages are stored in the order they came, and one agent's commands run in
the order typed, while different customers and agents proceed side by side (so the core's
group commit gets many messages per transaction). `aclose` cancels whatever still runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("gateway.connectors.xmpp")


class Lanes:
    def __init__(self, name: str) -> None:
        self._name = name
        self._last: dict[str, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, key: str, work: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        """Start `work()` once the previous work of `key` has finished (however it ended)."""
        previous = self._last.get(key)

        async def in_order() -> Any:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            return await work()

        task = asyncio.create_task(in_order(), name=f"{self._name}:{key[:60]}")
        self._last[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t, key=key: self._finished(key, t))
        return task

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._last.get(key) is task:
            del self._last[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("xmpp: %s work for %s failed: %r", self._name, key, task.exception(),
                      exc_info=task.exception())

    @property
    def in_flight(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until everything started so far has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._last.clear()
