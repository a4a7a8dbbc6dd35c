"""The agent router: who the agents are, whether they can take work now, and who takes a call.

Agents come from configuration (`GATEWAY_AGENTS`). Presence comes from the channels: a SIP
registrar adds and removes an agent's registered contacts (a live registration, or a static
contact, means "sip: available"); XMPP reports its presence through `set_presence`. An agent
is available when any source says so. Load is the number of calls an agent has now.

`offer(call_ref, exclude)` chooses the least busy available agent with a phone, ties broken
round-robin, and counts them busy with that call until `release(call_ref)`; a call holds one
agent at a time, so offering it to the next agent lets go of the previous one. The core
(`gateway/calls.py`) keys calls by their leg id, so two calls that share a caller-chosen
Call-ID never share (or free) each other's agent; both edges go through it.

All of it lives in memory, in the process that runs the channels. Several gateways behind
Kamailio share the registrations through the database (`gateway/registrations.py` fills
`Agent.shared`). Call counts cross gateways by the events the peer link relays (`heard`):
another gateway's CallOffered counts its agent busy here too (`Agent.calls_elsewhere`), and
a CallEnded committed anywhere frees the agent wherever the call was offered (Twilio's end
report may reach any gateway behind the HTTP load balancer). A gateway that dies takes its
calls' ends with it: `forget_origin` drops what it had offered once its liveness is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from config.settings import AgentConfig
from gateway.bus import AgentPresenceChanged, CallEnded, CallOffered, DomainEvent
from gateway.channels import Presence
from gateway.clock import Clock

log = logging.getLogger("gateway.agents")

# An offer with no release after this long lost its end report (Twilio ends every call
# within 4 hours); the agent is freed.
STALE_OFFER = 6 * 3600.0
# The best first: presence from several sources combines to the most available one.
_ORDER = (Presence.AVAILABLE, Presence.AWAY, Presence.DND, Presence.OFFLINE)


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
    xmpp: str | None = None  # bare JID, lower case
    token_sha256: str | None = None  # hex SHA-256 of the agent's own API token
    registrations: dict[str, Contact] = field(default_factory=dict)
    # Bindings other gateways hold (read from the database: `gateway/registrations.py`).
    shared: dict[str, Contact] = field(default_factory=dict)
    active_calls: int = 0  # the calls this gateway offered them, not yet ended
    calls_elsewhere: int = 0  # the ones other gateways offered them (heard from the peer link)
    reported: dict[str, Presence] = field(default_factory=dict)  # source -> presence

    def contacts(self, now: datetime) -> list[Contact]:
        live = [c for c in (*self.registrations.values(), *self.shared.values())
                if c.expires_at is None or c.expires_at > now]
        if self.static_contact:
            live.append(Contact(self.static_contact, None))
        return live

    def presence(self, now: datetime) -> Presence:
        said = dict(self.reported)
        if self.contacts(now):
            said["sip"] = Presence.AVAILABLE
        return min(said.values(), key=_ORDER.index, default=Presence.OFFLINE)


@dataclass(frozen=True, slots=True)
class AgentTarget:
    agent_id: str
    contact: Contact


class AgentDirectory:
    """The core's agent router (`gateway.channels.AgentRouter`), shared by every channel."""

    def __init__(self, agents: Iterable[AgentConfig], clock: Clock,
                 publish: Callable[[Sequence[DomainEvent]], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._publish = publish or (lambda _events: None)
        self._monotonic = monotonic
        self._agents: dict[str, Agent] = {}
        self._by_user: dict[str, Agent] = {}
        self._by_xmpp: dict[str, Agent] = {}
        self._by_token: dict[str, Agent] = {}
        for cfg in agents:
            agent = Agent(
                id=cfg.id, name=cfg.name or cfg.id, sip_user=cfg.sip_user,
                password=cfg.sip_password.get_secret_value() if cfg.sip_password else None,
                static_contact=cfg.contact, xmpp=cfg.xmpp.lower() if cfg.xmpp else None,
                token_sha256=cfg.token_sha256.lower() if cfg.token_sha256 else None,
            )
            self._agents[agent.id] = agent
            if agent.sip_user:
                self._by_user[agent.sip_user.lower()] = agent
            if agent.xmpp:
                self._by_xmpp[agent.xmpp] = agent
            if agent.token_sha256:
                self._by_token[agent.token_sha256] = agent
        self._turn = itertools.count()
        self._held: dict[str, tuple[str, float]] = {}  # call_ref -> (agent id, since)
        # Calls other gateways offered: call_ref -> (agent id, origin instance, since).
        self._elsewhere: dict[str, tuple[str, str, float]] = {}
        # Told of every change to a local registration (agent, contact URI, the binding or
        # None when removed): how shared registrations reach the database.
        self.on_registration: Callable[[Agent, str, Contact | None], None] | None = None

    # ---- who ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter(list(self._agents.values()))

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def by_sip_user(self, user: str) -> Agent | None:
        return self._by_user.get(user.lower())

    def by_xmpp(self, jid: str) -> Agent | None:
        return self._by_xmpp.get(jid.split("/", 1)[0].lower())

    def by_token(self, token: str) -> Agent | None:
        """The agent whose API token this is (compared as SHA-256, in constant time)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        agent = self._by_token.get(digest)
        if agent is None or not hmac.compare_digest(agent.token_sha256 or "", digest):
            return None
        return agent

    # ---- presence ------------------------------------------------------------------------------

    def presence(self, agent_id: str) -> Presence:
        agent = self._agents.get(agent_id)
        return agent.presence(self._clock.now()) if agent else Presence.OFFLINE

    def set_presence(self, agent_id: str, source: str, presence: Presence) -> None:
        agent = self._agents.get(agent_id)
        if agent is None:
            log.warning("presence %s from %s for unknown agent %s ignored", presence, source,
                        agent_id)
            return
        before = agent.presence(self._clock.now())
        agent.reported[source] = Presence(presence)
        self._changed(agent, before)

    def _changed(self, agent: Agent, before: Presence) -> None:
        after = agent.presence(self._clock.now())
        if after != before:
            self._publish([AgentPresenceChanged(agent.id, after.value)])

    def register(
        self, agent: Agent, contact_uri: str, expires_seconds: int,
        source: tuple[str, int] | None = None, transport: str = "udp",
    ) -> None:
        """A SIP registration (or, with 0 seconds, its removal) for `agent`."""
        before = agent.presence(self._clock.now())
        contact: Contact | None = None
        if expires_seconds <= 0:
            agent.registrations.pop(contact_uri, None)
        else:
            contact = agent.registrations[contact_uri] = Contact(
                contact_uri, self._clock.now() + timedelta(seconds=expires_seconds), source,
                transport,
            )
        if self.on_registration is not None:
            self.on_registration(agent, contact_uri, contact)
        self._changed(agent, before)

    def unregister_all(self, agent: Agent) -> None:
        before = agent.presence(self._clock.now())
        agent.registrations.clear()
        agent.shared = {}
        if self.on_registration is not None:
            self.on_registration(agent, "*", None)  # every binding, wherever it is held
        self._changed(agent, before)

    def set_shared(self, agent: Agent, contacts: dict[str, Contact]) -> None:
        """The bindings other gateways hold for `agent` now (replacing what was known)."""
        if contacts == agent.shared:
            return
        before = agent.presence(self._clock.now())
        agent.shared = contacts
        self._changed(agent, before)

    # ---- choice and load ----------------------------------------------------------------------

    def load(self, agent_id: str) -> int:
        agent = self._agents.get(agent_id)
        return agent.active_calls + agent.calls_elsewhere if agent else 0

    def pick(self, exclude: Iterable[str] = ()) -> AgentTarget | None:
        """The least busy available agent with a phone, or None when nobody can take a call.
        Nothing is counted: `offer` (or the caller's `call_started`) does that."""
        now = self._clock.now()
        skip = set(exclude)
        candidates = [a for a in self._agents.values()
                      if a.id not in skip and a.contacts(now)
                      and a.presence(now) is Presence.AVAILABLE]
        if not candidates:
            return None
        least = min(a.active_calls + a.calls_elsewhere for a in candidates)
        tied = [a for a in candidates if a.active_calls + a.calls_elsewhere == least]
        agent = tied[next(self._turn) % len(tied)]
        return self.target_of(agent, now)

    def target_of(self, agent: Agent, now: datetime | None = None) -> AgentTarget | None:
        """Where `agent`'s phone is now: the registration that lasts longest is the newest (a
        phone that re-registered from a new address wins over its stale binding), else the
        static contact."""
        contacts = agent.contacts(now or self._clock.now())
        if not contacts:
            return None
        registered = [(c.expires_at, c) for c in contacts if c.expires_at is not None]
        if registered:
            return AgentTarget(agent.id, max(registered, key=lambda pair: pair[0])[1])
        return AgentTarget(agent.id, contacts[0])

    def offer(self, call_ref: str, exclude: Sequence[str] = (),
              agent_id: str | None = None) -> AgentTarget | None:
        self._forget_stale()
        self.release(call_ref)  # here or at another gateway (e.g. after a Twilio redirect)
        if agent_id is not None:  # the caller dialled this agent: their phone, if it has one
            agent = self._agents.get(agent_id)
            target = self.target_of(agent) if agent is not None else None
        else:
            target = self.pick(exclude)
        if target is not None:
            self._held[call_ref] = (target.agent_id, self._monotonic())
            self.call_started(target.agent_id)
        return target

    def release(self, call_ref: str, agent_id: str | None = None) -> str | None:
        """The call no longer holds its agent (here; and if another gateway offered it, it
        stops counting here). Returns the agent this gateway held for it."""
        elsewhere = self._elsewhere.get(call_ref)
        if elsewhere is not None and (agent_id is None or elsewhere[0] == agent_id):
            self._drop_elsewhere(call_ref)
        held = self._held.get(call_ref)
        if held is None or (agent_id is not None and held[0] != agent_id):
            return None
        del self._held[call_ref]
        self.call_ended(held[0])
        return held[0]

    def holding(self, call_ref: str) -> str | None:
        """The agent a call is offered to (or answered by) now, by any gateway."""
        held = self._held.get(call_ref)
        if held is not None:
            return held[0]
        elsewhere = self._elsewhere.get(call_ref)
        return elsewhere[0] if elsewhere else None

    # ---- calls other gateways offered (PostgreSQL: the peer link's relayed events) ------------

    def heard(self, event: DomainEvent, origin: str) -> None:
        """An event another gateway committed. Its CallOffered counts the agent busy here too
        (a call holds one agent at a time: an offer of it here lets go); its CallEnded ends
        the call here, whichever gateway offered it."""
        if isinstance(event, CallOffered):
            self.release(event.leg_id)
            if (agent := self._agents.get(event.agent_id)) is not None:
                self._elsewhere[event.leg_id] = (agent.id, origin, self._monotonic())
                agent.calls_elsewhere += 1
        elif isinstance(event, CallEnded):
            self.release(event.leg_id)

    def origins(self) -> set[str]:
        """The gateways whose offered calls are counted here."""
        return {origin for _agent, origin, _since in self._elsewhere.values()}

    def forget_origin(self, origin: str) -> int:
        """`origin` is gone (its database session ended): its calls' ends will never be told,
        so they stop counting here. Returns how many were dropped."""
        gone = [ref for ref, (_a, o, _s) in self._elsewhere.items() if o == origin]
        for call_ref in gone:
            self._drop_elsewhere(call_ref)
        if gone:
            log.warning("gateway %s is gone: %d call(s) it offered no longer count agents busy",
                        origin, len(gone))
        return len(gone)

    def _drop_elsewhere(self, call_ref: str) -> None:
        found = self._elsewhere.pop(call_ref, None)
        if found is not None and (agent := self._agents.get(found[0])) is not None:
            agent.calls_elsewhere = max(0, agent.calls_elsewhere - 1)

    def _forget_stale(self) -> None:
        # `_held` is in offer order (an offer deletes, then re-adds at the end), so the stale
        # ones come first: stop at the first fresh one. Every call is offered, so this runs
        # per call and must not walk every live call.
        cutoff = self._monotonic() - STALE_OFFER
        while self._elsewhere:
            call_ref, (_agent, _origin, since) = next(iter(self._elsewhere.items()))
            if since >= cutoff:
                break
            self._drop_elsewhere(call_ref)
        while self._held:
            call_ref, (agent_id, since) = next(iter(self._held.items()))
            if since >= cutoff:
                return
            log.warning("no end reported for call %s (agent %s); freeing the agent",
                        call_ref, agent_id)
            self.release(call_ref)

    def call_started(self, agent_id: str) -> None:
        if (agent := self._agents.get(agent_id)) is not None:
            agent.active_calls += 1

    def call_ended(self, agent_id: str) -> None:
        if (agent := self._agents.get(agent_id)) is not None and agent.active_calls > 0:
            agent.active_calls -= 1
