"""Several gateways on one database (issue 12, points 1 and 2): real `gateway serve` and
`gateway db upgrade` processes started at once on an empty database all come up, and
concurrent first contacts at two gateways make one customer and one open conversation.

The races are real: two processes (or two cores, each with its own engine and batcher, the
shape of two processes) write at the same moment; only the database can decide.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.models import Conversation, Customer, CustomerAddress, TranscriptEntry
from gateway.store import make_engine, upgrade, upgrade_sync
from tests.conftest import AGENT_TOKEN, BUSINESS_SMS, BUSINESS_WHATSAPP, PUBLIC_URL, CoreFactory
from tests.helpers import sms, wait_until, whatsapp
from tests.peers import PostgresServer, _Child
from tests.standins import (  # noqa: F401  (fixture)
    TwilioStandin,
    new_twilio_sid,
    twilio_sign,
    twilio_sms_form,
    twilio_standin,
)

ROOT = Path(__file__).resolve().parents[1]
MESSAGING = "/webhooks/twilio/messaging"
ROUNDS = 12
CONVERSATIONS = Conversation.__table__
CUSTOMERS = Customer.__table__
ADDRESSES = CustomerAddress.__table__
TRANSCRIPT = TranscriptEntry.__table__


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty (unmigrated) database on `backend`."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, tmp_path, request)


@dataclass
class GatewayProcess:
    """`gateway serve` as an operator runs it, on ephemeral HTTP and SIP ports."""

    child: _Child
    url: str = ""
    sip_port: int = 0

    @classmethod
    def start(cls, name: str, database_url: str, twilio: TwilioStandin,
              directory: Path, **extra: str) -> GatewayProcess:
        """`extra`: more settings, by their environment names (`GATEWAY_OUTBOX_ENABLED`,
        `GATEWAY_AGENTS="[...]"`…)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GATEWAY_DATABASE_URL": database_url, "GATEWAY_HTTP_PORT": "0",
               "GATEWAY_SIP_PORT": "0", "GATEWAY_AGENT_TOKEN": AGENT_TOKEN,
               "GATEWAY_PUBLIC_URL": PUBLIC_URL, "GATEWAY_LOG_LEVEL": "WARNING",
               "GATEWAY_TWILIO_ACCOUNT_SID": twilio.account_sid,
               "GATEWAY_TWILIO_AUTH_TOKEN": twilio.auth_token,
               "GATEWAY_TWILIO_API_URL": twilio.base_url,
               "GATEWAY_TWILIO_FROM_NUMBER": BUSINESS_SMS, **extra}
        return cls(_Child(name, [sys.executable, "-m", "gateway", "serve"], directory,
                          cwd=ROOT, env=env))

    def _listening(self) -> bool:
        output = self.child.output()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", output)
        if found:
            self.url = found.group(1)
            sip = re.search(r"sip:127\.0\.0\.1:(\d+)", output)
            self.sip_port = int(sip.group(1)) if sip else 0
        return bool(found) or not self.child.alive()

    async def ready(self) -> None:
        await wait_until(self._listening, timeout=90, what=f"{self.child.name} to listen")
        assert self.url, f"{self.child.name} did not come up:\n{self.child.output()[-3000:]}"

    async def twilio(self, http: aiohttp.ClientSession, twilio: TwilioStandin, from_: str,
                     body: str) -> tuple[int, str]:
        """A message as Twilio delivers it: signed for the public URL, sent to loopback."""
        to = BUSINESS_WHATSAPP if from_.startswith("whatsapp:") else BUSINESS_SMS
        form = twilio_sms_form(account_sid=twilio.account_sid, from_=from_, to=to, body=body)
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": twilio_sign(twilio.auth_token, PUBLIC_URL + MESSAGING,
                                                     form)}
        async with http.post(self.url + MESSAGING, data=urlencode(form).encode(),
                             headers=headers) as resp:
            await resp.read()
            return resp.status, form["MessageSid"]

    async def close(self, http: aiohttp.ClientSession, conversation_id: str) -> None:
        async with http.post(f"{self.url}/api/v1/conversations/{conversation_id}/close",
                             headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()


@dataclass
class Census:
    """What the database holds for one number: its customers and their open conversations,
    with the provider ids in each open conversation's transcript."""

    customers: set[str]
    open: dict[str, set[str]]


async def census(engine: AsyncEngine, number: str) -> Census:
    async with engine.connect() as conn:
        customers = set((await conn.execute(
            select(ADDRESSES.c.customer_id).where(ADDRESSES.c.value == number))).scalars())
        open_ids = (await conn.execute(select(CONVERSATIONS.c.id).where(
            CONVERSATIONS.c.customer_id.in_(customers), CONVERSATIONS.c.status == "open"))
        ).scalars().all()
        held: dict[str, set[str]] = {}
        for conversation_id in open_ids:
            held[conversation_id] = set((await conn.execute(
                select(TRANSCRIPT.c.provider_id)
                .where(TRANSCRIPT.c.conversation_id == conversation_id))).scalars())
    return Census(customers, held)


@dataclass
class Race:
    http: aiohttp.ClientSession
    twilio: TwilioStandin
    engine: AsyncEngine
    doubled: list[str] = field(default_factory=list)

    async def at_once(self, number: str, *senders: tuple[GatewayProcess, str], when: str
                      ) -> str | None:
        """One message from each (gateway, From) at the same moment; then the one open
        conversation that holds them all, or None (noted in `doubled`) when the database
        holds more customers or open conversations for the number than one."""
        sent = await asyncio.gather(*(gateway.twilio(self.http, self.twilio, from_, when)
                                      for gateway, from_ in senders))
        assert [status for status, _ in sent] == [200] * len(senders)
        found = await census(self.engine, number)
        if len(found.customers) != 1 or len(found.open) != 1:
            self.doubled.append(f"{when}: {len(found.customers)} customers, "
                                f"{len(found.open)} open conversations")
            return None
        (conversation_id,) = found.open
        assert found.open[conversation_id] == {sid for _, sid in sent}
        return conversation_id


async def test_two_gateways_started_at_once_on_an_empty_database_both_serve_and_first_contacts_make_one_customer_and_one_conversation(  # noqa: E501
    empty_database: str, twilio_standin: TwilioStandin, tmp_path: Path,
) -> None:
    twilio = twilio_standin
    a = GatewayProcess.start("gateway-a", empty_database, twilio, tmp_path)
    b = GatewayProcess.start("gateway-b", empty_database, twilio, tmp_path)
    engine = make_engine(empty_database)
    try:
        # Point 1: both migrate the empty database at start; both must come up.
        await asyncio.gather(a.ready(), b.ready())
        async with aiohttp.ClientSession() as http:
            race = Race(http, twilio, engine)
            for i in range(ROUNDS):
                number = f"+1415555{i:04d}"
                # A new number writes by SMS to A and by WhatsApp to B at the same moment.
                closed = await race.at_once(number, (a, number), (b, f"whatsapp:{number}"),
                                            when=f"round {i}, first contact")
                if closed is None:
                    continue
                await b.close(http, closed)
                # After the close, two messages at once, one at each gateway: on one thread
                # (even rounds) or on both channels (odd rounds).
                second = f"whatsapp:{number}" if i % 2 else number
                reopened = await race.at_once(number, (a, number), (b, second),
                                              when=f"round {i}, after a close")
                assert reopened != closed
        doubled = race.doubled
        assert doubled == [], f"{len(doubled)} of {ROUNDS} rounds doubled: {doubled}"
    finally:
        await engine.dispose()
        for process in (a, b):
            await process.child.stop_async()


async def test_three_db_upgrades_at_once_on_an_empty_database_all_succeed(
    empty_database: str, tmp_path: Path,
) -> None:
    url = empty_database
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_DATABASE_URL": url}
    upgrades = [_Child(f"upgrade-{n}", [sys.executable, "-m", "gateway", "db", "upgrade"],
                       tmp_path, cwd=ROOT, env=env) for n in (1, 2, 3)]
    try:
        for child in upgrades:
            await wait_until(lambda c=child: not c.alive(), timeout=90,
                             what=f"{child.name} to finish")
        for child in upgrades:
            assert child.returncode == 0, child.output()[-3000:]
            assert "is up to date" in child.output()
    finally:
        for child in upgrades:
            await child.stop_async()
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                        ).scalars().all()
    finally:
        await engine.dispose()
    assert len(versions) == 1


