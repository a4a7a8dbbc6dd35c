"""Journey reports over fixtures inserted row by row, so every figure is known in advance;
on SQLite and PostgreSQL, directly and over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from gateway import reports
from gateway.models import (
    Conversation,
    Customer,
    Escalation,
    Leg,
    OtpChallenge,
    TranscriptEntry,
    VerificationGrant,
)
from gateway.store import Reader, make_engine
from tests.console.server import WorkspaceGateway

MON = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday: the first ISO week of the window


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MON + timedelta(days=day, hours=hour, minutes=minute)


class Story:
    """Rows for conversations, legs, transcripts, grants, codes and escalations."""

    def __init__(self) -> None:
        self.rows: dict[Any, list[dict[str, Any]]] = {}

    def add(self, model: Any, **row: Any) -> None:
        self.rows.setdefault(model.__table__, []).append(row)

    def customer(self, cid: str) -> None:
        self.add(Customer, id=cid, display_name=None, created_at=at(-30, 0), merged_into=None)

    def conversation(self, cid: str, customer: str, opened: datetime,
                     closed: datetime | None) -> None:
        self.add(Conversation, id=cid, customer_id=customer,
                 status="closed" if closed else "open", opened_at=opened,
                 last_activity_at=closed or opened, closed_at=closed)

    def leg(self, lid: str, conv: str, channel: str, address: str, binding: str,
            started: datetime) -> None:
        self.add(Leg, id=lid, conversation_id=conv, channel=channel, thread_key=lid,
                 address=address, local_address=None, binding=binding, escalation_id=None,
                 started_at=started, ended_at=None, agent_id=None)

    def entry(self, conv: str, leg: str, channel: str, when: datetime, kind: str = "message",
              direction: str = "in") -> None:
        self.add(TranscriptEntry, conversation_id=conv, leg_id=leg, at=when, provider_at=None,
                 channel=channel, direction=direction, kind=kind, author="x", text="…",
                 data=None, provider=None, provider_id=None)

    async def insert(self, url: str) -> None:
        engine = make_engine(url)
        order = [Customer, Conversation, Leg, TranscriptEntry, VerificationGrant,
                 OtpChallenge, Escalation]
        async with engine.begin() as conn:
            for model in order:
                rows = self.rows.get(model.__table__)
                if rows:
                    await conn.execute(insert(model.__table__), rows)
        await engine.dispose()


def the_story() -> Story:
    s = Story()
    for c in ("cus_a", "cus_b", "cus_c"):
        s.customer(c)
    wa, voice = "whatsapp:+14155550171", "voice:+14155550171"
    # A: WhatsApp, verified, escalated to a call with the PIN (carried), back on WhatsApp.
    s.conversation("conv_a1", "cus_a", at(0, 9), at(0, 11))
    s.leg("leg_a1", "conv_a1", "whatsapp", wa, "attested", at(0, 9))
    s.leg("leg_a2", "conv_a1", "voice", voice, "escalation", at(0, 9, 30))
    s.entry("conv_a1", "leg_a1", "whatsapp", at(0, 9))
    s.entry("conv_a1", "leg_a1", "whatsapp", at(0, 9, 5), direction="out")
    s.entry("conv_a1", "leg_a1", "whatsapp", at(0, 9, 10), kind="system", direction="event")
    s.entry("conv_a1", "leg_a2", "voice", at(0, 9, 30), kind="call", direction="event")
    s.entry("conv_a1", "leg_a2", "voice", at(0, 9, 40), kind="call", direction="event")
    s.entry("conv_a1", "leg_a1", "whatsapp", at(0, 9, 50))
    s.add(VerificationGrant, id="grant_a", customer_id="cus_a", address=wa,
          method="whatsapp-otp", level="possession", verified_at=at(0, 9, 10),
          expires_at=at(0, 10, 10), conversation_id="conv_a1", leg_id="leg_a1")
    for cid, created in (("otp_a1", at(0, 9, 5)), ("otp_a2", at(0, 9, 20))):
        s.add(OtpChallenge, id=cid, customer_id="cus_a", address=wa, method="whatsapp-otp",
              code_hash="h", salt="s", created_at=created, expires_at=created + timedelta(
                  minutes=10), attempts=0, max_attempts=5, status="pending",
              conversation_id="conv_a1", leg_id="leg_a1")
    s.add(Escalation, id="esc_a", conversation_id="conv_a1", customer_id="cus_a",
          source_leg_id="leg_a1", grant_id="grant_a", channel="voice", mode="dial-in",
          target_address=None, token_hash="t" * 64, pin_hash=None, pin_salt=None,
          created_at=at(0, 9, 25), expires_at=at(0, 9, 40), used_at=at(0, 9, 30),
          used_by_leg_id="leg_a2")
    # A again three days later by SMS: a repeat contact; the grant has expired.
    s.conversation("conv_a2", "cus_a", at(3, 10), None)
    s.leg("leg_a3", "conv_a2", "sms", "sms:+14155550171", "address", at(3, 10))
    s.entry("conv_a2", "leg_a3", "sms", at(3, 10))
    # B: one SMS exchange, solved in 10 minutes; B's earlier contact is 14 days before.
    s.conversation("conv_b0", "cus_b", at(-13, 8), at(-13, 9))
    s.conversation("conv_b1", "cus_b", at(1, 8), at(1, 8, 10))
    s.leg("leg_b1", "conv_b1", "sms", "sms:+14155550172", "address", at(1, 8))
    s.entry("conv_b1", "leg_b1", "sms", at(1, 8))
    s.entry("conv_b1", "leg_b1", "sms", at(1, 8, 5), direction="out")
    # C: an email answered in a minute, then a call five days later (next week): a repeat.
    s.conversation("conv_c0", "cus_c", at(2, 12), at(2, 12, 1))
    s.leg("leg_c0", "conv_c0", "email", "email:c@example.org", "address", at(2, 12))
    s.entry("conv_c0", "leg_c0", "email", at(2, 12))
    s.conversation("conv_c1", "cus_c", at(7, 12), at(7, 12, 30))
    s.leg("leg_c1", "conv_c1", "voice", "voice:+14155550173", "caller-id", at(7, 12))
    s.entry("conv_c1", "leg_c1", "voice", at(7, 12), kind="call", direction="event")
    # Outside the window entirely.
    s.conversation("conv_late", "cus_b", at(20, 1), None)
    return s


WEEK_1 = {
    "start": "2026-11-02T00:00:00.000Z", "end": "2026-11-09T00:00:00.000Z",
    "conversations": 4,
    "first_channel": {"email": 1, "sms": 2, "whatsapp": 1},
    "last_channel": {"email": 1, "sms": 2, "whatsapp": 1},
    "channel_switches": {"total": 2, "per_conversation": 0.5,
                         "distribution": {"0": 3, "1": 0, "2": 1, "3+": 0}},
    "multi_channel": 1,
    "repeat_contacts_7d": 1,
    "verifications": {"carried": 1, "repeated": 1, "fresh": 1},
    "resolution": {"resolved": 3, "median_seconds": 600.0, "p90_seconds": 7200.0,
                   "single_channel_median_seconds": 330.0,
                   "multi_channel_median_seconds": 7200.0},
}
WEEK_2 = {
    "start": "2026-11-09T00:00:00.000Z", "end": "2026-11-16T00:00:00.000Z",
    "conversations": 1, "first_channel": {"voice": 1}, "last_channel": {"voice": 1},
    "channel_switches": {"total": 0, "per_conversation": 0.0,
                         "distribution": {"0": 1, "1": 0, "2": 0, "3+": 0}},
    "multi_channel": 0, "repeat_contacts_7d": 1,
    "verifications": {"carried": 0, "repeated": 0, "fresh": 0},
    "resolution": {"resolved": 1, "median_seconds": 1800.0, "p90_seconds": 1800.0,
                   "single_channel_median_seconds": 1800.0,
                   "multi_channel_median_seconds": None},
}


async def test_weekly_journeys_count_what_happened(database_url: str) -> None:
    await the_story().insert(database_url)
    engine = make_engine(database_url)
    reader = Reader(engine, database_url)
    try:
        report = await reader.run(reports.journeys, MON, MON + timedelta(days=14), "week")
        daily = await reader.run(reports.journeys, MON, MON + timedelta(days=14), "day")
    finally:
        reader.dispose()
        await engine.dispose()
    assert report["periods"] == [WEEK_1, WEEK_2]
    assert report["totals"]["conversations"] == 5
    assert report["totals"]["repeat_contacts_7d"] == 2
    assert report["totals"]["verifications"] == {"carried": 1, "repeated": 1, "fresh": 1}
    assert [p["conversations"] for p in daily["periods"]] == [1, 1, 1, 1, 0, 0, 0,
                                                              1, 0, 0, 0, 0, 0, 0]


def test_periods_start_on_days_iso_weeks_and_months() -> None:
    wed = datetime(2026, 12, 30, 17, 5, tzinfo=UTC)
    assert reports.period_start(wed, "day") == datetime(2026, 12, 30, tzinfo=UTC)
    assert reports.period_start(wed, "week") == datetime(2026, 12, 28, tzinfo=UTC)
    assert reports.period_start(wed, "month") == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
async def ws(start_ws: Any, database_url: str) -> WorkspaceGateway:
    return await start_ws(database_url)


async def test_the_report_over_http(ws: WorkspaceGateway, database_url: str) -> None:
    await the_story().insert(database_url)
    status, report = await ws.api("GET", "/api/v1/reports/journeys", params={
        "since": "2026-11-02", "until": "2026-11-16T00:00:00Z", "period": "week"})
    assert status == 200, report
    assert report["periods"] == [WEEK_1, WEEK_2] and report["period"] == "week"
    for params, word in (({"since": "2026-11-16", "until": "2026-11-02"}, "until"),
                         ({"period": "year"}, "period"), ({"since": "last tuesday"}, "since"),
                         ({"since": "2000-01-01", "period": "day"}, "periods")):
        status, body = await ws.api("GET", "/api/v1/reports/journeys", params=params)
        assert status == 400 and word in body["error"], (params, body)
