"""Flow 2 for calls: a call's leg, its context token, the agent it is offered to, its story.

`open_call` resolves the caller (a PIN or token is redeemed here, before anyone is asked to
take the call), opens the call's leg and issues its context token in one write. `offer_call`
asks the agent router for the next agent and says so on the bus (`CallOffered`: the console
pops the context up while the phone rings). `call_event` records ringing, answered, ended;
the end releases the agent. The edges (Twilio Voice, the SIP proxy) only translate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update

from gateway import context, conversations, identity, verification
from gateway.addresses import Address
from gateway.agents import AgentDirectory
from gateway.bus import CallEnded, CallOffered
from gateway.channels import CallOffer, ContextLink
from gateway.domain import CallLeg, CallRoute, LegId, NotFound
from gateway.events import CallEvent, IncomingCall
from gateway.identity import Evidence
from gateway.models import Conversation, Leg
from gateway.policy import Policy
from gateway.store import Prepared
from gateway.trust import Binding
from gateway.writes import Tx, Writes

LEGS = Leg.__table__
CONVERSATIONS = Conversation.__table__

# Looked up on every call set-up: built once.
_CALL_COLUMNS = (LEGS.c.id, LEGS.c.conversation_id, CONVERSATIONS.c.customer_id,
                 LEGS.c.binding, LEGS.c.escalation_id, LEGS.c.started_at, LEGS.c.ended_at,
                 LEGS.c.agent_id)
_CALL_LEG = Prepared(
    select(*_CALL_COLUMNS)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(LEGS.c.channel == "voice", LEGS.c.thread_key == bindparam("ref"))
    .order_by(LEGS.c.started_at.desc())
    .limit(1)
)
_TOKEN_LEG = Prepared(
    select(*_CALL_COLUMNS, context.TOKENS.c.expires_at)
    .join(LEGS, LEGS.c.id == context.TOKENS.c.leg_id)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(context.TOKENS.c.token_hash == bindparam("hash"),
           context.TOKENS.c.expires_at > bindparam("now"), LEGS.c.channel == "voice")
)
_LEG_AGENT = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(agent_id=bindparam("agent")))
_LEG_ENDED = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(ended_at=bindparam("at")))


def _call_leg(row: tuple[Any, ...]) -> CallLeg:
    return CallLeg(*row)


class Calls:
    """Calls: set-up, the offer to an agent, progress and end."""

    def __init__(self, writes: Writes, policy: Policy, agents: AgentDirectory) -> None:
        self._writes = writes
        self._policy = policy
        self._agents = agents

    async def open_call(self, call: IncomingCall) -> CallRoute:
        """Resolve the caller, open the call leg and issue its context token."""
        return await self._writes.run(lambda tx: self._open_call(tx, call))

    def _route(self, leg: CallLeg, token: str, expires_at: Any, call_ref: str) -> CallRoute:
        return CallRoute(leg.customer_id, leg.conversation_id, leg.leg_id, token,
                         self._policy.context_url(token), expires_at, leg.binding,
                         leg.escalation_id, call_ref)

    def _open_call(self, tx: Tx, call: IncomingCall) -> CallRoute:
        conn, now = tx.conn, tx.now
        if call.context_token:
            # The call was routed already (and its leg bound) by the edge that issued this
            # token; knowing a live token is the capability, so the same leg is kept. An
            # unknown or expired token is ignored: the call is routed as any other.
            known = _TOKEN_LEG.execute(
                conn, {"hash": verification.hash_token(call.context_token), "now": now})
            if known:
                leg = _call_leg(known[0][:-1])
                return self._route(leg, call.context_token, known[0][-1], call.call_ref)
        found = _CALL_LEG.execute(conn, {"ref": call.call_ref})
        if found:
            # A retried webhook or INVITE for a call we already routed: same leg, new token.
            leg = _call_leg(found[0])
            token = context.issue_token(conn, leg_id=leg.leg_id,
                                        conversation_id=leg.conversation_id, now=now,
                                        ttl=self._policy.context_token_ttl)
            return self._route(leg, token.token, token.expires_at, call.call_ref)
        escalation = None
        if call.escalation_token or call.pin:
            escalation = verification.redeem_escalation(
                conn, token=call.escalation_token, pin=call.pin, now=now)
        if escalation is not None:
            customer_id = escalation.customer_id
            binding = Binding.CALLBACK if escalation.mode == "callback" else Binding.ESCALATION
            if call.caller is not None and call.caller.is_phone:
                # Record the number they called from, but only as a claim.
                identity.link(conn, call.caller, customer_id, Evidence.CLAIMED, now,
                              detail="caller ID of an escalated call")
            address = escalation.target_address if binding is Binding.CALLBACK else None
            address = address or (str(call.caller) if call.caller else f"voice:{call.call_ref}")
        else:
            caller = call.caller or Address("web", f"anonymous-{call.call_ref}")
            evidence = Evidence.ATTESTED if call.caller_authenticated else Evidence.CLAIMED
            customer_id, _ = identity.resolve(
                conn, caller, evidence, now, detail=f"{call.provider} caller ID")
            if call.escalation_token or call.pin:
                binding = Binding.ESCALATION  # a PIN was given but is wrong, used or expired
            elif call.caller_authenticated:
                binding = Binding.ATTESTED
            else:
                binding = Binding.CALLER_ID
            address = str(caller)
        conversation_id, _ = conversations.open_conversation(
            tx, customer_id, self._policy.conversation_idle)
        leg_id, _ = conversations.open_leg(
            conn, conversation_id, "voice", call.call_ref, address, binding, now,
            local_address=call.callee,
            escalation_id=escalation.id if escalation else None,
        )
        if escalation is not None:
            verification.mark_escalation_leg(conn, escalation.id, leg_id)
        how = {
            Binding.ESCALATION: "with escalation PIN" if escalation else "with an invalid PIN",
            Binding.CALLBACK: "callback placed by the gateway",
        }.get(binding, "")
        conversations.append(
            tx, customer_id=customer_id, conversation_id=conversation_id, leg_id=leg_id,
            channel="voice", direction="event", kind="call", author=address,
            text=f"incoming call from {address}" + (f" ({how})" if how else ""),
            provider=call.provider, provider_id=f"call-start:{call.call_ref}",
            data={"event": "incoming", "callee": call.callee},
        )
        token = context.issue_token(conn, leg_id=leg_id, conversation_id=conversation_id,
                                    now=now, ttl=self._policy.context_token_ttl)
        tx.log(logging.INFO, "call %s from %s (%s, %s): conversation %s, leg %s",
               call.call_ref, address, call.provider, binding.value, conversation_id, leg_id)
        return CallRoute(customer_id, conversation_id, leg_id, token.token,
                         self._policy.context_url(token.token), token.expires_at,
                         binding.value, escalation.id if escalation else None, call.call_ref)

    async def offer_call(self, route: CallRoute, tried: Sequence[str] = ()) -> CallOffer | None:
        """The call goes to the least busy available agent not yet tried; None when nobody
        can take it, or `max_agents_per_call` were tried already."""
        if len(tried) >= self._policy.max_agents_per_call:
            self._agents.release(route.call_ref)
            return None
        target = self._agents.offer(route.call_ref, exclude=tried)
        if target is None:
            return None
        # Nothing new to write: the leg and its token were committed by open_call.
        self._writes.bus.publish([CallOffered(
            route.conversation_id, route.customer_id, route.leg_id, target.agent_id,
            route.context_url, route.call_ref)])
        return CallOffer(target.agent_id, target, route)

    async def call_event(self, event: CallEvent) -> bool:
        """Record ringing / answered / ended on the call's leg. False for an unknown call."""
        known = await self._writes.run(lambda tx: self._call_event(tx, event))
        if event.kind in ("ended", "failed"):
            self._agents.release(event.call_ref)  # whatever held the agent, it is over
        return known

    def _call_event(self, tx: Tx, event: CallEvent) -> bool:
        conn, now = tx.conn, tx.now
        if event.event_id and not conversations.claim_event(
                conn, event.provider, event.event_id, now):
            return True
        found = _CALL_LEG.execute(conn, {"ref": event.call_ref})
        if not found:
            return False
        leg = _call_leg(found[0])
        agent = event.agent_id or leg.agent_id
        data: dict[str, Any] = {"event": event.kind}
        if event.kind == "answered":
            _LEG_AGENT.execute(conn, {"leg": leg.leg_id, "agent": agent})
            text = f"answered by agent {agent}" if agent else "answered"
        elif event.kind in ("ended", "failed"):
            if leg.ended_at is not None:
                return True  # the end is recorded once, whichever side reported it first
            _LEG_ENDED.execute(conn, {"leg": leg.leg_id, "at": now})
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
        return True

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

