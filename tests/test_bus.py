"""The committed-event bus: what the core publishes after each commit, and only then.

First the bus itself (fan-out, resume, a subscriber that falls behind); then the core's
flows on SQLite and a real PostgreSQL (a message, a call offered to an agent, its end, a
conversation closed or taken); then over real HTTP against a running gateway: a signed Twilio
webhook and a Twilio Voice call, seen by a subscriber as the console's event stream will.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
import pytest_asyncio
from sqlalchemy import text

from config.settings import AgentConfig
from gateway.bus import (
    CallEnded,
    CallOffered,
    ConversationAssigned,
    ConversationClosed,
    EntryAdded,
    EventBus,
    Published,
    SubscriptionLost,
)
from gateway.clock import FrozenClock
from gateway.core import Core
from gateway.events import CallEvent
from gateway.writes import Tx
from tests.conftest import CoreFactory, Gateways, RunningGateway
from tests.helpers import call, sms, whatsapp
from tests.standins import (  # noqa: F401  (fixture)
    TwilioStandin,
    twilio_sms_form,
    twilio_standin,
    twilio_voice_form,
    twilio_webhook_request,
)

NUMBER = "+14155550100"


def events(records: list[Published]) -> list[Any]:
    return [r.event for r in records]


def drain(subscription: Any) -> list[Published]:
    out = []
    while not subscription._queue.empty():
        record = subscription._queue.get_nowait()
        assert record is not None
        out.append(record)
    return out


# ---- the bus -------------------------------------------------------------------------------------


def closed(n: int) -> ConversationClosed:
    return ConversationClosed(f"conv_{n}", "cus_1")


async def test_every_subscriber_gets_each_event_once_in_order_with_rising_numbers() -> None:
    bus = EventBus(FrozenClock().now)
    a, b = bus.subscribe(), bus.subscribe(lambda e: e.conversation_id != "conv_2")  # type: ignore[union-attr]
    bus.publish([closed(1), closed(2)])
    bus.publish([closed(3)])
    seen_a = [await a.get(1) for _ in range(3)]
    assert [r.event.conversation_id for r in seen_a] == ["conv_1", "conv_2", "conv_3"]  # type: ignore[union-attr]
    assert [r.seq for r in seen_a] == [1, 2, 3]
    assert [r.event.conversation_id for r in drain(b)] == ["conv_1", "conv_3"]  # type: ignore[union-attr]
    assert await a.get(timeout=0.01) is None  # nothing more: None after the timeout


async def test_a_resuming_subscriber_gets_what_it_missed_then_the_live_events() -> None:
    bus = EventBus(FrozenClock().now, replay=3)
    bus.publish([closed(n) for n in range(1, 6)])
    late = bus.subscribe(since=3)
    bus.publish([closed(6)])
    assert [r.seq for r in drain(late)] == [4, 5, 6]
    too_late = bus.subscribe(since=0)  # older than the window: what is held, best effort
    assert [r.seq for r in drain(too_late)] == [4, 5, 6]


async def test_a_subscriber_that_falls_behind_is_dropped_and_told_so() -> None:
    from gateway import bus as bus_module

    bus = EventBus(FrozenClock().now)
    slow, fast = bus.subscribe(), bus.subscribe()
    bus.publish([closed(n) for n in range(bus_module.QUEUE)])
    assert len(drain(fast)) == bus_module.QUEUE  # fast keeps up, slow reads nothing
    bus.publish([closed(bus_module.QUEUE)])
    assert bus.subscribers == 1  # the slow one no longer holds the others up
    assert len(drain(fast)) == 1
    for _ in range(bus_module.QUEUE):
        await slow.get(1)
    with pytest.raises(SubscriptionLost):
        await slow.get(1)


# ---- the core publishes after its commits ----------------------------------------------------


@pytest_asyncio.fixture
async def wired(make_core: CoreFactory) -> tuple[Core, Any]:
    """A core with one agent whose phone has a static contact, and a subscription."""
    core = await make_core(agents=[AgentConfig(id="12", contact="sip:alice@192.0.2.12")])
    return core, core.bus.subscribe()


async def test_an_inbound_message_is_published_once_as_the_api_shows_it(
    wired: tuple[Core, Any],
) -> None:
    core, sub = wired
    event = whatsapp(NUMBER, "Où est mon colis ?")
    first = await core.ingest(event)
    [record] = drain(sub)
    added = record.event
    assert isinstance(added, EntryAdded) and added.kind == "message"
    assert (added.conversation_id, added.customer_id, added.leg_id) == (
        first.conversation_id, first.customer_id, first.leg_id)
    conversation = await core.conversation(first.conversation_id)  # type: ignore[arg-type]
    assert added.entry == conversation["transcript"][0]  # the same JSON as the API's
    assert added.entry["text"] == "Où est mon colis ?"
    assert (await core.ingest(event)).duplicate
    assert drain(sub) == []  # a duplicate committed nothing new: nothing is said


async def test_a_code_answered_publishes_the_message_the_note_and_the_reply(
    wired: tuple[Core, Any],
) -> None:
    core, sub = wired
    first = await core.ingest(sms(NUMBER, "help"))
    await core.start_verification(first.conversation_id, None)  # type: ignore[arg-type]
    drain(sub)
    await core.ingest(sms(NUMBER, "123 456"))  # a wrong code
    texts = [(e.entry["direction"], e.entry["text"]) for e in events(drain(sub))]
    assert texts == [("in", "[verification code]"), ("event", "wrong verification code"),
                     ("out", "That code is not right; please try again.")]


async def test_nothing_is_published_for_a_write_that_failed(wired: tuple[Core, Any]) -> None:
    core, sub = wired
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    drain(sub)

    def close_then_fail(tx: Tx) -> None:
        from gateway import conversations

        assert conversations.close_conversation(tx, first.conversation_id, "cus")  # type: ignore[arg-type]
        tx.conn.execute(text("SELECT * FROM no_such_table"))  # the transaction rolls back

    with pytest.raises(Exception):
        await core.writes.run(close_then_fail)
    assert drain(sub) == []
    assert (await core.conversation(first.conversation_id))["status"] == "open"  # type: ignore[arg-type]


async def test_a_batch_retried_one_by_one_publishes_only_what_committed(
    wired: tuple[Core, Any],
) -> None:
    core, sub = wired
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    drain(sub)

    def close(tx: Tx) -> None:
        from gateway import conversations

        conversations.close_conversation(tx, first.conversation_id, "cus")  # type: ignore[arg-type]

    def broken(tx: Tx) -> None:
        tx.publish(ConversationClosed("conv_never", "cus_never"))
        raise ValueError("refused")

    results = await asyncio.gather(core.writes.run(broken), core.writes.run(close),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert events(drain(sub)) == [ConversationClosed(first.conversation_id, "cus")]  # type: ignore[arg-type]


async def test_a_call_offered_to_an_agent_and_its_end_are_published(
    wired: tuple[Core, Any],
) -> None:
    core, sub = wired
    route = await core.open_call(call(NUMBER, call_ref="c1@test"))
    [incoming] = events(drain(sub))
    assert isinstance(incoming, EntryAdded) and incoming.entry["kind"] == "call"
    offer = await core.offer_call(route)
    assert offer is not None and offer.agent_id == "12"
    [offered] = events(drain(sub))
    assert offered == CallOffered(route.conversation_id, route.customer_id, route.leg_id, "12",
                                  route.context_url, "c1@test")
    leg = route.leg_id  # how the SIP edge names its call to the core
    await core.call_event(CallEvent("c1@test", "sip", "answered", agent_id="12", leg_id=leg))
    await core.call_event(CallEvent("c1@test", "sip", "ended", leg_id=leg))
    await core.call_event(CallEvent("c1@test", "sip", "ended", leg_id=leg))  # the other BYE
    said = events(drain(sub))
    assert [type(e).__name__ for e in said] == ["EntryAdded", "CallEnded", "EntryAdded"]
    assert said[1] == CallEnded(route.conversation_id, route.customer_id, route.leg_id, "12",
                                "c1@test")
    assert core.router.load("12") == 0  # the end released the agent


async def test_closing_and_taking_a_conversation_are_published(
    wired: tuple[Core, Any],
) -> None:
    core, sub = wired
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    drain(sub)
    await core.desk.take("12", first.conversation_id)
    await core.desk.take("12", first.conversation_id)  # already theirs: nothing new
    await core.desk.release("12", first.conversation_id)  # type: ignore[arg-type]
    await core.close_conversation(first.conversation_id)  # type: ignore[arg-type]
    await core.close_conversation(first.conversation_id)  # type: ignore[arg-type]
    assert events(drain(sub)) == [
        ConversationAssigned(first.conversation_id, first.customer_id, "12", None),  # type: ignore[arg-type]
        ConversationAssigned(first.conversation_id, first.customer_id, None, "12"),  # type: ignore[arg-type]
        ConversationClosed(first.conversation_id, first.customer_id),  # type: ignore[arg-type]
    ]


# ---- over real HTTP ----------------------------------------------------------------------------


async def test_a_signed_sms_webhook_reaches_a_subscriber_after_the_200(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    gw: RunningGateway = await start_gateway(twilio=twilio_standin)
    sub = gw.gw.bus.subscribe()
    form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=NUMBER,
                           to="+15005550006", body="is anyone there?")
    status, _, _ = await gw.twilio("/webhooks/twilio/messaging", form, twilio_standin.auth_token)
    assert status == 200
    record = await sub.get(timeout=5)
    assert record is not None and isinstance(record.event, EntryAdded)
    assert record.event.entry["text"] == "is anyone there?"
    customer = await gw.customer(f"sms:{NUMBER}")
    assert record.event.conversation_id == customer["conversations"][0]["id"]


async def test_a_twilio_voice_call_offered_to_an_agent_is_published_with_its_context_link(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    public = "https://gw.example.com"
    gw = await start_gateway(
        public_url=public, twilio_account_sid=twilio_standin.account_sid,
        twilio_auth_token=twilio_standin.auth_token, twilio_api_url=twilio_standin.base_url,
        agents=[{"id": "7", "contact": "sip:bob@10.0.0.7:5070"}])
    sub = gw.gw.bus.subscribe(lambda e: isinstance(e, CallOffered))
    form = twilio_voice_form(account_sid=twilio_standin.account_sid, from_=NUMBER,
                             to="+15005550006", call_status="in-progress")
    url = f"{public}/webhooks/twilio/voice?step=route"
    body, headers = twilio_webhook_request(twilio_standin.auth_token, url, form)
    async with gw.http.post(gw.url + "/webhooks/twilio/voice?step=route", data=body,
                            headers=headers) as resp:
        assert resp.status == 200
        twiml = ElementTree.fromstring(await resp.text())
    sip = twiml.find("./Dial/Sip")
    assert sip is not None and sip.text
    token = parse_qs(urlsplit(sip.text).query)["x-context"][0]
    record = await sub.get(timeout=5)
    assert record is not None
    offered = record.event
    assert isinstance(offered, CallOffered) and offered.agent_id == "7"
    assert offered.call_ref == form["CallSid"]
    assert offered.context_url == f"{public}/api/v1/contexts/{token}"
