"""Ordered work per key, concurrent across keys, every task owned.

One agent's commands run one after the other, in the order typed (`depth=1`). One customer's
messages are *started* in the order they came, up to `depth` at a time, so a burst from one
customer shares the core's group commit instead of paying one commit each; the core takes a
write's place in the transcript when the write is handed to it (see the channel's notes).
Different keys proceed side by side. `aclose` cancels whatever still runs or waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway.connectors.xmpp")

Work = Callable[[], Awaitable[Any]]


@dataclass
class _Lane:
    running: int = 0
    waiting: deque[tuple[Work, asyncio.Future[Any]]] = field(default_factory=deque)


class Lanes:
    def __init__(self, name: str, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._name = name
        self._depth = depth
        self._lanes: dict[str, _Lane] = {}
        self._pending: set[asyncio.Future[Any]] = set()  # every accepted piece of work
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self, key: str, work: Work) -> asyncio.Future[Any]:
        """Accept `work` for `key`; the future is done when the work is (however it ended)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.add(done)
        done.add_done_callback(self._pending.discard)
        lane = self._lanes.setdefault(key, _Lane())
        if lane.running < self._depth and not lane.waiting:
            self._start(key, lane, work, done)
        else:
            lane.waiting.append((work, done))
        return done

    def _start(self, key: str, lane: _Lane, work: Work, done: asyncio.Future[Any]) -> None:
        lane.running += 1
        task = asyncio.create_task(work(), name=f"{self._name}:{key[:60]}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(key, lane, t, done))

    def _finished(self, key: str, lane: _Lane, task: asyncio.Task[Any],
                  done: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        lane.running -= 1
        if task.cancelled():
            done.cancel()
        elif task.exception() is not None:
            log.error("xmpp: %s work for %s failed: %r", self._name, key, task.exception(),
                      exc_info=task.exception())
            done.set_result(None)
        else:
            done.set_result(task.result())
        while lane.waiting and lane.running < self._depth:
            work, waiting = lane.waiting.popleft()
            if not waiting.done():
                self._start(key, lane, work, waiting)
        if lane.running == 0 and not lane.waiting and self._lanes.get(key) is lane:
            del self._lanes[key]

    @property
    def in_flight(self) -> frozenset[asyncio.Future[Any]]:
        return frozenset(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until everything accepted so far has finished."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            for _work, waiting in lane.waiting:
                waiting.cancel()
            lane.waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in list(self._pending):
            future.cancel()
        self._lanes.clear()
