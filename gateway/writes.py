"""One command, one transaction: `Writes.run` hands a write a `Tx` and publishes what it did.

A write is a synchronous function of a `Tx` (the connection, the time, and the list of
domain events it records). It runs inside a group commit (`gateway/batching.py`); the events
go on the bus (`gateway/bus.py`) only after the commit that holds the write succeeded, in
commit order, and never for a write that failed or was rolled back (a retried write records
its events afresh). A write that queued outbound messages wakes the outbox worker then too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.batching import WriteBatcher
from gateway.bus import DomainEvent, EventBus
from gateway.clock import Clock

T = TypeVar("T")
log = logging.getLogger("gateway.core")
RETRIES = 3
# PostgreSQL's deadlock_detected and serialization_failure: nothing was written, run again.
_RACE_STATES = frozenset({"40P01", "40001"})


def _lost_a_race(exc: DBAPIError) -> bool:
    return (isinstance(exc, IntegrityError)
            or getattr(exc.orig, "sqlstate", None) in _RACE_STATES)


class Tx:
    """What a write sees: its connection, its moment, and what it has to tell."""

    __slots__ = ("conn", "now", "events", "queued_outbound", "result", "notes")

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.events: list[DomainEvent] = []
        self.queued_outbound = False  # an outbound message was written: wake the outbox
        self.result: object = None  # what the write returned
        self.notes: list[tuple[int, str, tuple[Any, ...]]] = []

    def publish(self, event: DomainEvent) -> None:
        """Say `event` once the transaction commits."""
        self.events.append(event)

    def log(self, level: int, message: str, *args: Any) -> None:
        """Log a line once the transaction commits (what was stored, not what was tried)."""
        self.notes.append((level, message, args))


class Writes:
    """The core's way to the store: group-committed writes, events after the commit."""

    def __init__(self, batcher: WriteBatcher, bus: EventBus, clock: Clock,
                 on_outbox: Callable[[], None]) -> None:
        self.batcher = batcher
        self.bus = bus
        self._clock = clock
        self._on_outbox = on_outbox

    async def run(self, write: Callable[[Tx], T]) -> T:
        """Run `write` in a shared transaction; return its result after the commit.

        A write that lost a race to another gateway on a unique key (or a deadlock) is run
        again, afresh: the other's rows are committed by then and it finds them."""
        attempt = 1
        while True:
            try:
                tx: Tx = await self.batcher.run(partial(self._in_transaction, write),
                                                self._committed)
            except DBAPIError as exc:
                if attempt >= RETRIES or not _lost_a_race(exc):
                    raise
                attempt += 1
                log.info("write lost a race (%s); running it again", type(exc.orig).__name__)
                continue
            return tx.result  # type: ignore[no-any-return]

    def _in_transaction(self, write: Callable[[Tx], object], conn: Connection) -> Tx:
        tx = Tx(conn, self._clock.now())
        tx.result = write(tx)
        return tx

    def _committed(self, tx: Tx) -> None:
        for level, message, args in tx.notes:
            log.log(level, message, *args)
        if tx.events:
            self.bus.publish(tx.events)
        if tx.queued_outbound:
            self._on_outbox()
