"""The agent workspace's reads: the inbox (conversations, most recent activity first) and one
conversation's timeline across every channel.

Plain synchronous SQLAlchemy over a Connection, run by `gateway.store.Reader` in one hop, as
`gateway/context.py` does. The inbox pages by keyset on (last_activity_at, id), which the
index `ix_conversations_status_activity` serves (`ix_conversations_activity` for
status=all); the cursor is opaque to clients (base64 of the last row's key).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from gateway import context
from gateway.channels import MESSAGING_CHANNELS
from gateway.models import (
    Conversation,
    Customer,
    Escalation,
    Leg,
    Merge,
    OtpChallenge,
    OutboxMessage,
    TranscriptEntry,
)

CONVERSATIONS = Conversation.__table__
CUSTOMERS = Customer.__table__
LEGS = Leg.__table__
TRANSCRIPT = TranscriptEntry.__table__
OUTBOX = OutboxMessage.__table__
CHALLENGES = OtpChallenge.__table__
ESCALATIONS = Escalation.__table__
MERGES = Merge.__table__

MAX_LIMIT = 200
LAST_TEXT_CHARS = 200
Status = Literal["open", "closed", "all"]


class BadQuery(ValueError):
    """A query parameter the inbox cannot use (an API 400)."""


def _assignee() -> ColumnElement[Any] | None:
    """The conversation's assigned agent, once the assignment migration has added it."""
    for name in ("assigned_agent_id", "agent_id"):
        column = CONVERSATIONS.c.get(name)
        if column is not None:
            return column
    return None


@dataclass(frozen=True, slots=True)
class InboxQuery:
    status: Status = "open"
    limit: int = 50
    cursor: str | None = None
    channel: str | None = None
    agent: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("open", "closed", "all"):
            raise BadQuery("status must be open, closed or all")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}")


