"""Bad and hostile input over a real Prosody: a clear error stanza or a log line, never a
crash, and nothing stored twice. What a stranger controls in an XMPP message: the body, its
ids (id, origin-id), its children, its type, and how often it is sent; not the JID (their
server authenticated it)."""

from __future__ import annotations

import asyncio
import logging

from gateway.addresses import Address
from tests.helpers import wait_until

STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def _errors(client, condition):
    return [m for m in client.received if m.get("type") == "error"
            and m.find(f"{{jabber:client}}error/{STANZAS}{condition}") is not None]


async def _settled(core, channel, customer, gw):
    """Everything sent before this has been handled: a last message comes through."""
    customer.send(gw, "last one", origin_id="settle")
    await wait_until(lambda: "last one" in core.texts() and channel.idle, what="the last one")


async def test_empty_and_odd_messages_are_logged_and_skipped_never_stored(
        prosody, core, start_channel, client, caplog):
    gw, ann = await prosody.accounts("gw", "ann")
    channel = await start_channel(core, gw)
    customer = await client(ann)
    caplog.set_level(logging.INFO, logger="gateway.connectors.xmpp")

    customer.send(gw, "", origin_id="e1")
    customer.send(gw, "   \n\t ", origin_id="e2")
    customer.send(f"{gw}/gateway", "to a room", mtype="groupchat")  # to the bare JID: bounced
    customer.send(gw, "news", mtype="headline")
    customer.send_raw(f"<message to='{gw}' type='chat'><thing xmlns='urn:example:odd'/></message>")
    customer.send_raw(f"<message to='{gw}' type='bogus'><body>strange type</body></message>")
    customer.send(gw, "with odd children", origin_id="c1",
                  extra="<odd xmlns='urn:example:odd'><deeper/></odd>")
    customer.send_raw(f"<message to='{gw}' type='chat' id='n1'><body>hi <b>there</b></body>"
                      "</message>")
    await _settled(core, channel, customer, gw)

    assert await core.transcript_texts() == ["with odd children", "hi there", "last one"]
    logged = caplog.text
    assert "empty message from" in logged
    assert "groupchat" in logged and "headline" in logged
    assert channel.session.connected


