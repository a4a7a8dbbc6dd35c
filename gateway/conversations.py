"""Conversations, legs and the transcript: where an inbound event lands.

One open conversation per customer (closed after an idle window); one leg per channel session;
the transcript is one ordered list across legs, ordered by the gateway's receive time (the
row id). Functions take an open connection (or a `Tx`, when what they write is news: a
transcript entry, a closed conversation): the caller owns the transaction. They return the
typed rows of `gateway/domain.py`.
"""

from __future__ import annotations

import functools

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.batching import deferred, peek_deferred
from gateway.bus import ConversationClosed, EntryAdded
from gateway.domain import (
    ConversationId,
    ConversationRow,
    CustomerId,
    EntryId,
    LegId,
    LegRow,
    ThreadMatch,
)
from gateway.redaction import redact
from gateway.models import Conversation, CustomerAddress, Leg, ProcessedEvent, TranscriptEntry
from gateway.store import Prepared, new_id
from gateway.writes import Tx

CONVERSATIONS = Conversation.__table__
LEGS = Leg.__table__
TRANSCRIPT = TranscriptEntry.__table__
PROCESSED = ProcessedEvent.__table__
ADDRESSES = CustomerAddress.__table__


# Hot-path statements, built once: constructing a statement costs more than running it.
# Insert-or-get: another gateway may open the same thread's leg at the same moment.
_INSERT_LEG = {
    name: Prepared(dialect.insert(LEGS).values({c.name: bindparam(c.name) for c in LEGS.columns})
                   .on_conflict_do_nothing().returning(LEGS.c.id))
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_CLAIM = {
    name: Prepared(
        dialect.insert(PROCESSED)
        .values(provider=bindparam("p"), event_id=bindparam("e"), received_at=bindparam("n"))
        .on_conflict_do_nothing()
        .returning(PROCESSED.c.event_id)
    )
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_APPEND = Prepared(insert(TRANSCRIPT).values(
    {c: bindparam(c) for c in ("conversation_id", "leg_id", "at", "provider_at", "channel",
                               "direction", "kind", "author", "text", "data", "provider",
                               "provider_id")}
).returning(TRANSCRIPT.c.id))
_TOUCH = Prepared(
    update(CONVERSATIONS)
    .where(CONVERSATIONS.c.id == bindparam("cid"))
    .values(last_activity_at=bindparam("now"))
)
_FIND_LEG = Prepared(select(LEGS.c.id).where(
    LEGS.c.conversation_id == bindparam("c"), LEGS.c.channel == bindparam("ch"),
    LEGS.c.thread_key == bindparam("t"),
))
_OPEN_CONVERSATION = Prepared(
    select(CONVERSATIONS.c.id, CONVERSATIONS.c.last_activity_at)
    .where(CONVERSATIONS.c.customer_id == bindparam("c"), CONVERSATIONS.c.status == "open")
    .order_by(CONVERSATIONS.c.opened_at.desc())
    .limit(1)
)
_THREAD = Prepared(
    select(ADDRESSES.c.customer_id, ADDRESSES.c.evidence, CONVERSATIONS.c.id,
           CONVERSATIONS.c.last_activity_at, LEGS.c.id)
    .select_from(ADDRESSES)
    .outerjoin(CONVERSATIONS, (CONVERSATIONS.c.customer_id == ADDRESSES.c.customer_id)
               & (CONVERSATIONS.c.status == "open"))
    .outerjoin(LEGS, (LEGS.c.conversation_id == CONVERSATIONS.c.id)
               & (LEGS.c.channel == bindparam("ch")) & (LEGS.c.thread_key == bindparam("t")))
    .where(ADDRESSES.c.address == bindparam("a"))
    .order_by(CONVERSATIONS.c.opened_at.desc())
    .limit(1)
)


# A caller's customer and open conversation in one read (a call's set-up; on PostgreSQL
# also the first part of gateway/calls.py's one-statement set-up).
CALLER = (
    select(ADDRESSES.c.customer_id, ADDRESSES.c.evidence,
           CONVERSATIONS.c.id.label("conversation_id"), CONVERSATIONS.c.last_activity_at)
    .select_from(ADDRESSES)
    .outerjoin(CONVERSATIONS, (CONVERSATIONS.c.customer_id == ADDRESSES.c.customer_id)
               & (CONVERSATIONS.c.status == "open"))
    .where(ADDRESSES.c.address == bindparam("caller"))
    .order_by(CONVERSATIONS.c.opened_at.desc())
    .limit(1)
)
_CALLER = Prepared(CALLER)


_ACTIVITY = "conversation-activity"


def _write_activity(conn: Connection, latest: dict[str, datetime]) -> None:
    # In id order: two batches touching the same conversations lock them in one order.
    for conversation_id in sorted(latest):
        _TOUCH.execute(conn, {"cid": conversation_id, "now": latest[conversation_id]})


def _mark_active(tx: Tx, conversation_id: str) -> None:
    """The conversation was active now: written once per batch, just before its commit
    (`gateway/batching.py`), so its row is locked for the commit only."""
    latest = deferred(tx.conn, _ACTIVITY, _write_activity)
    if conversation_id not in latest or latest[conversation_id] < tx.now:
        latest[conversation_id] = tx.now


def _last_activity(conn: Connection, conversation_id: str, stored: datetime) -> datetime:
    """A conversation's last activity as this transaction knows it (stored, or deferred)."""
    pending = peek_deferred(conn, _ACTIVITY).get(conversation_id)
    return pending if pending is not None and pending > stored else stored


def lookup_thread(conn: Connection, address: str, channel: str, thread_key: str
                  ) -> ThreadMatch | None:
    """In one query: the sender's customer, their open conversation and its last activity,
    and the leg of this thread in it. The steady state of every chat needs nothing more."""
    rows = _THREAD.execute(conn, {"a": address, "ch": channel, "t": thread_key})
    if not rows:
        return None
    customer_id, evidence, conversation_id, last_at, leg_id = rows[0]
    if conversation_id is not None and last_at is not None:
        last_at = _last_activity(conn, conversation_id, last_at)
    return ThreadMatch(customer_id, evidence, conversation_id, last_at, leg_id)


def caller_match(conn: Connection, row: tuple[Any, ...] | None) -> ThreadMatch | None:
    """A `ThreadMatch` (without a leg) of a row (customer id, evidence, open conversation
    id, its stored last activity), the last activity as this transaction knows it."""
    if row is None:
        return None
    customer_id, evidence, conversation_id, last_at = row[:4]
    if conversation_id is not None and last_at is not None:
        last_at = _last_activity(conn, conversation_id, last_at)
    return ThreadMatch(customer_id, evidence, conversation_id, last_at, None)


def lookup_caller(conn: Connection, address: str) -> ThreadMatch | None:
    """In one query: the caller's customer, and their open conversation and its last
    activity (None: the address is unknown)."""
    rows = _CALLER.execute(conn, {"caller": address})
    return caller_match(conn, rows[0] if rows else None)


def insert_ignore(conn: Connection, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the connection's dialect."""
    return _insert_ignore(conn.dialect.name == "postgresql", table)


@functools.cache  # one statement object per table: SQLAlchemy then memoises its cache key
def _insert_ignore(postgres: bool, table: Table) -> Any:
    return (postgresql if postgres else sqlite).insert(table).on_conflict_do_nothing()


def claim_event(
    conn: Connection, provider: str, event_id: str, now: datetime
) -> bool:
    """True the first time (provider, event_id) is seen; False for a duplicate.

    Safe under concurrency: the primary key decides, and a concurrent twin waits for the
    first transaction, then finds the row.
    """
    stmt = _CLAIM["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    return bool(stmt.execute(conn, {"p": provider, "e": event_id, "n": now}))


def open_conversation(
    tx: Tx, customer_id: CustomerId, idle: timedelta,
    known: ThreadMatch | None = None,
) -> tuple[ConversationId, bool]:
    """The customer's open conversation, or a new one. Returns (id, created).

    An open conversation idle for longer than `idle` is closed first. Safe across gateways:
    a partial unique index allows one open conversation per customer, so the new one is
    inserted only if none is open (insert-or-get); one that lost that race to another
    gateway takes the winner's, committed by then. `known`: this transaction's first look
    at the customer's open conversation, already made (`lookup_caller`)."""
    for look in range(3):
        if look == 0 and known is not None and known.customer_id == customer_id:
            row = (None if known.conversation_id is None
                   else (known.conversation_id, known.last_activity_at))
        else:
            rows = _OPEN_CONVERSATION.execute(tx.conn, {"c": customer_id})
            row = rows[0] if rows else None
        if row is not None:
            if tx.now - _last_activity(tx.conn, row[0], row[1]) <= idle:
                return row[0], False
            close_conversation(tx, row[0], customer_id)
        conversation_id = ConversationId(new_id("conv"))
        opened = tx.conn.execute(insert_ignore(tx.conn, CONVERSATIONS), dict(
                id=conversation_id, customer_id=customer_id, status="open", opened_at=tx.now,
                last_activity_at=tx.now, closed_at=None, agent_id=None,
            ))
        if opened.rowcount == 1:
            return conversation_id, True
    raise RuntimeError(f"customer {customer_id}'s open conversation keeps changing")


def open_conversation_of(conn: Connection, customer_id: str, now: datetime,
                         idle: timedelta) -> ConversationId | None:
    """The customer's open conversation, if they have one still within `idle` (nothing is
    opened or closed: for messages that must not start a conversation, such as robots')."""
    rows = _OPEN_CONVERSATION.execute(conn, {"c": customer_id})
    if not rows or now - _last_activity(conn, rows[0][0], rows[0][1]) > idle:
        return None
    return ConversationId(rows[0][0])


def attest_leg(conn: Connection, leg_id: str) -> None:
    """The leg's sender proved, with something the gateway issued (an email reply carrying
    our thread token), that they receive what is sent on it: an `address` leg becomes
    `attested` (gateway/trust.py decides what that carries). Stronger bindings stay."""
    conn.execute(update(LEGS).where(LEGS.c.id == leg_id, LEGS.c.binding == "address")
                 .values(binding="attested"))


def close_conversation(tx: Tx, conversation_id: str, customer_id: str) -> bool:
    """Close an open conversation (its agent lets go of it); False when it was not open."""
    closed = tx.conn.execute(
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.status == "open")
        .values(status="closed", closed_at=tx.now)
    )
    if closed.rowcount != 1:
        return False
    tx.publish(ConversationClosed(conversation_id, customer_id))
    return True


def _conversation_row(row: Any) -> ConversationRow:
    return ConversationRow(
        id=row["id"], customer_id=row["customer_id"], status=row["status"],
        opened_at=row["opened_at"], last_activity_at=row["last_activity_at"],
        closed_at=row["closed_at"], agent_id=row["agent_id"])


def read_conversation(conn: Connection, conversation_id: str) -> ConversationRow | None:
    row = conn.execute(
        select(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id)
    ).mappings().first()
    return None if row is None else _conversation_row(row)


def assigned_to(conn: Connection, agent_id: str) -> list[ConversationRow]:
    rows = conn.execute(
        select(CONVERSATIONS).where(CONVERSATIONS.c.agent_id == agent_id,
                                    CONVERSATIONS.c.status == "open")
        .order_by(CONVERSATIONS.c.last_activity_at)
    ).mappings().all()
    return [_conversation_row(r) for r in rows]


def next_waiting(conn: Connection, now: datetime, idle: timedelta) -> ConversationRow | None:
    """The open, unassigned conversation that has waited longest (within the idle window)."""
    row = conn.execute(
        select(CONVERSATIONS)
        .where(CONVERSATIONS.c.status == "open", CONVERSATIONS.c.agent_id.is_(None),
               CONVERSATIONS.c.last_activity_at > now - idle)
        .order_by(CONVERSATIONS.c.last_activity_at, CONVERSATIONS.c.id)
        .limit(1)
    ).mappings().first()
    return None if row is None else _conversation_row(row)


def assign(conn: Connection, conversation_id: str, agent_id: str | None,
           expected: str | None) -> bool:
    """Give the conversation to `agent_id` (None: back to the queue) if it is still with
    `expected`; False when someone else changed it first."""
    where = [CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.status == "open"]
    where.append(CONVERSATIONS.c.agent_id.is_(None) if expected is None
                 else CONVERSATIONS.c.agent_id == expected)
    changed = conn.execute(update(CONVERSATIONS).where(*where).values(agent_id=agent_id))
    return changed.rowcount == 1


def find_leg(
    conn: Connection, conversation_id: str, channel: str, thread_key: str
) -> LegId | None:
    rows = _FIND_LEG.execute(conn, {"c": conversation_id, "ch": channel, "t": thread_key})
    return rows[0][0] if rows else None


def open_leg(
    conn: Connection,
    conversation_id: ConversationId,
    channel: str,
    thread_key: str,
    address: str,
    binding: str,
    now: datetime,
    local_address: str | None = None,
    escalation_id: str | None = None,
    *,
    new: LegId | None = None,
    attestation: str | None = None,
) -> tuple[LegId, bool]:
    """The leg for this thread in the conversation, or a new one. Returns (id, created).

    With `new` (an id the caller chose), always a new leg with that id: a call's leg is
    never found by its thread key (the caller picks a SIP Call-ID)."""
    if new is None:
        existing = find_leg(conn, conversation_id, channel, thread_key)
        if existing is not None:
            return existing, False
    leg_id = new or LegId(new_id("leg"))
    insert_leg = _INSERT_LEG["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    if not insert_leg.execute(conn, {
        "id": leg_id, "conversation_id": conversation_id, "channel": channel,
        "thread_key": thread_key, "address": address, "local_address": local_address,
        "binding": binding, "escalation_id": escalation_id, "started_at": now,
        "ended_at": None, "agent_id": None, "attestation": attestation,
    }):
        # Another gateway opened this thread's leg a moment ago (committed by now): take it.
        existing = find_leg(conn, conversation_id, channel, thread_key)
        if existing is None:
            raise RuntimeError(f"the {channel} leg {thread_key} of {conversation_id} vanished")
        return existing, False
    return leg_id, True


def _leg_row(row: Any) -> LegRow:
    return LegRow(
        id=row["id"], conversation_id=row["conversation_id"], channel=row["channel"],
        thread_key=row["thread_key"], address=row["address"],
        local_address=row["local_address"], binding=row["binding"],
        escalation_id=row["escalation_id"], started_at=row["started_at"],
        ended_at=row["ended_at"], agent_id=row["agent_id"])


def read_leg(conn: Connection, leg_id: str) -> LegRow | None:
    row = conn.execute(select(LEGS).where(LEGS.c.id == leg_id)).mappings().first()
    return None if row is None else _leg_row(row)


def latest_leg(conn: Connection, conversation_id: str, channels: Iterable[str] | None = None,
               address: str | None = None) -> LegRow | None:
    """The conversation's newest leg (on one of `channels`, for `address`, when given)."""
    query = select(LEGS).where(LEGS.c.conversation_id == conversation_id)
    if channels is not None:
        query = query.where(LEGS.c.channel.in_(sorted(channels)))
    if address is not None:
        query = query.where(LEGS.c.address == address)
    row = conn.execute(
        query.order_by(LEGS.c.started_at.desc(), LEGS.c.id.desc()).limit(1)
    ).mappings().first()
    return None if row is None else _leg_row(row)


def append(
    tx: Tx,
    *,
    customer_id: str,
    conversation_id: str,
    leg_id: str,
    channel: str,
    direction: str,
    kind: str,
    author: str,
    text: str,
    provider: str | None = None,
    provider_id: str | None = None,
    provider_at: datetime | None = None,
    data: dict[str, Any] | None = None,
    codes: Iterable[str] = (),
) -> EntryId:
    """Append one entry to the transcript, mark the conversation active (written at the end
    of the batch: `_mark_active`), and say so (an `EntryAdded` that builds its `Entry` when
    someone reads it).

    Every stored text passes `redaction.redact` here: card numbers masked, and `codes` (a
    code the text answers, as written in it) replaced, whatever the channel or direction."""
    params = entry_params(
        tx, conversation_id=conversation_id, leg_id=leg_id, channel=channel,
        direction=direction, kind=kind, author=author, text=text, provider=provider,
        provider_id=provider_id, provider_at=provider_at, data=data, codes=codes)
    entry_id = EntryId(int(_APPEND.execute(tx.conn, params)[0][0]))
    entry_written(tx, customer_id, entry_id, params)
    return entry_id


def entry_params(
    tx: Tx, *, conversation_id: str, leg_id: str, channel: str, direction: str, kind: str,
    author: str, text: str, provider: str | None = None, provider_id: str | None = None,
    provider_at: datetime | None = None, data: dict[str, Any] | None = None,
    codes: Iterable[str] = (),
) -> dict[str, Any]:
    """A transcript entry's columns (its text redacted): for `append`, or for a statement
    that writes the entry together with other rows (a call's set-up on PostgreSQL), which
    then calls `entry_written`."""
    return {
        "conversation_id": conversation_id, "leg_id": leg_id, "at": tx.now,
        "provider_at": provider_at, "channel": channel, "direction": direction, "kind": kind,
        "author": author, "text": redact(text, codes), "data": data, "provider": provider,
        "provider_id": provider_id,
    }


def entry_written(tx: Tx, customer_id: str, entry_id: EntryId, params: dict[str, Any]) -> None:
    """The entry of `params` is written as `entry_id`: mark its conversation active and say
    so (after the commit)."""
    _mark_active(tx, params["conversation_id"])
    # Entry's field order: id, conversation_id, leg_id, at, channel, direction, kind, author,
    # text, provider_at, data.
    tx.publish(EntryAdded(customer_id, (
        entry_id, params["conversation_id"], params["leg_id"], params["at"], params["channel"],
        params["direction"], params["kind"], params["author"], params["text"],
        params["provider_at"], params["data"])))
