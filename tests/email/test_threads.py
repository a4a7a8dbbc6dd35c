"""Email threads in the core (gateway/threads.py through `Core.ingest`), on SQLite and
PostgreSQL: a reply finds its conversation by our token or by any Message-ID of the thread,
even when the customer's client rewrote the headers; it is attested only with our token from
the conversation's own customer; it never lands in another customer's conversation; robots
are recorded where they belong or nowhere, never as a new customer."""

from __future__ import annotations

from dataclasses import replace

from connectors.email import ids
from connectors.email.inbound import to_inbound
from connectors.email.parse import ParseConfig, Parsed, parse_mail
from gateway import threads
from gateway.core import Core
from gateway.domain import IngestResult, OutboxId
from gateway.events import InboundMessage
from tests.email.support import OUR_ADDRESS, mail
from tests.email.test_parse import dsn

CONFIG = ParseConfig(OUR_ADDRESS)


def event(raw: bytes) -> InboundMessage:
    """What the email channel hands the core for this mail."""
    result = parse_mail(raw, CONFIG)
    assert isinstance(result, Parsed)
    return to_inbound(result.mail, our_address=OUR_ADDRESS,
                      location="imap://support%40gw.test@imap.test/INBOX;UIDVALIDITY=1/;UID=1")


async def ingest(core: Core, raw: bytes) -> IngestResult:
    result = await core.ingest(event(raw))
    assert not result.duplicate
    return result


async def our_reply(core: Core, conversation_id: str, text: str = "On it."
                    ) -> tuple[OutboxId, str, str]:
    """An agent's reply as the email channel sends it: (outbox id, token, our Message-ID)."""
    queued = await core.reply(conversation_id, text, "alice")
    thread = await core.reply_thread(queued.id)
    assert thread.token is not None
    return queued.id, thread.token, ids.our_message_id(queued.id,
                                                                thread.token, OUR_ADDRESS)


async def binding(core: Core, result: IngestResult) -> str:
    conversation = await core.conversation(result.conversation_id)  # type: ignore[arg-type]
    return next(leg["binding"] for leg in conversation["legs"] if leg["id"] == result.leg_id)


async def test_tokens_are_lower_case_fresh_per_mail_and_only_ours_resolve(core: Core) -> None:
    first = await ingest(core, mail("Order", message_id="m1"))
    tokens = [await core.issue_thread_token(first.leg_id) for _ in range(2)]  # type: ignore[arg-type]
    assert tokens[0] != tokens[1]
    for token in tokens:
        assert len(token) == 32 and token == token.lower() and ids.is_thread_token(token)
        assert await core.check_thread_token(token) == first.conversation_id
        assert await core.check_thread_token(token.upper()) == first.conversation_id  # folded
    assert await core.check_thread_token("0" * 32) is None
    assert await core.check_thread_token("'; drop table thread_tokens; --") is None


async def test_a_three_reply_thread_stays_one_leg_and_our_replies_name_it(core: Core) -> None:
    first = await ingest(core, mail("Where is my order?", message_id="m1"))
    assert await binding(core, first) == "address"  # a From alone is a claim
    refs = ["m1@example.org"]
    for n in (2, 3, 4):
        _out, token, ours = await our_reply(core, first.conversation_id)  # type: ignore[arg-type]
        refs.append(ours)
        reply = await ingest(core, mail(
            "Re: Where is my order?", message_id=f"m{n}", to=f"support+{token}@gw.test",
            headers={"In-Reply-To": f"<{ours}>", "References": " ".join(f"<{r}>" for r in refs)},
            body=f"Reply {n}"))
        refs.append(f"m{n}@example.org")
        assert (reply.conversation_id, reply.leg_id) == (first.conversation_id, first.leg_id)
        assert await binding(core, reply) == "attested"  # our token, from Ann herself
    queued = await core.reply(first.conversation_id, "Shipped.", "alice")  # type: ignore[arg-type]
    thread = await core.reply_thread(queued.id)
    assert thread.in_reply_to == "m4@example.org" and thread.subject == "Where is my order?"
    assert thread.references[0] == "m1@example.org" and thread.references[-1] == "m4@example.org"
    assert not thread.automated and thread.to_name == "Ann Example"
    customer = await core.customer_by_address(event(mail("x")).sender)
    assert customer is not None and customer["addresses"][0]["evidence"] == "attested"


async def test_an_outlook_reply_that_rewrote_in_reply_to_and_dropped_our_id_still_joins(
        core: Core) -> None:
    first = await ingest(core, mail("Invoice", message_id="m1"))
    await our_reply(core, first.conversation_id)  # type: ignore[arg-type]
    # Outlook answers with In-Reply-To naming its own copy's id, References keeping only the
    # customer's first mail, and our Reply-To not used.
    outlook = await ingest(core, mail(
        "RE: Invoice", message_id="AM0PR01MB1234.eurprd01.prod.outlook.com",
        headers={"In-Reply-To": "<AM0PR01MB9999.eurprd01.prod.outlook.com>",
                 "References": "<m1@example.org>", "Thread-Index": "AQHZ1234"}))
    assert (outlook.conversation_id, outlook.leg_id) == (first.conversation_id, first.leg_id)
    assert await binding(core, outlook) == "address"  # anchors identify; only tokens attest


