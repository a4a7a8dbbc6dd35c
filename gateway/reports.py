"""Journey reports: does continuity work across channels? (`GET /api/v1/reports/journeys`)

Per period (by the day, ISO week or month a conversation opened, in UTC): conversations by
first and last channel, channel switches per conversation, repeat contacts within 7 days,
verifications carried to a new leg vs asked for again, and time to resolution, single- and
multi-channel. Aggregates per conversation are SQL (window functions, GROUP BY; the same on
SQLite and PostgreSQL); dates are bucketed here, since the dialects spell date arithmetic
differently. A report reads one row per conversation and leg in the window, never the text.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any, Literal

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection

from gateway.context import iso
from gateway.models import (
    Conversation,
    Escalation,
    Leg,
    OtpChallenge,
    TranscriptEntry,
    VerificationGrant,
)
from gateway.trust import Binding, GrantFacts, LegFacts, decide_carry

CONVERSATIONS = Conversation.__table__
LEGS = Leg.__table__
TRANSCRIPT = TranscriptEntry.__table__
GRANTS = VerificationGrant.__table__
CHALLENGES = OtpChallenge.__table__
ESCALATIONS = Escalation.__table__

Period = Literal["day", "week", "month"]
REPEAT_WINDOW = timedelta(days=7)
MAX_PERIODS = 400


class BadReport(ValueError):
    """Report parameters that cannot be served (an API 400)."""


def period_start(at: datetime, period: Period) -> datetime:
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next(start: datetime, period: Period) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass
class _Conv:
    id: str
    customer_id: str
    opened_at: datetime
    closed_at: datetime | None
    first_channel: str | None = None
    last_channel: str | None = None
    switches: int = 0
    channels: int = 0
    repeat: bool = False
    carried: int = 0
    repeated: int = 0
    fresh: int = 0


def journeys(conn: Connection, since: datetime, until: datetime,
             period: Period = "day") -> dict[str, Any]:
    if until <= since:
        raise BadReport("until must be after since")
    if period not in ("day", "week", "month"):
        raise BadReport("period must be day, week or month")
    starts = [period_start(since, period)]
    while _next(starts[-1], period) < until:
        starts.append(_next(starts[-1], period))
        if len(starts) > MAX_PERIODS:
            raise BadReport(f"more than {MAX_PERIODS} periods; choose a longer period")
    c = CONVERSATIONS.c
    in_window = and_(c.opened_at >= since, c.opened_at < until)
    window_ids = select(c.id).where(in_window)
    convs = {
        r[0]: _Conv(r[0], r[1], r[2], r[3])
        for r in conn.execute(select(c.id, c.customer_id, c.opened_at, c.closed_at)
                              .where(in_window))
    }
    _channel_stats(conn, window_ids, convs)
    _repeats(conn, since, until, convs)
    _verifications(conn, window_ids, convs)

    buckets: dict[datetime, list[_Conv]] = defaultdict(list)
    for conv in convs.values():
        buckets[period_start(conv.opened_at, period)].append(conv)
    periods = [
        {"start": iso(start), "end": iso(_next(start, period)), **_summary(buckets[start])}
        for start in starts
    ]
    return {"since": iso(since), "until": iso(until), "period": period, "periods": periods,
            "totals": _summary(list(convs.values()))}


def _channel_stats(conn: Connection, window_ids: Any, convs: dict[str, _Conv]) -> None:
    """First and last channel, switches and distinct channels, from the customer-facing
    entries (messages and calls; the gateway's own notes do not count)."""
    t = TRANSCRIPT.c
    facing = and_(t.conversation_id.in_(window_ids), t.kind.in_(("message", "call")))
    seq = select(
        t.conversation_id, t.channel,
        func.lag(t.channel).over(partition_by=t.conversation_id, order_by=t.id).label("prev"),
        func.row_number().over(partition_by=t.conversation_id, order_by=t.id).label("n"),
        func.row_number().over(partition_by=t.conversation_id,
                               order_by=t.id.desc()).label("n_desc"),
    ).where(facing).subquery()
    switch = case((and_(seq.c.prev.is_not(None), seq.c.prev != seq.c.channel), 1), else_=0)
    first = func.max(case((seq.c.n == 1, seq.c.channel)))
    last = func.max(case((seq.c.n_desc == 1, seq.c.channel)))
    for cid, switches, channels, first_channel, last_channel in conn.execute(
        select(seq.c.conversation_id, func.sum(switch), func.count(func.distinct(seq.c.channel)),
               first, last).group_by(seq.c.conversation_id)
    ):
        conv = convs.get(cid)
        if conv is not None:
            conv.switches, conv.channels = int(switches or 0), int(channels)
            conv.first_channel, conv.last_channel = first_channel, last_channel


def _repeats(conn: Connection, since: datetime, until: datetime,
             convs: dict[str, _Conv]) -> None:
    """A conversation is a repeat contact when the same customer opened another one in the
    7 days before it."""
    c = CONVERSATIONS.c
    customers = select(c.customer_id).where(c.opened_at >= since, c.opened_at < until)
    opened: dict[str, list[datetime]] = defaultdict(list)
    for customer_id, at in conn.execute(
        select(c.customer_id, c.opened_at)
        .where(c.customer_id.in_(customers), c.opened_at >= since - REPEAT_WINDOW,
               c.opened_at < until)
    ):
        opened[customer_id].append(at)
    for conv in convs.values():
        conv.repeat = any(conv.opened_at - REPEAT_WINDOW <= at < conv.opened_at
                          for at in opened[conv.customer_id])


def _verifications(conn: Connection, window_ids: Any, convs: dict[str, _Conv]) -> None:
    """Carried: a leg that carried a verification proved elsewhere (the trust rule, decided
    as of the leg's start). Repeated: a code sent while the customer held a live grant.
    Fresh: a code sent to a customer with none."""
    customers = {conv.customer_id for conv in convs.values()}
    grants: dict[str, list[GrantFacts]] = defaultdict(list)
    for r in conn.execute(
        select(GRANTS).where(GRANTS.c.customer_id.in_(sorted(customers)))
        .order_by(GRANTS.c.verified_at)
    ).mappings():
        grants[r["customer_id"]].append(GrantFacts(
            r["id"], r["customer_id"], r["address"], r["method"], r["verified_at"],
            r["expires_at"], r["leg_id"]))
    legs = conn.execute(
        select(LEGS.c.id, LEGS.c.conversation_id, LEGS.c.address, LEGS.c.binding,
               LEGS.c.started_at).where(LEGS.c.conversation_id.in_(window_ids))
    ).all()
    escalations = {
        leg_id: grant_id for leg_id, grant_id in conn.execute(
            select(ESCALATIONS.c.used_by_leg_id, ESCALATIONS.c.grant_id)
            .where(ESCALATIONS.c.conversation_id.in_(window_ids),
                   ESCALATIONS.c.used_by_leg_id.is_not(None)))
    }

    def grant_at(customer_id: str, at: datetime) -> GrantFacts | None:
        held = [g for g in grants[customer_id] if g.verified_at <= at]
        return held[-1] if held else None

    for leg_id, conversation_id, address, binding, started_at in legs:
        conv = convs[conversation_id]
        grant = grant_at(conv.customer_id, started_at)
        facts = LegFacts(leg_id, conv.customer_id, address, Binding(binding),
                         escalation_grant_id=escalations.get(leg_id),
                         escalation_valid=leg_id in escalations)
        decision = decide_carry(facts, grant, started_at)
        if decision.carries and grant is not None and grant.leg_id != leg_id:
            conv.carried += 1
    for conversation_id, customer_id, created_at in conn.execute(
        select(CHALLENGES.c.conversation_id, CHALLENGES.c.customer_id, CHALLENGES.c.created_at)
        .where(CHALLENGES.c.conversation_id.in_(window_ids))
    ):
        live = any(g.verified_at <= created_at < g.expires_at for g in grants[customer_id])
        conv = convs[conversation_id]
        if live:
            conv.repeated += 1
        else:
            conv.fresh += 1


def _median(values: list[float]) -> float | None:
    return round(median(values), 1) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1)


