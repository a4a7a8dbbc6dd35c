"""Email threads in the store (gateway/threads.py), on SQLite and PostgreSQL: a reply finds its
conversation by our token or by any Message-ID of the thread, even when the customer's client
rewrote the headers, and never lands in another customer's conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.email import ids
from connectors.email.parse import ParseConfig, Parsed, ParsedMail, parse_mail
from gateway import conversations, identity, threads
from gateway.addresses import Address, make_address
from gateway.batching import WriteBatcher
from gateway.identity import Evidence
from gateway.store import make_engine
from tests.email.support import OUR_ADDRESS, mail

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
CONFIG = ParseConfig(OUR_ADDRESS)
ANN = make_address("email", "ann@example.org")
BOB = make_address("email", "bob@example.org")


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """`await db(fn, *args)` runs fn(conn, *args) in one committed transaction, the way the
    core runs its writes (the write batcher: plain sqlite3, or asyncpg through run_sync)."""
    engine: AsyncEngine = make_engine(database_url)
    batcher = WriteBatcher(engine)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await batcher.run(lambda conn: fn(conn, *args))

    try:
        yield run
    finally:
        await batcher.aclose()
        await engine.dispose()


def open_email_thread(conn: Connection, address: Address, root: str) -> tuple[str, str]:
    customer_id, _ = identity.resolve(conn, address, Evidence.CLAIMED, NOW)
    conversation_id, _ = conversations.open_conversation(conn, customer_id, NOW,
                                                         threads_idle())
    leg_id, _ = conversations.open_leg(conn, conversation_id, "email", root, str(address),
                                       "address", NOW, local_address=OUR_ADDRESS)
    return conversation_id, leg_id


def threads_idle():  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(hours=72)


def received(conn: Connection, conversation_id: str, leg_id: str, found: ParsedMail) -> None:
    """What the core will do for an inbound mail (the integration phase): its own id as an
    anchor, and the ancestors it names."""
    threads.record_anchors(conn, conversation_id=conversation_id, leg_id=leg_id,
                           message_ids=[found.message_id], direction="in", now=NOW,
                           subject=found.subject)
    threads.record_anchors(conn, conversation_id=conversation_id, leg_id=leg_id,
                           message_ids=found.thread_refs, direction="ref", now=NOW)


def sent(conn: Connection, conversation_id: str, leg_id: str, outbox_id: str) -> str:
    token = threads.issue_token(conn, conversation_id, NOW)
    message_id = ids.our_message_id(outbox_id, token, OUR_ADDRESS)
    threads.record_anchors(conn, conversation_id=conversation_id, leg_id=leg_id,
                           message_ids=[message_id], direction="out", now=NOW)
    return message_id


def parse(raw: bytes) -> ParsedMail:
    result = parse_mail(raw, CONFIG)
    assert isinstance(result, Parsed)
    return result.mail


def lookup(found: ParsedMail, sender: Address = ANN) -> Callable[[Connection], Any]:
    return lambda conn: threads.find_conversation(conn, token=found.thread_token,
                                                  refs=found.thread_refs, sender=sender)


async def test_tokens_are_per_conversation_unguessable_and_stable(db) -> None:  # type: ignore[no-untyped-def]
    conv_a, _ = await db(open_email_thread, ANN, "a@example.org")
    conv_b, _ = await db(open_email_thread, BOB, "b@example.org")
    token_a = await db(threads.issue_token, conv_a, NOW)
    assert await db(threads.issue_token, conv_a, NOW) == token_a  # stable
    token_b = await db(threads.issue_token, conv_b, NOW)
    assert token_a != token_b and ids.is_thread_token(token_a) and len(token_a) == 26
    assert await db(threads.conversation_for_token, token_a) == conv_a
    assert await db(threads.conversation_for_token, token_a.upper()) == conv_a  # case folded
    assert await db(threads.conversation_for_token, "a" * 26) is None
    assert await db(threads.conversation_for_token, "'; drop table x; --") is None


async def test_a_three_reply_thread_stays_one_conversation(db) -> None:  # type: ignore[no-untyped-def]
    first = parse(mail("Where is my order?", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    ours = await db(sent, conv, leg, "out_1")
    token = await db(threads.token_of, conv)
    for n, parent in ((2, ours), (3, None)):
        refs = f"<m1@example.org> <{ours}>" + (" <m2@example.org>" if n == 3 else "")
        reply = parse(mail("Re: Where is my order?", message_id=f"m{n}",
                           to=f"support+{token}@gw.test" if n == 2 else OUR_ADDRESS,
                           headers={"In-Reply-To": f"<{parent or 'm2@example.org'}>",
                                    "References": refs}))
        match = await db(lookup(reply))
        assert match is not None and match.conversation_id == conv and match.leg_id == leg
        await db(received, conv, leg, reply)
    headers = await db(threads.reply_headers, conv, NOW, leg)
    assert headers.thread_token == token and headers.in_reply_to == "m3@example.org"
    assert headers.references == ("m1@example.org", ours, "m2@example.org", "m3@example.org")
    assert headers.subject == "Where is my order?"


async def test_an_outlook_reply_that_rewrote_in_reply_to_and_dropped_our_id_still_joins(
        db) -> None:  # type: ignore[no-untyped-def]
    first = parse(mail("Invoice", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    ours = await db(sent, conv, leg, "out_1")
    # Outlook answers our mail with In-Reply-To naming its own copy's id and References
    # that kept only the customer's first mail; the Reply-To was not used either.
    outlook = parse(mail("RE: Invoice", message_id="AM0PR01MB1234.eurprd01.prod.outlook.com",
                         headers={"In-Reply-To": "<AM0PR01MB9999.eurprd01.prod.outlook.com>",
                                  "References": "<m1@example.org>",
                                  "Thread-Index": "AQHZ1234"}))
    assert outlook.thread_token is None and ours not in outlook.thread_refs
    match = await db(lookup(outlook))
    assert match is not None and (match.conversation_id, match.via) == (conv, "anchor")
    assert not match.attested  # anchors identify; only our token attests

    # … and when Outlook kept nothing of the thread but honoured our Reply-To:
    token = await db(threads.token_of, conv)
    bare = parse(mail("RE: Invoice", message_id="AM0PR01MB5555.outlook.com",
                      to=f"support+{token}@gw.test"))
    match = await db(lookup(bare))
    assert match is not None and (match.conversation_id, match.via) == (conv, "token")
    assert match.attested and match.sender_is_customer


async def test_references_carrying_ancestors_we_never_sent_still_resolve(db) -> None:  # type: ignore[no-untyped-def]
    # The customer forwards a thread with a colleague (x1, x2: never seen by us) to support.
    first = parse(mail("Fwd: contract", message_id="m1", headers={
        "In-Reply-To": "<x2@example.org>", "References": "<x1@example.org> <x2@example.org>"}))
    assert first.thread_root == "x1@example.org"
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    # Later the customer answers an older mail of that colleague thread: only x1 in common.
    later = parse(mail("Re: contract", message_id="m7", headers={
        "In-Reply-To": "<x5@example.org>", "References": "<x1@example.org> <x5@example.org>"}))
    match = await db(lookup(later))
    assert match is not None and match.conversation_id == conv and match.via == "anchor"


async def test_anchors_never_move_a_stranger_onto_a_customers_conversation(db) -> None:  # type: ignore[no-untyped-def]
    first = parse(mail("Account", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    await db(open_email_thread, BOB, "bob-root@example.org")
    spoof = parse(mail("Re: Account", sender="bob@example.org", message_id="b2",
                       headers={"In-Reply-To": "<m1@example.org>",
                                "References": "<m1@example.org>"}))
    assert await db(lookup(spoof, BOB)) is None  # Bob knows Ann's Message-ID: not enough
    unknown = make_address("email", "mallory@example.org")
    assert await db(lookup(spoof, unknown)) is None


async def test_a_valid_token_from_another_sender_is_found_but_not_attested(db) -> None:  # type: ignore[no-untyped-def]
    first = parse(mail("Order", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    token = await db(threads.issue_token, conv, NOW)
    colleague = parse(mail("Re: Order", sender="carol@example.org", message_id="c1",
                           to=f"support+{token}@gw.test"))
    match = await db(lookup(colleague, make_address("email", "carol@example.org")))
    assert match is not None and match.conversation_id == conv
    assert not match.sender_is_customer and not match.attested


async def test_a_bounce_finds_the_conversation_of_the_mail_it_returns(db) -> None:  # type: ignore[no-untyped-def]
    from tests.email.test_parse import dsn

    first = parse(mail("Order", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    ours = await db(sent, conv, leg, "out_1")
    bounce = parse(dsn(original_id=ours))
    assert bounce.thread_refs[0] == ours
    match = await db(lambda conn: threads.find_conversation(
        conn, token=bounce.thread_token, refs=bounce.thread_refs, sender=None))
    assert match is not None and match.conversation_id == conv and not match.attested


async def test_no_token_and_no_known_anchor_means_no_match(db) -> None:  # type: ignore[no-untyped-def]
    first = parse(mail("Hello", message_id="m1"))
    conv, leg = await db(open_email_thread, ANN, first.thread_root)
    await db(received, conv, leg, first)
    fresh = parse(mail("Another question", message_id="m9"))
    assert await db(lookup(fresh)) is None  # the caller uses the customer's open conversation
    assert await db(lambda conn: threads.record_anchors(
        conn, conversation_id=conv, leg_id=leg, message_ids=["m1@example.org"],
        direction="in", now=NOW)) == 0  # seen before: recorded once
