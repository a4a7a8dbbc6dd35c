"""Group commit (gateway/batching.py): closing finishes what was accepted, after-commit
callbacks run only for what committed, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.batching import BatcherClosed, WriteBatcher
from gateway.store import make_engine
from tests.helpers import wait_until


@pytest.fixture
async def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS notes (n INTEGER)"))
    yield engine
    await engine.dispose()


async def stored(engine: Any) -> list[int]:
    async with engine.connect() as conn:
        return [r[0] for r in await conn.execute(text("SELECT n FROM notes ORDER BY n"))]


def insert(n: int) -> Any:
    def write(conn: Connection) -> int:
        conn.execute(text("INSERT INTO notes (n) VALUES (:n)"), {"n": n})
        return n

    return write


class WriteLock:
    """Another connection holding the write lock: a batch that starts now waits in the
    database (its transaction is running) until `release`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def hold(self) -> None:
        url = self.engine.url
        if url.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(url.database, isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            self._pg = await self.engine.connect()
            await self._pg.begin()
            await self._pg.execute(text("LOCK TABLE notes IN EXCLUSIVE MODE"))

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.rollback()
            await self._pg.close()


async def test_closing_while_a_batch_runs_answers_its_caller_with_the_commit(
    engine: Any,
) -> None:
    batcher = WriteBatcher(engine)
    await batcher.start()
    lock = WriteLock(engine)
    await lock.hold()
    running = asyncio.ensure_future(batcher.run(insert(1)))
    await asyncio.sleep(0)  # queued
    await wait_until(lambda: batcher._queue.empty(), what="the batch to start running")
    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0.05)  # room for a close that would not wait (the bug this pins)
    assert not running.done() and not closing.done()  # close waits for the running batch
    await lock.release()
    await closing
    # Before the fix the running batch was cancelled: its caller got CancelledError although
    # the row was committed.
    assert await running == 1
    assert await stored(engine) == [1]
    with pytest.raises(BatcherClosed):
        await batcher.run(insert(3))
    assert await stored(engine) == [1]


async def test_closing_finishes_every_write_accepted_before(engine: Any) -> None:
    batcher = WriteBatcher(engine)
    await batcher.start()
    lock = WriteLock(engine)
    await lock.hold()
    first = asyncio.ensure_future(batcher.run(insert(1)))
    await asyncio.sleep(0)
    await wait_until(lambda: batcher._queue.empty(), what="the batch to start running")
    queued = [asyncio.ensure_future(batcher.run(insert(n))) for n in (2, 3)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.aclose())
    await lock.release()
    await closing
    assert [await first, *[await q for q in queued]] == [1, 2, 3]
    assert await stored(engine) == [1, 2, 3]


async def test_after_commit_runs_once_per_committed_write_and_never_for_a_failed_one(
    engine: Any,
) -> None:
    batcher = WriteBatcher(engine)
    await batcher.start()
    committed: list[Any] = []

    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO notes (n) VALUES (:n)"), {"n": 99})
        raise ValueError("this write fails after writing")

    try:
        # One batch: the failing write takes the shared transaction down, the others are
        # retried one by one and committed; only theirs run the callback.
        results = await asyncio.gather(
            batcher.run(insert(1), committed.append),
            batcher.run(broken, committed.append),
            batcher.run(insert(2), committed.append),
            return_exceptions=True,
        )
    finally:
        await batcher.aclose()
    assert results[0] == 1 and isinstance(results[1], ValueError) and results[2] == 2
    assert sorted(committed) == [1, 2]
    assert await stored(engine) == [1, 2]


async def test_after_commit_runs_even_when_the_caller_stopped_waiting(engine: Any) -> None:
    batcher = WriteBatcher(engine)
    await batcher.start()
    lock = WriteLock(engine)
    await lock.hold()
    committed: list[int] = []
    try:
        waiting = asyncio.ensure_future(batcher.run(insert(5), committed.append))
        await asyncio.sleep(0)  # queued
        await wait_until(lambda: batcher._queue.empty(), what="the batch to start running")
        waiting.cancel()  # e.g. the HTTP client went away; the write is already running
        await lock.release()
        await wait_until(lambda: committed == [5], what="the after-commit callback")
    finally:
        await batcher.aclose()
    assert await stored(engine) == [5]


async def test_without_a_running_batcher_a_write_runs_alone_and_reports_its_commit(
    engine: Any,
) -> None:
    batcher = WriteBatcher(engine)
    committed: list[int] = []
    assert await batcher.run(insert(7), committed.append) == 7
    assert committed == [7] and await stored(engine) == [7]
    await batcher.aclose()
