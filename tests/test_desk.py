"""The agent desk (gateway/desk.py): taking and releasing conversations, an agent going
offline, replies in the agent's name, and the summary an agent sees first."""

from __future__ import annotations

import pytest

from connectors.memory import MemoryChannel
from gateway.clock import FrozenClock
from gateway.core import Core
from gateway.domain import Conflict, NotFound
from gateway.outbox import OutboxWorker
from tests.helpers import code_from, whatsapp

ANN, BEA = "+14155550100", "+14155550101"


async def test_take_next_gives_the_longest_waiting_conversation_to_one_agent(
    core: Core, clock: FrozenClock
) -> None:
    ann = await core.ingest(whatsapp(ANN, "first in line"))
    clock.advance(minutes=1)
    bea = await core.ingest(whatsapp(BEA, "second"))
    taken = await core.desk.take("12", None)
    assert taken is not None and taken.conversation_id == ann.conversation_id
    assert (taken.agent_id, taken.previous_agent_id) == ("12", None)
    other = await core.desk.take("13", None)
    assert other is not None and other.conversation_id == bea.conversation_id
    assert await core.desk.take("14", None) is None  # nobody is waiting


async def test_a_conversation_with_an_agent_cannot_be_taken_by_another(core: Core) -> None:
    ann = await core.ingest(whatsapp(ANN, "hello"))
    await core.desk.take("12", ann.conversation_id)
    with pytest.raises(Conflict, match="agent 12 has this conversation"):
        await core.desk.take("13", ann.conversation_id)
    with pytest.raises(Conflict, match="does not have"):
        await core.desk.release("13", ann.conversation_id)  # type: ignore[arg-type]
    released = await core.desk.release("12", ann.conversation_id)  # type: ignore[arg-type]
    assert (released.agent_id, released.previous_agent_id) == (None, "12")
    assert (await core.desk.take("13", ann.conversation_id)) is not None
    with pytest.raises(NotFound):
        await core.desk.take("13", "conv_nope")


async def test_an_agent_going_offline_returns_their_conversations_to_the_queue(
    core: Core,
) -> None:
    ann = await core.ingest(whatsapp(ANN, "one"))
    bea = await core.ingest(whatsapp(BEA, "two"))
    await core.desk.take("12", ann.conversation_id)
    await core.desk.take("12", bea.conversation_id)
    released = await core.desk.release_all("12")
    assert {r.conversation_id for r in released} == {ann.conversation_id, bea.conversation_id}
    assert await core.desk.release_all("12") == []
    again = await core.desk.take("13", None)
    assert again is not None and again.conversation_id in {ann.conversation_id,
                                                           bea.conversation_id}


async def test_a_closed_conversation_waits_for_nobody(core: Core) -> None:
    ann = await core.ingest(whatsapp(ANN, "bye"))
    await core.desk.close("12", ann.conversation_id)  # type: ignore[arg-type]
    assert await core.desk.take("12", None) is None
    with pytest.raises(Conflict, match="closed"):
        await core.desk.take("12", ann.conversation_id)


async def test_a_reply_from_the_desk_is_in_the_agent_s_name_on_the_customer_s_leg(
    core: Core,
) -> None:
    ann = await core.ingest(whatsapp(ANN, "is it shipped?"))
    queued = await core.desk.reply("12", ann.conversation_id, "Yes, today.")  # type: ignore[arg-type]
    assert (queued.channel, queued.to, queued.status) == ("whatsapp", f"whatsapp:{ANN}",
                                                          "pending")
    last = (await core.conversation(ann.conversation_id))["transcript"][-1]  # type: ignore[arg-type]
    assert (last["author"], last["text"], last["direction"]) == ("agent:12", "Yes, today.", "out")
    with pytest.raises(Conflict, match="empty"):
        await core.desk.reply("12", ann.conversation_id, "  ")  # type: ignore[arg-type]


async def test_the_summary_says_who_whether_verified_the_last_messages_and_the_link(
    core: Core, clock: FrozenClock
) -> None:
    memory = MemoryChannel()
    worker = OutboxWorker(core.engine, {"whatsapp": memory}, clock)
    ann = await core.ingest(whatsapp(ANN, "my card was stolen"))
    before = await core.desk.summary(ann.conversation_id)  # type: ignore[arg-type]
    assert not before.verified and before.verification_reason
    await core.desk.verify("12", ann.conversation_id, None)  # type: ignore[arg-type]
    await worker.drain()
    await core.ingest(whatsapp(ANN, code_from(memory.sent[-1].text)))  # type: ignore[attr-defined]
    for n in range(6):
        await core.ingest(whatsapp(ANN, f"message {n}"))
    summary = await core.desk.summary(ann.conversation_id)  # type: ignore[arg-type]
    assert summary.verified and summary.verification.startswith("verified by whatsapp-otp")
    assert summary.addresses == (f"whatsapp:{ANN}",)
    assert [m["text"] for m in summary.last_messages][-2:] == ["message 4", "message 5"]
    assert len(summary.last_messages) == 5
    assert summary.context_url is not None
    bundle = await core.bundle(summary.context_url.rsplit("/", 1)[1])
    assert bundle is not None and bundle["conversation_id"] == ann.conversation_id
    await worker.aclose()
