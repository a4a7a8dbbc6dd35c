"""The context bundle: what a new leg carries, served behind a capability token.

Tokens are issued when a leg is routed (one insert, cheap: the SIP hot path pays for it) and
the bundle is built when the agent fetches it. The verification part is decided by
`gateway.trust.decide_carry` at fetch time, so an expired grant shows as expired.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.models import (
    ContextToken,
    Conversation,
    Customer,
    CustomerAddress,
    Escalation,
    Leg,
    TranscriptEntry,
)
from gateway.trust import Binding, CarryDecision, LegFacts, decide_carry
from gateway.verification import grant_by_id, hash_token, latest_grant

TOKENS = ContextToken.__table__
LEGS = Leg.__table__
CONVERSATIONS = Conversation.__table__
CUSTOMERS = Customer.__table__
ADDRESSES = CustomerAddress.__table__
TRANSCRIPT = TranscriptEntry.__table__
ESCALATIONS = Escalation.__table__

EARLIER_CONVERSATIONS = 5


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime


async def issue_token(
    conn: AsyncConnection,
    *,
    leg_id: str,
    conversation_id: str,
    now: datetime,
    ttl: timedelta,
) -> IssuedToken:
    """A capability for one leg's bundle: 192 random bits; only its hash is stored."""
    token = secrets.token_urlsafe(24)
    await conn.execute(
        insert(TOKENS).values(
            token_hash=hash_token(token), leg_id=leg_id, conversation_id=conversation_id,
            created_at=now, expires_at=now + ttl,
        )
    )
    return IssuedToken(token, now + ttl)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


async def leg_decision(conn: AsyncConnection, leg: Any, customer_id: str, now: datetime) -> (
    CarryDecision
):
    """Run the trust rule for a stored leg."""
    escalation_grant_id = None
    escalation_valid = False
    binding = Binding(leg["binding"])
    if binding in (Binding.ESCALATION, Binding.CALLBACK) and leg["escalation_id"]:
        esc = (
            await conn.execute(
                select(ESCALATIONS.c.grant_id, ESCALATIONS.c.used_by_leg_id).where(
                    ESCALATIONS.c.id == leg["escalation_id"]
                )
            )
        ).first()
        if esc is not None and esc[1] == leg["id"]:
            escalation_grant_id, escalation_valid = esc[0], True
    grant = (
        await grant_by_id(conn, escalation_grant_id)
        if escalation_grant_id
        else await latest_grant(conn, customer_id)
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


async def customer_json(conn: AsyncConnection, customer_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(CUSTOMERS.c.id, CUSTOMERS.c.display_name, CUSTOMERS.c.created_at,
                   CUSTOMERS.c.merged_into).where(CUSTOMERS.c.id == customer_id)
        )
    ).first()
    if row is None:
        return None
    addrs = (
        await conn.execute(
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


async def transcript_json(conn: AsyncConnection, conversation_id: str) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            select(
                TRANSCRIPT.c.id, TRANSCRIPT.c.at, TRANSCRIPT.c.channel, TRANSCRIPT.c.direction,
                TRANSCRIPT.c.author, TRANSCRIPT.c.text, TRANSCRIPT.c.kind, TRANSCRIPT.c.leg_id,
                TRANSCRIPT.c.provider_at, TRANSCRIPT.c.data,
            )
            .where(TRANSCRIPT.c.conversation_id == conversation_id)
            .order_by(TRANSCRIPT.c.id)
        )
    ).all()
    return [
        {
            "id": r[0], "at": iso(r[1]), "channel": r[2], "direction": r[3], "author": r[4],
            "text": r[5], "kind": r[6], "leg_id": r[7], "provider_at": iso(r[8]),
            "data": r[9],
        }
        for r in rows
    ]