def _summary(convs: list[_Conv]) -> dict[str, Any]:
    switches = Counter(min(conv.switches, 3) for conv in convs)
    resolved = [conv for conv in convs if conv.closed_at is not None]
    seconds = [(conv.closed_at - conv.opened_at).total_seconds()  # type: ignore[operator]
               for conv in resolved]
    single = [s for conv, s in zip(resolved, seconds, strict=True) if conv.channels <= 1]
    multi = [s for conv, s in zip(resolved, seconds, strict=True) if conv.channels > 1]
    return {
        "conversations": len(convs),
        "first_channel": dict(sorted(Counter(c.first_channel for c in convs
                                             if c.first_channel).items())),
        "last_channel": dict(sorted(Counter(c.last_channel for c in convs
                                            if c.last_channel).items())),
        "channel_switches": {
            "total": sum(c.switches for c in convs),
            "per_conversation": round(sum(c.switches for c in convs) / len(convs), 2)
            if convs else None,
            "distribution": {"0": switches[0], "1": switches[1], "2": switches[2],
                             "3+": switches[3]},
        },
        "multi_channel": sum(1 for c in convs if c.channels > 1),
        "repeat_contacts_7d": sum(1 for c in convs if c.repeat),
        "verifications": {"carried": sum(c.carried for c in convs),
                          "repeated": sum(c.repeated for c in convs),
                          "fresh": sum(c.fresh for c in convs)},
        "resolution": {
            "resolved": len(resolved),
            "median_seconds": _median(seconds), "p90_seconds": _p90(seconds),
            "single_channel_median_seconds": _median(single),
            "multi_channel_median_seconds": _median(multi),
        },
    }
