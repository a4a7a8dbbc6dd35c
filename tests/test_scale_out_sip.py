"""SIP across two gateways behind Kamailio (issue 12, point 4), all real processes on
loopback: PostgreSQL, Kamailio with the repository's config (config/kamailio/kamailio.cfg)
dispatching to two `gateway serve`s. An agent's phone registers through Kamailio (it lands on
one gateway); a PIN dial-in enters through the other gateway and still rings that phone, with
its context link, through Kamailio; the phone's BYE reaches the gateway that holds the dialog.

On main before this (no shared registrations) the second gateway answers the call 480.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from gateway.models import SipRegistration
from gateway.store import make_engine
from tests.conftest import AGENT_TOKEN, PUBLIC_URL
from tests.helpers import code_from, wait_until
from tests.peers import KamailioDispatcher, PostgresServer
from tests.sip_client import SipTestClient
from tests.standins import TwilioStandin, twilio_standin  # noqa: F401  (fixture)
from tests.test_scale_out import GatewayProcess

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
ALICE = {"id": "12", "name": "Alice", "sip_user": "alice", "sip_password": "alice-secret-pw"}
CUSTOMER = "+14155550142"
AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any
                ) -> tuple[int, Any]:
    async with http.request(method, url, headers=AUTH, **kw) as resp:
        return resp.status, await resp.json()


async def test_agent_registered_through_kamailio_takes_a_pin_call_entering_at_the_other_gateway(
    postgres_server: PostgresServer, twilio_standin: TwilioStandin, tmp_path: Path,
) -> None:
    url = postgres_server.create_database()
    common = {"GATEWAY_AGENTS": json.dumps([ALICE]),
              "GATEWAY_SIP_SHARED_REGISTRATIONS": "true",
              "GATEWAY_SIP_REGISTRATION_SYNC_SECONDS": "0.2",
              "GATEWAY_SIP_NONCE_SECRET": "a-shared-nonce-secret-for-the-test",
              "GATEWAY_SIP_DIGEST_ALGORITHMS": '["SHA-256"]'}
    a = GatewayProcess.start("gateway-a", url, twilio_standin, tmp_path, **common)
    b = GatewayProcess.start("gateway-b", url, twilio_standin, tmp_path,
                             GATEWAY_OUTBOX_ENABLED="false", **common)
    gateways = {a.child.pid: a, b.child.pid: b}
    engine = make_engine(url)
    try:
        await a.ready()
        await b.ready()
        assert a.sip_port and b.sip_port, a.child.output()[-2000:]
        async with KamailioDispatcher([f"127.0.0.1:{a.sip_port}", f"127.0.0.1:{b.sip_port}"]
                                      ) as kamailio, \
                aiohttp.ClientSession() as http, \
                SipTestClient(user="alice") as phone, SipTestClient(user="caller") as caller:
            await phone.open()
            await caller.open()
            registered = await phone.register(kamailio.port, "alice", ALICE["sip_password"])
            assert registered.status == 200, kamailio.log()[-3000:]

            # The binding is in PostgreSQL (written just after the 200, off the SIP path),
            # held by the gateway the dispatcher chose.
            rows: list[Any] = []

            async def stored() -> bool:
                nonlocal rows
                async with engine.connect() as conn:
                    rows = list((await conn.execute(select(SipRegistration.__table__))).all())
                return bool(rows)

            await wait_until(stored, timeout=10, what="alice's binding in PostgreSQL")
            assert [(r.agent_id, r.contact) for r in rows] == [
                ("12", f"sip:alice@127.0.0.1:{phone.port}")]
            holder = gateways[int(rows[0].holder.rsplit(":", 1)[1])]
            other = b if holder is a else a

            async def other_knows() -> bool:
                async with http.get(other.url + "/healthz") as resp:
                    return (await resp.json())["sip_registrations"]["held_elsewhere"] == 1

            await wait_until(other_knows, timeout=10, what="the other gateway to see alice")

            # A customer asks for a call on SMS at gateway A; A's outbox sends the PIN.
            status, _ = await a.twilio(http, twilio_standin, CUSTOMER, "please call me")
            assert status == 200
            status, found = await _json(http, "GET", a.url + "/api/v1/customers",
                                        params={"address": f"sms:{CUSTOMER}"})
            assert status == 200, found
            conversation_id = found["conversations"][0]["id"]
            status, body = await _json(
                http, "POST", f"{a.url}/api/v1/conversations/{conversation_id}/escalations",
                json={"channel": "voice", "mode": "dial-in"})
            assert status == 201, body
            sent = await twilio_standin.wait_for_messages(1, timeout=15)
            pin = code_from(next(m["Body"] for m in sent if "PIN" in m.get("Body", "")))

            # The call enters at the gateway that does not hold the registration.
            invite = caller.request(
                "INVITE", f"sip:support*{pin}@127.0.0.1:{other.sip_port}",
                from_=f"<sip:{CUSTOMER}@127.0.0.1>;tag=c1", body=SDP)
            caller.send(invite, other.sip_port)
            assert (await caller.expect(lambda m: getattr(m, "status", 0) >= 100)).status < 300
            got = await phone.expect("INVITE", timeout=10)
            assert got.headers.get("X-Conversation-Id") == conversation_id
            link = got.headers.get("Call-Info") or ""
            assert link.startswith(f"<{PUBLIC_URL}/api/v1/contexts/"), link
            token = link.split("/contexts/", 1)[1].split(">", 1)[0]
            async with http.get(f"{a.url}/api/v1/contexts/{token}") as resp:
                bundle = await resp.json()
            assert resp.status == 200 and bundle["conversation_id"] == conversation_id
            routes = got.headers.get_all("Record-Route")
            assert any(f":{kamailio.port}" in r for r in routes), routes  # through Kamailio
            assert any(f":{other.sip_port}" in r for r in routes), routes  # and the gateway

            phone.send(phone.answer(got, 200, to_tag="agent", body=SDP), kamailio.port)
            ok = await caller.expect(200, timeout=10)
            caller_routes = list(reversed(ok.headers.get_all("Record-Route")))
            caller_dialog = dict(from_=invite.headers.get("From"), to=ok.headers.get("To"),
                                 call_id=invite.call_id,
                                 headers=[("Route", r) for r in caller_routes])
            contact = ok.headers.get("Contact") or ""
            agent_uri = contact.strip("<>").split(">", 1)[0]
            caller.send(caller.request("ACK", agent_uri, cseq=1, **caller_dialog),
                        other.sip_port)
            await phone.expect("ACK", timeout=10)

            # The agent hangs up: its BYE follows the route set, Kamailio then the gateway
            # that record-routed the call, and reaches the caller.
            bye = phone.request(
                "BYE", f"sip:{CUSTOMER}@127.0.0.1:{caller.port}", from_=got.headers.get("To")
                + ";tag=agent", to=got.headers.get("From"), call_id=got.call_id, cseq=1,
                headers=[("Route", r) for r in routes])
            phone.send(bye, kamailio.port)
            got_bye = await caller.expect("BYE", timeout=10)
            caller.send(caller.answer(got_bye, 200), other.sip_port)
            done = await phone.expect(lambda m: getattr(m, "status", 0) == 200
                                      and m.cseq.method == "BYE", timeout=10)
            assert done.status == 200

            async def ended() -> bool:
                _, conv = await _json(http, "GET",
                                      f"{other.url}/api/v1/conversations/{conversation_id}")
                return any(e["text"] and e["text"].startswith("call ended")
                           and e["text"].endswith("(agent hung up)")
                           for e in conv["transcript"])

            await wait_until(ended, timeout=10, what="the call's end in the transcript")
    finally:
        await engine.dispose()
        for process in (a, b):
            await process.child.stop_async()


# ---- the shared registrations themselves, two routers on one database (SQLite, PostgreSQL) --


async def test_a_binding_registered_at_one_gateway_routes_calls_at_the_other_until_removed_or_lapsed(  # noqa: E501
    database_url: str,
) -> None:
    from config.settings import AgentConfig
    from gateway.agents import AgentDirectory
    from gateway.clock import FrozenClock
    from gateway.registrations import SharedRegistrations

    clock = FrozenClock()
    engine = make_engine(database_url)
    agents = [AgentConfig(id="12", name="Alice", sip_user="alice",
                          sip_password="alice-secret-pw")]  # type: ignore[arg-type]
    a, b = AgentDirectory(agents, clock), AgentDirectory(agents, clock)
    share_a = SharedRegistrations(engine, a, clock, interval=60, holder="gw-a")
    share_b = SharedRegistrations(engine, b, clock, interval=60, holder="gw-b")
    try:
        await share_a.start()
        await share_b.start()
        assert b.pick() is None  # nobody registered anywhere
        alice = a.by_sip_user("alice")
        assert alice is not None
        a.register(alice, "sip:alice@10.0.0.5:5062", 120, ("192.0.2.9", 5060), "udp")
        await share_a.sync()
        await share_b.sync()
        target = b.pick()
        assert target is not None and target.agent_id == "12"
        assert target.contact.uri == "sip:alice@10.0.0.5:5062"
        assert target.contact.source == ("192.0.2.9", 5060)  # via the Kamailio it came through
        assert a.get("12").shared == {}  # type: ignore[union-attr]  (its own, not doubled)

        a.register(alice, "sip:alice@10.0.0.5:5062", 0)  # the phone unregisters
        await share_a.sync()
        await share_b.sync()
        assert b.pick() is None

        a.register(alice, "sip:alice@10.0.0.5:5062", 120, ("192.0.2.9", 5060), "udp")
        await share_a.sync()
        clock.advance(seconds=121)  # not refreshed: it lapses everywhere
        await share_b.sync()
        assert b.pick() is None and a.pick() is None
    finally:
        await share_a.aclose()
        await share_b.aclose()
        await engine.dispose()
