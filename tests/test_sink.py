"""What the sink offers the mail and chat channels: thread tokens, checkpoints written with
the message that advances them, auto-replies kept apart, and context links for messaging
legs. On SQLite and a real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

from gateway.core import Core
from gateway.events import InboundMessage
from tests.helpers import email, whatsapp

ANN = "ann@example.org"


async def test_a_reply_carrying_our_thread_token_is_attested_for_that_thread_s_customer(
    core: Core,
) -> None:
    first = await core.ingest(email(ANN, "Where is my order?"))
    token = await core.issue_thread_token(first.leg_id)  # type: ignore[arg-type]
    assert len(token) >= 32
    assert await core.check_thread_token(token) == first.conversation_id
    assert await core.check_thread_token("A" * 32) is None
    reply = replace(email(ANN, "It has not arrived."), thread_key="<other@mail.test>",
                    thread_token=token)
    answered = await core.ingest(reply)
    customer = await core.customer_by_address(reply.sender)
    assert customer is not None
    assert {a["address"]: a["evidence"] for a in customer["addresses"]} == {
        f"email:{ANN}": "attested"}
    conversation = await core.conversation(answered.conversation_id)  # type: ignore[arg-type]
    bindings = {leg["id"]: leg["binding"] for leg in conversation["legs"]}
    assert bindings[answered.leg_id] == "attested"  # type: ignore[index]


async def test_someone_else_presenting_a_thread_token_gets_nothing_from_it(core: Core) -> None:
    first = await core.ingest(email(ANN, "hello"))
    token = await core.issue_thread_token(first.leg_id)  # type: ignore[arg-type]
    stranger = replace(email("mallory@example.net", "forwarded"), thread_token=token)
    result = await core.ingest(stranger)
    assert result.customer_id != first.customer_id
    customer = await core.customer_by_address(stranger.sender)
    assert customer is not None and customer["addresses"][0]["evidence"] == "claimed"


async def test_a_checkpoint_moves_with_its_message_and_with_a_duplicate_too(
    core: Core,
) -> None:
    assert await core.checkpoint("imap:INBOX") is None
    message = replace(email(ANN, "one"), checkpoint=("imap:INBOX", "7:100"))
    await core.ingest(message)
    assert await core.checkpoint("imap:INBOX") == "7:100"
    again = replace(message, checkpoint=("imap:INBOX", "7:101"))  # seen before: stored once
    assert (await core.ingest(again)).duplicate
    assert await core.checkpoint("imap:INBOX") == "7:101"


async def test_an_auto_reply_is_recorded_as_such_and_never_taken_for_a_code(
    core: Core,
) -> None:
    first = await core.ingest(whatsapp("+14155550100", "hi"))
    await core.start_verification(first.conversation_id, None)  # type: ignore[arg-type]
    out_of_office: InboundMessage = replace(
        whatsapp("+14155550100", "back on 123 456"), kind="auto-reply")
    result = await core.ingest(out_of_office)
    assert result.otp is None
    last = (await core.conversation(first.conversation_id))["transcript"][-1]  # type: ignore[arg-type]
    assert (last["kind"], last["text"]) == ("auto-reply", "back on 123 456")


async def test_a_messaging_leg_gets_a_context_link_that_opens_its_bundle(core: Core) -> None:
    first = await core.ingest(whatsapp("+14155550100", "I need help"))
    link = await core.issue_context(first.leg_id)  # type: ignore[arg-type]
    assert (link.leg_id, link.conversation_id) == (first.leg_id, first.conversation_id)
    assert link.url == f"http://gw.test/api/v1/contexts/{link.token}"
    bundle = await core.bundle(link.token)
    assert bundle is not None and bundle["transcript"][0]["text"] == "I need help"
