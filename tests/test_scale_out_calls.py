"""Agents' live calls across gateways (issue 12, point 4: live-call counts and Twilio bridge
state): two real `gateway serve` on one PostgreSQL behind what an HTTP load balancer does
to Twilio's webhooks, which may reach either gateway.

The router counts an agent busy with each call offered to them. A call offered at A counts
at B too (A's CallOffered, relayed by the peer link), and a call's end reported to B (its
`<Dial action>`) frees the agent at A. Without that, B offered a busy agent the next call,
and A kept an agent whose call ended at B busy for the six hours of STALE_OFFER. When a
gateway dies, the others stop counting its calls once its liveness lock is free.
"""

from __future__ import annotations

import asyncio
import json
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
from yarl import URL

from tests.conftest import PUBLIC_URL
from tests.helpers import wait_until
from tests.peers import PostgresServer
from tests.standins import TwilioStandin, twilio_voice_form, twilio_webhook_request
from tests.test_scale_out import GatewayProcess
from tests.test_scale_out_peers import gateways, instance, start, twilio  # noqa: F401

VOICE_NUMBER = "+15005550006"
AGENTS = [{"id": "1", "name": "Ann", "contact": "sip:ann@127.0.0.1:5071"},
          {"id": "2", "name": "Bob", "contact": "sip:bob@127.0.0.1:5072"}]
WHO = {"ann": "1", "bob": "2"}


