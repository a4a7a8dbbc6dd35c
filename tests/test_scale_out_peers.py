"""Several gateways on one PostgreSQL (issue 12, points 3 and 5): every gateway sends the
outbox, a killed one's sends become `unknown` and a live one's are never touched, replies
queued anywhere are sent at once by a gateway that sends, and an agent's event stream on one
gateway shows what arrived at another.

Real `gateway serve` processes on a real PostgreSQL, with the Twilio stand-in as the provider
(it records every message it accepted, so "sent once" is counted where it counts).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.models import OutboxMessage
from gateway.store import make_engine
from tests.conftest import AGENT_TOKEN
from tests.console.server import SseReader
from tests.helpers import wait_until
from tests.peers import PostgresServer
from tests.standins import TwilioStandin, new_twilio_sid
from tests.standins.server import Fault
from tests.test_scale_out import GatewayProcess

OUTBOX = OutboxMessage.__table__
AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}


class GatedTwilio(TwilioStandin):
    """The Twilio stand-in, able to hold every send it receives until the gate opens (a
    provider that is slow to answer: the gateway's sends stay on the wire)."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__(account_sid, auth_token)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def _next_fault(self) -> Fault | None:
        if not self.gate.is_set():
            self.held += 1
            await asyncio.wait_for(self.gate.wait(), 60)
        return await super()._next_fault()

    def bodies(self) -> Counter[str]:
        return Counter(m["Body"] for m in self.messages)


@pytest_asyncio.fixture
async def twilio() -> AsyncIterator[GatedTwilio]:
    async with GatedTwilio(new_twilio_sid("AC"), secrets.token_hex(16)) as standin:
        yield standin


@pytest_asyncio.fixture
async def gateways() -> AsyncIterator[list[GatewayProcess]]:
    """The gateways a test starts; each stopped by its pid at the end."""
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        await process.child.stop_async()


async def start(started: list[GatewayProcess], name: str, url: str, twilio: TwilioStandin,
                tmp_path: Path, **extra: str) -> GatewayProcess:
    process = GatewayProcess.start(name, url, twilio, tmp_path, **extra)
    started.append(process)
    await process.ready()
    return process


async def api(http: aiohttp.ClientSession, gateway: GatewayProcess, method: str, path: str,
              **kw: Any) -> Any:
    async with http.request(method, gateway.url + path, headers=AUTH, **kw) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def instance(http: aiohttp.ClientSession, gateway: GatewayProcess) -> dict[str, Any]:
    async with http.get(gateway.url + "/healthz") as resp:
        return dict(await resp.json())


async def first_contact(http: aiohttp.ClientSession, gateway: GatewayProcess,
                        twilio: TwilioStandin, number: str) -> str:
    """A customer writes by SMS to `gateway`; their open conversation's id."""
    status, _ = await gateway.twilio(http, twilio, number, "hello?")
    assert status == 200
    customer = await api(http, gateway, "GET", "/api/v1/customers",
                         params={"address": f"sms:{number}"})
    return str(customer["conversations"][0]["id"])


async def rows(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        found = (await conn.execute(select(
            OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.lease_owner, OUTBOX.c.provider_id,
            OUTBOX.c.payload, OUTBOX.c.last_error))).mappings().all()
    return {row["id"]: dict(row) for row in found}


async def test_a_reply_queued_at_a_gateway_that_does_not_send_is_sent_once_by_another_at_once(
    postgres_server: PostgresServer, twilio: GatedTwilio, gateways: list[GatewayProcess],
    tmp_path: Path,
) -> None:
    url = postgres_server.create_database()
    a = await start(gateways, "gateway-a", url, twilio, tmp_path,
                    GATEWAY_OUTBOX_ENABLED="false")
    # B polls only every ten minutes: only a wake-up from A makes it send sooner.
    b = await start(gateways, "gateway-b", url, twilio, tmp_path,
                    GATEWAY_OUTBOX_POLL_SECONDS="600")
    engine = make_engine(url)
    try:
        async with aiohttp.ClientSession() as http:
            conversation = await first_contact(http, a, twilio, "+14155550170")
            await wait_until(lambda: instance(http, b), what="B serving")
            passes = (await instance(http, b))["outbox"]["passes"]
            reply = await api(http, a, "POST", f"/api/v1/conversations/{conversation}/messages",
                              json={"text": "sent by whoever sends"})
            await twilio.wait_for_messages(1, timeout=30)

            async def recorded() -> bool:
                state = await api(http, a, "GET", f"/api/v1/outbox/{reply['id']}")
                return bool(state["provider_id"])

            await wait_until(recorded, timeout=30, what="the send recorded")
            state = await api(http, a, "GET", f"/api/v1/outbox/{reply['id']}")
            assert state["provider_id"] == twilio.messages[0]["Sid"]
            assert (await instance(http, b))["outbox"]["passes"] > passes  # woken, not polled
            row = (await rows(engine))[reply["id"]]
            assert row["lease_owner"] == (await instance(http, b))["instance"]
            assert twilio.bodies() == Counter({"sent by whoever sends": 1})
    finally:
        await engine.dispose()


async def test_a_gateway_killed_mid_send_leaves_its_sends_unknown_and_a_live_peers_untouched(
    postgres_server: PostgresServer, twilio: GatedTwilio, gateways: list[GatewayProcess],
    tmp_path: Path,
) -> None:
    url = postgres_server.create_database()
    a = await start(gateways, "gateway-a", url, twilio, tmp_path)
    b = await start(gateways, "gateway-b", url, twilio, tmp_path,
                    GATEWAY_OUTBOX_POLL_SECONDS="1")
    engine = make_engine(url)
    try:
        async with aiohttp.ClientSession() as http:
            ids = {"a": (await instance(http, a))["instance"],
                   "b": (await instance(http, b))["instance"]}
            conversations = [await first_contact(http, gw, twilio, f"+1415555{n:04d}")
                             for n, gw in enumerate((a, b) * 4)]
            # The provider holds every send: replies queued at both gateways are on the wire.
            twilio.gate.clear()
            queued: dict[str, str] = {}  # outbox id -> text

            async def both_sending() -> bool:
                owners = Counter(r["lease_owner"] for r in (await rows(engine)).values()
                                 if r["status"] == "sending")
                return owners[ids["a"]] >= 2 and owners[ids["b"]] >= 2

            n = 0
            while not await both_sending():
                assert n < 40, f"sends did not spread over both gateways: {await rows(engine)}"
                gw = (a, b)[n % 2]
                text = f"reply {n}"
                reply = await api(http, gw, "POST",
                                  f"/api/v1/conversations/{conversations[n % 8]}/messages",
                                  json={"text": text})
                queued[reply["id"]] = text
                n += 1
                await wait_until(lambda: all_claimed(engine, queued), timeout=20,
                                 what="the reply claimed")
            before = await rows(engine)
            of_a = {i for i, r in before.items() if r["lease_owner"] == ids["a"]}
            of_b = {i for i, r in before.items() if r["lease_owner"] == ids["b"]}

            a.child.send(signal.SIGKILL)
            await a.child.wait_async(10)
            # A gateway starting now (A's replacement) finds A's sends in doubt and B's
            # live: B's are B's to finish.
            c = await start(gateways, "gateway-c", url, twilio, tmp_path)

            async def a_unknown() -> bool:
                now = await rows(engine)
                return all(now[i]["status"] == "unknown" for i in of_a)

            await wait_until(a_unknown, timeout=20, what="A's sends marked unknown")
            now = await rows(engine)
            assert {now[i]["status"] for i in of_b} == {"sending"}
            assert all("not resent" in now[i]["last_error"] for i in of_a)

            twilio.gate.set()

            async def settled() -> bool:
                now = await rows(engine)
                return all(r["status"] not in ("pending", "sending") for r in now.values())

            await wait_until(settled, timeout=30, what="every send settled")
            for gw in (b, c):
                async def idle(gw: GatewayProcess = gw) -> bool:
                    outbox = (await instance(http, gw))["outbox"]
                    return bool(outbox["in_flight"] == 0)

                await wait_until(idle, timeout=20, what="the outbox idle")
            after = await rows(engine)
            sids = {m["Body"]: m["Sid"] for m in twilio.messages}
            # Nothing acknowledged is lost or doubled: every reply reached the provider once
            # (A's too: they were on the wire), none was resent, B recorded each of its own.
            assert set(after) == set(queued)
            assert twilio.bodies() == Counter(queued.values())
            assert {after[i]["status"] for i in of_a} == {"unknown"}
            for i in of_b:
                assert after[i]["status"] == "queued", after[i]
                assert after[i]["provider_id"] == sids[queued[i]]
            for i in set(queued) - of_a - of_b:
                assert after[i]["provider_id"] == sids[queued[i]]
    finally:
        await engine.dispose()


async def all_claimed(engine: AsyncEngine, queued: dict[str, str]) -> bool:
    now = await rows(engine)
    return all(i in now and now[i]["status"] != "pending" for i in queued)


async def test_an_agent_connected_to_one_gateway_sees_a_message_that_arrived_at_another(
    postgres_server: PostgresServer, twilio: GatedTwilio, gateways: list[GatewayProcess],
    tmp_path: Path,
) -> None:
    url = postgres_server.create_database()
    a = await start(gateways, "gateway-a", url, twilio, tmp_path)
    b = await start(gateways, "gateway-b", url, twilio, tmp_path)
    async with aiohttp.ClientSession() as http:
        async with http.get(a.url + "/api/v1/events", headers=AUTH) as resp:
            assert resp.status == 200
            events = SseReader(resp)
            while "connected" not in events.comments:
                await _line(events)
            status, at_b = await b.twilio(http, twilio, "+14155550180", "arrived at B")
            assert status == 200
            seen = await events.until(lambda e: e.event == "message", timeout=20)
            assert seen.data["entry"]["text"] == "arrived at B"
            assert seen.data["entry"]["direction"] == "in"
            conversation = seen.data["conversation_id"]
            # A's own events reach its stream once: not echoed back by B.
            status, _ = await a.twilio(http, twilio, "+14155550180", "arrived at A")
            mine = await events.until(lambda e: e.event == "message", timeout=20)
            assert mine.data["entry"]["text"] == "arrived at A"
            # The agent's reply, queued at A, sent (by A or B): the delivery follows.
            await api(http, a, "POST", f"/api/v1/conversations/{conversation}/messages",
                      json={"text": "seen everywhere"})
            out = await events.until(lambda e: e.event == "message", timeout=20)
            assert out.data["entry"]["text"] == "seen everywhere"
            await events.until(lambda e: e.event == "delivery"
                               and e.data["status"] in ("queued", "sent"), timeout=20)
        assert (await instance(http, a))["peers"]["events_heard"] >= 1


async def _line(events: SseReader) -> None:
    line = (await asyncio.wait_for(events.response.content.readline(), 10)).decode().strip()
    if line.startswith(":"):
        events.comments.append(line[1:].strip())


def test_an_event_travels_whole_when_small_and_as_its_entry_id_when_too_large() -> None:
    from datetime import UTC, datetime

    from gateway.bus import DeliveryUpdated, EntryAdded
    from gateway.instances import MAX_PAYLOAD, decode_event, encode_event

    at = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)

    def entry(text: str) -> EntryAdded:
        return EntryAdded("cus_1", (7, "conv_1", "leg_1", at, "sms", "in", "message",
                                    "sms:+14155550100", text, None, {"k": "é"}))

    small = encode_event("gw-a", 1, entry("hé"))
    assert small is not None and len(small.encode()) <= MAX_PAYLOAD
    heard = decode_event(small)
    assert heard is not None and heard.origin == "gw-a" and heard.event == entry("hé")
    large = encode_event("gw-a", 2, entry("x" * 9000))
    assert large is not None and len(large.encode()) <= MAX_PAYLOAD
    heard = decode_event(large)
    assert heard is not None and heard.event is None and heard.entry_ref == (7, "cus_1")
    delivery = DeliveryUpdated("conv_1", "out_1", "sent", None)
    heard = decode_event(encode_event("gw-b", 3, delivery) or "")
    assert heard is not None and heard.event == delivery and heard.relays == frozenset()
    # The agent relays the origin runs travel with each event, whole or as a reference.
    for event in (delivery, entry("x" * 9000)):
        told = decode_event(encode_event("gw-b", 4, event, ["xmpp:support@example.org"]) or "")
        assert told is not None and told.relays == {"xmpp:support@example.org"}
    assert decode_event("not json") is None and decode_event('{"o": "x"}') is None