# ---- the same races, in one process: two cores, each its own engine and batcher ----------


async def test_two_cores_racing_on_one_database_make_one_customer_and_one_conversation(
    make_core: CoreFactory,
) -> None:
    a, b = await make_core(), await make_core()
    for i in range(20):
        number = f"+1628555{i:04d}"
        first = await asyncio.gather(a.ingest(sms(number, "hi")),
                                     b.ingest(whatsapp(number, "hi")))
        assert first[0].customer_id == first[1].customer_id, f"round {i}: two customers"
        assert first[0].conversation_id == first[1].conversation_id, f"round {i}"
        await a.close_conversation(first[0].conversation_id)
        again = await asyncio.gather(a.ingest(sms(number, "again")),
                                     b.ingest(sms(number, "again")))
        assert again[0].conversation_id == again[1].conversation_id, f"round {i}"
        assert again[0].leg_id == again[1].leg_id, f"round {i}: one thread, two legs"
        assert again[0].conversation_id != first[0].conversation_id


async def test_the_database_itself_refuses_a_second_open_conversation_and_a_second_customer_for_one_number(  # noqa: E501
    database_url: str,
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(CUSTOMERS).values(id="cus_1", created_at=now,
                                                        identity_key="tel:+14155550100"))
            row = dict(customer_id="cus_1", opened_at=now, last_activity_at=now)
            await conn.execute(insert(CONVERSATIONS).values(id="c1", status="closed", **row))
            await conn.execute(insert(CONVERSATIONS).values(id="c2", status="closed", **row))
            await conn.execute(insert(CONVERSATIONS).values(id="c3", status="open", **row))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(CONVERSATIONS).values(id="c4", status="open", **row))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(CUSTOMERS).values(
                    id="cus_2", created_at=now, identity_key="tel:+14155550100"))
        async with engine.begin() as conn:  # customers made before scale_unique: no key
            await conn.execute(insert(CUSTOMERS).values(id="cus_3", created_at=now))
            await conn.execute(insert(CUSTOMERS).values(id="cus_4", created_at=now))
    finally:
        await engine.dispose()


