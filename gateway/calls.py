"""Flow 2 for calls: a call's leg, its context token, the agent it is offered to, its story.

`open_call` resolves the caller, checks an escalation PIN or token (guesses are limited per
source and for everybody: `gateway/throttle.py`; a limited caller is refused with
`PinAttemptsLimited`, which the edge turns into a final answer, before anyone is asked to
take the call), opens the call's leg and issues its context token, in one write. A
matching PIN is held by that call and used once an agent answers; a call that reached
nobody gives it back, so a caller told "no agent is free" can call again with it.

`offer_call` asks the agent router for the next agent and says so on the bus (`CallOffered`:
the console pops the context up while the phone rings). `call_event` records ringing,
answered, ended on the leg the core returned; the end releases the agent. The edges (Twilio
Voice, the SIP proxy) only translate.

What binds a call to a leg (DESIGN.md "What binds a leg"): a SIP call's leg is made by its
INVITE and found again only by the leg id the core returned (retransmissions are the SIP
transaction layer's business); a Twilio CallSid in a signed webhook finds its own live leg
(`IncomingCall.call_ref_signed`), scoped to that provider; a live context token its leg.
Nothing the caller picks (Call-ID, From tag) moves a call onto an earlier leg, and an ended
leg is never reopened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import bindparam, select, update

from gateway import context, conversations, identity, verification
from gateway.addresses import Address
from gateway.agents import AgentDirectory
from gateway.bus import CallEnded, CallOffered
from gateway.channels import CallOffer, ContextLink
from gateway.domain import CallLeg, CallRoute, LegId, NotFound, PinAttemptsLimited
from gateway.events import CallEvent, IncomingCall
from gateway.identity import Evidence
from gateway.metrics import Metrics
from gateway.models import Conversation, Leg
from gateway.policy import Policy
from gateway.store import Prepared, new_id
from gateway.throttle import Limited, SharedThrottle
from gateway.trust import Binding
from gateway.writes import Tx, Writes

log = logging.getLogger("gateway.calls")
LEGS = Leg.__table__
CONVERSATIONS = Conversation.__table__
MAX_REF = 300  # of a call reference kept in a leg's thread key

# Looked up on every call set-up: built once.
_CALL_COLUMNS = (LEGS.c.id, LEGS.c.conversation_id, CONVERSATIONS.c.customer_id,
                 LEGS.c.binding, LEGS.c.escalation_id, LEGS.c.started_at, LEGS.c.ended_at,
                 LEGS.c.agent_id)
_CALL_BY_KEY = Prepared(  # a provider-signed call reference, e.g. "twilio:CA…"
    select(*_CALL_COLUMNS)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(LEGS.c.channel == "voice", LEGS.c.thread_key == bindparam("key"))
    .order_by(LEGS.c.started_at.desc())
    .limit(1)
)
_CALL_BY_ID = Prepared(  # the leg id the core returned for the call
    select(*_CALL_COLUMNS)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(LEGS.c.id == bindparam("leg"), LEGS.c.channel == "voice")
)
_TOKEN_LEG = Prepared(
    select(*_CALL_COLUMNS, context.TOKENS.c.expires_at)
    .join(LEGS, LEGS.c.id == context.TOKENS.c.leg_id)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(context.TOKENS.c.token_hash == bindparam("hash"),
           context.TOKENS.c.expires_at > bindparam("now"), LEGS.c.channel == "voice",
           LEGS.c.ended_at.is_(None))
)
_LEG_AGENT = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(agent_id=bindparam("agent")))
_LEG_ENDED = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(ended_at=bindparam("at")))
# On PostgreSQL an edge's answer or end of the call finds its leg and changes it in one round
# trip (UPDATE … FROM conversations … RETURNING); SQLite, in process, keeps read then write.
_CHANGED_COLUMNS = (LEGS.c.id, LEGS.c.conversation_id, CONVERSATIONS.c.customer_id,
                    LEGS.c.binding, LEGS.c.escalation_id, LEGS.c.started_at, LEGS.c.agent_id)
_ANSWER_LEG = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg"), LEGS.c.channel == "voice",
                       CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .values(agent_id=bindparam("agent")).returning(*_CHANGED_COLUMNS))
_END_LEG = Prepared(  # only a leg not ended yet: the end is recorded once
    update(LEGS).where(LEGS.c.id == bindparam("leg"), LEGS.c.channel == "voice",
                       LEGS.c.ended_at.is_(None), CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .values(ended_at=bindparam("at")).returning(*_CHANGED_COLUMNS))
_ATTESTED = frozenset({"A", "B", "C"})


def _call_leg(row: tuple[Any, ...]) -> CallLeg:
    return CallLeg(*row)


def signed_key(provider: str, call_ref: str) -> str:
    """The thread key of a call whose reference the provider signed: found again by it."""
    return f"{provider}:{call_ref[:MAX_REF]}"


class PinCheck(Enum):
    RIGHT = "right"
    WRONG = "wrong"


@dataclass(frozen=True, slots=True)
class _Opened:
    route: CallRoute | None  # None: refused by a guess limit (`limited`), nothing opened
    pin: PinCheck | None  # None: no PIN was checked (none given, or a retried set-up)
    limited: Limited | None = None


class Calls:
    """Calls: set-up, the offer to an agent, progress and end."""

    def __init__(self, writes: Writes, policy: Policy, agents: AgentDirectory,
                 metrics: Metrics | None = None,
                 pins: verification.PinIndex | None = None) -> None:
        self._writes = writes
        self._policy = policy
        self._agents = agents
        self._metrics = metrics or Metrics()
        self._pins = pins or verification.PinIndex(policy.pin_lookup_secret)
        # In the database, so every gateway on it counts the same wrong PINs.
        self._throttle = SharedThrottle(
            "pin", source_burst=policy.pin_failure_burst,
            source_per_minute=policy.pin_failures_per_minute,
            global_burst=policy.pin_global_failure_burst,
            global_per_minute=policy.pin_global_failures_per_minute)
        self._limited_logged: dict[str, float] = {}
        self._recording: dict[str, asyncio.Future[None]] = {}  # leg -> its last event's write

    async def open_call(self, call: IncomingCall) -> CallRoute:
        """Resolve the caller, check a PIN or token, open the call leg and issue its
        context token. Raises `PinAttemptsLimited` (nothing written, nobody offered)."""
        source = call.source or (str(call.caller) if call.caller else "anonymous")
        checked = bool(call.pin and not call.escalation_token)
        if checked:
            opened = await self._writes.run(lambda tx: self._open_pin_call(tx, call, source))
            if opened.limited is not None:
                self._count(call.provider, f"limited-{opened.limited}")
                self._log_limited(source, call, str(opened.limited))
                raise PinAttemptsLimited(str(opened.limited))
        else:
            opened = await self._writes.run(lambda tx: self._open_call(tx, call))
        route = opened.route
        assert route is not None
        if checked and opened.pin is PinCheck.WRONG:
            self._count(call.provider, "wrong")
            log.info("calls: wrong escalation PIN on %s call %s from %s", call.provider,
                     route.leg_id, source)
        elif checked and opened.pin is PinCheck.RIGHT:
            self._count(call.provider, "right")
        return route

    def _open_pin_call(self, tx: Tx, call: IncomingCall, source: str) -> _Opened:
        """A PIN call's set-up in one transaction: a token is taken from the guess limits
        before the PIN is checked (so attempts arriving together, at any gateway, cannot all
        be checked before the first failure counts) and given back unless the PIN was wrong.
        A write that fails rolls the token back with everything else."""
        limited = self._throttle.attempt(tx.conn, tx.now.timestamp(), source)
        if limited is not None:
            return _Opened(None, None, limited)
        opened = self._open_call(tx, call)
        if opened.pin is not PinCheck.WRONG:
            self._throttle.succeeded(tx.conn, source)
        return opened

    def _count(self, edge: str, outcome: str) -> None:
        self._metrics.pin_attempts.labels(edge, outcome).inc()

    def _log_limited(self, source: str, call: IncomingCall, limit: str) -> None:
        """One warning per source a minute, however many attempts it makes."""
        now = time.monotonic()
        key = f"{limit}:{source}" if limit == "source" else limit
        if now - self._limited_logged.get(key, -120.0) < 60.0:
            return
        if len(self._limited_logged) > 4096:
            self._limited_logged.clear()
        self._limited_logged[key] = now
        log.warning("calls: escalation PIN attempts limited (%s) for %s call %s from %s: "
                    "refused without a check", limit, call.provider, call.call_ref[:80],
                    source)

    def _route(self, leg: CallLeg, token: str, expires_at: Any, call_ref: str) -> CallRoute:
        return CallRoute(leg.customer_id, leg.conversation_id, leg.leg_id, token,
                         self._policy.context_url(token), expires_at, leg.binding,
                         leg.escalation_id, call_ref)

    def _open_call(self, tx: Tx, call: IncomingCall) -> _Opened:
        conn, now = tx.conn, tx.now
        if call.context_token:
            # The call was routed already (and its leg bound) by the edge that issued this
            # token; knowing a live token is the capability, so the same live leg is kept.
            # An unknown or expired token, or one of an ended call, is ignored: the call is
            # routed as any other.
            known = _TOKEN_LEG.execute(
                conn, {"hash": verification.hash_token(call.context_token), "now": now})
            if known:
                leg = _call_leg(known[0][:-1])
                route = self._route(leg, call.context_token, known[0][-1], call.call_ref)
                return _Opened(route, None)
        key = signed_key(call.provider, call.call_ref) if call.call_ref_signed else None
        if key is not None:
            found = _CALL_BY_KEY.execute(conn, {"key": key})
            if found and found[0][6] is None:
                # A retried webhook (or the next step) of a call the provider signed: its
                # own live leg, a new token.
                leg = _call_leg(found[0])
                token = context.issue_token(conn, leg_id=leg.leg_id,
                                            conversation_id=leg.conversation_id, now=now,
                                            ttl=self._policy.context_token_ttl)
                return _Opened(self._route(leg, token.token, token.expires_at, call.call_ref),
                               None)
            if found:
                key = None  # that call's leg ended: it is never reopened
        leg_id = LegId(new_id("leg"))
        thread_key = key or f"{signed_key(call.provider, call.call_ref)}#{leg_id}"
        escalation = None
        pin_check: PinCheck | None = None
        if call.escalation_token or call.pin:
            escalation = verification.claim_escalation(
                conn, token=call.escalation_token,
                pin=None if call.escalation_token else call.pin, leg_id=leg_id, now=now,
                pins=self._pins)
            if not call.escalation_token:
                pin_check = PinCheck.RIGHT if escalation is not None else PinCheck.WRONG
        attested = f", number attested {call.attestation} by the carrier" \
            if call.attestation in _ATTESTED else ""
        if escalation is not None:
            customer_id = escalation.customer_id
            binding = Binding.CALLBACK if escalation.mode == "callback" else Binding.ESCALATION
            if call.caller is not None and call.caller.is_phone:
                # Record the number they called from, but only as a claim.
                identity.link(conn, call.caller, customer_id, Evidence.CLAIMED, now,
                              detail=f"caller ID of an escalated call{attested}")
            address = escalation.target_address if binding is Binding.CALLBACK else None
            address = address or (str(call.caller) if call.caller else f"voice:{call.call_ref}")
        else:
            caller = call.caller or Address("web", f"anonymous-{call.call_ref}")
            evidence = Evidence.ATTESTED if call.caller_authenticated else Evidence.CLAIMED
            customer_id, _ = identity.resolve(
                conn, caller, evidence, now, detail=f"{call.provider} caller ID{attested}")
            if call.escalation_token or call.pin:
                binding = Binding.ESCALATION  # a PIN was given but is wrong, used or expired
            elif call.caller_authenticated:
                binding = Binding.ATTESTED
            else:
                binding = Binding.CALLER_ID
            address = str(caller)
        conversation_id, _ = conversations.open_conversation(
            tx, customer_id, self._policy.conversation_idle)
        conversations.open_leg(
            conn, conversation_id, "voice", thread_key, address, binding, now,
            local_address=call.callee,
            escalation_id=escalation.id if escalation else None,
            new=leg_id, attestation=call.attestation,
        )
        how = {
            Binding.ESCALATION: "with escalation PIN" if escalation else "with an invalid PIN",
            Binding.CALLBACK: "callback placed by the gateway",
        }.get(binding, "")
        conversations.append(
            tx, customer_id=customer_id, conversation_id=conversation_id, leg_id=leg_id,
            channel="voice", direction="event", kind="call", author=address,
            text=f"incoming call from {address}" + (f" ({how})" if how else ""),
            provider=call.provider, provider_id=f"call-start:{leg_id}",
            data={"event": "incoming", "callee": call.callee,
                  **({"attestation": call.attestation} if call.attestation else {})},
        )
        token = context.issue_token(conn, leg_id=leg_id, conversation_id=conversation_id,
                                    now=now, ttl=self._policy.context_token_ttl)
        tx.log(logging.INFO, "call %s from %s (%s, %s): conversation %s, leg %s",
               call.call_ref[:80], address, call.provider, binding.value, conversation_id,
               leg_id)
        route = CallRoute(customer_id, conversation_id, leg_id, token.token,
                          self._policy.context_url(token.token), token.expires_at,
                          binding.value, escalation.id if escalation else None, call.call_ref)
        return _Opened(route, pin_check)

    async def offer_call(self, route: CallRoute, tried: Sequence[str] = (), *,
                         agent_id: str | None = None, exclude: Sequence[str] = ()
                         ) -> CallOffer | None:
        """The call goes to the least busy available agent not yet tried (not in `exclude`
        either: e.g. the agent who is calling), or to `agent_id` when the caller dialled
        that agent's own number; None when nobody can take it, or `max_agents_per_call`
        were tried already. The router counts the agent busy with the call's leg until the
        call ends (`call_event`) or is offered to the next agent."""
        key = route.leg_id
        if len(tried) >= self._policy.max_agents_per_call:
            self._agents.release(key)
            return None
        target = self._agents.offer(key, exclude=(*tried, *exclude), agent_id=agent_id)
        if target is None:
            return None
        # Nothing new to write: the leg and its token were committed by open_call.
        self._writes.bus.publish([CallOffered(
            route.conversation_id, route.customer_id, route.leg_id, target.agent_id,
            route.context_url, route.call_ref)])
        return CallOffer(target.agent_id, target, route)

    async def call_event(self, event: CallEvent) -> bool:
        """Record ringing / answered / ended on the call's leg: the one named by
        `event.leg_id` (what `open_call` returned), else, for a provider-signed reference
        (a Twilio CallSid), that provider's leg for it. False for an unknown call.

        One leg's events are recorded in the order they came: with several write lanes
        (PostgreSQL, `gateway/batching.py`) concurrent writes may commit in any order, and
        an end committed before its answer would give back a PIN the answer then uses. One
        lane (SQLite) commits in arrival order already, so nothing waits there."""
        if event.leg_id is None or self._writes.batcher.lanes == 1:
            return await self._record_event(event)
        key = event.leg_id
        previous = self._recording.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._recording[key] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            return await self._record_event(event)
        finally:
            mine.set_result(None)
            if self._recording.get(key) is mine:
                del self._recording[key]

    async def _record_event(self, event: CallEvent) -> bool:
        known, leg_id = await self._writes.run(lambda tx: self._call_event(tx, event))
        if event.kind in ("ended", "failed") and leg_id is not None:
            self._agents.release(leg_id, event.agent_id)  # the call no longer holds them
        return known

    def _changed_leg(self, conn: Any, event: CallEvent, now: Any) -> CallLeg | None:
        """PostgreSQL, an edge naming its leg: answer or end it in one statement and return
        it as it was found (None: not that simple; read it first)."""
        if (event.leg_id is None or event.event_id is not None
                or conn.dialect.name != "postgresql"):
            return None
        if event.kind == "answered" and event.agent_id:
            rows = _ANSWER_LEG.execute(conn, {"leg": event.leg_id, "agent": event.agent_id})
        elif event.kind in ("ended", "failed"):
            rows = _END_LEG.execute(conn, {"leg": event.leg_id, "at": now})
        else:
            return None
        if not rows:
            return None  # unknown, or ended already: the read below tells which
        leg_id, conversation_id, customer_id, binding, escalation_id, started_at, agent = rows[0]
        # Found not ended (an end's WHERE), with the agent an end does not change.
        return CallLeg(leg_id, conversation_id, customer_id, binding, escalation_id, started_at,
                       None, None if event.kind == "answered" else agent)

    def _call_event(self, tx: Tx, event: CallEvent) -> tuple[bool, LegId | None]:
        conn, now = tx.conn, tx.now
        changed = self._changed_leg(conn, event, now)
        if changed is not None:
            leg = changed
        else:
            if event.leg_id is not None:
                found = _CALL_BY_ID.execute(conn, {"leg": event.leg_id})
            else:
                found = _CALL_BY_KEY.execute(conn, {"key": signed_key(event.provider,
                                                                      event.call_ref)})
            if not found:
                return False, None
            leg = _call_leg(found[0])
        if event.event_id and not conversations.claim_event(
                conn, event.provider, event.event_id, now):
            return True, None
        agent = event.agent_id or leg.agent_id
        if agent is None and event.leg_id is None:
            # A provider's report on the whole call (Twilio's status callback): its agent is
            # whom the router holds for it (a read of one dict entry; the loop owns it).
            agent = self._agents.holding(leg.leg_id)
        data: dict[str, Any] = {"event": event.kind}
        if event.kind == "answered":
            if changed is None:
                _LEG_AGENT.execute(conn, {"leg": leg.leg_id, "agent": agent})
            if leg.escalation_id is not None:
                verification.use_escalation(conn, leg.escalation_id, leg.leg_id, now)
            text = f"answered by agent {agent}" if agent else "answered"
        elif event.kind in ("ended", "failed"):
            if leg.ended_at is not None:
                return True, leg.leg_id  # the end is recorded once, whoever reported it first
            if changed is None:
                _LEG_ENDED.execute(conn, {"leg": leg.leg_id, "at": now})
            if leg.escalation_id is not None and leg.agent_id is None:
                # Nobody answered: the PIN or token works again for the next call.
                verification.give_back_escalation(conn, leg.escalation_id, leg.leg_id)
            duration = event.duration_seconds
            if duration is None:
                duration = (now - leg.started_at).total_seconds()
            if event.kind == "ended":
                text = f"call ended after {_duration(duration)}"
                text += f" with agent {agent}" if agent else ""
            else:
                text = "call failed"
            if event.detail:
                text += f" ({event.detail})"
            tx.publish(CallEnded(leg.conversation_id, leg.customer_id, leg.leg_id, agent,
                                 event.call_ref))
        else:
            text = f"call {event.kind}" + (f" ({event.detail})" if event.detail else "")
        if agent:
            data["agent_id"] = agent
        if event.kind == "ended":
            data["duration_seconds"] = round(duration, 1)
        conversations.append(
            tx, customer_id=leg.customer_id, conversation_id=leg.conversation_id,
            leg_id=leg.leg_id, channel="voice", direction="event", kind="call",
            author=f"agent:{agent}" if agent else "gateway", text=text,
            provider_at=event.at, data=data,
        )
        return True, leg.leg_id

    async def issue_context(self, leg_id: LegId) -> ContextLink:
        """A context token for any leg (an XMPP agent's first message carries its URL)."""

        def write(tx: Tx) -> ContextLink:
            leg = conversations.read_leg(tx.conn, leg_id)
            if leg is None:
                raise NotFound(f"no leg {leg_id}")
            token = context.issue_token(tx.conn, leg_id=leg.id,
                                        conversation_id=leg.conversation_id, now=tx.now,
                                        ttl=self._policy.context_token_ttl)
            return ContextLink(leg.id, leg.conversation_id, token.token,
                               self._policy.context_url(token.token), token.expires_at)

        return await self._writes.run(write)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60} s"