async def legs_json(conn: AsyncConnection, conversation_id: str) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            select(LEGS).where(LEGS.c.conversation_id == conversation_id)
        )
    ).mappings().all()
    # Legs in the order they joined the transcript (times can tie; entry ids cannot).
    first_entry = dict(
        (
            await conn.execute(
                select(TRANSCRIPT.c.leg_id, func.min(TRANSCRIPT.c.id))
                .where(TRANSCRIPT.c.conversation_id == conversation_id)
                .group_by(TRANSCRIPT.c.leg_id)
            )
        ).all()
    )
    rows = sorted(rows, key=lambda r: (r["started_at"], first_entry.get(r["id"], 1 << 62)))
    return [
        {
            "id": r["id"], "channel": r["channel"], "address": r["address"],
            "local_address": r["local_address"], "binding": r["binding"],
            "started_at": iso(r["started_at"]), "ended_at": iso(r["ended_at"]),
            "agent_id": r["agent_id"],
        }
        for r in rows
    ]


async def earlier_conversations(
    conn: AsyncConnection, customer_id: str, except_id: str
) -> list[dict[str, Any]]:
    """Summaries of the customer's earlier conversations (newest first)."""
    convs = (
        await conn.execute(
            select(CONVERSATIONS.c.id, CONVERSATIONS.c.status, CONVERSATIONS.c.opened_at,
                   CONVERSATIONS.c.closed_at)
            .where(CONVERSATIONS.c.customer_id == customer_id, CONVERSATIONS.c.id != except_id)
            .order_by(CONVERSATIONS.c.opened_at.desc())
            .limit(EARLIER_CONVERSATIONS)
        )
    ).all()
    out = []
    for cid, status, opened, closed in convs:
        count, channels = (
            await conn.execute(
                select(func.count(), func.group_concat(TRANSCRIPT.c.channel.distinct())
                       if conn.dialect.name == "sqlite"
                       else func.string_agg(TRANSCRIPT.c.channel.distinct(), ","))
                .where(TRANSCRIPT.c.conversation_id == cid)
            )
        ).one()
        last = (
            await conn.execute(
                select(TRANSCRIPT.c.text, TRANSCRIPT.c.at)
                .where(TRANSCRIPT.c.conversation_id == cid, TRANSCRIPT.c.kind == "message")
                .order_by(TRANSCRIPT.c.id.desc())
                .limit(1)
            )
        ).first()
        out.append({
            "id": cid, "status": status, "opened_at": iso(opened), "closed_at": iso(closed),
            "entries": count, "channels": sorted(set((channels or "").split(",")) - {""}),
            "last_message": last[0][:200] if last else None,
        })
    return out


async def bundle_for_token(
    conn: AsyncConnection, token: str, now: datetime
) -> dict[str, Any] | None:
    """The context bundle behind a token; None when the token is unknown or expired."""
    row = (
        await conn.execute(
            select(TOKENS.c.leg_id, TOKENS.c.expires_at).where(
                TOKENS.c.token_hash == hash_token(token), TOKENS.c.expires_at > now
            )
        )
    ).first()
    if row is None:
        return None
    bundle = await bundle_for_leg(conn, row[0], now)
    if bundle is not None:
        bundle["expires_at"] = iso(row[1])
    return bundle


async def bundle_for_leg(conn: AsyncConnection, leg_id: str, now: datetime) -> (
    dict[str, Any] | None
):
    leg = (await conn.execute(select(LEGS).where(LEGS.c.id == leg_id))).mappings().first()
    if leg is None:
        return None
    conv = (
        await conn.execute(
            select(CONVERSATIONS.c.customer_id, CONVERSATIONS.c.status).where(
                CONVERSATIONS.c.id == leg["conversation_id"]
            )
        )
    ).first()
    if conv is None:
        return None
    customer_id = conv[0]
    decision = await leg_decision(conn, leg, customer_id, now)
    return {
        "conversation_id": leg["conversation_id"],
        "conversation_status": conv[1],
        "leg": {
            "id": leg["id"], "channel": leg["channel"], "address": leg["address"],
            "binding": leg["binding"], "started_at": iso(leg["started_at"]),
        },
        "customer": await customer_json(conn, customer_id),
        "verification": verification_json(decision, now),
        "verification_reason": decision.reason.value,
        "verification_explanation": decision.explanation,
        "verification_expired_at": iso(decision.grant.expires_at)
        if decision.grant is not None and not decision.carries
        else None,
        "transcript": await transcript_json(conn, leg["conversation_id"]),
        "legs": await legs_json(conn, leg["conversation_id"]),
        "earlier_conversations": await earlier_conversations(
            conn, customer_id, leg["conversation_id"]
        ),
        "expires_at": None,
    }
