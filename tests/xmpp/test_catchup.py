"""Nothing lost, nothing doubled: the gateway restarted while a customer keeps writing, a
store that failed after the server had the message, Prosody restarted mid-conversation, and
a cut connection resumed (XEP-0198)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from datetime import UTC, datetime

from sqlalchemy import delete, insert

from connectors.xmpp.protocol import parse_checkpoint
from gateway.channels import TextMessage
from gateway.models import Checkpoint
from tests.helpers import wait_until
from tests.xmpp.netfault import TcpRelay


async def test_gateway_restarted_while_the_customer_keeps_writing_catches_up_once(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    first = await start_channel(core, gw)
    customer = await client(ann)
    customer.send(gw, "one", origin_id="o1")
    customer.send(gw, "two", origin_id="o2")
    await wait_until(lambda: len(core.stored) == 2, what="two messages")
    await first.aclose()

    customer.send(gw, "three", origin_id="o3")  # the gateway is away: offline + archive
    customer.send(gw, "four", origin_id="o4")
    customer.send(gw, "four", origin_id="o4")  # the customer's client resends: same message
    customer.send(gw, "five", origin_id="o5")
    second = await start_channel(core, gw)
    await wait_until(lambda: len(core.stored) == 5 and second.idle, what="the catch-up")

    assert core.texts() == ["one", "two", "three", "four", "five"]
    assert await core.transcript_texts() == ["one", "two", "three", "four", "five"]
    assert len(core.duplicates) >= 3  # offline copies and archive copies met the same key
    stored = parse_checkpoint(await core.core.checkpoint(f"xmpp:archive:{gw}"))
    assert stored is not None


async def test_a_message_the_store_refused_comes_back_from_the_archive_on_the_next_session(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    first = await start_channel(core, gw)
    first.options = dataclasses.replace(first.options, store_retry=0.01)
    customer = await client(ann)
    customer.send(gw, "warm-up", origin_id="w")
    await wait_until(lambda: core.stored, what="the first message")

    core.fail_next_ingests = 5  # every attempt for the next message fails
    lost_id = customer.send(gw, "lost?", origin_id="l")
    await wait_until(lambda: core.fail_next_ingests == 0 and first.idle, what="the failures")
    customer.send(gw, "after", origin_id="a")
    await wait_until(lambda: "after" in core.texts(), what="the next message")
    assert "lost?" not in core.texts()
    await first.aclose()

    assert not _receipts_for(customer, lost_id)  # not stored: not acknowledged

    second = await start_channel(core, gw)
    await wait_until(lambda: "lost?" in core.texts() and second.idle, what="the catch-up")
    assert sorted(await core.transcript_texts()) == ["after", "lost?", "warm-up"]
    await wait_until(lambda: _receipts_for(customer, lost_id), what="the late receipt")
    assert len(_receipts_for(customer, lost_id)) == 1


async def test_prosody_restarted_mid_conversation_loses_and_doubles_nothing(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    channel = await start_channel(core, gw, xmpp_agent_release_after_seconds=60)
    customer = await client(ann)
    customer.send(gw, "before one", origin_id="b1")
    customer.send(gw, "before two", origin_id="b2")
    await wait_until(lambda: len(core.stored) == 2, what="two messages")

    await prosody.restart(signal.SIGTERM)
    await customer.disconnect()
    customer = await client(ann, resource="phone2")
    customer.send(gw, "after one", origin_id="a1")
    customer.send(gw, "after two", origin_id="a2")
    await wait_until(lambda: len(core.stored) == 4 and channel.idle and
                     channel.session.sessions == 2, timeout=20, what="reconnect and catch-up")

    texts = await core.transcript_texts()
    assert texts[:2] == ["before one", "before two"]
    assert sorted(texts[2:]) == ["after one", "after two"]
    reply = await channel.send(_reply(ann, "still here"))
    assert (await customer.wait_for_body("still here")).get("id") == reply.provider_id


async def test_a_cut_connection_resumes_the_stream_and_delivers_what_was_queued(
        prosody, core, start_channel, client):
    gw, ann = await prosody.accounts("gw", "ann")
    async with TcpRelay(prosody.port) as relay:
        channel = await start_channel(core, gw, xmpp_port=relay.port,
                                      xmpp_agent_release_after_seconds=60)
        customer = await client(ann)
        customer.send(gw, "first", origin_id="f")
        await wait_until(lambda: core.stored, what="the first message")

        relay.cut()  # the network between the gateway and its server fails
        for n in range(3):
            customer.send(gw, f"during {n}", origin_id=f"d{n}")
        relay.heal()
        await wait_until(lambda: len(core.stored) == 4 and channel.idle,
                         timeout=20, what="the resumed stream")

        assert channel.session.resumes == 1 and channel.session.sessions == 1
        assert await core.transcript_texts() == ["first", "during 0", "during 1", "during 2"]
        assert core.duplicates == []
        await channel.aclose()


def _receipts_for(client, message_id):
    return [m for m in client.received
            if (m.find("{urn:xmpp:receipts}received") is not None
                and m.find("{urn:xmpp:receipts}received").get("id") == message_id)]


def _reply(to: str, text: str) -> TextMessage:
    return TextMessage(id="out_restart", channel="xmpp", to=f"xmpp:{to}", text=text)


async def test_the_server_hears_a_message_acknowledged_only_after_it_is_committed(
        prosody, core, start_channel, client):
    """XEP-0198: the server's ack request is answered once the message is stored, so a crash
    before the commit leaves the message with the server (resent), not lost."""
    gw, ann = await prosody.accounts("gw", "ann")
    committed_at: list[float] = []

    async with TcpRelay(prosody.port) as relay:
        channel = await start_channel(core, gw, xmpp_port=relay.port)
        await wait_until(lambda: channel.idle, what="login")
        sink = core.sink
        ingest = sink.core.ingest

        async def slow_commit(event):
            await asyncio.sleep(1.0)  # a store that takes its time: a wide window
            result = await ingest(event)
            committed_at.append(time.monotonic())
            sink.stored.append(event)
            return result

        sink.ingest = slow_commit
        customer = await client(ann)
        customer.send(gw, "ack me after the commit", origin_id="ack")
        arrived = None

        def at_gateway():
            nonlocal arrived
            arrived = next((t for way, t, data in relay.chunks
                            if way == "down" and b"ack me after the commit" in data), None)
            return arrived is not None

        await wait_until(at_gateway, what="the message at the gateway")
        await wait_until(lambda: _acks_after(relay, arrived), what="an ack")
        await wait_until(lambda: committed_at, what="the commit")

        assert any(way == "down" and b"<r" in data and t >= arrived
                   for way, t, data in relay.chunks), "the server asked for an ack"
        assert _acks_after(relay, arrived)[0] >= committed_at[0], "acknowledged before the commit"
        await channel.aclose()


def _ack_times(relay):
    return [t for way, t, data in relay.chunks if way == "up" and b"<a " in data
            and b"urn:xmpp:sm:3" in data]


def _acks_after(relay, moment):
    return [t for t in _ack_times(relay) if t >= moment]


async def test_an_archive_position_the_server_no_longer_knows_falls_back_to_time(
        prosody, core, start_channel, client, caplog):
    gw, ann = await prosody.accounts("gw", "ann")
    first = await start_channel(core, gw)
    first.options = dataclasses.replace(first.options, store_retry=0.01)
    customer = await client(ann)
    core.fail_next_ingests = 5
    customer.send(gw, "only in the archive", origin_id="x")
    await wait_until(lambda: core.fail_next_ingests == 0 and first.idle, what="the failures")
    await first.aclose()
    key = f"xmpp:archive:{gw}"
    table = Checkpoint.__table__
    async with core.core.engine.begin() as conn:  # e.g. the server's archive was pruned
        await conn.execute(delete(table).where(table.c.key == key))
        await conn.execute(insert(table).values(
            key=key, value="expired-id " + datetime.now(UTC).isoformat(),
            updated_at=datetime.now(UTC)))

    second = await start_channel(core, gw)
    await wait_until(lambda: core.texts() == ["only in the archive"] and second.idle,
                     what="the catch-up by time")
    assert "the archive no longer has expired-id" in caplog.text
