"""XMPP on two gateways on one PostgreSQL (issue 12): an agent is told each thing once.

Two real `gateway serve` processes log in to a real Prosody as one account (each with its
own resource) and share a real PostgreSQL; every event committed at one is republished on the
other's bus by the peer link. The gateway that committed an event tells the agent; the other
follows it silently. The agent addresses its commands to one gateway's full JID: a chat to
the account's bare JID reaches both (docs/scale-out.md says why XMPP stays on one gateway).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.peers import PostgresServer
from tests.prosody import PASSWORD
from tests.test_scale_out import GatewayProcess
from tests.test_scale_out_peers import (  # noqa: F401  (fixtures)
    GatedTwilio,
    gateways,
    start,
    twilio,
)

pytestmark = pytest.mark.peers

BODY = "{jabber:client}body"
NUMBER = "+14155550190"


async def test_with_xmpp_on_two_gateways_the_agent_is_told_each_message_once(
        prosody, client, postgres_server: PostgresServer, pg_template: str,
        twilio: GatedTwilio, gateways: list[GatewayProcess],  # noqa: F811  (fixtures above)
        tmp_path: Path) -> None:
    gw_jid, alice_jid = await prosody.accounts("gw", "alice")
    url = postgres_server.create_database(template=pg_template)
    xmpp = {"GATEWAY_XMPP_JID": gw_jid, "GATEWAY_XMPP_PASSWORD": PASSWORD,
            "GATEWAY_XMPP_HOST": "127.0.0.1", "GATEWAY_XMPP_PORT": str(prosody.port),
            "GATEWAY_XMPP_SECURITY": "none",
            "GATEWAY_AGENTS": json.dumps([{"id": "alice", "name": "Alice",
                                           "xmpp": alice_jid}])}
    a, b = await asyncio.gather(*(
        start(gateways, f"gateway-{x}", url, twilio, tmp_path,
              GATEWAY_XMPP_RESOURCE=f"gateway-{x}", **xmpp) for x in "ab"))
    alice = await client(alice_jid)

    def told(fragment: str) -> list[str]:
        return [m.get("from") or "" for m in alice.received
                if fragment in (m.findtext(BODY) or "")]

    async with aiohttp.ClientSession() as http:
        status, _ = await a.twilio(http, twilio, NUMBER, "first, at A")
        assert status == 200
        alice.send(f"{gw_jid}/gateway-a", "/next")  # run by A only
        await alice.wait_for_body("verification:")
        status, _ = await b.twilio(http, twilio, NUMBER, "then at B")
        assert status == 200
        await alice.wait_for_body("then at B")
        status, _ = await a.twilio(http, twilio, NUMBER, "again at A")
        assert status == 200
        await alice.wait_for_body("again at A")
        status, _ = await b.twilio(http, twilio, NUMBER, "last, at B")
        assert status == 200
        await alice.wait_for_body("last, at B")
    # Both stopped at once (each logs out of Prosody first), not one after the other.
    await asyncio.gather(*(gateway.child.stop_async() for gateway in gateways))
    # Each once, from the gateway where it was committed (B had followed the assignment).
    assert told("verification:") == [f"{gw_jid}/gateway-a"]
    assert told("then at B") == [f"{gw_jid}/gateway-b"]
    assert told("again at A") == [f"{gw_jid}/gateway-a"]
    assert told("last, at B") == [f"{gw_jid}/gateway-b"]
