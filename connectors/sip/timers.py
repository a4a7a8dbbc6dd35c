"""Many SIP transaction timers on one event-loop timer (a hashed timing wheel).

A busy edge keeps tens of thousands of transactions alive (Timers J, L and M run 32 s), each
with a few timers. One asyncio TimerHandle per timer costs a handle, a context copy and a
heap entry apiece, and the garbage collector walks them all; here deadlines are rounded up to
a tick (10 ms: T1 is 500 ms) and kept in per-tick buckets, and the loop holds a single handle
for the earliest bucket. There is no cancel: the caller ignores firings it no longer wants
(the transactions do, RFC timers that are not running are ignored).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Any

__all__ = ["TimerWheel"]

log = logging.getLogger("gateway.sip")


class TimerWheel:
    """`schedule(delay, callback, *args)`: run `callback(*args)` at least `delay` seconds
    from now, at most one tick later. `close()` drops everything not yet run."""

    __slots__ = ("_loop", "_tick", "_slots", "_heap", "_handle", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.01) -> None:
        self._loop = loop
        self._tick = tick
        self._slots: dict[int, list[tuple[Any, ...]]] = {}  # slot -> [(callback, *args)]
        self._heap: list[int] = []  # slot numbers that have a bucket
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the slot the loop handle is set for

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._slots.values())

    def schedule(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        slot = math.ceil((self._loop.time() + delay) / self._tick)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = []
            heapq.heappush(self._heap, slot)
            if self._armed is None or slot < self._armed:
                self._arm(slot)
        bucket.append((callback, *args))  # one tuple per timer: less for the GC to walk

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = self._loop.call_at(slot * self._tick, self._run)

    def _run(self) -> None:
        self._handle = self._armed = None
        due = math.floor(self._loop.time() / self._tick + 1e-9)
        heap, slots = self._heap, self._slots
        while heap and heap[0] <= due:
            for item in slots.pop(heapq.heappop(heap)):
                try:
                    item[0](*item[1:])
                except Exception:
                    log.exception("SIP: a timer callback failed")
        if heap:
            self._arm(heap[0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed = None
        self._slots.clear()
        self._heap.clear()
