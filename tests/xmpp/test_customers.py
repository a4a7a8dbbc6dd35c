"""XMPP customers against a real Prosody: a message is stored once, receipts are answered
after the commit, replies go out with a receipt request, and receipts, markers and bounces
come back as delivery statuses."""

from __future__ import annotations

import pytest

from gateway.channels import OutboundMessage, SendError
from tests.xmpp.fakes import eventually


async def test_customer_message_is_ingested_once_and_acknowledged_after_commit(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    await start_channel(core, gw)
    customer = await client(ann)

    message_id = customer.send(gw, "my parcel never arrived", origin_id="o-1")
    receipt = await customer.wait_for(
        lambda m: m.find("{urn:xmpp:receipts}received") is not None)

    assert receipt.find("{urn:xmpp:receipts}received").get("id") == message_id
    assert core.texts() == ["my parcel never arrived"]
    stored = core.messages[0]
    assert str(stored.sender) == f"xmpp:{ann}"
    assert stored.attested is True and stored.provider == "xmpp"
    assert stored.provider_id == f"origin:{ann}:o-1"
    assert stored.thread_key == f"xmpp:{gw}:{ann}"


async def test_reply_reaches_the_customer_with_a_receipt_request_and_receipts_become_statuses(
        prosody, core, start_channel, client):
    gw, ann, mallory = await prosody.accounts("gw", "ann", "mallory")
    channel = await start_channel(core, gw)
    customer = await client(ann)
    stranger = await client(mallory)

    receipt = await channel.send(OutboundMessage(
        id="out_0001", channel="xmpp", kind="message", to=f"xmpp:{ann}", from_=None,
        text="We are sending a new parcel today."))

    got = await customer.wait_for_body("new parcel")
    assert receipt.provider == "xmpp" and receipt.provider_id == got.get("id")
    assert got.get("type") == "chat"
    assert got.find("{urn:xmpp:receipts}request") is not None
    # A stranger who learns (or guesses) the id cannot move the message's status.
    stranger.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:receipts' "
                      f"id='{receipt.provider_id}'/></message>")
    customer.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:receipts' "
                      f"id='{receipt.provider_id}'/></message>")
    await eventually(lambda: core.statuses, what="a delivery status")
    customer.send_raw(f"<message to='{gw}'><displayed xmlns='urn:xmpp:chat-markers:0' "
                      f"id='{receipt.provider_id}'/></message>")
    await eventually(lambda: len(core.statuses) == 2, what="the read marker")

    assert [(s.provider_message_id, s.status) for s in core.statuses] == [
        (receipt.provider_id, "delivered"), (receipt.provider_id, "read")]
    assert core.messages == []  # receipts are statuses, never transcript entries


async def test_message_to_an_address_that_does_not_exist_becomes_undelivered(
        prosody, core, start_channel):
    (gw,) = await prosody.accounts("gw")
    channel = await start_channel(core, gw)

    receipt = await channel.send(OutboundMessage(
        id="out_0002", channel="xmpp", kind="message", to="xmpp:nobody@localhost",
        from_=None, text="hello?"))

    status = await eventually(lambda: core.statuses and core.statuses[0], what="a bounce")
    assert status.provider_message_id == receipt.provider_id
    assert status.status == "undelivered"
    assert "service-unavailable" in (status.error or "")


async def test_send_refuses_what_xmpp_cannot_carry(prosody, core, start_channel):
    (gw,) = await prosody.accounts("gw")
    channel = await start_channel(core, gw)

    for message, why in [
        (OutboundMessage("out_1", "xmpp", "call", "xmpp:ann@localhost", None, None), "calls"),
        (OutboundMessage("out_2", "xmpp", "message", "xmpp:ann@localhost", None, ""), "no text"),
        (OutboundMessage("out_3", "xmpp", "message", "sms:+14155550100", None, "x"), "XMPP"),
        (OutboundMessage("out_4", "xmpp", "message", f"xmpp:{gw}", None, "x"), "customer"),
    ]:
        with pytest.raises(SendError) as caught:
            await channel.send(message)
        assert caught.value.permanent, why
        assert why in str(caught.value)


async def test_chat_states_are_kept_in_memory_not_in_the_transcript(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    channel = await start_channel(core, gw)
    customer = await client(ann)

    customer.send_raw(f"<message to='{gw}' type='chat'>"
                      "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await eventually(lambda: channel.chat_state(ann) == "composing", what="the chat state")
    customer.send(gw, "hello", extra="<active xmlns='http://jabber.org/protocol/chatstates'/>")
    await eventually(lambda: core.messages, what="the message")

    assert core.texts() == ["hello"]


async def test_a_burst_from_one_customer_is_stored_in_the_order_sent(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    core.ingest_delay = 0.005  # a store that takes a while: the burst overlaps it
    await start_channel(core, gw, xmpp_flood_burst=100)
    customer = await client(ann)

    for n in range(40):
        customer.send(gw, f"part {n}", origin_id=f"p{n}")
    await eventually(lambda: len(core.messages) == 40, what="the burst")

    assert core.texts() == [f"part {n}" for n in range(40)]