async def test_references_carrying_ancestors_we_never_saw_still_resolve(core: Core) -> None:
    # The customer brings a thread with a colleague (x1, x2: never seen by us) to support.
    first = await ingest(core, mail("Fwd: contract", message_id="m1", headers={
        "In-Reply-To": "<x2@example.org>", "References": "<x1@example.org> <x2@example.org>"}))
    other = await ingest(core, mail("Something else", message_id="s1",
                                    sender="ann@example.org"))
    assert other.leg_id != first.leg_id  # another thread of the same customer
    # Later she answers an older mail of that colleague thread: only x1 is in common, and
    # the thread's root is a mail we never had.
    later = await ingest(core, mail("Re: contract", message_id="m7", headers={
        "In-Reply-To": "<x5@example.org>", "References": "<x1@example.org> <x5@example.org>"}))
    assert later.leg_id == first.leg_id


async def test_anchors_never_move_a_stranger_onto_a_customers_conversation(core: Core) -> None:
    ann = await ingest(core, mail("Account", message_id="m1"))
    spoof = await ingest(core, mail("Re: Account", sender="mallory@example.net",
                                    message_id="b2", headers={
                                        "In-Reply-To": "<m1@example.org>",
                                        "References": "<m1@example.org>"}))
    assert spoof.customer_id != ann.customer_id  # knowing Ann's Message-ID is not enough
    conversation = await core.conversation(ann.conversation_id)  # type: ignore[arg-type]
    assert [e["text"] for e in conversation["transcript"]] == ["Hello, where is my order?"]


async def test_our_token_in_someone_elses_mail_is_not_theirs_to_use(core: Core) -> None:
    ann = await ingest(core, mail("Order", message_id="m1"))
    _out, token, _ours = await our_reply(core, ann.conversation_id)  # type: ignore[arg-type]
    forwarded = await ingest(core, mail("Fwd: Order", sender="carol@example.org",
                                        message_id="c1", to=f"support+{token}@gw.test"))
    assert forwarded.customer_id != ann.customer_id
    assert forwarded.conversation_id != ann.conversation_id
    carol = await core.customer_by_address(event(mail("x", sender="carol@example.org")).sender)
    assert carol is not None and carol["addresses"][0]["evidence"] == "claimed"


async def test_a_reply_to_a_closed_conversation_goes_on_in_a_new_one(core: Core) -> None:
    first = await ingest(core, mail("Order", message_id="m1"))
    _out, token, ours = await our_reply(core, first.conversation_id)  # type: ignore[arg-type]
    await core.close_conversation(first.conversation_id)  # type: ignore[arg-type]
    later = await ingest(core, mail("Re: Order", message_id="m2", to=f"support+{token}@gw.test",
                                    headers={"In-Reply-To": f"<{ours}>"}))
    assert later.customer_id == first.customer_id
    assert later.conversation_id != first.conversation_id and later.new_leg
    assert await binding(core, later) == "attested"


async def test_robots_are_recorded_in_their_thread_or_nowhere_and_never_start_one(
        core: Core) -> None:
    first = await ingest(core, mail("Order", message_id="m1"))
    out, _token, ours = await our_reply(core, first.conversation_id)  # type: ignore[arg-type]
    await core.start_verification(first.conversation_id, None)  # type: ignore[arg-type]
    ooo = await ingest(core, mail("Automatic reply: Re: Order", message_id="ooo1",
                                  headers={"Auto-Submitted": "auto-replied",
                                           "In-Reply-To": f"<{ours}>"}, body="123 456"))
    assert ooo.leg_id == first.leg_id and ooo.otp is None  # never checked as a code
    bounce_event = event(dsn(original_id=ours))
    assert bounce_event.kind == "bounce"
    bounce = await core.ingest(bounce_event)
    assert bounce.conversation_id == first.conversation_id
    # An out-of-office from someone we do not know, about nothing of ours: stored nowhere.
    stray = await core.ingest(event(mail("Out of office", sender="dave@example.org",
                                         headers={"Auto-Submitted": "auto-replied"})))
    assert stray.customer_id is None and stray.conversation_id is None and not stray.duplicate
    assert await core.customer_by_address(
        event(mail("x", sender="dave@example.org")).sender) is None
    kinds = [(e["kind"], e["author"]) for e in
             (await core.conversation(first.conversation_id))["transcript"]]  # type: ignore[arg-type]
    assert ("auto-reply", "email:ann@example.org") in kinds
    assert ("bounce", "email:MAILER-DAEMON@mx.example.org") in kinds
    again = await core.ingest(replace(bounce_event))
    assert again.duplicate
    assert (await core.outbox_message(out)).status == "pending"  # the channel reports bounces


async def test_anchors_are_recorded_once_per_conversation(core: Core) -> None:
    first = await ingest(core, mail("Hello", message_id="m1"))
    second = await ingest(core, mail("Re: Hello", message_id="m2",
                                     headers={"In-Reply-To": "<m1@example.org>",
                                              "References": "<m1@example.org>"}))
    assert second.leg_id == first.leg_id

    def anchors(conn):  # type: ignore[no-untyped-def]
        from sqlalchemy import select
        return conn.execute(select(threads.ANCHORS.c.message_id, threads.ANCHORS.c.direction)
                            .order_by(threads.ANCHORS.c.id)).all()

    rows = await core.reader.run(anchors)
    assert [tuple(r) for r in rows] == [("m1@example.org", "in"), ("m2@example.org", "in")]
