"""The agent router (gateway/agents.py): who takes a call, load, the next agent, release,
and presence from SIP registrations and XMPP; then the core's offer and release around it."""

from __future__ import annotations

import hashlib

import pytest

from config.settings import AgentConfig, ConfigError, load_settings
from gateway.agents import AgentDirectory
from gateway.bus import AgentPresenceChanged, CallEnded, CallOffered, DomainEvent
from gateway.channels import Presence
from gateway.clock import FrozenClock
from gateway.events import CallEvent
from tests.conftest import CoreFactory
from tests.helpers import call

TOKEN = "agent-token-for-alice-0123456789"


def directory(*configs: AgentConfig, said: list[DomainEvent] | None = None,
              clock: FrozenClock | None = None) -> AgentDirectory:
    return AgentDirectory(configs, clock or FrozenClock(),
                          publish=said.extend if said is not None else None)


def static(agent_id: str) -> AgentConfig:
    return AgentConfig(id=agent_id, contact=f"sip:{agent_id}@192.0.2.{agent_id}")


def test_the_least_busy_agent_gets_the_call_and_ties_take_turns() -> None:
    agents = directory(static("1"), static("2"), static("3"))
    first = [agents.offer(f"call-{n}") for n in range(3)]
    assert sorted(t.agent_id for t in first if t) == ["1", "2", "3"]  # one each
    assert [agents.load(a) for a in ("1", "2", "3")] == [1, 1, 1]
    agents.release("call-0")  # whoever had call-0 is now the least busy
    freed = next(t.agent_id for t in first if t)
    nxt = agents.offer("call-9")
    assert nxt is not None and nxt.agent_id == freed


def test_the_next_agent_for_a_call_is_one_not_tried_and_the_previous_is_let_go() -> None:
    agents = directory(static("1"), static("2"))
    first = agents.offer("call")
    assert first is not None
    second = agents.offer("call", exclude=[first.agent_id])
    assert second is not None and second.agent_id != first.agent_id
    assert agents.load(first.agent_id) == 0 and agents.load(second.agent_id) == 1
    assert agents.holding("call") == second.agent_id
    assert agents.offer("call", exclude=["1", "2"]) is None  # everyone tried
    assert agents.load("1") == agents.load("2") == 0


def test_release_frees_only_the_agent_the_call_holds() -> None:
    agents = directory(static("1"))
    assert agents.offer("call") is not None
    assert agents.release("call", agent_id="2") is None  # a late report about someone else
    assert agents.load("1") == 1
    assert agents.release("call", agent_id="1") == "1"
    assert agents.release("call") is None  # twice: nothing more to free
    assert agents.load("1") == 0


def offered_at(gateway: str, leg: str, agent: str) -> tuple[CallOffered, str]:
    return CallOffered("conv", "cus", leg, agent, "https://gw/ctx", f"ref-{leg}"), gateway


def test_calls_offered_at_another_gateway_count_here_until_they_end_there_or_it_is_gone(
) -> None:
    agents = directory(static("1"), static("2"))
    agents.heard(*offered_at("gw-b", "leg-b1", "1"))
    assert agents.load("1") == 1 and agents.holding("leg-b1") == "1"
    target = agents.offer("leg-a1")  # "1" is busy at B: here "2" gets the call
    assert target is not None and target.agent_id == "2"
    # B's CallEnded frees "1"; A's own call, ended at B too, frees "2" here.
    agents.heard(CallEnded("conv", "cus", "leg-b1", "1", "ref-b1"), "gw-b")
    agents.heard(CallEnded("conv", "cus", "leg-a1", "2", "ref-a1"), "gw-b")
    assert agents.load("1") == agents.load("2") == 0
    # A call held here and offered to the next agent at B (a Twilio redirect that reached
    # B): it holds one agent, the one B chose.
    agents.offer("leg-a2", agent_id="1")
    agents.heard(*offered_at("gw-b", "leg-a2", "2"))
    assert (agents.load("1"), agents.load("2")) == (0, 1)
    # An end reported here for a call B offered stops it counting.
    agents.release("leg-a2")
    assert agents.load("2") == 0
    agents.heard(*offered_at("gw-b", "leg-b2", "1"))
    agents.heard(*offered_at("gw-c", "leg-c1", "1"))
    assert agents.origins() == {"gw-b", "gw-c"}
    assert agents.forget_origin("gw-b") == 1
    assert agents.load("1") == 1 and agents.origins() == {"gw-c"}


