"""The durable outbox: outbound sends written with the event that caused them, sent later.

`enqueue` runs inside the caller's transaction, so a reply exists exactly when the event that
caused it was committed. The worker claims due rows (committed), hands the channel a typed
message (`TextMessage`, `CodeMessage`, `CallbackRequest`), and records the outcome. A row
claimed but not finished when the process died is *in doubt*: the provider may or may not have
it. It is never resent blindly (that could send twice); it is marked `unknown` with a clear
error an agent sees. Status callbacks move a row forward only.

Every gateway on one PostgreSQL sends. A claim takes due rows `FOR UPDATE SKIP LOCKED` and
leases them to this instance (`lease_owner`, `lease_until`: longer than the slowest channel's
send timeout). A leased row is lost only when its lease ran out or its owner holds no
liveness lock any more (`gateway.instances`: the process or its database session is gone);
a live peer's sends are never touched. On SQLite (one sender per file) every row still
`sending` at start is lost. An owner that finishes after its row was declared lost records
the real outcome over `unknown` (it knows; nobody resent it meanwhile).

States and what moves them (the tables below are the whole machine):

    pending --claim--> sending --receipt--> accepted | queued | sent
                       sending --retry----> pending     (transient failure, before the limit)
                       sending --give-up--> failed      (permanent failure, or the limit)
                       sending --lost-----> unknown     (the process died mid-send)
                       sending --in-doubt-> unknown     (the channel cannot tell: SendInDoubt)
    unknown (declared lost, its owner still sending) --the owner's final outcome-->
                       accepted | queued | sent | failed | unknown   (a retry is not: stays)
    accepted/queued/sent/delivered --provider status--> any state of higher RANK
    failed, undelivered, read: final (delivered may still become read)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.bus import DeliveryUpdated, DomainEvent
from gateway.channels import (
    CallbackRequest,
    CodeMessage,
    Connector,
    OutboundKind,
    OutboundMessage,
    SendError,
    SendInDoubt,
    TextMessage,
)
from gateway.clock import Clock
from gateway.domain import ConversationId, LegId, OutboxId, OutboxState
from gateway.instances import hold_liveness, new_instance_id, owner_gone
from gateway.models import EarlyStatus, OutboxMessage
from gateway.conversations import insert_ignore
from gateway.store import Prepared, new_id
from gateway.tasks import cancel_and_wait, wait_event

log = logging.getLogger("gateway.outbox")
OUTBOX = OutboxMessage.__table__
EARLY = EarlyStatus.__table__


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by the worker, on the wire
    UNKNOWN = "unknown"  # was on the wire when the process died: never resent
    ACCEPTED = "accepted"
    QUEUED = "queued"
    SENDING_PROVIDER = "sending-provider"
    SENT = "sent"
    FAILED = "failed"
    UNDELIVERED = "undelivered"
    DELIVERED = "delivered"
    READ = "read"


class WorkerStep(StrEnum):
    CLAIM = "claim"
    RECEIPT = "receipt"
    RETRY = "retry"
    GIVE_UP = "give-up"
    LOST = "lost"
    IN_DOUBT = "in-doubt"


S = OutboxStatus
# The worker's transitions: (state, step) -> the states it may lead to.
WORKER: Mapping[tuple[OutboxStatus, WorkerStep], frozenset[OutboxStatus]] = {
    (S.PENDING, WorkerStep.CLAIM): frozenset({S.SENDING}),
    (S.SENDING, WorkerStep.RECEIPT): frozenset({S.ACCEPTED, S.QUEUED, S.SENT}),
    (S.SENDING, WorkerStep.RETRY): frozenset({S.PENDING}),
    (S.SENDING, WorkerStep.GIVE_UP): frozenset({S.FAILED}),
    (S.SENDING, WorkerStep.LOST): frozenset({S.UNKNOWN}),
    (S.SENDING, WorkerStep.IN_DOUBT): frozenset({S.UNKNOWN}),
}
# Where a message stands for status callbacks; a status only ever moves to a higher rank.
RANK: Mapping[str, int] = {
    S.PENDING: 0, S.SENDING: 0, S.UNKNOWN: 0, S.ACCEPTED: 1, S.QUEUED: 1,
    S.SENDING_PROVIDER: 1, S.SENT: 2, S.FAILED: 3, S.UNDELIVERED: 3, S.DELIVERED: 3, S.READ: 4,
}
FINAL = frozenset({S.FAILED, S.UNDELIVERED, S.READ})  # delivered may still become read
LEASE = timedelta(seconds=60)  # the least lease; longer when a channel's send timeout is
LEASE_MARGIN = timedelta(seconds=30)  # beyond the slowest send timeout: recording the outcome
CLAIM_BATCH = 50
LOST_ERROR = ("the gateway stopped while this was being sent; not resent automatically to "
              "avoid a duplicate: check the provider's log")
_RECEIPT = WORKER[(S.SENDING, WorkerStep.RECEIPT)]
_FAILING = frozenset({S.PENDING, S.FAILED})  # what a send that did not succeed leads to


def worker_step(current: OutboxStatus, step: WorkerStep, to: OutboxStatus) -> OutboxStatus:
    """`to`, when the table allows it from `current`; a bug otherwise."""
    if to not in WORKER.get((current, step), frozenset()):
        raise AssertionError(f"outbox: {step} cannot move a {current} row to {to}")
    return to


def provider_step(current: str, reported: str) -> str | None:
    """The state after a provider reports `reported`, or None when it changes nothing."""
    if reported not in RANK:
        return None
    if RANK[reported] <= RANK.get(current, 0) or current in FINAL:
        return None
    return reported


# ---- typed messages <-> the row's payload ------------------------------------------------------


def _payload(message: OutboundMessage) -> dict[str, Any]:
    if isinstance(message, CallbackRequest):
        return {"escalation_token": message.escalation_token,
                "escalation_id": message.escalation_id}
    assert isinstance(message, (TextMessage, CodeMessage))
    body: dict[str, Any] = {"text": message.text}
    if message.thread_key is not None:
        body["thread_key"] = message.thread_key
    if isinstance(message, CodeMessage) and message.challenge_id is not None:
        body["challenge_id"] = message.challenge_id
    return body


def message_from_row(row: Mapping[str, Any]) -> OutboundMessage:
    """The typed message an outbox row holds (rows of every schema version)."""
    payload = dict(row["payload"] or {})
    common: dict[str, Any] = dict(
        id=OutboxId(row["id"]), channel=row["channel"], to=row["to_address"],
        from_=row["from_address"], conversation_id=row["conversation_id"],
        leg_id=row["leg_id"], thread_key=payload.get("thread_key"), attempt=row["attempts"])
    kind = row["kind"]
    if kind == OutboundKind.CALL:
        return CallbackRequest(escalation_token=payload.get("escalation_token") or "",
                               escalation_id=payload.get("escalation_id") or "", **common)
    if kind == OutboundKind.OTP:
        return CodeMessage(text=payload.get("text") or "",
                           challenge_id=payload.get("challenge_id"), **common)
    return TextMessage(text=payload.get("text") or "", **common)


_ENQUEUE = Prepared(insert(OUTBOX).values(
    {c.name: bindparam(c.name) for c in OUTBOX.columns}))


def new_outbox_id() -> OutboxId:
    """Chosen before the row is written, so the transcript entry can name it (and it, the
    entry)."""
    return OutboxId(new_id("out"))


SECRET_MARK = "[redacted]"


def enqueue(conn: Connection, message: OutboundMessage, now: datetime,
            transcript_entry_id: int | None = None, secret: str | None = None) -> OutboxId:
    """Write `message` to the outbox in the caller's transaction; the worker sends it.

    `secret` is a code or PIN inside the message's text: the row keeps it only while the
    send needs it; once the send is settled (sent, failed for good, or in doubt after a
    crash) the text is kept with `secret` replaced (`redacted_payload`)."""
    payload = _payload(message)
    if secret:
        text = payload.get("text") or ""
        at = text.find(secret)
        if at < 0:
            raise AssertionError("outbox: the secret is not in the message's text")
        payload["secret_span"] = [at, at + len(secret)]
    _ENQUEUE.execute(conn, {
        "id": message.id, "conversation_id": message.conversation_id,
        "leg_id": message.leg_id, "channel": message.channel, "kind": str(message.kind),
        "to_address": message.to, "from_address": message.from_,
        "payload": payload, "status": str(S.PENDING), "attempts": 0,
        "next_attempt_at": now, "lease_until": None, "lease_owner": None, "last_error": None,
        "provider_id": None,
        "transcript_entry_id": transcript_entry_id, "created_at": now, "updated_at": now,
    })
    return message.id


def redacted_payload(payload: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The payload without its secret, or None when it holds none (nothing to change)."""
    if not payload or "secret_span" not in payload:
        return None
    start, end = payload["secret_span"]
    text = payload.get("text") or ""
    out = {k: v for k, v in payload.items() if k != "secret_span"}
    out["text"] = text[:start] + SECRET_MARK + text[end:]
    out["redacted"] = True
    return out


