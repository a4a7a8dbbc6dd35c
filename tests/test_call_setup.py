"""A call's set-up and its answer and end, on SQLite and on a real PostgreSQL.

On PostgreSQL the steady state (a known caller with an open conversation) opens the leg,
writes its first transcript entry and issues its token in one statement, and an edge's
answer or end changes the leg and writes its entry in one (gateway/calls.py); every other
case is placed statement by statement, as on SQLite. Each case here runs on both and checks
what an agent or a caller would see: the conversation a call lands in, its transcript,
its context link (fetchable at once), the events on the bus, the caller's evidence.
"""

from __future__ import annotations

from gateway.addresses import make_address
from gateway.bus import CallEnded, EntryAdded
from gateway.clock import FrozenClock
from gateway.core import Core
from gateway.events import CallEvent, IncomingCall
from tests.helpers import call, whatsapp

NUMBER = "+14155550123"


def _bus_events(core: Core) -> list[object]:
    seen: list[object] = []
    core.bus.forward_to(seen.extend)
    return seen


async def _texts(core: Core, conversation_id: str) -> list[str]:
    return [e["text"] for e in (await core.conversation(conversation_id))["transcript"]]


async def test_a_repeat_callers_call_joins_their_open_conversation_with_its_link_at_once(
    core: Core,
) -> None:
    first = await core.open_call(call(NUMBER))  # a new caller: a customer and a conversation
    events = _bus_events(core)
    again = await core.open_call(call(NUMBER, call_ref="again@test"))
    assert (again.customer_id, again.conversation_id) == (first.customer_id,
                                                          first.conversation_id)
    assert again.leg_id != first.leg_id and again.context_token != first.context_token
    assert again.call_ref == "again@test" and again.binding == "caller-id"
    bundle = await core.bundle(again.context_token)  # committed with the leg: fetchable now
    assert bundle is not None and bundle["conversation_id"] == first.conversation_id
    conversation = await core.conversation(first.conversation_id)
    assert [leg["id"] for leg in conversation["legs"]] == [first.leg_id, again.leg_id]
    entry = conversation["transcript"][-1]
    assert (entry["text"], entry["leg_id"]) == (f"incoming call from voice:{NUMBER}",
                                                again.leg_id)
    added = [e for e in events if isinstance(e, EntryAdded)]
    assert [(e.item.id, e.conversation_id, e.leg_id, e.item.text) for e in added] == [
        (entry["id"], first.conversation_id, again.leg_id, entry["text"])]


async def test_a_call_after_the_idle_window_opens_a_new_conversation(
    core: Core, clock: FrozenClock
) -> None:
    first = await core.open_call(call(NUMBER))
    await core.open_call(call(NUMBER))
    clock.advance(hours=73)  # Policy.conversation_idle is 72 h
    later = await core.open_call(call(NUMBER))
    assert later.customer_id == first.customer_id
    assert later.conversation_id != first.conversation_id
    assert (await core.conversation(first.conversation_id))["status"] == "closed"
    assert await _texts(core, later.conversation_id) == [f"incoming call from voice:{NUMBER}"]
    assert await core.bundle(later.context_token) is not None


async def test_a_message_keeps_the_conversation_a_call_would_otherwise_find_idle(
    core: Core, clock: FrozenClock
) -> None:
    first = await core.open_call(call(NUMBER))
    clock.advance(hours=71)
    chat = await core.ingest(whatsapp(NUMBER, "still there?"))  # active again now
    clock.advance(hours=2)  # 73 h after the call, 2 h after the message
    later = await core.open_call(call(NUMBER))
    assert later.conversation_id == chat.conversation_id == first.conversation_id


async def test_an_authenticated_caller_upgrades_a_claimed_number_then_calls_as_usual(
    core: Core,
) -> None:
    await core.open_call(call(NUMBER))  # the number's link: a claim (caller ID)

    def agent_call(ref: str) -> IncomingCall:
        return IncomingCall(caller=make_address("voice", NUMBER), callee="support",
                            call_ref=ref, provider="sip", caller_authenticated=True)

    upgraded = await core.open_call(agent_call("a@test"))
    steady = await core.open_call(agent_call("b@test"))
    customer = await core.customer_by_address(make_address("voice", NUMBER))
    assert {a["address"]: a["evidence"] for a in customer["addresses"]} == {
        f"voice:{NUMBER}": "attested"}
    assert upgraded.binding == steady.binding == "attested"
    assert upgraded.conversation_id == steady.conversation_id


async def test_answer_and_end_naming_their_agent_are_recorded_once_and_free_the_agent(
    core: Core,
) -> None:
    route = await core.open_call(call(NUMBER, call_ref="x@test"))
    events = _bus_events(core)
    leg = route.leg_id
    assert await core.call_event(CallEvent("x@test", "sip", "answered", agent_id="12",
                                           leg_id=leg))
    for _bye in range(2):  # both sides hang up: the end is recorded once
        assert await core.call_event(CallEvent("x@test", "sip", "ended", agent_id="12",
                                               duration_seconds=65.2, leg_id=leg))
    assert not await core.call_event(CallEvent("x@test", "sip", "answered", agent_id="12",
                                               leg_id="leg_unknown"))
    texts = await _texts(core, route.conversation_id)
    assert texts[1:] == ["answered by agent 12", "call ended after 1 min 5 s with agent 12"]
    ended = [e for e in events if isinstance(e, CallEnded)]
    assert [(e.leg_id, e.agent_id) for e in ended] == [(leg, "12")]
    conversation = await core.conversation(route.conversation_id)
    assert conversation["legs"][0]["agent_id"] == "12"
    assert conversation["legs"][0]["ended_at"] is not None


async def test_a_failed_offer_names_the_agent_and_frees_the_leg(core: Core) -> None:
    route = await core.open_call(call(NUMBER, call_ref="y@test"))
    assert await core.call_event(CallEvent("y@test", "sip", "failed", agent_id="12",
                                           detail="486 Busy Here", leg_id=route.leg_id))
    assert await core.call_event(CallEvent("y@test", "sip", "failed", agent_id="12",
                                           leg_id=route.leg_id))  # again: recorded once
    assert (await _texts(core, route.conversation_id))[1:] == ["call failed (486 Busy Here)"]
    assert (await core.conversation(route.conversation_id))["legs"][0]["agent_id"] is None