def test_sip_registration_is_presence_and_expiry_takes_it_away() -> None:
    clock = FrozenClock()
    said: list[DomainEvent] = []
    agents = directory(AgentConfig(id="12", sip_user="alice", sip_password="pw"), said=said,
                       clock=clock)
    alice = agents.get("12")
    assert alice is not None
    assert agents.presence("12") is Presence.OFFLINE and agents.offer("c") is None
    agents.register(alice, "sip:alice@192.0.2.5:5070", 60)
    assert agents.presence("12") is Presence.AVAILABLE
    assert said == [AgentPresenceChanged("12", "available")]
    target = agents.offer("c")
    assert target is not None and target.contact.uri == "sip:alice@192.0.2.5:5070"
    agents.release("c")
    clock.advance(seconds=61)
    assert agents.presence("12") is Presence.OFFLINE and agents.offer("c2") is None


def test_xmpp_presence_combines_with_sip_and_an_xmpp_only_agent_gets_no_calls() -> None:
    said: list[DomainEvent] = []
    agents = directory(AgentConfig(id="12", contact="sip:alice@192.0.2.12", xmpp="alice@x.org"),
                       AgentConfig(id="13", xmpp="Bob@X.org"), said=said)
    assert agents.by_xmpp("bob@x.org/laptop") is agents.get("13")
    agents.set_presence("13", "xmpp", Presence.AVAILABLE)
    assert agents.presence("13") is Presence.AVAILABLE
    agents.set_presence("13", "xmpp", Presence.AVAILABLE)  # no change: nothing said
    agents.set_presence("13", "xmpp", Presence.AWAY)
    assert said == [AgentPresenceChanged("13", "available"), AgentPresenceChanged("13", "away")]
    # Alice's phone has a static contact: available by SIP whatever her chat client says.
    agents.set_presence("12", "xmpp", Presence.DND)
    assert agents.presence("12") is Presence.AVAILABLE
    offered = [agents.offer(f"c{n}") for n in range(3)]
    assert {t.agent_id for t in offered if t} == {"12"}  # Bob has no phone: never a call


def test_an_agent_is_found_by_the_sha256_of_their_own_token() -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    agents = directory(AgentConfig(id="12", xmpp="alice@x.org", token_sha256=digest.upper()))
    assert agents.by_token(TOKEN) is agents.get("12")
    assert agents.by_token(TOKEN + "x") is None


def test_agents_config_takes_an_xmpp_only_agent_and_refuses_a_bad_token_hash(
    settings_env: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(agents=[{"id": "12", "xmpp": "alice@example.org",
                                      "token_sha256": "ab" * 32}])
    assert settings.agents[0].xmpp == "alice@example.org"
    with pytest.raises(ConfigError, match=r"GATEWAY_AGENTS\[0\]\.token_sha256"):
        load_settings(agents=[{"id": "12", "xmpp": "a@b.org", "token_sha256": "change-me"}])
    with pytest.raises(ConfigError, match=r"GATEWAY_AGENTS\[0\]\.xmpp"):
        load_settings(agents=[{"id": "12", "xmpp": "alice@example.org/phone"}])


# ---- the core around the router -----------------------------------------------------------------


async def test_the_core_offers_calls_in_turn_and_a_call_s_end_frees_its_agent(
    make_core: CoreFactory,
) -> None:
    core = await make_core(agents=[static("1"), static("2")])
    route = await core.open_call(call("+14155550100", call_ref="c@test"))
    first = await core.offer_call(route)
    assert first is not None
    second = await core.offer_call(route, tried=[first.agent_id])
    assert second is not None and second.agent_id != first.agent_id
    assert second.route.context_url == route.context_url
    assert core.router.load(first.agent_id) == 0 and core.router.load(second.agent_id) == 1
    await core.call_event(CallEvent("c@test", "sip", "failed", detail="caller hung up",
                                    leg_id=route.leg_id))
    assert core.router.load(second.agent_id) == 0


async def test_after_enough_agents_did_not_answer_nobody_else_is_tried(
    make_core: CoreFactory,
) -> None:
    core = await make_core(agents=[static(str(n)) for n in range(1, 6)])
    route = await core.open_call(call("+14155550100"))
    tried: list[str] = []
    while (offer := await core.offer_call(route, tried)) is not None:
        tried.append(offer.agent_id)
    assert len(tried) == core.policy.max_agents_per_call == 3
    assert all(core.router.load(a.id) == 0 for a in core.router)
