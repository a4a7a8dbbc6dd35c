"""The durable outbox: outbound sends written with the event that caused them, sent later.

`enqueue` runs inside the caller's transaction, so a reply exists exactly when the event that
caused it was committed. The worker claims a due row (committed), calls the connector, and
records the outcome. A row claimed but not finished when the process died is *in doubt*: the
provider may or may not have it. It is never resent blindly (that could send twice); it is
marked `unknown` with a clear error an agent sees. Status callbacks move a row forward only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.channels import Connector, OutboundMessage, SendError
from gateway.clock import Clock
from gateway.models import EarlyStatus, OutboxMessage
from gateway.conversations import insert_ignore
from gateway.store import new_id

log = logging.getLogger("gateway.outbox")
OUTBOX = OutboxMessage.__table__
EARLY = EarlyStatus.__table__

# Where a message stands; a status only ever moves to a higher rank.
RANK = {
    "pending": 0, "sending": 0, "unknown": 0, "accepted": 1, "queued": 1, "sending-provider": 1,
    "sent": 2, "failed": 3, "undelivered": 3, "delivered": 3, "read": 4,
}
FINAL = {"failed", "undelivered", "read"}  # delivered may still become read
LEASE = timedelta(seconds=60)


def enqueue(
    conn: Connection,
    *,
    channel: str,
    kind: str,
    to: str,
    from_: str | None,
    text: str | None,
    now: datetime,
    conversation_id: str | None = None,
    leg_id: str | None = None,
    payload: dict[str, Any] | None = None,
    transcript_entry_id: int | None = None,
    message_id: str | None = None,
) -> str:
    message_id = message_id or new_id("out")
    body = dict(payload or {})
    if text is not None:
        body["text"] = text
    conn.execute(
        insert(OUTBOX).values(
            id=message_id, conversation_id=conversation_id, leg_id=leg_id, channel=channel,
            kind=kind, to_address=to, from_address=from_, payload=body, status="pending",
            attempts=0, next_attempt_at=now, lease_until=None, last_error=None,
            provider_id=None, transcript_entry_id=transcript_entry_id, created_at=now,
            updated_at=now,
        )
    )
    return message_id


def apply_status(
    conn: Connection,
    *,
    provider_id: str,
    status: str,
    now: datetime,
    error: str | None = None,
) -> str | None:
    """Move the message with this provider id to `status` unless that goes backwards.

    Returns the status the message has afterwards, or None when no message has that id yet:
    then the status is kept and applied once the send is recorded (`apply_early`).
    """
    row = conn.execute(
        select(OUTBOX.c.id, OUTBOX.c.status).where(OUTBOX.c.provider_id == provider_id)
    ).first()
    if row is None:
        if status in RANK:
            conn.execute(
                insert_ignore(conn, EARLY).values(
                    provider_id=provider_id, status=status, error=error, at=now)
            )
        return None
    return _move(conn, row[0], row[1], status, now, error)


def _move(conn: Connection, message_id: str, current: str, status: str, now: datetime,
          error: str | None) -> str:
    if status not in RANK:
        log.warning("outbox: unknown provider status %r for %s ignored", status, message_id)
        return current
    if RANK[status] <= RANK.get(current, 0) or current in FINAL:
        return current
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if error:
        values["last_error"] = error
    conn.execute(update(OUTBOX).where(OUTBOX.c.id == message_id).values(**values))
    return status


def apply_early(conn: Connection, message_id: str, provider_id: str, now: datetime) -> None:
    """Apply statuses that arrived before this send was recorded, in rank order."""
    early = conn.execute(
        select(EARLY.c.status, EARLY.c.error).where(EARLY.c.provider_id == provider_id)
    ).all()
    if not early:
        return
    current = conn.execute(select(OUTBOX.c.status).where(OUTBOX.c.id == message_id)).scalar()
    for status, error in sorted(early, key=lambda r: RANK[r[0]]):
        current = _move(conn, message_id, current or "sent", status, now, error)
    conn.execute(EARLY.delete().where(EARLY.c.provider_id == provider_id))


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    max_attempts: int = 8

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * self.factor ** max(0, attempt - 1))


class OutboxWorker:
    """Sends due outbox rows through their connectors. Owned by the app's cleanup_ctx."""

    def __init__(
        self,
        engine: AsyncEngine,
        connectors: Mapping[str, Connector],
        clock: Clock,
        backoff: Backoff | None = None,
        send_timeout: float = 20.0,
        poll_interval: float = 5.0,
        concurrency: int = 16,
        sent: Callable[[str, str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._sent = sent or (lambda _channel, _outcome: None)  # (channel, outcome) counter
        self._connectors = dict(connectors)
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._send_timeout = send_timeout
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()

    def add_connector(self, connector: Connector) -> None:
        for channel in connector.channels:
            self._connectors[channel] = connector

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.recover()
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._inflight:
            # Let sends already on the wire finish and record their outcome.
            await asyncio.wait(self._inflight, timeout=self._send_timeout)

    async def recover(self) -> int:
        """After a restart: rows claimed by a dead process are in doubt; say so, never resend.

        One gateway process sends for a database (the SQLite default has one writer anyway);
        every row still `sending` at start belonged to a process that is gone.
        """
        now = self._clock.now()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.status == "sending")
                .values(
                    status="unknown",
                    updated_at=now,
                    last_error="the gateway stopped while this was being sent; not resent "
                    "automatically to avoid a duplicate: check the provider's log",
                )
            )
        if result.rowcount:
            log.warning("outbox: %d message(s) were in flight at shutdown; marked unknown",
                        result.rowcount)
        return int(result.rowcount or 0)

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive a database hiccup
                log.exception("outbox: pass failed; retrying in %.0f s", self._poll)
                delay = self._poll
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def run_once(self) -> float:
        """Start sends for every due row; return seconds until the next one is due."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(OUTBOX.c.id)
                    .where(OUTBOX.c.status == "pending", OUTBOX.c.next_attempt_at <= now)
                    .order_by(OUTBOX.c.next_attempt_at)
                    .limit(200)
                )
            ).scalars().all()
            upcoming = (
                await conn.execute(
                    select(OUTBOX.c.next_attempt_at)
                    .where(OUTBOX.c.status == "pending", OUTBOX.c.next_attempt_at > now)
                    .order_by(OUTBOX.c.next_attempt_at)
                    .limit(1)
                )
            ).scalar()
        for message_id in rows:
            await self._sem.acquire()
            task = asyncio.create_task(self._send_one(message_id))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            task.add_done_callback(lambda _t: self._sem.release())
        if upcoming is None:
            return self._poll
        return max(0.01, min(self._poll, (upcoming - now).total_seconds()))

    async def drain(self, timeout: float = 10.0) -> None:
        """Send everything due now and wait for it (tests and the demo use this)."""
        await self.run_once()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def _claim(self, message_id: str) -> dict[str, Any] | None:
        now = self._clock.now()
        async with self._engine.begin() as conn:
            claimed = await conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id == message_id, OUTBOX.c.status == "pending")
                .values(
                    status="sending", attempts=OUTBOX.c.attempts + 1, lease_until=now + LEASE,
                    updated_at=now,
                )
            )
            if claimed.rowcount != 1:
                return None  # another worker took it
            row = (
                await conn.execute(select(OUTBOX).where(OUTBOX.c.id == message_id))
            ).mappings().first()
        return dict(row) if row else None

    async def _send_one(self, message_id: str) -> None:
        row = await self._claim(message_id)
        if row is None:
            return
        payload = dict(row["payload"] or {})
        message = OutboundMessage(
            id=row["id"], channel=row["channel"], kind=row["kind"], to=row["to_address"],
            from_=row["from_address"], text=payload.get("text"), payload=payload,
            attempt=row["attempts"],
        )
        connector = self._connectors.get(message.channel)
        values: dict[str, Any]
        if connector is None:
            values = {"status": "failed",
                      "last_error": f"no connector is configured for channel {message.channel}"}
        else:
            try:
                receipt = await asyncio.wait_for(connector.send(message), self._send_timeout)
            except SendError as exc:
                values = self._failure(message, str(exc), exc.permanent)
            except TimeoutError:
                values = self._failure(
                    message, f"no answer from the provider in {self._send_timeout:.0f} s", False
                )
            except Exception as exc:  # a connector bug must not kill the worker
                log.exception("outbox: connector for %s raised", message.channel)
                values = self._failure(message, f"{type(exc).__name__}: {exc}", False)
            else:
                values = {"status": receipt.status if receipt.status in RANK else "sent",
                          "provider_id": receipt.provider_id, "last_error": None}
        now = self._clock.now()
        values.update(updated_at=now, lease_until=None)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id == message_id, OUTBOX.c.status == "sending")
                .values(**values)
            )
            if values.get("provider_id"):
                await conn.run_sync(apply_early, message_id, values["provider_id"], now)
        self._sent(message.channel, "retry" if values["status"] == "pending" else values["status"])
        log.info("outbox: %s %s to %s: %s%s", message.kind, message.id, message.to,
                 values["status"], f" ({values['last_error']})" if values.get("last_error") else "")
        if values["status"] == "pending":
            self.wake()

    def _failure(self, message: OutboundMessage, error: str, permanent: bool) -> dict[str, Any]:
        if permanent or message.attempt >= self._backoff.max_attempts:
            why = error if permanent else f"gave up after {message.attempt} attempts: {error}"
            return {"status": "failed", "last_error": why}
        retry_at = self._clock.now() + timedelta(seconds=self._backoff.delay(message.attempt))
        return {"status": "pending", "last_error": error, "next_attempt_at": retry_at}
