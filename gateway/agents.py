"""Agents and who can take a call now: the routing directory shared by every voice edge.

Agents come from configuration. A SIP registrar adds and removes their registered contacts;
agents with a static contact are always reachable. `pick` chooses the least busy reachable
agent (ties broken round-robin), so the SIP edge and Twilio Voice route the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from config.settings import AgentConfig
from gateway.clock import Clock


@dataclass(frozen=True, slots=True)
class Contact:
    uri: str  # where to send the INVITE, e.g. sip:alice@127.0.0.1:5070;transport=udp
    expires_at: datetime | None  # None for a static contact
    source: tuple[str, int] | None = None  # the address REGISTER came from (NAT: send there)
    transport: str = "udp"


@dataclass
class Agent:
    id: str
    name: str
    sip_user: str | None
    password: str | None
    static_contact: str | None
    registrations: dict[str, Contact] = field(default_factory=dict)
    active_calls: int = 0

    def contacts(self, now: datetime) -> list[Contact]:
        live = [c for c in self.registrations.values()
                if c.expires_at is None or c.expires_at > now]
        if self.static_contact:
            live.append(Contact(self.static_contact, None))
        return live


@dataclass(frozen=True, slots=True)
class AgentTarget:
    agent_id: str
    contact: Contact


class AgentDirectory:
    def __init__(self, agents: Iterable[AgentConfig], clock: Clock) -> None:
        self._clock = clock
        self._agents: dict[str, Agent] = {}
        self._by_user: dict[str, Agent] = {}
        for cfg in agents:
            agent = Agent(
                id=cfg.id, name=cfg.name or cfg.id, sip_user=cfg.sip_user,
                password=cfg.sip_password.get_secret_value() if cfg.sip_password else None,
                static_contact=cfg.contact,
            )
            self._agents[agent.id] = agent
            if agent.sip_user:
                self._by_user[agent.sip_user.lower()] = agent
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def by_sip_user(self, user: str) -> Agent | None:
        return self._by_user.get(user.lower())

    def register(
        self, agent: Agent, contact_uri: str, expires_seconds: int,
        source: tuple[str, int] | None = None, transport: str = "udp",
    ) -> None:
        if expires_seconds <= 0:
            agent.registrations.pop(contact_uri, None)
            return
        agent.registrations[contact_uri] = Contact(
            contact_uri, self._clock.now() + timedelta(seconds=expires_seconds), source,
            transport,
        )

    def unregister_all(self, agent: Agent) -> None:
        agent.registrations.clear()

    def pick(self, exclude: Iterable[str] = ()) -> AgentTarget | None:
        """The least busy reachable agent, or None when nobody can take a call."""
        now = self._clock.now()
        skip = set(exclude)
        candidates = [a for a in self._agents.values() if a.id not in skip and a.contacts(now)]
        if not candidates:
            return None
        least = min(a.active_calls for a in candidates)
        tied = [a for a in candidates if a.active_calls == least]
        agent = tied[next(self._turn) % len(tied)]
        registered = [c for c in agent.contacts(now) if c.expires_at is not None]
        if registered:
            # The registration that lasts longest is the newest: a phone that re-registered
            # from a new address wins over its stale binding.
            return AgentTarget(agent.id, max(registered, key=lambda c: c.expires_at or now))
        return AgentTarget(agent.id, agent.contacts(now)[0])

    def call_started(self, agent_id: str) -> None:
        if (agent := self._agents.get(agent_id)) is not None:
            agent.active_calls += 1

    def call_ended(self, agent_id: str) -> None:
        if (agent := self._agents.get(agent_id)) is not None and agent.active_calls > 0:
            agent.active_calls -= 1