def read_state(conn: Connection, message_id: str) -> OutboxState | None:
    row = conn.execute(select(OUTBOX).where(OUTBOX.c.id == message_id)).mappings().first()
    if row is None:
        return None
    return OutboxState(
        id=OutboxId(row["id"]), channel=row["channel"], kind=row["kind"],
        to=row["to_address"], status=row["status"], attempts=row["attempts"],
        provider_id=row["provider_id"], last_error=row["last_error"],
        conversation_id=ConversationId(row["conversation_id"]) if row["conversation_id"]
        else None,
        leg_id=LegId(row["leg_id"]) if row["leg_id"] else None,
        created_at=row["created_at"], updated_at=row["updated_at"])


def apply_status(
    conn: Connection,
    *,
    provider_id: str,
    status: str,
    now: datetime,
    error: str | None = None,
    moved: Callable[[DeliveryUpdated], None] | None = None,
) -> str | None:
    """Move the message with this provider id to `status` unless that goes backwards.

    Returns the status the message has afterwards, or None when no message has that id yet:
    then the status is kept and applied once the send is recorded (`apply_early`). A move is
    told to `moved` (the caller publishes it after its commit).
    """
    row = conn.execute(
        select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.conversation_id)
        .where(OUTBOX.c.provider_id == provider_id)
    ).first()
    if row is None:
        if status in RANK:
            conn.execute(
                insert_ignore(conn, EARLY).values(
                    provider_id=provider_id, status=status, error=error, at=now)
            )
        return None
    after = _move(conn, row[0], row[1], status, now, error)
    if moved is not None and after != row[1]:
        moved(DeliveryUpdated(row[2], row[0], after, error))
    return after


