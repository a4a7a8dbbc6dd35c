"""Group commit: many writes share one transaction; each caller is answered after its commit.

This is how a Python gateway keeps "acknowledge only after the data is committed" and still
takes thousands of webhooks a second: one fsync covers a whole batch, and the whole batch runs
in one hop off the event loop (a dedicated writer thread with a plain sqlite3 connection, or
asyncpg through run_sync). Writes are synchronous functions of a Connection. A write that
fails takes only itself down: the batch is retried one write per transaction.

On PostgreSQL several batches run at once (`lanes`, each on its own connection): a batch is
a chain of statement round trips, and one lane at a time left the gateway waiting on them
(docs/scale-out.md, "SIP behind Kamailio": ~1.4 ms a statement on a loaded 2-core box made
one lane the limit at 50 calls a second). Concurrent lanes are what two gateways on one
database are already: the unique keys and insert-or-get decide between them. Writes the
caller issues one after another (awaiting each) still commit in that order; writes issued
concurrently may commit in any order, so a caller that needs an order awaits. SQLite keeps
one writer: it has one anyway.

A write may defer work to the end of its batch (`deferred`): e.g. the conversations'
activity times, written once per batch just before the commit, so a conversation row that
many writes touch is locked for the commit only, not for the whole batch.

A write may come with an `after` callback: it runs on the event loop once the transaction
that holds the write has committed (and never when it failed or rolled back), before the
caller is answered and even when the caller stopped waiting. The core publishes its domain
events from there (`gateway/writes.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store import is_sqlite, make_sqlite_sync_engine

log = logging.getLogger("gateway.store")
T = TypeVar("T")
Write = Callable[[Connection], Any]
After = Callable[[Any], None]
_Item = tuple[Write, "asyncio.Future[Any]", After | None]


class BatcherClosed(RuntimeError):
    """A write was offered after `aclose()`: the store is shutting down."""


class WriteBatcher:
    """Runs queued writes in shared transactions, one batch at a time."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 256, lanes: int = 4) -> None:
        self._engine = engine
        self._max_batch = max_batch
        url = engine.url.render_as_string(hide_password=False)
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if is_sqlite(url):
            self._sync = make_sqlite_sync_engine(url, writer=True)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self.lanes = 1 if self._sync is not None else max(1, lanes)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.batches = 0
        self.writes = 0

    async def start(self) -> None:
        if not self._tasks:
            self._closing = False
            self._tasks = [asyncio.create_task(self._run(), name=f"write-batcher-{lane}")
                           for lane in range(self.lanes)]

    async def aclose(self) -> None:
        """Finish every write accepted so far (a queued write was promised an answer, and a
        running batch may already be committing), then stop. Nothing is cancelled."""
        self._closing = True
        if self._tasks:
            for _lane in self._tasks:
                self._queue.put_nowait(None)  # after everything queued before it
            await asyncio.gather(*self._tasks)
            self._tasks = []
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._sync is not None:
            self._sync.dispose()

    async def run(self, write: Callable[[Connection], T],
                  after: Callable[[T], None] | None = None) -> T:
        """Run `write` in a transaction shared with other writes; return after the commit.

        `after(result)` runs on the loop right after that commit (see the module's doc)."""
        if self._closing:
            raise BatcherClosed("the store is shutting down; the write was not accepted")
        if not self._tasks:
            result = (await self._execute([write]))[0]
            if after is not None:
                _call_after(after, result)
            return result
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((write, future, after))
        return await future

    async def _execute(self, writes: list[Write]) -> list[Any]:
        """All of `writes` in one transaction, in one hop off the loop."""
        if self._sync is not None:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._in_thread, writes)
        async with self._engine.begin() as conn:
            return await conn.run_sync(_apply, writes)

    def _in_thread(self, writes: list[Write]) -> list[Any]:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return _apply(conn, writes)

    async def _run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # A caller that stopped waiting before its write ran gets nothing written.
            batch = [item for item in batch if not item[1].cancelled()]
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Item]) -> None:
        try:
            results = await self._execute([write for write, _, _ in batch])
        except asyncio.CancelledError:
            for _write, future, _after in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            log.warning("group commit of %d writes failed; retrying one by one", len(batch))
            for write, future, after in batch:
                try:
                    result = (await self._execute([write]))[0]
                except asyncio.CancelledError:
                    raise
                except Exception as one:
                    _settle(future, exc=one)
                else:
                    self.batches += 1
                    self.writes += 1
                    if after is not None:
                        _call_after(after, result)
                    _settle(future, result=result)
            return
        self.batches += 1
        self.writes += len(batch)
        for (_write, future, after), result in zip(batch, results, strict=True):
            if after is not None:
                _call_after(after, result)
            _settle(future, result=result)


def _apply(conn: Connection, writes: list[Write]) -> list[Any]:
    conn.info.pop(_DEFERRED, None)  # left by a batch that failed
    try:
        results = [write(conn) for write in writes]
        for flush, values in conn.info.get(_DEFERRED, {}).values():
            flush(conn, values)
        return results
    finally:
        conn.info.pop(_DEFERRED, None)


_DEFERRED = "gateway.batching.deferred"
Flush = Callable[[Connection, dict[Any, Any]], None]


def deferred(conn: Connection, name: str, flush: Flush) -> dict[Any, Any]:
    """A dict of this batch's transaction, named `name`: what the batch's writes put in it
    is handed to `flush(conn, it)` once they all ran, just before the commit (in the same
    transaction: a failure there fails the batch, which is then retried write by write)."""
    hooks = conn.info.setdefault(_DEFERRED, {})
    if name not in hooks:
        hooks[name] = (flush, {})
    values: dict[Any, Any] = hooks[name][1]
    return values


def peek_deferred(conn: Connection, name: str) -> dict[Any, Any]:
    """What this transaction's writes have deferred under `name` so far (empty if none)."""
    entry = conn.info.get(_DEFERRED, {}).get(name)
    return entry[1] if entry is not None else {}


def _call_after(after: After, result: Any) -> None:
    try:
        after(result)
    except Exception:  # the write is committed: its caller still gets its answer
        log.exception("store: after-commit callback failed; the write itself is committed")


def _settle(future: asyncio.Future[Any], *, result: Any = None,
            exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