async def test_huge_message_is_refused_with_an_error_stanza_that_names_the_limit(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    channel = await start_channel(core, gw, xmpp_max_body_chars=1000)
    customer = await client(ann)

    message_id = customer.send(gw, "x" * 1001, origin_id="big")
    error = await customer.wait_for(lambda m: bool(_errors(customer, "policy-violation")))
    await _settled(core, channel, customer, gw)

    assert error.get("id") == message_id
    assert "the limit is 1000" in error.findtext(f"{{jabber:client}}error/{STANZAS}text")
    assert core.texts() == ["last one"]
    customer.send(gw, "y" * 1000, origin_id="fits")
    await wait_until(lambda: len(core.stored) == 2, what="a message at the limit")


async def test_a_flood_from_one_jid_is_throttled_and_nothing_is_stored_twice(
        prosody, core, start_channel, client):
    gw, ann, bob = await prosody.accounts("gw", "ann", "bob")
    channel = await start_channel(core, gw, xmpp_flood_burst=5, xmpp_flood_rate=0.2)
    flooder = await client(ann)
    other = await client(bob)

    for n in range(12):
        flooder.send(gw, f"spam {n}", origin_id=f"s{n}")
    flooder.send(gw, "spam 0", origin_id="s0")  # and a replay of the first
    await flooder.wait_for(lambda m: bool(_errors(flooder, "resource-constraint")))
    await _settled(core, channel, other, gw)  # someone else is not held up

    assert core.texts(f"xmpp:{ann}") == [f"spam {n}" for n in range(5)]
    assert channel.refused >= 7
    assert 1 <= len(_errors(flooder, "resource-constraint")) <= 4  # errors are throttled too
    assert len({m.provider_id for m in core.stored}) == len(core.stored)


async def test_a_resent_message_is_stored_once(prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    channel = await start_channel(core, gw)
    customer = await client(ann)

    customer.send(gw, "hello", origin_id="same")
    customer.send(gw, "hello", origin_id="same")  # a client retry keeps the origin-id
    customer.send(gw, "plain id", message_id="legacy-7")
    customer.send(gw, "plain id", message_id="legacy-7")  # a legacy client: same full JID
    await _settled(core, channel, customer, gw)

    assert await core.transcript_texts() == ["hello", "plain id", "last one"]
    assert len(core.duplicates) == 2


async def test_a_stranger_cannot_inject_archive_results_carbons_or_statuses(
        prosody, core, start_channel, client):
    gw, mallory, victim = await prosody.accounts("gw", "mallory", "victim")
    channel = await start_channel(core, gw)
    stranger = await client(mallory)

    forged = (f"<message xmlns='jabber:client' from='{victim}/x' to='{gw}' type='chat'>"
              "<body>transfer my balance to mallory</body></message>")
    stranger.send_raw(f"<message to='{gw}'><result xmlns='urn:xmpp:mam:2' queryid='q' id='1'>"
                      f"<forwarded xmlns='urn:xmpp:forward:0'>{forged}</forwarded></result>"
                      "</message>")
    stranger.send_raw(f"<message to='{gw}'><received xmlns='urn:xmpp:carbons:2'>"
                      f"<forwarded xmlns='urn:xmpp:forward:0'>{forged}</forwarded></received>"
                      "</message>")
    stranger.send_raw(f"<message to='{gw}' type='error' id='gw1.out_1.0123456789abcdef0123'>"
                      "<error type='cancel'><item-not-found "
                      "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    stranger.send(gw, "/next")  # a customer is not an agent, whatever they type
    await _settled(core, channel, stranger, gw)

    assert [str(m.sender) for m in core.stored] == [f"xmpp:{mallory}"] * 2
    assert await core.transcript_texts() == ["/next", "last one"]
    assert core.statuses == [] and core.desk.calls == []
    customer = await core.core.customer_by_address(Address("xmpp", victim))
    assert customer is None  # nobody spoke as the victim


async def test_many_customers_at_once_on_a_slow_database_are_held_at_the_socket_not_in_memory(
        prosody, core, start_channel, client):
    gw, *jids = await prosody.accounts("gw", "c1", "c2", "c3", "c4")
    channel = await start_channel(core, gw, xmpp_flood_burst=1000, xmpp_flood_rate=1000,
                                  options={"high_water": 8})
    core.sink.hold = asyncio.Event()  # the database stalls
    customers = [await client(jid) for jid in jids]
    pad = "x" * 9_000  # large enough that no single read of the socket holds them all
    for n in range(50):
        for index, customer in enumerate(customers):
            customer.send(gw, f"{index}/{n} {pad}", origin_id=f"m{n}")

    await wait_until(lambda: channel.session._paused, what="reading paused")
    await _quiet(channel)  # whatever was already read is handed over
    assert len(channel._work) < 100  # of 200: the rest waits in the server, not here
    assert core.stored == []

    core.sink.hold.set()  # the database is back
    await wait_until(lambda: len(core.stored) == 200, timeout=30, what="all 200 stored")
    assert not channel.session._paused
    assert core.duplicates == []
    for index, jid in enumerate(jids):  # each customer's messages in the order sent
        texts = [t.partition(" ")[0] for t in await core.transcript_texts(f"xmpp:{jid}")]
        assert texts == [f"{index}/{n}" for n in range(50)]


async def _quiet(channel) -> None:
    """The channel accepted nothing new for a few loop turns (nothing read is pending)."""
    seen = -1
    while seen != len(channel._work):
        seen = len(channel._work)
        for _ in range(20):
            await asyncio.sleep(0)


async def test_a_flood_sent_while_the_gateway_was_away_is_throttled_on_catch_up_too(
        prosody, core, start_channel, client):
    gw, ann, bob = await prosody.accounts("gw", "ann", "bob")
    limits = {"xmpp_flood_burst": 5, "xmpp_flood_rate": 0.2}
    first = await start_channel(core, gw, **limits)
    flooder = await client(ann)
    other = await client(bob)
    other.send(gw, "before", origin_id="b0")  # the archive position is stored
    await wait_until(lambda: core.texts() == ["before"], what="the first message")
    await first.aclose()

    for n in range(12):  # while the gateway is away: offline storage and the archive
        flooder.send(gw, f"spam {n}", origin_id=f"s{n}")
    other.send(gw, "meanwhile", origin_id="b1")
    second = await start_channel(core, gw, **limits)
    await _settled(core, second, other, gw)

    # Offline copies arrive as live messages, archive copies by their own timestamps: both
    # are limited per sender, so the flood does not get in through the back door.
    assert core.texts(f"xmpp:{ann}") == [f"spam {n}" for n in range(5)]
    assert core.texts(f"xmpp:{bob}") == ["before", "meanwhile", "last one"]
    assert len({m.provider_id for m in core.stored}) == len(core.stored)