async def post(http: aiohttp.ClientSession, gateway: GatewayProcess, twilio: TwilioStandin,
               url: str, form: dict[str, str]) -> ET.Element:
    """A signed Twilio webhook to the public `url`, delivered to `gateway`: its TwiML."""
    body, headers = twilio_webhook_request(twilio.auth_token, url, form)
    target = URL(gateway.url + url.removeprefix(PUBLIC_URL), encoded=True)
    async with http.post(target, data=body, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    return ET.fromstring(text)


async def call(http: aiohttp.ClientSession, gateway: GatewayProcess, twilio: TwilioStandin,
               from_: str) -> tuple[str, ET.Element, dict[str, str]]:
    """A call to the support number that skips the PIN prompt: (agent id, its <Dial>, the
    call's form)."""
    form = twilio_voice_form(account_sid=twilio.account_sid, from_=from_, to=VOICE_NUMBER)
    gather = (await post(http, gateway, twilio, f"{PUBLIC_URL}/webhooks/twilio/voice",
                         form)).find("Gather")
    assert gather is not None
    root = await post(http, gateway, twilio, gather.attrib["action"],
                      {**form, "CallStatus": "in-progress", "Digits": "", "FinishedOnKey": "#"})
    dial = root.find("Dial")
    assert dial is not None, ET.tostring(root)
    sip = dial.find("Sip")
    assert sip is not None and sip.text
    user = sip.text.removeprefix("sip:").split("@", 1)[0]
    return WHO[user], dial, form


async def caught_up(http: aiohttp.ClientSession, told: GatewayProcess,
                    listener: GatewayProcess) -> None:
    """Every event `told` committed so far has reached `listener`."""
    sent = (await instance(http, told))["peers"]["events_sent"]

    async def heard() -> bool:
        return (await instance(http, listener))["peers"]["events_heard"] >= sent

    await wait_until(heard, timeout=30, what=f"{listener.child.name} to hear {sent} events")


async def test_an_agent_busy_on_a_call_through_one_gateway_is_busy_at_the_other_and_freed_by_an_end_reported_there(  # noqa: E501
    postgres_server: PostgresServer, twilio: TwilioStandin,  # noqa: F811
    gateways: list[GatewayProcess], tmp_path: Path,  # noqa: F811
) -> None:
    url = postgres_server.create_database()
    settings = {"GATEWAY_TWILIO_VOICE_NUMBER": VOICE_NUMBER, "GATEWAY_AGENTS": json.dumps(AGENTS)}
    a = await start(gateways, "gateway-a", url, twilio, tmp_path, **settings)
    b = await start(gateways, "gateway-b", url, twilio, tmp_path, **settings)
    async with aiohttp.ClientSession() as http:
        # Both gateways break ties between idle agents the same way: alone, each would offer
        # its first call to the same agent.
        first, dial, form = await call(http, a, twilio, "+14155550181")
        await caught_up(http, a, b)
        second, _, _ = await call(http, b, twilio, "+14155550182")
        assert second != first, "B offered a call to the agent busy on A's call"

        # The first call ends; Twilio's <Dial action> reaches B (the load balancer's pick).
        await post(http, b, twilio, dial.attrib["action"],
                   {**form, "CallStatus": "completed", "DialCallStatus": "completed",
                    "DialCallDuration": "30"})
        await caught_up(http, b, a)
        # At A the first agent is free again, the second busy with B's call: A offers the
        # next call to the first (had A kept them busy, both would count one call, and A's
        # tie-break would give it to the second).
        third, _, _ = await call(http, a, twilio, "+14155550183")
        assert third == first, "A still counted the agent busy after the call ended at B"

        # A dies with that call live: its end will never be told. B stops counting A's
        # calls once A's liveness lock is free, and offers the first agent the next call
        # (else both agents would count one call, and B's tie-break picks the second).
        await caught_up(http, a, b)
        a.child.send(signal.SIGKILL)
        await wait_until(lambda: "is gone: 1 call(s)" in b.child.output(), timeout=30,
                         what="B to notice A is gone")
        fourth, _, _ = await call(http, b, twilio, "+14155550184")
        assert fourth == first, "B still counted a dead gateway's call"


async def test_wrong_pins_count_at_every_gateway_per_caller_and_for_everyone(
    postgres_server: PostgresServer, twilio: TwilioStandin,  # noqa: F811
    gateways: list[GatewayProcess], tmp_path: Path,  # noqa: F811
) -> None:
    """A guesser whose calls a load balancer spreads over two gateways gets the attempts of
    one: the PIN limits live in the database. With limits in each gateway's memory, more
    than three of the eight guesses at once, the fourth guess in a row (the second at B)
    and the last callers were all checked."""
    url = postgres_server.create_database()
    settings = {"GATEWAY_TWILIO_VOICE_NUMBER": VOICE_NUMBER, "GATEWAY_AGENTS": json.dumps(AGENTS),
                "GATEWAY_PIN_FAILURE_BURST": "3", "GATEWAY_PIN_FAILURES_PER_MINUTE": "0",
                "GATEWAY_PIN_GLOBAL_FAILURE_BURST": "8",
                "GATEWAY_PIN_GLOBAL_FAILURES_PER_MINUTE": "0"}
    a = await start(gateways, "gateway-a", url, twilio, tmp_path, **settings)
    b = await start(gateways, "gateway-b", url, twilio, tmp_path, **settings)

    async def guess(http: aiohttp.ClientSession, gateway: GatewayProcess, from_: str) -> str:
        """A dial-in with a made-up PIN through `gateway`: what the caller is told."""
        form = twilio_voice_form(account_sid=twilio.account_sid, from_=from_, to=VOICE_NUMBER)
        gather = (await post(http, gateway, twilio, f"{PUBLIC_URL}/webhooks/twilio/voice",
                             form)).find("Gather")
        assert gather is not None
        root = await post(http, gateway, twilio, gather.attrib["action"],
                          {**form, "CallStatus": "in-progress", "Digits": "000000",
                           "FinishedOnKey": "#"})
        return " ".join(say.text or "" for say in root.iter("Say"))

    async with aiohttp.ClientSession() as http:
        # Eight guesses from one caller at once, four at each gateway: three are checked.
        told = await asyncio.gather(*(guess(http, gw, "+14155550190") for gw in (a, b) * 4))
        assert sum("Too many wrong PINs" in t for t in told) == 5, told
        for gateway in (a, b, a):  # three wrong PINs from another caller, checked
            assert "PIN" not in await guess(http, gateway, "+14155550191")
        assert "Too many wrong PINs" in await guess(http, b, "+14155550191")
        # Two more callers fail once each, at A and at B: eight failures in all.
        assert "PIN" not in await guess(http, a, "+14155550192")
        assert "PIN" not in await guess(http, b, "+14155550193")
        assert "cannot check PINs right now" in await guess(http, a, "+14155550194")
        assert "cannot check PINs right now" in await guess(http, b, "+14155550195")
