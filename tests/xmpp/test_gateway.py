"""XMPP end to end, through the whole running gateway (tests/conftest.py `start_gateway`): a
real Prosody, real slixmpp customers and agents, the Twilio stand-in, a pyVoIP phone and SIPp.

- a customer's signed WhatsApp message reaches an XMPP agent with the context, and the
  agent's reply goes back to WhatsApp through Twilio;
- an XMPP customer verifies, and an agent escalates them to a call: the PIN arrives over
  XMPP, the call with it rings the agent's registered phone, and its bundle says verified via
  the escalation; a callback without a phone number is refused in words;
- an agent who goes offline hands their conversations back to the queue (the API, the event
  stream the console reads, and the other XMPP agent);
- Prosody restarted mid-conversation: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Any

import pytest

from gateway.channels import Presence
from tests.conftest import BUSINESS_WHATSAPP, PUBLIC_URL, RunningGateway
from tests.console.test_event_stream import stream
from tests.helpers import wait_until
from tests.peers import SIPP_SCENARIOS, run_sipp_uac
from tests.standins import TwilioStandin, twilio_sms_form, twilio_standin  # noqa: F401
from tests.test_sip_peers import PyVoipPhone
from tests.xmpp.conftest import xmpp_values

pytestmark = pytest.mark.peers

BODY = "{jabber:client}body"
NUMBER = "+14155550100"
MESSAGING = "/webhooks/twilio/messaging"


def body(message: Any) -> str:
    return message.findtext(BODY) or ""


async def open_link(gw: RunningGateway, url: str) -> tuple[int, Any]:
    """Open a context link as the agent would; it names the public URL, we reach loopback."""
    path = url.removeprefix(gw.gw.settings.public_url)
    assert path.startswith("/api/v1/contexts/"), url
    async with gw.http.get(gw.url + path) as resp:  # no bearer token: the link is enough
        return resp.status, await resp.json()


async def conversation_of(gw: RunningGateway, address: str) -> str:
    """The customer's open conversation, once their first message is stored."""
    found: list[str] = []

    async def stored() -> bool:
        status, customer = await gw.api("GET", "/api/v1/customers", params={"address": address})
        if status == 200 and customer["conversations"]:
            found.append(customer["conversations"][0]["id"])
        return bool(found)

    await wait_until(stored, timeout=10, what=f"a conversation of {address}")
    return found[0]


async def taken(gw: RunningGateway, gw_jid: str, agent: Any, customer: Any, text: str,
                **send: Any) -> str:
    """The XMPP `customer` writes `text`; the `agent` takes it with /next and sees it."""
    customer.send(gw_jid, text, **send)
    conversation_id = await conversation_of(gw, f"xmpp:{customer.jid}")
    agent.send(gw_jid, "/next")
    await agent.wait_for_body(text)
    return conversation_id


async def agent_of(gw: RunningGateway, conversation_id: str) -> str | None:
    status, conversation = await gw.api("GET", f"/api/v1/conversations/{conversation_id}")
    assert status == 200, conversation
    return conversation["agent_id"]


