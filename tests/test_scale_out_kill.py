"""One of two gateways on one PostgreSQL is SIGKILLed mid-load (issue 12): nothing
acknowledged is lost or doubled, in ingest and in outbound sends, and the survivor keeps
serving.

Real `gateway serve` processes on a real PostgreSQL. The test plays the provider as Twilio
behaves behind a load balancer: it delivers each inbound message to the next gateway in turn
and retries a delivery that got no 2xx (an error, a reset, a refused connection) with the
same MessageSid and signature, at the other gateway; it keeps going until every message was
acknowledged. Meanwhile an agent queues replies at both gateways; the Twilio stand-in takes a
while to answer each send, so both gateways have sends on the wire when one dies.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
from sqlalchemy import func, select

from gateway.models import TranscriptEntry
from gateway.store import make_engine
from tests.conftest import BUSINESS_SMS, PUBLIC_URL
from tests.helpers import wait_until
from tests.peers import PostgresServer
from tests.standins import TwilioStandin, new_twilio_sid, twilio_sign, twilio_sms_form
from tests.standins.server import Fault
from tests.test_scale_out import MESSAGING, GatewayProcess
from tests.test_scale_out_peers import (  # noqa: F401  (gateways: a fixture)
    AUTH,
    GatedTwilio,
    first_contact,
    gateways,
    instance,
    rows,
    start,
)

MESSAGES = 120  # inbound messages the provider must get acknowledged
REPLIES = 24  # agent replies queued during the load, alternately at each gateway
WORKERS = 8  # deliveries the provider has in flight at once
SEND_SECONDS = 0.5  # how long the provider takes to answer each send
TRANSCRIPT = TranscriptEntry.__table__
SETTLED = {"queued", "sent", "delivered", "failed", "unknown"}


class SlowTwilio(GatedTwilio):
    """The Twilio stand-in answering every send after SEND_SECONDS (a send on the wire for
    that long), still recording each message it accepted."""

    async def _next_fault(self) -> Fault | None:
        fault = await super()._next_fault()
        if fault is None:
            self._faults.insert(0, Fault(delay=SEND_SECONDS))
            fault = await super()._next_fault()
        return fault


@dataclass
class Provider:
    """Twilio delivering inbound messages to two gateways: each message first to the next
    gateway in turn, retried at the next one until a 2xx."""

    http: aiohttp.ClientSession
    twilio: TwilioStandin
    targets: list[GatewayProcess]
    numbers: list[str]
    acked: dict[str, str] = field(default_factory=dict)  # MessageSid -> gateway that said 200
    attempts: Counter[str] = field(default_factory=Counter)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    def message(self, n: int) -> tuple[str, bytes, dict[str, str]]:
        form = twilio_sms_form(account_sid=self.twilio.account_sid,
                               from_=self.numbers[n % len(self.numbers)], to=BUSINESS_SMS,
                               body=f"message {n}")
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": twilio_sign(self.twilio.auth_token,
                                                     PUBLIC_URL + MESSAGING, form)}
        return form["MessageSid"], urlencode(form).encode(), headers

    async def deliver(self, n: int) -> None:
        sid, body, headers = self.message(n)
        for attempt in range(40):
            target = self.targets[(n + attempt) % len(self.targets)]
            self.attempts[sid] += 1
            try:
                async with self.http.post(target.url + MESSAGING, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=20)) as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass  # refused, reset or timed out: not acknowledged, delivered again
        else:
            raise AssertionError(f"{sid} never acknowledged")
        async with self.progress:
            self.acked[sid] = target.child.name
            self.progress.notify_all()

    async def run(self) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(MESSAGES):
            queue.put_nowait(n)

        async def worker() -> None:
            while not queue.empty():
                await self.deliver(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(WORKERS)))

    async def until_acked(self, count: int) -> None:
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: len(self.acked) >= count), 60)


async def test_a_gateway_killed_mid_load_loses_and_doubles_nothing_acknowledged_in_or_out(
    postgres_server: PostgresServer, pg_template: str,
    gateways: list[GatewayProcess],  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    url = postgres_server.create_database(template=pg_template)
    async with SlowTwilio(new_twilio_sid("AC"), secrets.token_hex(16)) as twilio:
        a, b = await asyncio.gather(*(
            start(gateways, f"gateway-{x}", url, twilio, tmp_path,
                  GATEWAY_OUTBOX_POLL_SECONDS="1") for x in "ab"))
        engine = make_engine(url)
        try:
            async with aiohttp.ClientSession() as http:
                ids = {"a": (await instance(http, a))["instance"],
                       "b": (await instance(http, b))["instance"]}
                numbers = [f"+1415555{n:04d}" for n in range(300, 306)]
                conversations = [await first_contact(http, gw, twilio, number)
                                 for gw, number in zip((a, b) * 3, numbers, strict=True)]
                provider = Provider(http, twilio, [a, b], numbers)
                replies: dict[str, str] = {}  # outbox id -> text, acknowledged by a gateway
                tried: set[str] = set()

                async def agent() -> None:
                    """A reply queued at each gateway in turn as the load goes on; one whose
                    POST got no answer is not retried (the agent saw an error)."""
                    for k in range(REPLIES):
                        await provider.until_acked(k * MESSAGES // REPLIES)
                        target = (a, b)[k % 2] if a.child.alive() else b
                        text = f"reply {k}"
                        tried.add(text)
                        try:
                            async with http.post(
                                f"{target.url}/api/v1/conversations/"
                                f"{conversations[k % len(conversations)]}/messages",
                                json={"text": text}, headers=AUTH,
                            ) as resp:
                                if resp.status < 300:
                                    replies[(await resp.json())["id"]] = text
                        except aiohttp.ClientError:
                            pass

                load = asyncio.gather(provider.run(), agent())
                try:
                    await provider.until_acked(MESSAGES // 3)

                    async def a_sending() -> bool:
                        return any(r["status"] == "sending" and r["lease_owner"] == ids["a"]
                                   for r in (await rows(engine)).values())

                    await wait_until(a_sending, timeout=30, what="gateway A with a send out")
                    a.child.send(signal.SIGKILL)
                    assert await a.child.wait_async(10)
                    acked_before_kill = len(provider.acked)
                    at_kill = await rows(engine)  # A is gone: what it leased stays in doubt
                    await asyncio.wait_for(load, 120)
                finally:
                    if not load.done():
                        load.cancel()
                        await asyncio.gather(load, return_exceptions=True)

                # Ingest: every message acknowledged, each stored exactly once, nothing
                # extra; some were delivered again after the kill, and B kept serving.
                assert len(provider.acked) == MESSAGES
                async with engine.connect() as conn:
                    stored: dict[str | None, int] = dict((await conn.execute(
                        select(TRANSCRIPT.c.provider_id, func.count())
                        .where(TRANSCRIPT.c.direction == "in",
                               TRANSCRIPT.c.text.like("message %"))
                        .group_by(TRANSCRIPT.c.provider_id))).all())
                assert stored == dict.fromkeys(provider.acked, 1)
                assert any(n > 1 for n in provider.attempts.values())
                after_kill = list(provider.acked.values())[acked_before_kill:]
                assert after_kill.count("gateway-b") > 0

                # Outbound: settled, each reply sent once or `unknown`, never twice.
                async def settled() -> bool:
                    now = await rows(engine)
                    return all(r["status"] in SETTLED for r in now.values())

                await wait_until(settled, timeout=60, what="every send settled")

                async def idle() -> bool:
                    return bool((await instance(http, b))["outbox"]["in_flight"] == 0)

                await wait_until(idle, timeout=30, what="B's outbox idle")
                after = await rows(engine)
                sent = Counter(m["Body"] for m in twilio.messages)
                sids = {m["Body"]: m["Sid"] for m in twilio.messages}
                assert set(sent) <= tried and max(sent.values()) == 1, sent
                in_doubt = {i for i, r in at_kill.items()
                            if r["status"] == "sending" and r["lease_owner"] == ids["a"]}
                assert in_doubt  # the kill came with sends on the wire
                assert set(replies) <= set(after)
                for i, row in after.items():
                    if row["status"] == "unknown":
                        assert i in in_doubt, row  # only a dead gateway's sends are in doubt
                        assert "not resent" in row["last_error"]
                    else:
                        assert row["status"] == "queued", row
                        assert row["provider_id"] in sids.values(), row
                        if i in replies:
                            assert row["provider_id"] == sids[replies[i]]
                # None lost: what was still queued or B's when A died, B sent.
                for i, row in at_kill.items():
                    if row["status"] == "pending" or row["lease_owner"] == ids["b"]:
                        assert after[i]["status"] == "queued"
                        assert after[i]["lease_owner"] == ids["b"]

                # The survivor still serves: a new message is stored, a reply sent.
                status, _ = await b.twilio(http, twilio, numbers[0], "after the kill")
                assert status == 200
        finally:
            await engine.dispose()
