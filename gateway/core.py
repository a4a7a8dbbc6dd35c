"""The continuity core: the three flows of DESIGN.md behind one object.

Edges hand typed events to `Core` (inbound messages, delivery statuses, calls); the agent API
calls its commands (reply, verify, escalate, merge). Every write is one transaction (shared by
group commit); outbound reactions go to the outbox in that same transaction. The core knows no
channel: it speaks in addresses, legs and events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import context, conversations, identity, outbox, verification
from gateway.addresses import Address, parse_address
from gateway.batching import WriteBatcher
from gateway.channels import MESSAGING_CHANNELS
from gateway.clock import Clock
from gateway.store import Prepared, Reader, new_id
from gateway.events import CallEvent, DeliveryStatus, IncomingCall, InboundMessage
from gateway.identity import Evidence, IdentityError
from gateway.models import Conversation, Leg, TranscriptEntry
from gateway.trust import Binding

log = logging.getLogger("gateway.core")
LEGS = Leg.__table__
CONVERSATIONS = Conversation.__table__
TRANSCRIPT = TranscriptEntry.__table__


# Looked up on every call set-up: built once.
_CALL_LEG = Prepared(
    select(LEGS.c.id, LEGS.c.conversation_id, LEGS.c.binding, LEGS.c.escalation_id,
           CONVERSATIONS.c.customer_id)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(LEGS.c.channel == "voice", LEGS.c.thread_key == bindparam("ref"))
)

_TOKEN_LEG = Prepared(
    select(LEGS.c.id, LEGS.c.conversation_id, LEGS.c.binding, LEGS.c.escalation_id,
           CONVERSATIONS.c.customer_id, context.TOKENS.c.expires_at)
    .join(LEGS, LEGS.c.id == context.TOKENS.c.leg_id)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == LEGS.c.conversation_id)
    .where(context.TOKENS.c.token_hash == bindparam("hash"),
           context.TOKENS.c.expires_at > bindparam("now"), LEGS.c.channel == "voice")
)
_CALL_EVENT_LEG = Prepared(
    select(LEGS.c.id, LEGS.c.conversation_id, LEGS.c.started_at, LEGS.c.agent_id,
           LEGS.c.ended_at)
    .where(LEGS.c.channel == "voice", LEGS.c.thread_key == bindparam("ref"))
    .order_by(LEGS.c.started_at.desc())
    .limit(1)
)
_LEG_AGENT = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(agent_id=bindparam("agent")))
_LEG_ENDED = Prepared(
    update(LEGS).where(LEGS.c.id == bindparam("leg")).values(ended_at=bindparam("at")))


class NotFound(Exception):
    """The thing asked for does not exist (an API 404)."""


class Conflict(Exception):
    """The request cannot be done in the current state (an API 409); says why."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The core's knobs, from Settings."""

    public_url: str
    conversation_idle: timedelta = timedelta(hours=72)
    context_token_ttl: timedelta = timedelta(minutes=15)
    verification_ttl: timedelta = timedelta(hours=1)
    otp_ttl: timedelta = timedelta(minutes=10)
    otp_max_attempts: int = 5
    escalation_ttl: timedelta = timedelta(minutes=15)
    dial_in_number: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    customer_id: str | None = None
    conversation_id: str | None = None
    leg_id: str | None = None
    entry_id: int | None = None
    new_leg: bool = False
    otp: str | None = None  # outcome when the message answered a code


@dataclass(frozen=True, slots=True)
class CallRoute:
    """Where a call goes and what it carries: the token, never the data."""

    customer_id: str
    conversation_id: str
    leg_id: str
    context_token: str
    context_url: str
    expires_at: datetime
    binding: str
    escalation_id: str | None


