"""The context bundle: what a new leg carries, served behind a capability token.

Tokens are issued when a leg is routed (one insert, cheap: the SIP hot path pays for it) and
the bundle is built when the agent fetches it. The read side is plain synchronous SQLAlchemy,
run by `gateway.store.Reader` in one hop (a thread for SQLite, run_sync for asyncpg), so a
bundle of 1,000 entries costs one trip off the event loop, not one per query. The verification part is decided by
`gateway.trust.decide_carry` at fetch time, so an expired grant shows as expired.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, func, insert, select, type_coerce
from sqlalchemy.engine import Connection

from gateway.models import (
    ContextToken,
    Conversation,
    Customer,
    CustomerAddress,
    Escalation,
    Leg,
    TranscriptEntry,
)
from gateway.disclosure import EXPLANATION as DISCLOSED, Disclosure, Level, limit_transcript
from gateway.disclosure import mask_address
from gateway.domain import iso
from gateway.trust import Binding, CarryDecision, LegFacts, decide_carry
from gateway.store import Prepared
from gateway.verification import (
    first_grant_since,
    hash_token,
    read_grant,
    read_latest_grant,
    read_leg_grant,
)

TOKENS = ContextToken.__table__
LEGS = Leg.__table__
CONVERSATIONS = Conversation.__table__
CUSTOMERS = Customer.__table__
ADDRESSES = CustomerAddress.__table__
TRANSCRIPT = TranscriptEntry.__table__
ESCALATIONS = Escalation.__table__
INSERT_TOKENS = Prepared(insert(TOKENS).values(
    {c: bindparam(c) for c in ("token_hash", "leg_id", "conversation_id", "created_at",
                               "expires_at")}))

EARLIER_CONVERSATIONS = 5


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime


def issue_token(
    conn: Connection,
    *,
    leg_id: str,
    conversation_id: str,
    now: datetime,
    ttl: timedelta,
    token: str | None = None,
) -> IssuedToken:
    """A capability for one leg's bundle: 192 random bits (`token`, made by
    `verification.new_token`, or made here); only its hash is stored."""
    token = token or secrets.token_urlsafe(24)
    INSERT_TOKENS.execute(conn, {
        "token_hash": hash_token(token), "leg_id": leg_id, "conversation_id": conversation_id,
        "created_at": now, "expires_at": now + ttl,
    })
    return IssuedToken(token, now + ttl)


def iso_text(value: str | None) -> str | None:
    if value is None or value.endswith("Z"):
        return value
    return f"{value[:10]}T{value[11:23]}Z"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


def leg_decision(conn: Connection, leg: Any, customer_id: str, now: datetime) -> (
    CarryDecision
):
    """Run the trust rule for a stored leg."""
    escalation_grant_id = None
    escalation_valid = False
    binding = Binding(leg["binding"])
    if binding in (Binding.ESCALATION, Binding.CALLBACK) and leg["escalation_id"]:
        esc = (
            conn.execute(
                select(ESCALATIONS.c.grant_id, ESCALATIONS.c.used_by_leg_id).where(
                    ESCALATIONS.c.id == leg["escalation_id"]
                )
            )
        ).first()
        if esc is not None and esc[1] == leg["id"]:
            escalation_grant_id, escalation_valid = esc[0], True
    grant = read_leg_grant(conn, customer_id, leg["id"])
    if grant is None or grant.expires_at <= now:
        grant = (
            read_grant(conn, escalation_grant_id)
            if escalation_grant_id
            else read_latest_grant(conn, customer_id)
        )
    facts = LegFacts(
        id=leg["id"], customer_id=customer_id, address=leg["address"], binding=binding,
        escalation_grant_id=escalation_grant_id, escalation_valid=escalation_valid,
    )
    return decide_carry(facts, grant, now)


def verification_json(decision: CarryDecision, now: datetime) -> dict[str, Any] | None:
    grant = decision.grant
    if not decision.carries or grant is None:
        return None
    return {
        "method": grant.method,
        "address": grant.address,
        "verified_at": iso(grant.verified_at),
        "expires_at": iso(grant.expires_at),
        "age_seconds": int((now - grant.verified_at).total_seconds()),
        "via": decision.reason.value,
        "summary": f"verified by {grant.method}, {_age((now - grant.verified_at).total_seconds())}",
    }


def customer_json(conn: Connection, customer_id: str) -> dict[str, Any] | None:
    row = (
        conn.execute(
            select(CUSTOMERS.c.id, CUSTOMERS.c.display_name, CUSTOMERS.c.created_at,
                   CUSTOMERS.c.merged_into).where(CUSTOMERS.c.id == customer_id)
        )
    ).first()
    if row is None:
        return None
    addrs = (
        conn.execute(
            select(ADDRESSES.c.address, ADDRESSES.c.evidence, ADDRESSES.c.detail,
                   ADDRESSES.c.linked_at)
            .where(ADDRESSES.c.customer_id == customer_id)
            .order_by(ADDRESSES.c.linked_at)
        )
    ).all()
    return {
        "id": row[0],
        "display_name": row[1],
        "created_at": iso(row[2]),
        "merged_into": row[3],
        "addresses": [
            {"address": a, "evidence": e, "detail": d, "linked_at": iso(t)}
            for a, e, d, t in addrs
        ],
    }


def _transcript_statement(dialect: str) -> Prepared:
    def at(column: Any) -> Any:
        if dialect == "postgresql":
            return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
        return type_coerce(column, String)  # SQLite's stored text, cut by iso_text

    return Prepared(
        select(
            TRANSCRIPT.c.id, at(TRANSCRIPT.c.at), TRANSCRIPT.c.channel, TRANSCRIPT.c.direction,
            TRANSCRIPT.c.author, TRANSCRIPT.c.text, TRANSCRIPT.c.kind, TRANSCRIPT.c.leg_id,
            at(TRANSCRIPT.c.provider_at), TRANSCRIPT.c.data,
        )
        .where(TRANSCRIPT.c.conversation_id == bindparam("c"))
        .order_by(TRANSCRIPT.c.id)
    )


# The biggest read of a bundle (1,000 rows and more), prepared once per dialect.
_TRANSCRIPT = {name: _transcript_statement(name) for name in ("postgresql", "sqlite")}


def transcript_json(conn: Connection, conversation_id: str) -> list[dict[str, Any]]:
    statement = _TRANSCRIPT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    rows = statement.execute(conn, {"c": conversation_id})
    return [
        {"id": r[0], "at": iso_text(r[1]), "channel": r[2], "direction": r[3], "author": r[4],
         "text": r[5], "kind": r[6], "leg_id": r[7], "provider_at": iso_text(r[8]),
         "data": r[9]}
        for r in rows
    ]


def legs_json(
    conn: Connection, conversation_id: str,
    transcript: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    rows = (
        conn.execute(select(LEGS).where(LEGS.c.conversation_id == conversation_id))
    ).mappings().all()
    # Legs in the order they joined the transcript (times can tie; entry ids cannot).
    if transcript is None:
        first_entry = dict(
            (
                conn.execute(
                    select(TRANSCRIPT.c.leg_id, func.min(TRANSCRIPT.c.id))
                    .where(TRANSCRIPT.c.conversation_id == conversation_id)
                    .group_by(TRANSCRIPT.c.leg_id)
                )
            ).all()
        )
    else:
        first_entry = {}
        for entry in transcript:
            first_entry.setdefault(entry["leg_id"], entry["id"])
    rows = sorted(rows, key=lambda r: (r["started_at"], first_entry.get(r["id"], 1 << 62)))
    return [
        {
            "id": r["id"], "channel": r["channel"], "address": r["address"],
            "local_address": r["local_address"], "binding": r["binding"],
            "started_at": iso(r["started_at"]), "ended_at": iso(r["ended_at"]),
            "agent_id": r["agent_id"], "attestation": r["attestation"],
        }
        for r in rows
    ]


def _last_own_message(conn: Connection, customer_id: str, conversation_id: str,
                      opened_at: datetime) -> str | None:
    """A limited bundle's "last message" of an earlier conversation: the customer's own,
    before any verification in it."""
    cutoff = first_grant_since(conn, customer_id, opened_at)
    query = select(TRANSCRIPT.c.text).where(
        TRANSCRIPT.c.conversation_id == conversation_id, TRANSCRIPT.c.kind == "message",
        TRANSCRIPT.c.direction == "in")
    if cutoff is not None:
        query = query.where(TRANSCRIPT.c.at < cutoff)
    text = conn.execute(query.order_by(TRANSCRIPT.c.id.desc()).limit(1)).scalar()
    return None if text is None else str(text)[:200]


def earlier_conversations(
    conn: Connection, customer_id: str, except_id: str, limited: bool = False,
) -> list[dict[str, Any]]:
    """Summaries of the customer's earlier conversations (newest first), in three queries
    (a limited bundle's last messages: the customer's own, one query more each)."""
    convs = (
        conn.execute(
            select(CONVERSATIONS.c.id, CONVERSATIONS.c.status, CONVERSATIONS.c.opened_at,
                   CONVERSATIONS.c.closed_at)
            .where(CONVERSATIONS.c.customer_id == customer_id, CONVERSATIONS.c.id != except_id)
            .order_by(CONVERSATIONS.c.opened_at.desc())
            .limit(EARLIER_CONVERSATIONS)
        )
    ).all()
    if not convs:
        return []
    ids = [c[0] for c in convs]
    counts: dict[str, int] = {}
    channels: dict[str, set[str]] = {}
    for cid, channel, n in (
        conn.execute(
            select(TRANSCRIPT.c.conversation_id, TRANSCRIPT.c.channel, func.count())
            .where(TRANSCRIPT.c.conversation_id.in_(ids))
            .group_by(TRANSCRIPT.c.conversation_id, TRANSCRIPT.c.channel)
        )
    ).all():
        counts[cid] = counts.get(cid, 0) + n
        channels.setdefault(cid, set()).add(channel)
    last_ids = (
        select(func.max(TRANSCRIPT.c.id))
        .where(TRANSCRIPT.c.conversation_id.in_(ids), TRANSCRIPT.c.kind == "message")
        .group_by(TRANSCRIPT.c.conversation_id)
    )
    last = dict(
        (
            conn.execute(
                select(TRANSCRIPT.c.conversation_id, TRANSCRIPT.c.text)
                .where(TRANSCRIPT.c.id.in_(last_ids))
            )
        ).all()
    )
    return [
        {
            "id": cid, "status": status, "opened_at": iso(opened), "closed_at": iso(closed),
            "entries": counts.get(cid, 0), "channels": sorted(channels.get(cid, ())),
            "last_message": _last_own_message(conn, customer_id, cid, opened) if limited
            else (last[cid][:200] if cid in last else None),
        }
        for cid, status, opened, closed in convs
    ]


_CONVERSATION_OF_LEG = (CONVERSATIONS.c.customer_id,
                        CONVERSATIONS.c.status.label("conversation_status"),
                        CONVERSATIONS.c.opened_at.label("conversation_opened_at"))


def bundle_for_token(
    conn: Connection, token: str, now: datetime, disclosure: Disclosure | None = None,
) -> dict[str, Any] | None:
    """The context bundle behind a token; None when the token is unknown or expired."""
    row = (
        conn.execute(
            select(TOKENS.c.expires_at, LEGS, *_CONVERSATION_OF_LEG)
            .join(LEGS, LEGS.c.id == TOKENS.c.leg_id)
            .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
            .where(TOKENS.c.token_hash == hash_token(token), TOKENS.c.expires_at > now)
        )
    ).mappings().first()
    if row is None:
        return None
    bundle = _bundle(conn, row, now, disclosure or Disclosure())
    bundle["expires_at"] = iso(row["expires_at"])
    return bundle


def bundle_for_leg(conn: Connection, leg_id: str, now: datetime,
                   disclosure: Disclosure | None = None) -> dict[str, Any] | None:
    row = (
        conn.execute(
            select(LEGS, *_CONVERSATION_OF_LEG)
            .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
            .where(LEGS.c.id == leg_id)
        )
    ).mappings().first()
    return None if row is None else _bundle(conn, row, now, disclosure or Disclosure())


ATTESTATION_SUMMARY = {
    "A": "number attested A by the carrier: it knows the caller and that they may use "
         "this number",
    "B": "number attested B by the carrier: it knows the caller, not their right to the "
         "number",
    "C": "number attested C by the carrier: it only knows where the call came from",
}


def attestation_summary(attestation: str | None) -> str | None:
    """What the agent reads about a call's caller-ID attestation: evidence, not proof."""
    if attestation is None:
        return None
    return ATTESTATION_SUMMARY.get(attestation, f"carrier's caller-ID check: {attestation}")


