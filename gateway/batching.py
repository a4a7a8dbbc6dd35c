"""Group commit: many writes share one transaction; each caller is answered after its commit.

This is how a Python gateway keeps "acknowledge only after the data is committed" and still
takes thousands of webhooks a second: one fsync covers a whole batch. A write that fails takes
only itself down: the batch is retried one write per transaction, so the others still land.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("gateway.store")
T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[Any]]


class WriteBatcher:
    """Runs queued writes in shared transactions, one batch at a time."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Write, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.writes = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="write-batcher")

    async def aclose(self) -> None:
        if self._task is None:
            return
        # Finish what was accepted before stopping: a queued write was promised an answer.
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def run(self, write: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `write` in a transaction shared with other writes; return after the commit."""
        if self._task is None:
            async with self._engine.begin() as conn:
                return await write(conn)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [item for item in batch if not item[1].cancelled()]
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> None:
        results: list[Any] = []
        try:
            async with self._engine.begin() as conn:
                for write, _future in batch:
                    results.append(await write(conn))
        except asyncio.CancelledError:
            for _write, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("group commit of %d writes failed; retrying one by one", len(batch))
            for item in batch:
                await self._commit_one(item)
            return
        self.batches += 1
        self.writes += len(batch)
        for (_write, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _commit_one(self, item: tuple[Write, asyncio.Future[Any]]) -> None:
        write, future = item
        try:
            async with self._engine.begin() as conn:
                result = await write(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        self.batches += 1
        self.writes += 1
        if not future.done():
            future.set_result(result)