class Core:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        policy: Policy,
        batcher: WriteBatcher | None = None,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.policy = policy
        self.batcher = batcher or WriteBatcher(engine)
        self.reader = Reader(engine, engine.url.render_as_string(hide_password=False))
        self._on_outbox = on_outbox or (lambda: None)

    async def aclose(self) -> None:
        """Finish queued writes, then release the store's threads and connections."""
        await self.batcher.aclose()
        self.reader.dispose()

    def context_url(self, token: str) -> str:
        return f"{self.policy.public_url}/api/v1/contexts/{token}"

    # ---- flow 1: inbound events ---------------------------------------------------------

    async def ingest(self, event: InboundMessage) -> IngestResult:
        """Store an inbound message once; answer only after it is committed."""
        result = await self.batcher.run(lambda conn: self._ingest(conn, event))
        if result.otp is not None:
            self._on_outbox()
        return result

    def _ingest(self, conn: Connection, event: InboundMessage) -> IngestResult:
        now = self.clock.now()
        if not conversations.claim_event(conn, event.provider, event.provider_id, now):
            return IngestResult(duplicate=True)
        attested = event.attested or event.thread_token_ok
        evidence = Evidence.ATTESTED if attested else Evidence.CLAIMED
        known = conversations.lookup_thread(conn, str(event.sender), event.channel,
                                            event.thread_key)
        if (known is not None and known[4] is not None and known[3] is not None
                and now - known[3] <= self.policy.conversation_idle
                and identity.STRENGTH[Evidence(known[1])] >= identity.STRENGTH[evidence]
                and not event.also_known_as):
            # The steady state: a known sender in an open thread. One query found it all.
            customer_id, conversation_id, leg_id, new_leg = known[0], known[2], known[4], False
        else:
            customer_id, conversation_id, leg_id, new_leg = self._place(
                conn, event, evidence, attested, now)
        otp_outcome: str | None = None
        text = event.text
        code = verification.code_in_text(text)
        if code is not None:
            check = verification.check_otp(
                conn, customer_id=customer_id, code=code, now=now,
                grant_ttl=self.policy.verification_ttl, leg_id=leg_id,
                conversation_id=conversation_id,
            )
            if check.outcome is not verification.OtpOutcome.NONE_PENDING:
                otp_outcome = check.outcome.value
                text = "[verification code]"  # the code itself never enters the transcript
        data: dict[str, Any] = {}
        if event.attachments:
            data["attachments"] = [
                {"url": a.url, "content_type": a.content_type, "name": a.name}
                for a in event.attachments
            ]
        if event.extra:
            data["extra"] = dict(event.extra)
        entry_id = conversations.append(
            conn, conversation_id=conversation_id, leg_id=leg_id, channel=event.channel,
            direction="in", kind="message", author=str(event.sender), text=text, now=now,
            provider=event.provider, provider_id=event.provider_id,
            provider_at=event.provider_at, data=data or None,
        )
        if otp_outcome is not None:
            self._after_otp(conn, otp_outcome, customer_id, conversation_id, leg_id,
                                  event, now)
        return IngestResult(
            duplicate=False, customer_id=customer_id, conversation_id=conversation_id,
            leg_id=leg_id, entry_id=entry_id, new_leg=new_leg, otp=otp_outcome,
        )

    def _place(
        self, conn: Connection, event: InboundMessage, evidence: Evidence, attested: bool,
        now: datetime,
    ) -> tuple[str, str, str, bool]:
        """Find or create the customer, conversation and leg of a message."""
        customer_id = self._known_by_alias(conn, event, evidence, now)
        if customer_id is None:
            customer_id, _ = identity.resolve(
                conn, event.sender, evidence, now, detail=f"{event.provider} sender",
                display_name=event.profile_name,
            )
        for alias in event.also_known_as:
            try:
                identity.link(conn, alias, customer_id, evidence, now,
                              detail=f"sent with {event.sender}")
            except IdentityError as exc:
                # Both are known, as two customers: never merged automatically; an agent can.
                log.warning("ingest: %s not linked to %s's customer: %s", alias, event.sender,
                            exc)
        conversation_id, _ = conversations.open_conversation(
            conn, customer_id, now, self.policy.conversation_idle
        )
        leg_id, new_leg = conversations.open_leg(
            conn, conversation_id, event.channel, event.thread_key, str(event.sender),
            Binding.ATTESTED if attested else Binding.ADDRESS, now,
            local_address=event.recipient,
        )
        return customer_id, conversation_id, leg_id, new_leg

    def _known_by_alias(
        self, conn: Connection, event: InboundMessage, evidence: Evidence, now: datetime
    ) -> str | None:
        """A new sender address that arrives beside a known alias joins the alias's customer.

        E.g. a WhatsApp user first known only by a business-scoped user id, later with a number.
        """
        if not event.also_known_as or identity.find_customer(conn, event.sender):
            return None
        for alias in event.also_known_as:
            found = identity.find_customer(conn, alias)
            if found is not None:
                identity.link(conn, event.sender, found[0], evidence, now,
                                    detail=f"sent with {alias}")
                return found[0]
        return None

    def _after_otp(
        self, conn: Connection, outcome: str, customer_id: str, conversation_id: str,
        leg_id: str, event: InboundMessage, now: datetime,
    ) -> None:
        if outcome == "passed":
            grant = verification.read_latest_grant(conn, customer_id)
            assert grant is not None
            identity.mark_proved(conn, _address(grant.address), customer_id, now,
                                       how=grant.method)
            note = f"verified {grant.address} by {grant.method}"
            reply = "Thank you, you are verified."
        elif outcome == "wrong":
            note, reply = "wrong verification code", "That code is not right; please try again."
        elif outcome == "locked":
            note = "verification locked after too many wrong codes"
            reply = "Too many wrong codes. An agent can send you a new one."
        else:
            note, reply = "verification code expired", "That code has expired."
        conversations.append(
            conn, conversation_id=conversation_id, leg_id=leg_id, channel=event.channel,
            direction="event", kind="system", author="gateway", text=note, now=now,
        )
        if event.channel in MESSAGING_CHANNELS:
            self._reply_on_leg(conn, conversation_id, leg_id, reply, "gateway", now)

    async def delivery_status(self, event: DeliveryStatus) -> str | None:
        """Move an outbound message's state forward (never back). Returns its state."""

        def write(conn: Connection) -> str | None:
            # Statuses only move forward, so a repeated callback changes nothing: the event
            # id is recorded for the log's sake, never to drop a status not yet applied.
            now = self.clock.now()
            if event.event_id:
                conversations.claim_event(conn, event.provider, event.event_id, now)
            return outbox.apply_status(
                conn, provider_id=event.provider_message_id, status=event.status, now=now,
                error=event.error,
            )

        return await self.batcher.run(write)

    # ---- flow 2: new legs ----------------------------------------------------------------

    async def open_call(self, call: IncomingCall) -> CallRoute:
        """Resolve the caller, open the call leg and issue its context token."""
        return await self.batcher.run(lambda conn: self._open_call(conn, call))

    def _open_call(self, conn: Connection, call: IncomingCall) -> CallRoute:
        now = self.clock.now()
        if call.context_token:
            # The call was routed already (and its leg bound) by the edge that issued this
            # token; knowing a live token is the capability, so the same leg is kept. An
            # unknown or expired token is ignored: the call is routed as any other.
            known = _TOKEN_LEG.execute(
                conn, {"hash": verification.hash_token(call.context_token), "now": now})
            if known:
                leg_id, conversation_id, binding, escalation_id, customer_id, expires = known[0]
                return CallRoute(customer_id, conversation_id, leg_id, call.context_token,
                                 self.context_url(call.context_token), expires, binding,
                                 escalation_id)
        found = _CALL_LEG.execute(conn, {"ref": call.call_ref})
        existing = found[0] if found else None
        if existing is not None:
            # A retried webhook or INVITE for a call we already routed: same leg, new token.
            token = context.issue_token(
                conn, leg_id=existing[0], conversation_id=existing[1], now=now,
                ttl=self.policy.context_token_ttl,
            )
            return CallRoute(existing[4], existing[1], existing[0], token.token,
                             self.context_url(token.token), token.expires_at, existing[2],
                             existing[3])
        escalation = None
        if call.escalation_token or call.pin:
            escalation = verification.redeem_escalation(
                conn, token=call.escalation_token, pin=call.pin, now=now
            )
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
                conn, caller, evidence, now, detail=f"{call.provider} caller ID"
            )
            if call.escalation_token or call.pin:
                binding = Binding.ESCALATION  # a PIN was given but is wrong, used or expired
            elif call.caller_authenticated:
                binding = Binding.ATTESTED
            else:
                binding = Binding.CALLER_ID
            address = str(caller)
        conversation_id, _ = conversations.open_conversation(
            conn, customer_id, now, self.policy.conversation_idle
        )
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
            conn, conversation_id=conversation_id, leg_id=leg_id, channel="voice",
            direction="event", kind="call", author=address,
            text=f"incoming call from {address}" + (f" ({how})" if how else ""), now=now,
            provider=call.provider, provider_id=f"call-start:{call.call_ref}",
            data={"event": "incoming", "callee": call.callee},
        )
        token = context.issue_token(
            conn, leg_id=leg_id, conversation_id=conversation_id, now=now,
            ttl=self.policy.context_token_ttl,
        )
        return CallRoute(customer_id, conversation_id, leg_id, token.token,
                         self.context_url(token.token), token.expires_at, binding.value,
                         escalation.id if escalation else None)

    async def call_event(self, event: CallEvent) -> bool:
        """Record ringing / answered / ended on the call's leg. False for an unknown call."""

        def write(conn: Connection) -> bool:
            now = self.clock.now()
            if event.event_id and not conversations.claim_event(
                conn, event.provider, event.event_id, now
            ):
                return True
            found = _CALL_EVENT_LEG.execute(conn, {"ref": event.call_ref})
            if not found:
                return False
            leg_id, conversation_id, started_at, agent_id, ended_at = found[0]
            agent = event.agent_id or agent_id
            values: dict[str, Any] = {}
            if event.kind == "answered":
                values["agent_id"] = agent
                text = f"answered by agent {agent}" if agent else "answered"
            elif event.kind in ("ended", "failed"):
                if ended_at is not None:
                    return True  # the end is recorded once, whichever side reported it first
                values["ended_at"] = now
                duration = event.duration_seconds
                if duration is None:
                    duration = (now - started_at).total_seconds()
                text = ("call ended" if event.kind == "ended" else "call failed") + (
                    f" after {_duration(duration)}" if event.kind == "ended" else ""
                ) + (f" with agent {agent}" if agent and event.kind == "ended" else "")
                if event.detail:
                    text += f" ({event.detail})"
            else:
                text = f"call {event.kind}" + (f" ({event.detail})" if event.detail else "")
            if "agent_id" in values:
                _LEG_AGENT.execute(conn, {"leg": leg_id, "agent": values["agent_id"]})
            if "ended_at" in values:
                _LEG_ENDED.execute(conn, {"leg": leg_id, "at": values["ended_at"]})
            data: dict[str, Any] = {"event": event.kind}
            if agent:
                data["agent_id"] = agent
            if event.kind == "ended":
                data["duration_seconds"] = round(
                    event.duration_seconds
                    if event.duration_seconds is not None
                    else (now - started_at).total_seconds(), 1)
            conversations.append(
                conn, conversation_id=conversation_id, leg_id=leg_id, channel="voice",
                direction="event", kind="call", author=f"agent:{agent}" if agent else "gateway",
                text=text, now=now, provider_at=event.at, data=data,
            )
            return True

        return await self.batcher.run(write)

    # ---- flow 3: outbound and agent commands ----------------------------------------------

    def _active_messaging_leg(
        self, conn: Connection, conversation_id: str
    ) -> Any:
        return (
            conn.execute(
                select(LEGS)
                .where(LEGS.c.conversation_id == conversation_id,
                       LEGS.c.channel.in_(sorted(MESSAGING_CHANNELS)))
                .order_by(LEGS.c.started_at.desc(), LEGS.c.id.desc())
                .limit(1)
            )
        ).mappings().first()

    def _conversation(self, conn: Connection, conversation_id: str) -> Any:
        row = (
            conn.execute(select(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id))
        ).mappings().first()
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        return row

    def _reply_on_leg(
        self, conn: Connection, conversation_id: str, leg_id: str, text: str,
        author: str, now: datetime, kind: str = "message", transcript_text: str | None = None,
    ) -> str:
        leg = (conn.execute(select(LEGS).where(LEGS.c.id == leg_id))).mappings().one()
        message_id = new_id("out")  # known before either row is written: each names the other
        entry_id = conversations.append(
            conn, conversation_id=conversation_id, leg_id=leg_id, channel=leg["channel"],
            direction="out", kind="message", author=author,
            text=transcript_text if transcript_text is not None else text, now=now,
            data={"outbox_id": message_id},
        )
        outbox.enqueue(
            conn, channel=leg["channel"], kind=kind, to=leg["address"],
            from_=leg["local_address"], text=text, now=now, conversation_id=conversation_id,
            leg_id=leg_id, transcript_entry_id=entry_id,
            payload={"thread_key": leg["thread_key"]}, message_id=message_id,
        )
        return message_id

    async def reply(self, conversation_id: str, text: str, agent: str | None) -> dict[str, Any]:
        """An agent's reply on the customer's active messaging leg, through the outbox."""
        if not text.strip():
            raise Conflict("text is empty")

        def write(conn: Connection) -> dict[str, Any]:
            now = self.clock.now()
            self._conversation(conn, conversation_id)
            leg = self._active_messaging_leg(conn, conversation_id)
            if leg is None:
                raise Conflict("the conversation has no messaging leg to reply on")
            message_id = self._reply_on_leg(
                conn, conversation_id, leg["id"], text, f"agent:{agent or 'agent'}", now
            )
            return {"id": message_id, "status": "pending", "leg_id": leg["id"],
                    "channel": leg["channel"], "to": leg["address"]}

        result = await self.batcher.run(write)
        self._on_outbox()
        return result

    async def start_verification(
        self, conversation_id: str, address_text: str | None
    ) -> dict[str, Any]:
        """Send a one-time code to one of the customer's addresses (default: the active leg's)."""

        def write(conn: Connection) -> dict[str, Any]:
            now = self.clock.now()
            conv = self._conversation(conn, conversation_id)
            leg = self._active_messaging_leg(conn, conversation_id)
            target = address_text or (leg["address"] if leg is not None else None)
            if target is None:
                raise Conflict("no address to send a code to; give one")
            address = _address(target)
            owner = identity.find_customer(conn, address)
            if owner is None or owner[0] != conv["customer_id"]:
                raise Conflict(f"{address} is not an address of this customer")
            if address.channel not in MESSAGING_CHANNELS:
                raise Conflict(f"codes cannot be sent over {address.channel}")
            issued = verification.issue_otp(
                conn, customer_id=conv["customer_id"], address=str(address), now=now,
                ttl=self.policy.otp_ttl, max_attempts=self.policy.otp_max_attempts,
                conversation_id=conversation_id, leg_id=leg["id"] if leg is not None else None,
            )
            minutes = int(self.policy.otp_ttl.total_seconds() // 60)
            text = f"Your verification code is {issued.code}. It expires in {minutes} minutes."
            # Send on the leg for that address when there is one, else straight to it.
            target_leg = (
                conn.execute(
                    select(LEGS.c.id).where(LEGS.c.conversation_id == conversation_id,
                                            LEGS.c.address == str(address))
                    .order_by(LEGS.c.started_at.desc()).limit(1)
                )
            ).scalar()
            if target_leg is not None:
                message_id = self._reply_on_leg(
                    conn, conversation_id, target_leg, text, "gateway", now, kind="otp",
                    transcript_text=f"[verification code sent to {address}]",
                )
            else:
                message_id = outbox.enqueue(
                    conn, channel=address.channel, kind="otp", to=str(address), from_=None,
                    text=text, now=now, conversation_id=conversation_id,
                )
                if leg is not None:
                    conversations.append(
                        conn, conversation_id=conversation_id, leg_id=leg["id"],
                        channel=address.channel, direction="event", kind="system",
                        author="gateway", text=f"[verification code sent to {address}]",
                        now=now,
                    )
            return {"challenge_id": issued.challenge_id, "address": str(address),
                    "expires_at": context.iso(issued.expires_at), "outbox_id": message_id}

        result = await self.batcher.run(write)
        self._on_outbox()
        return result

    async def escalate(self, conversation_id: str, channel: str, mode: str) -> dict[str, Any]:
        """Hand the customer to a call: a PIN to dial in with, or a callback we place."""
        if channel != "voice":
            raise Conflict(f"escalation to {channel!r} is not supported; use \"voice\"")
        if mode not in ("callback", "dial-in"):
            raise Conflict("mode must be \"callback\" or \"dial-in\"")

        def write(conn: Connection) -> dict[str, Any]:
            now = self.clock.now()
            conv = self._conversation(conn, conversation_id)
            if conv["status"] != "open":
                raise Conflict("the conversation is closed")
            customer_id = conv["customer_id"]
            grant = verification.read_latest_grant(conn, customer_id)
            if grant is not None and grant.expires_at <= now:
                grant = None
            leg = self._active_messaging_leg(conn, conversation_id)
            if mode == "callback":
                number = grant.address if grant is not None else (leg["address"] if leg else None)
                if number is None or not _address(number).is_phone:
                    raise Conflict("no phone number to call back: verify a number first")
                target = str(_address(number).on("voice"))
            else:
                if leg is None:
                    raise Conflict("no messaging leg to send the dial-in PIN on")
                target = None
            issued = verification.issue_escalation(
                conn, conversation_id=conversation_id, customer_id=customer_id,
                source_leg_id=leg["id"] if leg is not None else None,
                grant_id=grant.id if grant is not None else None, channel=channel, mode=mode,
                target_address=target, now=now, ttl=self.policy.escalation_ttl,
            )
            out: dict[str, Any] = {"id": issued.id, "channel": channel, "mode": mode,
                                   "expires_at": context.iso(issued.expires_at),
                                   "carries_verification": grant is not None}
            if mode == "dial-in":
                assert leg is not None and issued.pin is not None
                number = self.policy.dial_in_number or "our support number"
                minutes = int(self.policy.escalation_ttl.total_seconds() // 60)
                text = (f"To continue by phone, call {number} and enter PIN {issued.pin}. "
                        f"It works once, for {minutes} minutes.")
                out["outbox_id"] = self._reply_on_leg(
                    conn, conversation_id, leg["id"], text, "gateway", now, kind="message",
                    transcript_text="[dial-in PIN sent]",
                )
                out["sent_to"] = leg["address"]
            else:
                out["outbox_id"] = outbox.enqueue(
                    conn, channel="voice", kind="call", to=target or "", from_=None, text=None,
                    now=now, conversation_id=conversation_id,
                    payload={"escalation_token": issued.token, "escalation_id": issued.id},
                )
                out["calling"] = target
                if leg is not None:
                    conversations.append(
                        conn, conversation_id=conversation_id, leg_id=leg["id"],
                        channel=leg["channel"], direction="event", kind="system",
                        author="gateway", text=f"calling the customer back on {target}", now=now,
                    )
            return out

        result = await self.batcher.run(write)
        self._on_outbox()
        return result

    async def close_conversation(self, conversation_id: str) -> None:
        def write(conn: Connection) -> None:
            self._conversation(conn, conversation_id)
            conversations.close_conversation(conn, conversation_id, self.clock.now())

        await self.batcher.run(write)

    async def merge_customers(self, survivor_id: str, merged_id: str, agent: str | None) -> str:
        return await self.batcher.run(
            lambda conn: identity.merge(conn, survivor_id, merged_id, agent, self.clock.now())
        )

    async def undo_merge(self, merge_id: str) -> None:
        await self.batcher.run(lambda conn: identity.undo_merge(conn, merge_id, self.clock.now()))

    # ---- reads ----------------------------------------------------------------------------

    async def bundle(self, token: str) -> dict[str, Any] | None:
        return await self.reader.run(context.bundle_for_token, token, self.clock.now())

    async def customer_by_address(self, address: Address) -> dict[str, Any] | None:
        return await self.reader.run(context.customer_view, str(address))

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        view = await self.reader.run(context.conversation_view, conversation_id)
        if view is None:
            raise NotFound(f"no conversation {conversation_id}")
        return view

    async def outbox_message(self, message_id: str) -> dict[str, Any]:
        row = await self.reader.run(
            lambda conn: conn.execute(
                select(outbox.OUTBOX).where(outbox.OUTBOX.c.id == message_id)
            ).mappings().first()
        )
        if row is None:
            raise NotFound(f"no outbound message {message_id}")
        return {
            "id": row["id"], "channel": row["channel"], "kind": row["kind"],
            "to": row["to_address"], "status": row["status"], "attempts": row["attempts"],
            "provider_id": row["provider_id"], "last_error": row["last_error"],
            "conversation_id": row["conversation_id"], "leg_id": row["leg_id"],
            "created_at": context.iso(row["created_at"]),
            "updated_at": context.iso(row["updated_at"]),
        }


def _address(text: str) -> Address:
    return parse_address(text)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60} s"