async def test_whatsapp_message_reaches_an_xmpp_agent_with_context_and_the_reply_goes_back(
        prosody, start_gateway, twilio_standin: TwilioStandin, client):
    gw_jid, alice_jid = await prosody.accounts("gw", "alice")
    gw = await start_gateway(twilio=twilio_standin, sip=False,
                             **xmpp_values(prosody, gw_jid, {"alice": alice_jid}))
    alice = await client(alice_jid)
    await wait_until(lambda: gw.gw.agents.presence("alice") is Presence.AVAILABLE,
                     what="alice online")

    async def whatsapp(text: str) -> None:
        form = twilio_sms_form(account_sid=twilio_standin.account_sid,
                               from_=f"whatsapp:{NUMBER}", to=BUSINESS_WHATSAPP, body=text,
                               profile_name="Ann Example")
        status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
        assert status == 200

    await whatsapp("my card was charged twice")
    alice.send(gw_jid, "/next")

    context = body(await alice.wait_for_body("verification:"))
    customer = await gw.customer(f"whatsapp:{NUMBER}")
    conversation_id = customer["conversations"][0]["id"]
    assert context.startswith(f"#1 Ann Example — conversation {conversation_id}")
    assert "verification: not verified" in context
    assert "whatsapp customer: my card was charged twice" in context
    link = re.search(r"context: (\S+)", context)
    assert link and link.group(1).startswith(f"{PUBLIC_URL}/api/v1/contexts/")
    status, bundle = await open_link(gw, link.group(1))
    assert status == 200 and bundle["conversation_id"] == conversation_id
    assert "my card was charged twice" in [e["text"] for e in bundle["transcript"]]
    assert await agent_of(gw, conversation_id) == "alice"

    # The badge changes once the customer proves their number (the code goes by WhatsApp).
    alice.send(gw_jid, "/verify")
    await alice.wait_for_body("a one-time code went to whatsapp:+14155550100")
    [sent_code] = await twilio_standin.wait_for_messages(1)
    assert sent_code["To"] == f"whatsapp:{NUMBER}"
    code = re.search(r"code is (\d+)", sent_code["Body"]).group(1)  # type: ignore[union-attr]
    await whatsapp(code)
    await alice.wait_for_body("verified whatsapp:+14155550100")
    alice.send(gw_jid, "/who")
    again = body(await alice.wait_for(lambda m: "verification: verified by" in body(m)))
    assert code not in again  # the code never reaches the agent's chat
    await whatsapp("any news?")
    assert body(await alice.wait_for_body("any news?")) == "[#1 Ann Example · whatsapp] any news?"

    alice.send(gw_jid, "We refunded the second charge.")

    messages = await twilio_standin.wait_for_messages(3)  # the code, "verified", the reply
    reply = messages[-1]
    assert (reply["To"], reply["From"], reply["Body"]) == (
        f"whatsapp:{NUMBER}", BUSINESS_WHATSAPP, "We refunded the second charge.")
    transcript = await gw.transcript(f"whatsapp:{NUMBER}")
    assert (transcript[-1]["author"], transcript[-1]["direction"]) == ("agent:alice", "out")
    assert not any("We refunded" in b for b in alice.bodies())  # not echoed to its author


async def test_xmpp_customer_verified_and_escalated_to_a_call_that_rings_the_agents_phone(
        prosody, start_gateway, client):
    gw_jid, alice_jid, ann_jid = await prosody.accounts("gw", "alice", "ann")
    alice_agent = {"id": "alice", "name": "Alice", "xmpp": alice_jid, "sip_user": "alice",
                   "sip_password": "alice-secret-0123"}
    settings = xmpp_values(prosody, gw_jid)
    settings["agents"] = [alice_agent]  # on XMPP, and with a phone that REGISTERs
    gw = await start_gateway(public_url=PUBLIC_URL, sip_timer_t1_ms=100,
                             twilio_voice_number="+18005550199", **settings)
    alice = await client(alice_jid)
    ann = await client(ann_jid)
    conversation_id = await taken(gw, gw_jid, alice, ann, "I need to change my delivery address")

    alice.send(gw_jid, "/call")  # a callback needs a phone number; this customer has none
    refused = body(await alice.wait_for_body("/call:"))
    assert refused == "/call: no phone number to call back: verify a number first"

    alice.send(gw_jid, "/verify")
    await alice.wait_for_body(f"a one-time code went to xmpp:{ann_jid}")
    code = re.search(r"code is (\d+)", body(await ann.wait_for_body("verification code is")))
    assert code is not None
    ann.send(gw_jid, code.group(1))
    await ann.wait_for_body("you are verified")
    alice.send(gw_jid, "/call dial-in")
    told = body(await alice.wait_for_body("the dial-in PIN went to"))
    assert f"xmpp:{ann_jid}" in told and "will carry the customer's verification" in told
    pin_message = body(await ann.wait_for_body("enter PIN"))
    assert "+18005550199" in pin_message
    pin = re.search(r"PIN (\d+)", pin_message).group(1)  # type: ignore[union-attr]
    assert pin not in told  # the agent's chat never carries the PIN

    port = gw.gw.channels["sip"].edge.port
    async with PyVoipPhone(port, "alice", "alice-secret-0123") as phone:
        agent = gw.gw.agents.get("alice")
        await wait_until(lambda: bool(agent and agent.registrations), what="alice's phone")
        call = await run_sipp_uac(
            f"127.0.0.1:{port}", service=f"support*{pin}", calls=1, rate=10,
            scenario_xml=SIPP_SCENARIOS / "uac_from_number.xml", call_length_ms=200,
            extra_args=["-key", "caller", "+14155550177"], timeout=30)
        assert call.ok, call.describe()
        assert await asyncio.to_thread(phone.answered.wait, 5)

    invite = phone.invites[0]
    assert invite["X-Conversation-Id"] == conversation_id
    url = re.search(r"<(https?://[^>]+)>;purpose=info", invite["Call-Info"])
    assert url is not None
    status, bundle = await open_link(gw, url.group(1))
    assert status == 200
    assert bundle["verification_reason"] == "verified-via-escalation"
    assert bundle["verification"]["address"] == f"xmpp:{ann_jid}"
    assert "I need to change my delivery address" in [e["text"] for e in bundle["transcript"]]