def _move(conn: Connection, message_id: str, current: str, status: str, now: datetime,
          error: str | None) -> str:
    if status not in RANK:
        log.warning("outbox: unknown provider status %r for %s ignored", status, message_id)
        return current
    moved = provider_step(current, status)
    if moved is None:
        return current
    values: dict[str, Any] = {"status": moved, "updated_at": now}
    if error:
        values["last_error"] = error
    conn.execute(update(OUTBOX).where(OUTBOX.c.id == message_id).values(**values))
    return moved


def apply_early(conn: Connection, message_id: str, provider_id: str, now: datetime,
                moved: Callable[[DeliveryUpdated], None] | None = None) -> None:
    """Apply statuses that arrived before this send was recorded, in rank order."""
    early = conn.execute(
        select(EARLY.c.status, EARLY.c.error).where(EARLY.c.provider_id == provider_id)
    ).all()
    if not early:
        return
    row = conn.execute(select(OUTBOX.c.status, OUTBOX.c.conversation_id)
                       .where(OUTBOX.c.id == message_id)).first()
    before = current = row[0] if row else None
    for status, error in sorted(early, key=lambda r: RANK[r[0]]):
        current = _move(conn, message_id, current or S.SENT, status, now, error)
        if moved is not None and current != before:
            moved(DeliveryUpdated(row[1] if row else None, message_id, current, error))
            before = current
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
        publish: Callable[[Iterable[DomainEvent]], None] | None = None,
        instance_id: str | None = None,
    ) -> None:
        self._engine = engine
        self._sent = sent or (lambda _channel, _outcome: None)  # (channel, outcome) counter
        self._publish = publish or (lambda _events: None)  # the bus, after each commit
        self._connectors = dict(connectors)
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._send_timeout = send_timeout
        self._drain_timeout = send_timeout
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._concurrency = concurrency
        self._inflight: set[asyncio.Task[None]] = set()
        self._liveness: AsyncConnection | None = None
        self._swept_at = 0.0
        self.instance_id = instance_id or new_instance_id()
        self.passes = 0  # completed scans for due rows (health shows it)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def lease(self) -> timedelta:
        """How long a claimed row is ours: outlasts the slowest channel's send timeout."""
        return max(LEASE, timedelta(seconds=self._drain_timeout) + LEASE_MARGIN)

    def add_connector(self, connector: Connector) -> None:
        for channel in connector.channels:
            self._connectors[channel] = connector
        # Shutdown waits for sends on the wire as long as the slowest channel may take.
        self._drain_timeout = max(self._drain_timeout,
                                  getattr(connector, "send_timeout", None) or 0.0)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self._hold_liveness()
        await self.recover()
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._inflight:
            # Let sends already on the wire finish and record their outcome.
            await asyncio.wait(self._inflight, timeout=self._drain_timeout)
        await self._release_liveness()

    async def abandon(self) -> None:
        """Stop at once, leaving what a crash leaves: sends on the wire record nothing, the
        liveness lock goes with its session (the tests' in-process stand-in for SIGKILL)."""
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        await self._release_liveness()

    # ---- this instance's liveness (PostgreSQL) ----------------------------------------------

    async def _hold_liveness(self) -> None:
        """Hold our liveness lock while we may lease rows: peers read our leases as live."""
        if self._engine.dialect.name != "postgresql" or self._liveness is not None:
            return
        conn = await self._engine.connect()
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not await hold_liveness(conn, self.instance_id):
            await conn.close()
            raise RuntimeError(f"GATEWAY_INSTANCE_ID {self.instance_id!r} is in use by another "
                               "running gateway on this database: give each gateway its own")
        self._liveness = conn

    async def _check_liveness(self) -> None:
        """Take the lock again when its connection was lost (PostgreSQL restarted): until
        then peers may declare our sends lost, and our outcomes still win (see _record)."""
        if self._liveness is None:
            return
        try:
            await self._liveness.execute(select(1))
        except Exception as exc:
            log.warning("outbox: liveness connection lost (%s); taking the lock again", exc)
            try:
                await self._liveness.invalidate()
                await self._liveness.close()
            except Exception:
                pass
            self._liveness = None
            await self._hold_liveness()

    async def _release_liveness(self) -> None:
        conn, self._liveness = self._liveness, None
        if conn is not None:
            try:
                await conn.invalidate()  # a closed session releases its advisory locks
                await conn.close()
            except Exception as exc:
                log.warning("outbox: closing the liveness connection failed: %s", exc)

    # ---- recovery: leases of senders that are gone -----------------------------------------

    async def recover(self) -> int:
        """At start: rows whose sender is gone are in doubt; say so, never resend.

        PostgreSQL: rows whose lease ran out, whose owner holds no liveness lock, or that
        this instance id leased before a restart (a stable `GATEWAY_INSTANCE_ID`); a live
        peer's rows stay its own. SQLite has one sender per file: every row still `sending`.
        """
        return await self._sweep(starting=True)

    async def _sweep(self, starting: bool = False) -> int:
        now = self._clock.now()
        async with self._engine.begin() as conn:
            lost = await self._lost(conn, now, starting)
            if lost:
                # In doubt is settled: a code in such a row is never needed again.
                for message_id, payload in (await conn.execute(
                        select(OUTBOX.c.id, OUTBOX.c.payload).where(OUTBOX.c.id.in_(lost))
                )).all():
                    redacted = redacted_payload(payload)
                    if redacted is not None:
                        await conn.execute(update(OUTBOX).where(OUTBOX.c.id == message_id)
                                           .values(payload=redacted))
                await conn.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.id.in_(lost), OUTBOX.c.status == S.SENDING)
                    .values(status=worker_step(S.SENDING, WorkerStep.LOST, S.UNKNOWN),
                            updated_at=now, last_error=LOST_ERROR)
                )
        if lost:
            log.warning("outbox: %d message(s) were in flight at a sender that is gone; "
                        "marked unknown", len(lost))
        return len(lost)

    async def _lost(self, conn: AsyncConnection, now: datetime, starting: bool) -> list[str]:
        rows = (await conn.execute(
            select(OUTBOX.c.id, OUTBOX.c.lease_owner, OUTBOX.c.lease_until)
            .where(OUTBOX.c.status == S.SENDING))).all()
        sqlite = conn.dialect.name == "sqlite"
        gone: dict[str, bool] = {}
        lost = []
        for message_id, owner, until in rows:
            if (starting and (sqlite or owner == self.instance_id)) or until is None \
                    or until <= now:
                lost.append(message_id)
            elif not sqlite and owner is not None and owner != self.instance_id:
                if owner not in gone:
                    gone[owner] = await owner_gone(conn, owner)
                if gone[owner]:
                    lost.append(message_id)
        return lost

    # ---- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # Cleared before the pass: a reply committed during it wakes the next one.
            self._wake.clear()
            try:
                if time.monotonic() - self._swept_at >= self._poll:
                    self._swept_at = time.monotonic()
                    await self._check_liveness()
                    await self._sweep()
                delay = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive a database hiccup
                log.exception("outbox: pass failed; retrying in %.0f s", self._poll)
                delay = self._poll
            await wait_event(self._wake, delay)  # never wait_for: see gateway/tasks.py

    async def run_once(self) -> float:
        """Claim and start sends for every due row; return seconds until the next one is
        due. Claims no more than there are free send slots."""
        now = self._clock.now()
        while True:
            free = self._concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            want = min(free, CLAIM_BATCH)
            rows = await self._claim(want, now)
            for row in rows:
                task = asyncio.create_task(self._send_one(row))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if len(rows) < want:
                break
        async with self._engine.connect() as conn:
            upcoming = (
                await conn.execute(
                    select(OUTBOX.c.next_attempt_at)
                    .where(OUTBOX.c.status == S.PENDING, OUTBOX.c.next_attempt_at > now)
                    .order_by(OUTBOX.c.next_attempt_at)
                    .limit(1)
                )
            ).scalar()
        self.passes += 1
        if upcoming is None:
            return self._poll
        return max(0.01, min(self._poll, (upcoming - now).total_seconds()))

    async def drain(self, timeout: float = 10.0) -> None:
        """Send everything due now and wait for it (tests and the demo use this)."""
        await self.run_once()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def _claim(self, limit: int, now: datetime) -> list[dict[str, Any]]:
        """Lease up to `limit` due rows to this instance. PostgreSQL: rows another gateway
        is claiming right now are skipped, not waited for; SQLite's BEGIN IMMEDIATE makes
        the read and the update one step."""
        until = self._clock.now() + self.lease
        async with self._engine.begin() as conn:
            rows = (await conn.execute(
                select(OUTBOX)
                .where(OUTBOX.c.status == S.PENDING, OUTBOX.c.next_attempt_at <= now)
                .order_by(OUTBOX.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )).mappings().all()
            if not rows:
                return []
            await conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([row["id"] for row in rows]))
                .values(status=worker_step(S.PENDING, WorkerStep.CLAIM, S.SENDING),
                        attempts=OUTBOX.c.attempts + 1, lease_until=until,
                        lease_owner=self.instance_id, updated_at=now)
            )
        return [dict(row, status=S.SENDING, attempts=row["attempts"] + 1, lease_until=until,
                     lease_owner=self.instance_id) for row in rows]

    async def _send_one(self, row: Mapping[str, Any]) -> None:
        message_id = row["id"]
        message = message_from_row(row)
        connector = self._connectors.get(message.channel)
        values: dict[str, Any]
        if connector is None:
            values = {"status": worker_step(S.SENDING, WorkerStep.GIVE_UP, S.FAILED),
                      "last_error": f"no connector is configured for channel {message.channel}"}
        else:
            timeout = getattr(connector, "send_timeout", None) or self._send_timeout
            try:
                receipt = await asyncio.wait_for(connector.send(message), timeout)
            except SendInDoubt as exc:  # the provider may have it: never resent by itself
                values = {"status": worker_step(S.SENDING, WorkerStep.IN_DOUBT, S.UNKNOWN),
                          "last_error": str(exc)[:500]}
            except SendError as exc:
                values = self._failure(message, str(exc), exc.permanent)
            except TimeoutError:
                values = self._failure(
                    message, f"no answer from the provider in {timeout:.0f} s", False
                )
            except Exception as exc:  # a connector bug must not kill the worker
                log.exception("outbox: connector for %s raised", message.channel)
                values = self._failure(message, f"{type(exc).__name__}: {exc}", False)
            else:
                first = receipt.status if receipt.status in _RECEIPT else S.SENT
                values = {"status": worker_step(S.SENDING, WorkerStep.RECEIPT, S(first)),
                          "provider_id": receipt.provider_id, "last_error": None}
        now = self._clock.now()
        values.update(updated_at=now, lease_until=None)
        if values["status"] != S.PENDING:  # settled: a code in the row is not needed again
            redacted = redacted_payload(row["payload"])
            if redacted is not None:
                values["payload"] = redacted
        moves = [DeliveryUpdated(message.conversation_id, message.id, values["status"],
                                 values.get("last_error"))]
        # Ours while sending; and when a peer declared it lost meanwhile (our lease ran out,
        # or our liveness lock went with a lost session), a final outcome is still the truth.
        ours = OUTBOX.c.status == S.SENDING
        if values["status"] != S.PENDING:
            ours = or_(ours, OUTBOX.c.status == S.UNKNOWN)
        async with self._engine.begin() as conn:
            recorded = await conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id == message_id, OUTBOX.c.lease_owner == self.instance_id,
                       ours)
                .values(**values)
            )
            if recorded.rowcount == 1 and values.get("provider_id"):
                await conn.run_sync(apply_early, message_id, values["provider_id"], now,
                                    moves.append)
        if recorded.rowcount != 1:
            log.warning("outbox: %s %s was declared lost while it was being sent; it stays "
                        "unknown (this attempt ended %s)", message.kind, message_id,
                        values["status"])
            return
        self._publish(moves)
        self._sent(message.channel, "retry" if values["status"] == "pending" else values["status"])
        # A send that failed (to be retried, or for good) is something an operator acts on.
        level = logging.WARNING if values["status"] in _FAILING else logging.INFO
        log.log(level, "outbox: %s %s to %s: %s%s", message.kind, message.id, message.to,
                values["status"], f" ({values['last_error']})" if values.get("last_error") else "")
        if values["status"] == "pending":
            self.wake()

    def _failure(self, message: OutboundMessage, error: str, permanent: bool) -> dict[str, Any]:
        if permanent or message.attempt >= self._backoff.max_attempts:
            why = error if permanent else f"gave up after {message.attempt} attempts: {error}"
            return {"status": worker_step(S.SENDING, WorkerStep.GIVE_UP, S.FAILED),
                    "last_error": why}
        retry_at = self._clock.now() + timedelta(seconds=self._backoff.delay(message.attempt))
        return {"status": worker_step(S.SENDING, WorkerStep.RETRY, S.PENDING),
                "last_error": error, "next_attempt_at": retry_at}