async def test_merging_two_customers_with_open_conversations_keeps_one_open_and_undo_reopens(
    make_core: CoreFactory,
) -> None:
    core = await make_core()
    a = await core.ingest(whatsapp("+14155550100", "from whatsapp"))
    b = await core.ingest(sms("+14155550999", "from another phone"))
    merge_id = await core.merge_customers(a.customer_id, b.customer_id, "agent-7")
    merged = await core.customer_by_address(sms("+14155550999", "").sender)
    assert merged is not None
    status = {c["id"]: c["status"] for c in merged["conversations"]}
    assert status == {a.conversation_id: "open", b.conversation_id: "closed"}
    await core.undo_merge(merge_id)
    back = await core.customer_by_address(sms("+14155550999", "").sender)
    assert back is not None
    assert [(c["id"], c["status"]) for c in back["conversations"]] == [
        (b.conversation_id, "open")]


# ---- migration scale_unique over data written before it ---------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def before_scale_unique(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at the revision before scale_unique (whatever number they have by now)."""
    url = _url(request.param, tmp_path, request)
    upgrade_sync(url, _scale_unique().down_revision)  # type: ignore[arg-type]
    return url


def _scale_unique() -> Any:
    from alembic.script import ScriptDirectory

    from gateway.store import _alembic_config

    scripts = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    (found,) = [r for r in scripts.walk_revisions() if r.path.endswith("_scale_unique.py")]
    return found


