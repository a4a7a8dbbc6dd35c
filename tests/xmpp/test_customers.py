"""XMPP customers against a real Prosody: a message is stored once, receipts are answered
after the commit, replies go out with a receipt request, and receipts, markers and bounces
come back as delivery statuses."""

from __future__ import annotations

import pytest

from gateway.addresses import Address
from gateway.channels import CallbackRequest, CodeMessage, SendError, TextMessage
from tests.helpers import wait_until


async def test_customer_message_is_ingested_once_and_acknowledged_after_commit(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    await start_channel(core, gw)
    customer = await client(ann)

    message_id = customer.send(gw, "my parcel never arrived", origin_id="o-1")
    receipt = await customer.wait_for(
        lambda m: m.find("{urn:xmpp:receipts}received") is not None)

    assert receipt.find("{urn:xmpp:receipts}received").get("id") == message_id
    assert core.texts() == ["my parcel never arrived"]  # committed before the receipt
    assert await core.transcript_texts(f"xmpp:{ann}") == ["my parcel never arrived"]
    stored = core.stored[0]
    assert str(stored.sender) == f"xmpp:{ann}"
    assert stored.attested is True and stored.provider == "xmpp"
    assert stored.provider_id == f"origin:{ann}:o-1"
    assert stored.thread_key == f"xmpp:{gw}:{ann}"


async def test_reply_reaches_the_customer_with_a_receipt_request_and_receipts_become_statuses(
        prosody, core, start_channel, client):
    gw, ann, mallory = await prosody.accounts("gw", "ann", "mallory")
    await start_channel(core, gw)
    customer = await client(ann)
    stranger = await client(mallory)
    customer.send(gw, "where is my parcel?")
    await wait_until(lambda: core.stored, what="the customer's message")
    conversation_id = (await core.core.customer_by_address(Address("xmpp", ann)))["conversations"][0]["id"]

    queued = await core.core.reply(conversation_id, "We are sending a new parcel today.", "bob")

    got = await customer.wait_for_body("new parcel")
    sent = await core.outbox_when(queued.id, lambda r: r.provider_id)
    assert (sent.channel, sent.to, sent.provider_id) == ("xmpp", f"xmpp:{ann}", got.get("id"))
    assert got.get("type") == "chat"
    assert got.find("{urn:xmpp:receipts}request") is not None
    # A stranger who learns (or guesses) the id cannot move the message's status.
    stranger.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:receipts' "
                      f"id='{sent.provider_id}'/></message>")
    customer.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:receipts' "
                      f"id='{sent.provider_id}'/></message>")
    assert (await core.outbox_when(queued.id, lambda r: r.status == "delivered")).status \
        == "delivered"
    customer.send_raw(f"<message to='{gw}'><displayed xmlns='urn:xmpp:chat-markers:0' "
                      f"id='{sent.provider_id}'/></message>")
    assert (await core.outbox_when(queued.id, lambda r: r.status == "read")).status == "read"

    assert [(s.provider_message_id, s.status) for s, _ in core.statuses] == [
        (sent.provider_id, "delivered"), (sent.provider_id, "read")]
    assert core.texts() == ["where is my parcel?"]  # receipts are statuses, never entries


async def test_message_to_an_address_that_does_not_exist_becomes_undelivered(
        prosody, core, start_channel):
    (gw,) = await prosody.accounts("gw")
    channel = await start_channel(core, gw)

    receipt = await channel.send(TextMessage(
        id="out_0002", channel="xmpp", to="xmpp:nobody@localhost", text="hello?"))

    await wait_until(lambda: core.statuses, what="a bounce")
    status, _ = core.statuses[0]
    assert status.provider_message_id == receipt.provider_id
    assert status.status == "undelivered"
    assert "service-unavailable" in (status.error or "")


async def test_send_refuses_what_xmpp_cannot_carry(prosody, core, start_channel):
    (gw,) = await prosody.accounts("gw")
    channel = await start_channel(core, gw)

    for message, why in [
        (CallbackRequest(id="out_1", channel="xmpp", to="xmpp:ann@localhost",
                         escalation_token="t", escalation_id="e"), "calls"),
        (TextMessage(id="out_2", channel="xmpp", to="xmpp:ann@localhost", text=""), "no text"),
        (CodeMessage(id="out_3", channel="xmpp", to="sms:+14155550100", text="x"), "XMPP"),
        (TextMessage(id="out_4", channel="xmpp", to=f"xmpp:{gw}", text="x"), "customer"),
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
    await wait_until(lambda: channel.chat_state(ann) == "composing", what="the chat state")
    customer.send(gw, "hello", extra="<active xmlns='http://jabber.org/protocol/chatstates'/>")
    await wait_until(lambda: core.stored, what="the message")

    assert await core.transcript_texts() == ["hello"]


async def test_a_burst_from_one_customer_is_stored_in_the_order_sent(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    await start_channel(core, gw, xmpp_flood_burst=100)
    customer = await client(ann)

    for n in range(40):
        customer.send(gw, f"part {n}", origin_id=f"p{n}")
    await wait_until(lambda: len(core.stored) == 40, what="the burst")

    assert await core.transcript_texts() == [f"part {n}" for n in range(40)]
    assert core.core.batcher.batches < core.core.batcher.writes  # commits were shared