def encode_cursor(last_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([last_at.isoformat(), conversation_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, conversation_id = json.loads(raw)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(conversation_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadQuery("cursor is not one this API gave out") from None
    return when, conversation_id


def inbox_page(conn: Connection, query: InboxQuery) -> dict[str, Any]:
    """One page of the inbox: `{"items": [...], "next_cursor": str | None}`."""
    c = CONVERSATIONS.c
    stmt = select(c.id, c.customer_id, c.status, c.opened_at, c.last_activity_at, c.closed_at,
                  CUSTOMERS.c.display_name).join(CUSTOMERS, CUSTOMERS.c.id == c.customer_id)
    assignee = _assignee()
    if assignee is not None:
        stmt = stmt.add_columns(assignee.label("assigned_agent_id"))
    if query.status != "all":
        stmt = stmt.where(c.status == query.status)
    if query.channel:
        stmt = stmt.where(exists().where(LEGS.c.conversation_id == c.id,
                                         LEGS.c.channel == query.channel))
    if query.agent:
        handled = exists().where(LEGS.c.conversation_id == c.id, LEGS.c.agent_id == query.agent)
        stmt = stmt.where(handled if assignee is None else or_(assignee == query.agent, handled))
    if query.cursor:
        at, last_id = decode_cursor(query.cursor)
        stmt = stmt.where(or_(c.last_activity_at < at,
                              and_(c.last_activity_at == at, c.id < last_id)))
    rows = conn.execute(
        stmt.order_by(c.last_activity_at.desc(), c.id.desc()).limit(query.limit + 1)
    ).mappings().all()
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    ids = [r["id"] for r in rows]
    details = _page_details(conn, ids)
    items = []
    for r in rows:
        d = details.get(r["id"], {})
        items.append({
            "id": r["id"], "customer_id": r["customer_id"], "status": r["status"],
            "channels": sorted(d.get("channels", ())),
            "last_at": context.iso(r["last_activity_at"]),
            "last_text": d.get("last_text"), "last_kind": d.get("last_kind"),
            "last_direction": d.get("last_direction"), "last_channel": d.get("last_channel"),
            "customer_name": r["display_name"], "customer_address": d.get("address"),
            "assigned_agent_id": r.get("assigned_agent_id"),
            "agents": sorted(d.get("agents", ())),
            "waiting": d.get("waiting", 0), "entries": d.get("entries", 0),
            "opened_at": context.iso(r["opened_at"]), "closed_at": context.iso(r["closed_at"]),
        })
    next_cursor = encode_cursor(rows[-1]["last_activity_at"], rows[-1]["id"]) if more else None
    return {"items": items, "next_cursor": next_cursor}


def _page_details(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Channels, agents, customer address, last entry and counters for a page: four queries
    for the whole page, each on an index by conversation."""
    out: dict[str, dict[str, Any]] = {cid: {"channels": set(), "agents": set()} for cid in ids}
    if not ids:
        return out
    legs = conn.execute(
        select(LEGS.c.conversation_id, LEGS.c.channel, LEGS.c.agent_id, LEGS.c.address)
        .where(LEGS.c.conversation_id.in_(ids))
        .order_by(LEGS.c.started_at, LEGS.c.id)
    ).all()
    for cid, channel, agent, address in legs:
        out[cid]["channels"].add(channel)
        if agent:
            out[cid]["agents"].add(agent)
        out[cid]["address"] = address  # the newest leg's: who is talking now
    last_ids = (select(func.max(TRANSCRIPT.c.id)).where(TRANSCRIPT.c.conversation_id.in_(ids))
                .group_by(TRANSCRIPT.c.conversation_id))
    for cid, text, kind, direction, channel in conn.execute(
        select(TRANSCRIPT.c.conversation_id, TRANSCRIPT.c.text, TRANSCRIPT.c.kind,
               TRANSCRIPT.c.direction, TRANSCRIPT.c.channel)
        .where(TRANSCRIPT.c.id.in_(last_ids))
    ).all():
        out[cid].update(last_text=text[:LAST_TEXT_CHARS], last_kind=kind,
                        last_direction=direction, last_channel=channel)
    # "waiting": the customer's messages since the last thing we sent (unread-ish).
    last_out = (
        select(TRANSCRIPT.c.conversation_id, func.max(TRANSCRIPT.c.id).label("out_id"))
        .where(TRANSCRIPT.c.conversation_id.in_(ids), TRANSCRIPT.c.direction == "out")
        .group_by(TRANSCRIPT.c.conversation_id)
        .subquery()
    )
    waiting = case(
        (and_(TRANSCRIPT.c.direction == "in", TRANSCRIPT.c.kind == "message",
              or_(last_out.c.out_id.is_(None), TRANSCRIPT.c.id > last_out.c.out_id)), 1),
        else_=0)
    for cid, entries, waiting_count in conn.execute(
        select(TRANSCRIPT.c.conversation_id, func.count(), func.sum(waiting))
        .outerjoin(last_out, last_out.c.conversation_id == TRANSCRIPT.c.conversation_id)
        .where(TRANSCRIPT.c.conversation_id.in_(ids))
        .group_by(TRANSCRIPT.c.conversation_id)
    ).all():
        out[cid].update(entries=int(entries), waiting=int(waiting_count or 0))
    return out


# ---- one conversation, every channel ------------------------------------------------------


def _leg_views(conn: Connection, conversation_id: str, customer_id: str, now: datetime,
               legs: list[dict[str, Any]]) -> None:
    """Each leg's verification badge and disclosure level, by the trust rule at `now`."""
    rows = {r["id"]: r for r in conn.execute(
        select(LEGS).where(LEGS.c.conversation_id == conversation_id)).mappings()}
    for leg in legs:
        decision = context.leg_decision(conn, rows[leg["id"]], customer_id, now)
        leg["verification"] = context.verification_json(decision, now)
        leg["verification_reason"] = decision.reason.value
        leg["verification_explanation"] = decision.explanation
        leg["verification_expired_at"] = (
            context.iso(decision.grant.expires_at)
            if decision.grant is not None and not decision.carries else None)
        # The default disclosure policy (CONTRACT "Disclosure"): a leg that carries a
        # verification sees everything; one that does not is told less.
        leg["disclosure"] = "full" if decision.carries else "limited"


def timeline(conn: Connection, conversation_id: str, now: datetime) -> dict[str, Any] | None:
    """A conversation as the console shows it: customer with address evidence, legs with
    their verification badge and disclosure, and one timeline (transcript entries with
    delivery status, escalations, merges) in time order."""
    conv = conn.execute(
        select(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id)
    ).mappings().first()
    if conv is None:
        return None
    customer_id = conv["customer_id"]
    transcript = context.transcript_json(conn, conversation_id)
    legs = context.legs_json(conn, conversation_id, transcript)
    _leg_views(conn, conversation_id, customer_id, now, legs)
    deliveries = {
        r["id"]: {"status": r["status"], "error": r["last_error"], "kind": r["kind"],
                  "attempts": r["attempts"], "updated_at": context.iso(r["updated_at"])}
        for r in conn.execute(
            select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.last_error, OUTBOX.c.kind,
                   OUTBOX.c.attempts, OUTBOX.c.updated_at)
            .where(OUTBOX.c.conversation_id == conversation_id)).mappings()
    }
    items: list[tuple[str, int, dict[str, Any]]] = []
    for entry in transcript:
        outbox_id = (entry.get("data") or {}).get("outbox_id")
        delivery = deliveries.get(outbox_id) if outbox_id else None
        item = {"type": "entry", **entry, "delivery": delivery}
        if delivery is not None and delivery["kind"] == "otp":
            item["type"] = "code"
        items.append((entry["at"] or "", 0, item))
    for e in conn.execute(
        select(ESCALATIONS).where(ESCALATIONS.c.conversation_id == conversation_id)
    ).mappings():
        at = context.iso(e["created_at"]) or ""
        items.append((at, 1, {
            "type": "escalation", "id": e["id"], "at": at, "channel": e["channel"],
            "mode": e["mode"], "target_address": e["target_address"],
            "carries_verification": e["grant_id"] is not None,
            "expires_at": context.iso(e["expires_at"]), "used_at": context.iso(e["used_at"]),
            "used_by_leg_id": e["used_by_leg_id"],
        }))
    for m in conn.execute(
        select(MERGES).where(or_(MERGES.c.survivor_id == customer_id,
                                 MERGES.c.merged_id == customer_id))
    ).mappings():
        at = context.iso(m["at"]) or ""
        items.append((at, 2, {
            "type": "merge", "id": m["id"], "at": at, "survivor_id": m["survivor_id"],
            "merged_id": m["merged_id"], "agent": m["agent"],
            "undone_at": context.iso(m["undone_at"]),
        }))
    items.sort(key=lambda t: (t[0], t[1]))  # stable: entries keep their transcript order
    challenges = [
        {"id": r["id"], "address": r["address"], "method": r["method"], "status": r["status"],
         "created_at": context.iso(r["created_at"]), "expires_at": context.iso(r["expires_at"]),
         "attempts": r["attempts"], "max_attempts": r["max_attempts"],
         "leg_id": r["leg_id"]}
        for r in conn.execute(
            select(CHALLENGES).where(CHALLENGES.c.conversation_id == conversation_id)
            .order_by(CHALLENGES.c.created_at.desc())).mappings()
    ]
    # The leg a reply goes out on, chosen as the core chooses it (the newest messaging leg).
    messaging = [leg for leg in legs if leg["channel"] in MESSAGING_CHANNELS]
    assignee = _assignee()
    return {
        "id": conv["id"], "customer_id": customer_id, "status": conv["status"],
        "opened_at": context.iso(conv["opened_at"]),
        "last_activity_at": context.iso(conv["last_activity_at"]),
        "closed_at": context.iso(conv["closed_at"]),
        "assigned_agent_id": conv[assignee.name] if assignee is not None else None,
        "customer": context.customer_json(conn, customer_id),
        "legs": legs,
        "reply_leg_id": max(messaging, key=lambda leg: leg["started_at"] or "")["id"]
        if messaging else None,
        "timeline": [item for _, _, item in items],
        "challenges": challenges,
    }