def _bundle(conn: Connection, leg: Any, now: datetime, disclosure: Disclosure
            ) -> dict[str, Any]:
    customer_id = leg["customer_id"]
    conversation_id = leg["conversation_id"]
    decision = leg_decision(conn, leg, customer_id, now)
    level = disclosure.level(leg["binding"], decision.carries)
    transcript = transcript_json(conn, conversation_id)
    legs = legs_json(conn, conversation_id, transcript)
    customer = customer_json(conn, customer_id)
    earlier = earlier_conversations(conn, customer_id, conversation_id,
                                    limited=level is Level.LIMITED)
    if level is Level.LIMITED:
        first = first_grant_since(conn, customer_id, leg["conversation_opened_at"])
        own = leg["address"]
        transcript = limit_transcript(transcript, iso(first), own)
        for other in legs:
            if other["address"] != own:
                other["address"] = mask_address(other["address"])
                other["withheld"] = True
        if customer is not None:
            for address in customer["addresses"]:
                if address["address"] != own:
                    address.update(address=mask_address(address["address"]), detail=None,
                                   withheld=True)
    return {
        "conversation_id": conversation_id,
        "conversation_status": leg["conversation_status"],
        "leg": {
            "id": leg["id"], "channel": leg["channel"], "address": leg["address"],
            "binding": leg["binding"], "started_at": iso(leg["started_at"]),
            "attestation": leg["attestation"],
            "attestation_summary": attestation_summary(leg["attestation"]),
        },
        "customer": customer,
        "verification": verification_json(decision, now),
        "verification_reason": decision.reason.value,
        "verification_explanation": decision.explanation,
        "verification_expired_at": iso(decision.grant.expires_at)
        if decision.grant is not None and not decision.carries
        else None,
        "disclosure": level.value,
        "disclosure_explanation": DISCLOSED[level],
        "transcript": transcript,
        "legs": legs,
        "earlier_conversations": earlier,
        "expires_at": None,
    }