async def test_migration_scale_unique_closes_extra_open_conversations_and_keys_the_older_customer(
    before_scale_unique: str, caplog: pytest.LogCaptureFixture,
) -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    engine = make_engine(before_scale_unique)
    customers = [dict(id=f"cus_{n}", created_at=t0 + timedelta(minutes=n)) for n in (1, 2)]
    addresses = [dict(address=f"{ch}:+14155550100", channel=ch, value="+14155550100",
                      customer_id=cid, evidence="claimed", linked_at=t0 + timedelta(minutes=n))
                 for n, ch, cid in ((1, "sms", "cus_1"), (2, "whatsapp", "cus_2"))]
    conversation = dict(customer_id="cus_1", status="open", opened_at=t0)
    conversations: list[dict[str, Any]] = [
        dict(conversation, id="conv_old", last_activity_at=t0),
        dict(conversation, id="conv_new", last_activity_at=t0 + timedelta(hours=1)),
        dict(conversation, id="conv_other", customer_id="cus_2", last_activity_at=t0)]
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(CUSTOMERS), customers)
            await conn.execute(insert(ADDRESSES), addresses)
            await conn.execute(insert(CONVERSATIONS), conversations)
        await engine.dispose()
        with caplog.at_level(logging.WARNING, "alembic.runtime.migration"):
            await upgrade(before_scale_unique)
        assert "closed 1 open conversation" in caplog.text
        assert "1 phone number(s) belong to more than one customer" in caplog.text
        async with engine.connect() as conn:
            status = dict((await conn.execute(
                select(CONVERSATIONS.c.id, CONVERSATIONS.c.status))).all())
            keys = dict((await conn.execute(
                select(CUSTOMERS.c.id, CUSTOMERS.c.identity_key))).all())
            closed_at = (await conn.execute(select(CONVERSATIONS.c.closed_at).where(
                CONVERSATIONS.c.id == "conv_old"))).scalar_one()
        assert status == {"conv_old": "closed", "conv_new": "open", "conv_other": "open"}
        assert closed_at is not None
        assert keys == {"cus_1": "tel:+14155550100", "cus_2": None}
    finally:
        await engine.dispose()


async def test_migration_scale_unique_downgrades_and_upgrades_again(
    before_scale_unique: str,
) -> None:
    from alembic import command

    from gateway.store import _alembic_config

    await upgrade(before_scale_unique)
    await asyncio.to_thread(command.downgrade, _alembic_config(before_scale_unique),
                            _scale_unique().down_revision)
    engine = make_engine(before_scale_unique)
    try:
        async with engine.connect() as conn:
            columns = [c["name"] for c in await conn.run_sync(
                lambda sync: inspect(sync).get_columns("customers"))]
        assert "identity_key" not in columns
    finally:
        await engine.dispose()
    await upgrade(before_scale_unique)


async def test_a_write_that_loses_a_race_on_a_unique_key_runs_again_and_a_real_error_does_not(
    make_core: CoreFactory,
) -> None:
    from gateway.writes import RETRIES, Tx

    core = await make_core()
    attempts: list[int] = []

    def racing(tx: Tx) -> str:
        # As if another gateway had committed cus_taken between our read and our insert.
        attempts.append(1)
        if len(attempts) == 1:
            tx.conn.execute(insert(CUSTOMERS).values(id="cus_taken", created_at=tx.now))
        return str(tx.conn.execute(select(CUSTOMERS.c.id)).scalar_one())

    await core.writes.run(lambda tx: tx.conn.execute(
        insert(CUSTOMERS).values(id="cus_taken", created_at=tx.now)))
    assert await core.writes.run(racing) == "cus_taken"
    assert len(attempts) == 2

    attempts.clear()
    with pytest.raises(IntegrityError):
        await core.writes.run(lambda tx: (attempts.append(1), tx.conn.execute(
            insert(CUSTOMERS).values(id="cus_taken", created_at=tx.now))))
    assert len(attempts) == RETRIES

    attempts.clear()
    with pytest.raises(Exception, match="no_such_table"):
        await core.writes.run(lambda tx: (attempts.append(1), tx.conn.execute(
            text("SELECT * FROM no_such_table"))))
    assert len(attempts) == 1
