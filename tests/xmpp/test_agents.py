"""Agents on XMPP against a real Prosody: presence reaches the router, going offline returns
their conversations to the queue, a conversation taken from any channel opens with its
context, the customer's messages follow, replies and commands go to the core's desk."""

from __future__ import annotations

from gateway.channels import Presence
from tests.xmpp.fakes import eventually

CHATSTATES = "{http://jabber.org/protocol/chatstates}"


async def _gateway_with_agents(prosody, core, start_channel, *names, **settings):
    gw, *jids = await prosody.accounts("gw", *names)
    agents = dict(zip(names, jids))
    channel = await start_channel(core, gw, agents, **settings)
    return gw, channel, agents


def presence(core, agent_id):
    return core.router.presence.get((agent_id, "xmpp"))


async def test_agent_presence_changes_reach_the_router(prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(
        prosody, core, start_channel, "alice", xmpp_agent_release_after_seconds=60)
    phone = await client(agents["alice"], resource="phone")
    await eventually(lambda: presence(core, "alice") is Presence.AVAILABLE, what="available")

    for show, expected in [("away", Presence.AWAY), ("xa", Presence.AWAY),
                           ("dnd", Presence.DND), (None, Presence.AVAILABLE)]:
        phone.set_presence(show)
        await eventually(lambda e=expected: presence(core, "alice") is e, what=f"{expected}")
    phone.set_presence("dnd")
    await eventually(lambda: presence(core, "alice") is Presence.DND, what="dnd")
    desk = await client(agents["alice"], resource="desk")  # a second device, available
    await eventually(lambda: presence(core, "alice") is Presence.AVAILABLE, what="any available")
    await desk.disconnect()
    await eventually(lambda: presence(core, "alice") is Presence.DND, what="back to dnd")
    await phone.disconnect()
    await eventually(lambda: presence(core, "alice") is Presence.OFFLINE, what="offline")
    assert ("release_all", "alice") not in core.desk.calls  # within the grace period


async def test_agent_going_offline_returns_their_conversations_to_the_queue(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(
        prosody, core, start_channel, "alice", "bob")
    alice = await client(agents["alice"])
    bob = await client(agents["bob"])
    await eventually(lambda: presence(core, "bob") is Presence.AVAILABLE, what="bob online")
    conversation = core.customer_writes("whatsapp:+14155550100", "hello?", name="Ann")
    alice.send(gw, "/next")
    await alice.wait_for_body("Ann")
    assert conversation.agent_id == "alice"

    await alice.disconnect()

    await eventually(lambda: conversation.agent_id is None, what="the release")
    assert ("release_all", "alice") in core.desk.calls
    notice = await bob.wait_for_body("waiting in the queue")
    assert "Ann" in notice.findtext("{jabber:client}body")
    assert "(was with alice)" in notice.findtext("{jabber:client}body")


async def test_whatsapp_customer_reaches_an_xmpp_agent_with_the_context_and_the_reply_goes_back(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    alice = await client(agents["alice"])
    conversation = core.customer_writes("whatsapp:+14155550100",
                                        "my card was charged twice", name="Ann")

    alice.send(gw, "/next")

    context = (await alice.wait_for_body("verification:")).findtext("{jabber:client}body")
    assert "#1 Ann" in context
    assert "whatsapp:+14155550100" in context
    assert "not verified" in context
    assert "my card was charged twice" in context
    assert f"context: http://gw.test/api/v1/contexts/tok-{conversation.leg_id}" in context
    core.customer_writes("whatsapp:+14155550100", "any news?")
    follow = await alice.wait_for_body("any news?")
    assert follow.findtext("{jabber:client}body") == "[#1 Ann · whatsapp] any news?"

    alice.send(gw, "We refunded the second charge.")
    await eventually(lambda: any(c[0] == "reply" for c in core.desk.calls), what="the reply")
    assert ("reply", "alice", conversation.id, "We refunded the second charge.") \
        in core.desk.calls
    assert conversation.entries[-1]["text"] == "We refunded the second charge."
    alice.send(gw, "/who")  # the agent's own reply was not echoed back to them
    await alice.wait_for(lambda m: (m.findtext("{jabber:client}body") or "").count("#1 Ann") and
                         "We refunded" in (m.findtext("{jabber:client}body") or ""))
    assert not any(b.startswith("[#1") and "We refunded" in b for b in alice.bodies())


async def test_xmpp_customer_and_xmpp_agent_chat_through_the_gateway(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    (ann,) = await prosody.accounts("ann")
    alice = await client(agents["alice"])
    customer = await client(ann)
    customer.send(gw, "is anyone there?")
    await eventually(lambda: core.messages, what="the customer's message")
    alice.send(gw, "/take")
    await alice.wait_for_body("is anyone there?")

    customer.send_raw(f"<message to='{gw}' type='chat'><composing "
                      "xmlns='http://jabber.org/protocol/chatstates'/></message>")
    typing = await alice.wait_for(lambda m: m.find(f"{CHATSTATES}composing") is not None)
    assert typing.find("{jabber:client}body") is None
    alice.send(gw, "Yes, how can I help?")

    answer = await customer.wait_for_body("how can I help")
    assert answer.find("{urn:xmpp:receipts}request") is not None
    sent = await eventually(lambda: core.sent, what="the send's receipt")
    assert sent[0][1].provider_id == answer.get("id")


async def test_agent_commands_and_help(prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    alice = await client(agents["alice"])
    alice.send(gw, "hello?")  # no conversation yet
    await alice.wait_for_body("You have no conversation")
    alice.send(gw, "/next")
    await alice.wait_for_body("Nobody is waiting")
    alice.send(gw, "/frobnicate now")
    assert "/take [id]" in (await alice.wait_for_body("Unknown command /frobnicate"))\
        .findtext("{jabber:client}body")
    alice.send(gw, "/take 7")
    await alice.wait_for_body("There is no #7 here")

    conversation = core.customer_writes("sms:+14155550100", "call me please", name="Bo")
    alice.send(gw, f"/take {conversation.id}")
    await alice.wait_for_body("#1 Bo")
    alice.send(gw, "/verify")
    verified = (await alice.wait_for_body("a one-time code was sent")).findtext("{jabber:client}body")
    assert "sms:+14155550100" in verified and "654321" not in verified  # never the code
    alice.send(gw, "/call")
    called = (await alice.wait_for_body("callback escalation")).findtext("{jabber:client}body")
    assert "123456" not in called  # the PIN is the customer's, not the chat's
    alice.send(gw, "/call dial-in")
    await alice.wait_for_body("dial-in escalation")
    alice.send(gw, "//etc/hosts is a file")
    await eventually(lambda: ("reply", "alice", conversation.id, "/etc/hosts is a file")
                     in core.desk.calls, what="the escaped reply")
    alice.send(gw, "/close")
    await alice.wait_for_body("#1 closed.")

    calls = [c for c in core.desk.calls if c[0] != "release_all"]  # at start: not yet online
    assert [c[0] for c in calls] == [
        "take", "take", "verify", "escalate", "escalate", "reply", "close"]
    assert calls[3] == ("escalate", "alice", conversation.id, "callback")
    assert calls[4] == ("escalate", "alice", conversation.id, "dial-in")
    assert conversation.status == "closed"


async def test_what_an_agent_wrote_while_the_gateway_was_away_is_not_run(
        prosody, core, start_channel, client):
    gw, alice_jid = await prosody.accounts("gw", "alice")
    alice = await client(alice_jid)
    alice.send(gw, "/next")  # the gateway is not running: offline storage keeps it
    await start_channel(core, gw, {"alice": alice_jid})

    notice = await alice.wait_for_body("While the gateway was offline you wrote")
    assert "/next" in notice.findtext("{jabber:client}body")
    assert not any(c[0] == "take" for c in core.desk.calls)