async def test_an_agent_going_offline_hands_their_conversations_back_to_the_queue(
        prosody, start_gateway, client):
    gw_jid, alice_jid, bob_jid, ann_jid = await prosody.accounts("gw", "alice", "bob", "ann")
    gw = await start_gateway(sip=False, **xmpp_values(
        prosody, gw_jid, {"alice": alice_jid, "bob": bob_jid}))
    alice = await client(alice_jid)
    bob = await client(bob_jid)
    ann = await client(ann_jid)
    conversation_id = await taken(gw, gw_jid, alice, ann, "hello, anyone?")
    assert await agent_of(gw, conversation_id) == "alice"

    async with stream(gw) as events:  # the service token's stream: what the console sees
        await alice.disconnect()
        seen: dict[str, Any] = {}  # alice's presence, and her conversation back in the queue
        while len(seen) < 2:
            event = await events.until(lambda e: e.event == "assigned" or (
                e.event == "presence" and e.data["agent_id"] == "alice"), timeout=10)
            seen[event.event] = event
    offline, back = seen["presence"], seen["assigned"]
    assert offline.data["presence"] == "offline"
    assert (back.data["conversation_id"], back.data["agent_id"],
            back.data["previous_agent_id"]) == (conversation_id, None, "alice")
    assert await agent_of(gw, conversation_id) is None
    status, inbox = await gw.api("GET", "/api/v1/conversations", params={"status": "open"})
    assert status == 200
    [item] = [i for i in inbox["items"] if i["id"] == conversation_id]
    assert item["assigned_agent_id"] is None
    notice = body(await bob.wait_for_body("waiting in the queue"))
    assert f"xmpp:{ann_jid}" in notice and "(was with alice)" in notice
    bob.send(gw_jid, "/next")
    await bob.wait_for_body("hello, anyone?")
    assert await agent_of(gw, conversation_id) == "bob"


async def test_prosody_restarted_mid_conversation_loses_and_doubles_nothing(
        prosody, start_gateway, client):
    gw_jid, alice_jid, ann_jid = await prosody.accounts("gw", "alice", "ann")
    gw = await start_gateway(sip=False, **xmpp_values(prosody, gw_jid, {"alice": alice_jid}))
    channel = gw.gw.channels["xmpp"]
    alice = await client(alice_jid)
    ann = await client(ann_jid)
    conversation_id = await taken(gw, gw_jid, alice, ann, "before one", origin_id="b1")
    ann.send(gw_jid, "before two", origin_id="b2")
    await alice.wait_for_body("before two")

    await prosody.restart(signal.SIGTERM)
    await ann.disconnect()
    await alice.disconnect()
    alice = await client(alice_jid, resource="desk")
    ann = await client(ann_jid, resource="laptop")
    ann.send(gw_jid, "after one", origin_id="a1")
    ann.send(gw_jid, "after two", origin_id="a2")
    await wait_until(lambda: channel.session.sessions == 2 and channel.idle, timeout=20,
                     what="a new session, caught up")
    await alice.wait_for_body("after two", timeout=20)
    alice.send(gw_jid, "got them both")
    await ann.wait_for_body("got them both")

    texts = await gw.conversation_texts(conversation_id, until="got them both")
    assert texts.count("before one") == texts.count("before two") == 1
    assert texts.count("after one") == texts.count("after two") == 1
    assert texts.count("got them both") == 1
    forwarded = [b for b in alice.bodies() if b.startswith("[#1")]
    assert sorted(forwarded) == sorted({*forwarded})  # no message shown to the agent twice
    assert await agent_of(gw, conversation_id) == "alice"  # our outage released nobody
    assert ann.bodies(gw_jid).count("got them both") == 1
