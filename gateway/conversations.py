"""Conversations, legs and the transcript: where an inbound event lands.

One open conversation per customer (closed after an idle window); one leg per channel session;
the transcript is one ordered list across legs, ordered by the gateway's receive time (the
row id). Functions take an open connection: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.models import Conversation, CustomerAddress, Leg, ProcessedEvent, TranscriptEntry
from gateway.store import Prepared, new_id

CONVERSATIONS = Conversation.__table__
LEGS = Leg.__table__
TRANSCRIPT = TranscriptEntry.__table__
PROCESSED = ProcessedEvent.__table__


# Hot-path statements, built once: constructing a statement costs more than running it.
INSERT_CONVERSATIONS = insert(CONVERSATIONS)
INSERT_LEGS = Prepared(insert(LEGS).values(
    {c.name: bindparam(c.name) for c in LEGS.columns}))
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


ADDRESSES = CustomerAddress.__table__
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


def lookup_thread(
    conn: Connection, address: str, channel: str, thread_key: str
) -> tuple[str, str, str | None, datetime | None, str | None] | None:
    """In one query: (customer_id, evidence, open conversation, its last activity, the leg of
    this thread in it). The steady state of every chat needs nothing more."""
    rows = _THREAD.execute(conn, {"a": address, "ch": channel, "t": thread_key})
    return None if not rows else (rows[0][0], rows[0][1], rows[0][2], rows[0][3], rows[0][4])


def insert_ignore(conn: Connection, table: Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the connection's dialect."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


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
    conn: Connection, customer_id: str, now: datetime, idle: timedelta
) -> tuple[str, bool]:
    """The customer's open conversation, or a new one. Returns (id, created)."""
    rows = _OPEN_CONVERSATION.execute(conn, {"c": customer_id})
    row = rows[0] if rows else None
    if row is not None:
        if now - row[1] <= idle:
            return row[0], False
        close_conversation(conn, row[0], now)
    conversation_id = new_id("conv")
    conn.execute(INSERT_CONVERSATIONS, dict(
            id=conversation_id, customer_id=customer_id, status="open", opened_at=now,
            last_activity_at=now, closed_at=None,
        ))
    return conversation_id, True


def close_conversation(conn: Connection, conversation_id: str, now: datetime) -> None:
    conn.execute(
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.status == "open")
        .values(status="closed", closed_at=now)
    )


def find_leg(
    conn: Connection, conversation_id: str, channel: str, thread_key: str
) -> str | None:
    rows = _FIND_LEG.execute(conn, {"c": conversation_id, "ch": channel, "t": thread_key})
    return rows[0][0] if rows else None


def open_leg(
    conn: Connection,
    conversation_id: str,
    channel: str,
    thread_key: str,
    address: str,
    binding: str,
    now: datetime,
    local_address: str | None = None,
    escalation_id: str | None = None,
) -> tuple[str, bool]:
    """The leg for this thread in the conversation, or a new one. Returns (id, created)."""
    existing = find_leg(conn, conversation_id, channel, thread_key)
    if existing is not None:
        return existing, False
    leg_id = new_id("leg")
    INSERT_LEGS.execute(conn, {
        "id": leg_id, "conversation_id": conversation_id, "channel": channel,
        "thread_key": thread_key, "address": address, "local_address": local_address,
        "binding": binding, "escalation_id": escalation_id, "started_at": now,
        "ended_at": None, "agent_id": None,
    })
    return leg_id, True


def append(
    conn: Connection,
    *,
    conversation_id: str,
    leg_id: str,
    channel: str,
    direction: str,
    kind: str,
    author: str,
    text: str,
    now: datetime,
    provider: str | None = None,
    provider_id: str | None = None,
    provider_at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """Append one entry to the transcript and mark the conversation active."""
    entry_id = _APPEND.execute(conn, {
        "conversation_id": conversation_id, "leg_id": leg_id, "at": now,
        "provider_at": provider_at, "channel": channel, "direction": direction, "kind": kind,
        "author": author, "text": text, "data": data, "provider": provider,
        "provider_id": provider_id,
    })[0][0]
    _TOUCH.execute(conn, {"cid": conversation_id, "now": now})
    return int(entry_id)
