"""Agents on XMPP against a real Prosody and the real core: presence reaches the router,
going offline returns their conversations to the queue (not before their presence has had a
chance to arrive), a conversation taken from any channel opens with its context, the
customer's messages follow, replies and commands go to the core's desk."""

from __future__ import annotations

from gateway.bus import ConversationAssigned
from gateway.channels import Presence
from tests.helpers import wait_until

CHATSTATES = "{http://jabber.org/protocol/chatstates}"
BODY = "{jabber:client}body"


async def _gateway_with_agents(prosody, core, start_channel, *names, **settings):
    gw, *jids = await prosody.accounts("gw", *names)
    agents = dict(zip(names, jids))
    channel = await start_channel(core, gw, agents, **settings)
    return gw, channel, agents


async def _agent_of(core, conversation_id):
    return (await core.conversation(conversation_id))["agent_id"]


async def test_agent_presence_changes_reach_the_router(prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(
        prosody, core, start_channel, "alice", xmpp_agent_release_after_seconds=60)
    phone = await client(agents["alice"], resource="phone")
    await wait_until(lambda: core.presence("alice") is Presence.AVAILABLE, what="available")

    for show, expected in [("away", Presence.AWAY), ("xa", Presence.AWAY),
                           ("dnd", Presence.DND), (None, Presence.AVAILABLE)]:
        phone.set_presence(show)
        await wait_until(lambda e=expected: core.presence("alice") is e, what=f"{expected}")
    phone.set_presence("dnd")
    await wait_until(lambda: core.presence("alice") is Presence.DND, what="dnd")
    desk = await client(agents["alice"], resource="desk")  # a second device, available
    await wait_until(lambda: core.presence("alice") is Presence.AVAILABLE,
                     what="any available")
    await desk.disconnect()
    await wait_until(lambda: core.presence("alice") is Presence.DND, what="back to dnd")
    await phone.disconnect()
    await wait_until(lambda: core.presence("alice") is Presence.OFFLINE, what="offline")
    assert ("release_all", "alice") not in core.desk.calls  # within the grace period


async def test_agent_going_offline_returns_their_conversations_to_the_queue(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(
        prosody, core, start_channel, "alice", "bob")
    alice = await client(agents["alice"])
    bob = await client(agents["bob"])
    await wait_until(lambda: core.presence("bob") is Presence.AVAILABLE, what="bob online")
    ann = await core.customer_writes("whatsapp:+14155550100", "hello?", name="Ann")
    alice.send(gw, "/next")
    await alice.wait_for_body("Ann")
    assert await _agent_of(core, ann.conversation_id) == "alice"
    events = core.core.bus.subscribe(lambda e: isinstance(e, ConversationAssigned))

    await alice.disconnect()

    released = await events.get(timeout=10)
    assert released is not None
    assert (released.event.conversation_id, released.event.agent_id,
            released.event.previous_agent_id) == (ann.conversation_id, None, "alice")
    assert await _agent_of(core, ann.conversation_id) is None
    notice = (await bob.wait_for_body("waiting in the queue")).findtext(BODY)
    assert "Ann" in notice and "(was with alice)" in notice
    bob.send(gw, "/take 1")  # the number bob was shown
    await bob.wait_for_body("hello?")
    assert await _agent_of(core, ann.conversation_id) == "bob"


async def test_at_start_up_agents_keep_their_conversations_until_presence_could_arrive(
        prosody, core, start_channel, client):
    """A restart must not hand everyone's customers back to the queue because the gateway
    has not heard anyone's presence yet."""
    gw, alice_jid, bob_jid = await prosody.accounts("gw", "alice", "bob")
    agents = {"alice": alice_jid, "bob": bob_jid}
    first = await start_channel(core, gw, agents, xmpp_agent_release_after_seconds=0)
    alice = await client(alice_jid)
    bob = await client(bob_jid)
    ann = await core.customer_writes("whatsapp:+14155550100", "for alice", name="Ann")
    alice.send(gw, "/next")
    await alice.wait_for_body("for alice")
    cy = await core.customer_writes("whatsapp:+14155550111", "for bob", name="Cy")
    bob.send(gw, "/next")
    await bob.wait_for_body("for bob")
    await first.aclose()
    await bob.disconnect()  # bob does not come back
    events = core.core.bus.subscribe(lambda e: isinstance(e, ConversationAssigned))

    await start_channel(core, gw, agents, xmpp_agent_release_after_seconds=0,
                        xmpp_presence_grace_seconds=3)

    # alice was online all along: her presence arrives within the grace, she keeps Ann.
    await wait_until(lambda: core.presence("alice") is Presence.AVAILABLE, what="alice seen")
    # bob never shows up: after the grace his conversation goes back to the queue.
    released = await events.get(timeout=15)
    assert released is not None and released.event.conversation_id == cy.conversation_id
    assert await _agent_of(core, cy.conversation_id) is None
    assert await _agent_of(core, ann.conversation_id) == "alice"
    assert ("release_all", "alice") not in core.desk.calls
    await core.customer_writes("whatsapp:+14155550100", "still there?")
    await alice.wait_for_body("[#1 Ann · whatsapp] still there?")  # restored after restart


async def test_whatsapp_customer_reaches_an_xmpp_agent_with_the_context_and_the_reply_goes_back(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    alice = await client(agents["alice"])
    ann = await core.customer_writes("whatsapp:+14155550100", "my card was charged twice",
                                     name="Ann")

    alice.send(gw, "/next")

    context = (await alice.wait_for_body("verification:")).findtext(BODY)
    assert context.startswith(f"#1 Ann — conversation {ann.conversation_id}")
    assert "whatsapp:+14155550100" in context
    assert "verification: not verified" in context
    assert "whatsapp customer: my card was charged twice" in context
    assert "context: http://127.0.0.1:8080/api/v1/contexts/" in context
    await core.customer_writes("whatsapp:+14155550100", "any news?")
    follow = await alice.wait_for_body("any news?")
    assert follow.findtext(BODY) == "[#1 Ann · whatsapp] any news?"

    alice.send(gw, "We refunded the second charge.")
    await wait_until(lambda: any(name == "reply" for name, _ in core.desk.results),
                     what="the reply committed")
    assert ("reply", "alice", ann.conversation_id, "We refunded the second charge.") \
        in core.desk.calls
    view = await core.conversation(ann.conversation_id)
    reply = view["transcript"][-1]
    assert (reply["text"], reply["direction"], reply["author"], reply["channel"]) == (
        "We refunded the second charge.", "out", "agent:alice", "whatsapp")
    alice.send(gw, "/who")  # the agent's own reply was not echoed back to them
    await alice.wait_for(lambda m: "#1 Ann" in (m.findtext(BODY) or "")
                         and "We refunded" in (m.findtext(BODY) or ""))
    assert not any(b.startswith("[#1") and "We refunded" in b for b in alice.bodies())


async def test_xmpp_customer_and_xmpp_agent_chat_through_the_gateway(
        prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    (ann,) = await prosody.accounts("ann")
    alice = await client(agents["alice"])
    customer = await client(ann)
    customer.send(gw, "is anyone there?")
    await wait_until(lambda: core.stored, what="the customer's message")
    alice.send(gw, "/take")
    await alice.wait_for_body("is anyone there?")

    customer.send_raw(f"<message to='{gw}' type='chat'><composing "
                      "xmlns='http://jabber.org/protocol/chatstates'/></message>")
    typing = await alice.wait_for(lambda m: m.find(f"{CHATSTATES}composing") is not None)
    assert typing.find(BODY) is None
    alice.send(gw, "Yes, how can I help?")

    answer = await customer.wait_for_body("how can I help")
    assert answer.find("{urn:xmpp:receipts}request") is not None
    queued = next(r for name, r in core.desk.results if name == "reply")
    row = await core.outbox_when(queued.id, lambda r: r.provider_id)
    assert row.provider_id == answer.get("id")
    customer.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:receipts' "
                      f"id='{answer.get('id')}'/></message>")
    assert (await core.outbox_when(queued.id, lambda r: r.status == "delivered")).status \
        == "delivered"



async def test_agent_commands_and_help(prosody, core, start_channel, client):
    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    alice = await client(agents["alice"])
    alice.send(gw, "hello?")  # no conversation yet
    await alice.wait_for_body("You have no conversation")
    alice.send(gw, "/next")
    await alice.wait_for_body("Nobody is waiting")
    alice.send(gw, "/frobnicate now")
    assert "/take [id]" in (await alice.wait_for_body("Unknown command /frobnicate"))\
        .findtext(BODY)
    alice.send(gw, "/take 7")
    await alice.wait_for_body("There is no #7 here")
    alice.send(gw, "/take conv_nonexistent")
    await alice.wait_for_body("/take: no conversation conv_nonexistent")

    bo = await core.customer_writes("whatsapp:+14155550100", "call me please", name="Bo")
    alice.send(gw, f"/take {bo.conversation_id}")
    await alice.wait_for_body("#1 Bo")
    alice.send(gw, "/verify")
    verified = (await alice.wait_for_body("a one-time code went to")).findtext(BODY)
    assert "whatsapp:+14155550100" in verified
    code = next(r for name, r in core.desk.results if name == "verify")
    sent = await core.core.outbox_message(code.outbox_id)
    assert sent.kind == "otp" and sent.to == "whatsapp:+14155550100"
    await core.customer_writes("whatsapp:+14155550199", "hi", name="Cy")  # someone else
    alice.send(gw, "/verify whatsapp:+14155550199")  # another customer's address
    await alice.wait_for_body(
        "/verify: whatsapp:+14155550199 is not an address of this customer")
    alice.send(gw, "/call")
    called = (await alice.wait_for_body("#1: calling the customer back")).findtext(BODY)
    assert "voice:+14155550100" in called and "is not verified" in called
    alice.send(gw, "/call dial-in")
    pin = (await alice.wait_for_body("#1: the dial-in PIN went to")).findtext(BODY)
    assert "whatsapp:+14155550100" in pin
    alice.send(gw, "//etc/hosts is a file")
    await wait_until(lambda: ("reply", "alice", bo.conversation_id, "/etc/hosts is a file")
                     in core.desk.calls, what="the escaped reply")
    alice.send(gw, "/close")
    await alice.wait_for_body("#1 closed.")

    assert [c[0] for c in core.desk.calls if c[0] not in ("summary", "assigned")] == [
        "take", "take", "take", "verify", "verify", "escalate", "escalate", "reply", "close"]
    assert ("escalate", "alice", bo.conversation_id, "callback") in core.desk.calls
    assert ("escalate", "alice", bo.conversation_id, "dial-in") in core.desk.calls
    view = await core.conversation(bo.conversation_id)
    assert view["status"] == "closed"
    texts = [e["text"] or "" for e in view["transcript"]]
    assert not any("Your verification code is" in t for t in texts)  # never in clear
    assert "[dial-in PIN sent]" in texts


async def test_what_an_agent_wrote_while_the_gateway_was_away_is_not_run(
        prosody, core, start_channel, client):
    gw, alice_jid = await prosody.accounts("gw", "alice")
    alice = await client(alice_jid)
    alice.send(gw, "/next")  # the gateway is not running: offline storage keeps it
    await start_channel(core, gw, {"alice": alice_jid})

    notice = await alice.wait_for_body("While the gateway was offline you wrote")
    assert "/next" in notice.findtext(BODY)
    assert not any(c[0] == "take" for c in core.desk.calls)


async def test_with_xmpp_on_several_gateways_an_agent_is_told_once_by_the_gateway_that_committed(
        prosody, core, start_channel, client):
    """Several gateways on one PostgreSQL, each with this XMPP account: every one hears every
    event (the peer link republishes them, marked with their origin and the agent relays the
    origin runs). The origin's hub tells the agent; this one follows silently. An event from
    a gateway without XMPP is told here, as with XMPP on one gateway only."""
    from datetime import UTC, datetime

    from gateway.bus import ConversationClosed, EntryAdded

    gw, channel, agents = await _gateway_with_agents(prosody, core, start_channel, "alice")
    alice = await client(agents["alice"])
    ann = await core.customer_writes("whatsapp:+14155550100", "hello?", name="Ann")
    alice.send(gw, "/next")
    await alice.wait_for_body("verification:")
    bus = core.core.bus
    assert f"xmpp:{gw}" in bus.relays  # what this gateway's peer link names on its events
    leg = ann.leg_id

    def entry(n: int, text: str) -> EntryAdded:
        return EntryAdded(ann.customer_id, (10**9 + n, ann.conversation_id, leg,
                                            datetime.now(UTC), "sms", "in", "message",
                                            "sms:+14155550100", text, None, None))

    bus.publish_remote([entry(1, "told by gateway B")], "gw-b", frozenset({f"xmpp:{gw}"}))
    bus.publish_remote([entry(2, "from a gateway without XMPP")], "gw-c")
    await alice.wait_for_body("from a gateway without XMPP")
    bus.publish([entry(3, "committed here")])
    await alice.wait_for_body("committed here")
    assert not any("told by gateway B" in b for b in alice.bodies())
    # The state follows what B told: the conversation closed there is closed here too.
    bus.publish_remote([ConversationClosed(ann.conversation_id, ann.customer_id)], "gw-b",
                       frozenset({f"xmpp:{gw}"}))
    await wait_until(lambda: not channel._agents.agent("alice").assigned,
                     what="the close followed")
    alice.send(gw, "still there?")
    await alice.wait_for_body("You have no conversation to answer")
    assert not any("is closed" in b for b in alice.bodies())