def customer_view(conn: Connection, address: str) -> dict[str, Any] | None:
    """The agent API's customer: addresses with evidence, conversations, latest grant."""
    customer_id = conn.execute(
        select(ADDRESSES.c.customer_id).where(ADDRESSES.c.address == address)
    ).scalar()
    if customer_id is None:
        return None
    customer = customer_json(conn, customer_id)
    assert customer is not None
    convs = conn.execute(
        select(CONVERSATIONS.c.id, CONVERSATIONS.c.status, CONVERSATIONS.c.opened_at,
               CONVERSATIONS.c.last_activity_at, CONVERSATIONS.c.closed_at)
        .where(CONVERSATIONS.c.customer_id == customer_id)
        .order_by(CONVERSATIONS.c.opened_at.desc())
    ).all()
    customer["conversations"] = [
        {"id": c[0], "status": c[1], "opened_at": iso(c[2]), "last_activity_at": iso(c[3]),
         "closed_at": iso(c[4])}
        for c in convs
    ]
    grant = read_latest_grant(conn, customer_id)
    customer["latest_verification"] = None if grant is None else {
        "method": grant.method, "address": grant.address,
        "verified_at": iso(grant.verified_at), "expires_at": iso(grant.expires_at),
    }
    return customer


def conversation_view(conn: Connection, conversation_id: str) -> dict[str, Any] | None:
    conv = conn.execute(
        select(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id)
    ).mappings().first()
    if conv is None:
        return None
    transcript = transcript_json(conn, conversation_id)
    return {
        "id": conv["id"], "customer_id": conv["customer_id"], "status": conv["status"],
        "opened_at": iso(conv["opened_at"]), "last_activity_at": iso(conv["last_activity_at"]),
        "closed_at": iso(conv["closed_at"]),
        "agent_id": conv["agent_id"],  # who has it now; null while it waits in the queue
        "legs": legs_json(conn, conversation_id, transcript),
        "transcript": transcript,
    }
