"""A mailbox's FETCH batch stored as one write (`Core.ingest_batch`), on SQLite and
PostgreSQL: where it could differ from mail-by-mail `ingest`. Two mails of a new customer in
one batch make one customer and one conversation; a Message-ID twice in a batch, or again in a
later batch, is stored once; the checkpoint commits with the mails or not at all; a mail the
core refuses fails the batch and nothing of it is kept; every stored mail is on the bus. And
through the channel on a real Dovecot: a batch with an unreadable mail stores the others, a
batch the core refuses is stored mail by mail, each mail once, the position after the last."""

from __future__ import annotations

import pytest

from connectors.email.inbound import MAX_INGEST_ATTEMPTS
from gateway.bus import EntryAdded
from gateway.core import Core
from gateway.events import InboundMessage
from gateway.inbound import Inbound
from tests.dovecot import Account, Dovecot
from tests.email.support import mail
from tests.email.test_threads import event
from tests.helpers import wait_until

KEY = "imap:support@imap.test/INBOX"


async def entries(core: Core, conversation_id: str) -> list[dict[str, object]]:
    return [e for e in (await core.conversation(conversation_id))["transcript"]
            if e["direction"] == "in"]


async def test_two_mails_of_a_new_customer_in_one_batch_make_one_customer_and_conversation(
        core: Core) -> None:
    first, second = await core.ingest_batch([
        event(mail("Order 1", message_id="b1")),
        event(mail("Order 2", message_id="b2", body="And a second thing.")),
    ], (KEY, "7:2"))
    assert not first.duplicate and not second.duplicate
    assert first.customer_id == second.customer_id
    assert first.conversation_id == second.conversation_id
    stored = await entries(core, first.conversation_id)  # type: ignore[arg-type]
    assert [e["text"] for e in stored] == ["Hello, where is my order?", "And a second thing."]
    assert await core.checkpoint(KEY) == "7:2"
    # A reply in a later mail-by-mail ingest finds what the batch made, by its anchors.
    reply = await core.ingest(event(mail("Re: Order 1", message_id="b3",
                                         headers={"In-Reply-To": "<b1@example.org>"})))
    assert reply.conversation_id == first.conversation_id


async def test_a_message_id_twice_in_a_batch_or_again_later_is_stored_once(core: Core) -> None:
    results = await core.ingest_batch([
        event(mail("Order", message_id="d1")),
        event(mail("Order (the same mail, fetched twice)", message_id="d1")),
        event(mail("Other", message_id="d2")),
    ], (KEY, "7:3"))
    assert [r.duplicate for r in results] == [False, True, False]
    stored = await entries(core, results[0].conversation_id)  # type: ignore[arg-type]
    assert len(stored) == 2
    again = await core.ingest_batch([event(mail("Order", message_id="d1")),
                                     event(mail("Other", message_id="d2"))], (KEY, "8:2"))
    assert [r.duplicate for r in again] == [True, True]
    assert await core.checkpoint(KEY) == "8:2"  # the position moves even when all were known
    assert len(await entries(core, results[0].conversation_id)) == 2  # type: ignore[arg-type]


async def test_a_refused_mail_fails_its_batch_and_nothing_of_it_is_kept(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Inbound._ingest_claimed

    def refuse_b2(self: Inbound, tx: object, message: InboundMessage) -> object:
        if message.provider_id == "r2@example.org":
            raise RuntimeError("refused")
        return real(self, tx, message)  # type: ignore[arg-type]

    monkeypatch.setattr(Inbound, "_ingest_claimed", refuse_b2)
    batch = [event(mail("One", message_id="r1")), event(mail("Two", message_id="r2"))]
    with pytest.raises(RuntimeError):
        await core.ingest_batch(batch, (KEY, "7:2"))
    assert await core.checkpoint(KEY) is None
    monkeypatch.setattr(Inbound, "_ingest_claimed", real)
    # Nothing was claimed: the same mails are new afterwards, one by one or as a batch.
    assert not (await core.ingest(batch[0])).duplicate
    assert [r.duplicate for r in await core.ingest_batch(batch, (KEY, "7:2"))] == [True, False]


async def test_every_mail_of_a_batch_is_on_the_bus_after_the_commit(core: Core) -> None:
    subscription = core.bus.subscribe(lambda e: isinstance(e, EntryAdded))
    await core.ingest_batch([event(mail(f"Order {i}", message_id=f"e{i}")) for i in range(3)],
                            (KEY, "7:3"))
    texts = []
    for _ in range(3):
        record = await subscription.get(timeout=5)
        assert record is not None and isinstance(record.event, EntryAdded)
        texts.append(record.event.values[7])  # the author
    assert texts == ["email:ann@example.org"] * 3
    subscription.close()


# ---- through the channel, on a real Dovecot ----------------------------------------------


@pytest.mark.peers
async def test_a_batch_with_an_unreadable_mail_stores_the_others_and_moves_past_it(
        dovecot: Dovecot, mailbox: Account, core: Core, start_channel) -> None:
    await dovecot.append(mailbox, [mail("Order 1", message_id="u1", body="Mail 1"),
                                   b"this is not a mail at all\r\n",
                                   mail("Order 3", message_id="u3", body="Mail 3")])
    channel = await start_channel(core)
    key = channel.config.follow.checkpoint_key
    validity = dovecot.status(mailbox)["uidvalidity"]

    async def at_the_end() -> bool:
        return await core.checkpoint(key) == f"{validity}:3"

    await wait_until(at_the_end, what="the position after the third mail", timeout=15)
    customer = await core.ingest(event(mail("Order 4", message_id="u4", body="Mail 4")))
    stored = await entries(core, customer.conversation_id)  # type: ignore[arg-type]
    assert [e["text"] for e in stored] == ["Mail 1", "Mail 3", "Mail 4"]


@pytest.mark.peers
async def test_a_batch_the_core_refuses_is_stored_mail_by_mail_each_once(
        dovecot: Dovecot, mailbox: Account, core: Core, start_channel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = Inbound._ingest_claimed
    refused: list[str] = []

    def refuse_m2(self: Inbound, tx: object, message: InboundMessage) -> object:
        if message.provider_id == "m2@example.org":
            refused.append(message.provider_id)
            raise RuntimeError("refused")
        return real(self, tx, message)  # type: ignore[arg-type]

    monkeypatch.setattr(Inbound, "_ingest_claimed", refuse_m2)
    await dovecot.append(mailbox, [mail(f"Order {i}", message_id=f"m{i}", body=f"Mail {i}")
                                   for i in (1, 2, 3)])
    channel = await start_channel(core)
    follower = channel.follower
    assert follower is not None
    key = channel.config.follow.checkpoint_key
    validity = dovecot.status(mailbox)["uidvalidity"]

    async def passed_over() -> bool:
        return await core.checkpoint(key) == f"{validity}:3"

    # The batch fails, then m1 and m3 are stored one by one; m2 is refused each time until
    # the channel passes over it (it stays in the mailbox), as mail-by-mail ingest always did.
    await wait_until(passed_over, what="the position after the refused mail", timeout=30)
    assert len(refused) >= MAX_INGEST_ATTEMPTS
    first = await core.ingest(event(mail("Order 1", message_id="m1")))
    assert first.duplicate
    customer = await core.ingest(event(mail("Order 4", message_id="m4", body="Mail 4")))
    stored = await entries(core, customer.conversation_id)  # type: ignore[arg-type]
    assert [e["text"] for e in stored] == ["Mail 1", "Mail 3", "Mail 4"]
