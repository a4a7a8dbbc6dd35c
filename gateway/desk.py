"""Agent commands: take and release conversations, reply, send a code, escalate, close, merge.

The HTTP API (`gateway/api.py`) and agent-facing channels (XMPP) call the same commands; each
is one group-committed write whose outbound messages go to the outbox in that transaction and
whose domain events (`ConversationAssigned`, `ConversationClosed`, `EntryAdded`) are published
after the commit. Results are the typed records of `gateway/domain.py`.
"""

from __future__ import annotations

from gateway import context, conversations, identity, outbound, verification
from gateway.addresses import parse_address
from gateway.bus import ConversationAssigned
from gateway.channels import MESSAGING_CHANNELS
from gateway.clock import Clock
from gateway.disclosure import BINDINGS, Disclosure, Level
from gateway.domain import (
    Assignment,
    CodeChecked,
    Conflict,
    ConversationId,
    ConversationRow,
    ConversationSummary,
    EscalationIssued,
    NotFound,
    ReplyQueued,
    VerificationStarted,
)
from gateway.policy import Policy
from gateway.store import Reader
from gateway.writes import Tx, Writes

SUMMARY_MESSAGES = 5  # the last messages an agent sees when taking a conversation
_EVERYTHING = Disclosure({b: Level.FULL for b in BINDINGS})  # an agent's own summary
# What an address must be to verify a call by a code sent to it (`Desk.check_code`).
_STEP_UP_EVIDENCE = frozenset({identity.Evidence.PROVED, identity.Evidence.ATTESTED,
                               identity.Evidence.SAME_NUMBER})


def _conversation(tx: Tx, conversation_id: str) -> ConversationRow:
    row = conversations.read_conversation(tx.conn, conversation_id)
    if row is None:
        raise NotFound(f"no conversation {conversation_id}")
    return row


class Desk:
    """The agent desk (`gateway.channels.AgentDesk`); `agent_id` is the acting agent, already
    authenticated by the channel or the API (None: the service token, acting for nobody)."""

    def __init__(self, writes: Writes, reader: Reader, policy: Policy, clock: Clock,
                 pins: verification.PinIndex | None = None) -> None:
        self._pins = pins or verification.PinIndex(policy.pin_lookup_secret)
        self._writes = writes
        self._reader = reader
        self._policy = policy
        self._clock = clock

    # ---- assignment ------------------------------------------------------------------------

    async def take(self, agent_id: str, conversation_id: str | None) -> Assignment | None:
        def write(tx: Tx) -> Assignment | None:
            if conversation_id is None:
                for _ in range(5):  # another agent may take the same one first: try the next
                    waiting = conversations.next_waiting(tx.conn, tx.now,
                                                         self._policy.conversation_idle)
                    if waiting is None:
                        return None
                    if conversations.assign(tx.conn, waiting.id, agent_id, None):
                        return _assigned(tx, waiting, agent_id)
                return None
            conv = _conversation(tx, conversation_id)
            if conv.status != "open":
                raise Conflict("the conversation is closed")
            if conv.agent_id == agent_id:
                return Assignment(conv.id, conv.customer_id, agent_id, agent_id)
            if conv.agent_id is not None:
                raise Conflict(f"agent {conv.agent_id} has this conversation; they can "
                               "release it")
            if not conversations.assign(tx.conn, conv.id, agent_id, None):
                raise Conflict("another agent took this conversation just now")
            return _assigned(tx, conv, agent_id)

        return await self._writes.run(write)

    async def release(self, agent_id: str, conversation_id: str) -> Assignment:
        def write(tx: Tx) -> Assignment:
            conv = _conversation(tx, conversation_id)
            if conv.agent_id != agent_id or not conversations.assign(
                    tx.conn, conv.id, None, agent_id):
                raise Conflict(f"agent {agent_id} does not have this conversation")
            return _assigned(tx, conv, None)

        return await self._writes.run(write)

    async def release_all(self, agent_id: str) -> list[Assignment]:
        def write(tx: Tx) -> list[Assignment]:
            released = []
            for conv in conversations.assigned_to(tx.conn, agent_id):
                if conversations.assign(tx.conn, conv.id, None, agent_id):
                    released.append(_assigned(tx, conv, None))
            return released

        return await self._writes.run(write)

    async def assigned(self, agent_id: str) -> list[ConversationId]:
        """The open conversations the agent has now, oldest activity first (an agent channel
        restores its agents' chats after a restart from this)."""
        rows = await self._reader.run(conversations.assigned_to, agent_id)
        return [row.id for row in rows]

    # ---- conversation commands ----------------------------------------------------------------

    async def close(self, agent_id: str | None, conversation_id: str) -> None:
        def write(tx: Tx) -> None:
            conv = _conversation(tx, conversation_id)
            conversations.close_conversation(tx, conv.id, conv.customer_id)

        await self._writes.run(write)

    async def reply(self, agent_id: str | None, conversation_id: str, text: str) -> ReplyQueued:
        """An agent's reply on the customer's active messaging leg, through the outbox."""
        if not text.strip():
            raise Conflict("text is empty")

        def write(tx: Tx) -> ReplyQueued:
            conv = _conversation(tx, conversation_id)
            leg = conversations.latest_leg(tx.conn, conversation_id, MESSAGING_CHANNELS)
            if leg is None:
                raise Conflict("the conversation has no messaging leg to reply on")
            message_id = outbound.text_on_leg(tx, leg, conv.customer_id, text,
                                              f"agent:{agent_id or 'agent'}")
            return ReplyQueued(message_id, leg.id, leg.channel, leg.address)

        return await self._writes.run(write)

    async def verify(self, agent_id: str | None, conversation_id: str, address: str | None
                     ) -> VerificationStarted:
        """Send a one-time code to one of the customer's addresses (default: the active
        messaging leg's)."""

        def write(tx: Tx) -> VerificationStarted:
            conv = _conversation(tx, conversation_id)
            leg = conversations.latest_leg(tx.conn, conversation_id, MESSAGING_CHANNELS)
            target = address or (leg.address if leg is not None else None)
            if target is None:
                raise Conflict("no address to send a code to; give one")
            parsed = parse_address(target)
            owner = identity.find_customer(tx.conn, parsed)
            # An address nobody has yet (the customer gave it: "my email is …") may get a
            # code: answered, it is linked to this customer as proved (inbound.py).
            if owner is not None and owner.customer_id != conv.customer_id:
                raise Conflict(f"{parsed} is not an address of this customer")
            if parsed.channel not in MESSAGING_CHANNELS:
                raise Conflict(f"codes cannot be sent over {parsed.channel}")
            issued = verification.issue_otp(
                tx.conn, customer_id=conv.customer_id, address=str(parsed), now=tx.now,
                ttl=self._policy.otp_ttl, max_attempts=self._policy.otp_max_attempts,
                conversation_id=conversation_id, leg_id=leg.id if leg is not None else None,
            )
            minutes = int(self._policy.otp_ttl.total_seconds() // 60)
            text = f"Your verification code is {issued.code}. It expires in {minutes} minutes."
            note = f"[verification code sent to {parsed}]"
            # Send on the leg for that address when there is one, else straight to it.
            target_leg = conversations.latest_leg(tx.conn, conversation_id, address=str(parsed))
            if target_leg is not None:
                message_id = outbound.text_on_leg(
                    tx, target_leg, conv.customer_id, text, "gateway", code=True,
                    challenge_id=issued.challenge_id, transcript_text=note,
                    secret=issued.code)
            else:
                message_id = outbound.code_to_address(
                    tx, str(parsed), parsed.channel, text, conversation_id,
                    issued.challenge_id, secret=issued.code)
                if leg is not None:
                    conversations.append(
                        tx, customer_id=conv.customer_id, conversation_id=conversation_id,
                        leg_id=leg.id, channel=parsed.channel, direction="event",
                        kind="system", author="gateway", text=note)
            return VerificationStarted(issued.challenge_id, str(parsed), issued.expires_at,
                                       message_id)

        return await self._writes.run(write)

    async def check_code(self, agent_id: str | None, conversation_id: str, challenge_id: str,
                         code: str, leg_id: str) -> CodeChecked:
        """The step-up on a call (CONTRACT.md "Disclosure"): the agent enters the code the
        caller reads out. A right code proves the challenge's address on `leg_id`, so that
        leg carries a verification and its context link shows the full bundle. Attempts
        count as the customer's own (the challenge locks after `otp_max_attempts`). Only a
        code sent to an address the customer had already proved, or that the channel
        attests, or that shares the verified number, verifies a call: a code sent to an
        address someone merely claimed (and the customer never wrote from in this
        conversation) proves nothing about who is on the phone."""
        written = code.replace(" ", "").replace("-", "")
        if not written.isdigit() or len(written) != verification.OTP_DIGITS:
            raise Conflict(f"a code is {verification.OTP_DIGITS} digits")

        def write(tx: Tx) -> CodeChecked:
            conv = _conversation(tx, conversation_id)
            leg = conversations.read_leg(tx.conn, leg_id)
            if leg is None or leg.conversation_id != conv.id:
                raise NotFound(f"no leg {leg_id} in conversation {conversation_id}")
            address = verification.challenge_address(tx.conn, challenge_id, conv.id)
            if address is None:
                raise NotFound(f"no verification {challenge_id} in conversation "
                               f"{conversation_id}")
            owner = identity.find_customer(tx.conn, parse_address(address))
            wrote_from = conversations.latest_leg(tx.conn, conv.id, address=address)
            if owner is None or owner.customer_id != conv.customer_id or (
                    owner.evidence not in _STEP_UP_EVIDENCE and wrote_from is None):
                raise Conflict(f"{address} is neither proved nor attested, and the customer "
                               "never wrote from it here: a code sent there cannot verify "
                               "the caller")
            try:
                check = verification.check_challenge(
                    tx.conn, challenge_id=challenge_id, conversation_id=conv.id,
                    code=written, now=tx.now, grant_ttl=self._policy.verification_ttl,
                    leg_id=leg.id)
            except verification.ChallengeUsed as exc:
                raise Conflict(str(exc)) from None
            assert check is not None  # the challenge was found above, in this transaction
            outcome = check.outcome.value
            by = f"agent {agent_id}" if agent_id else "the agent"
            if check.grant is not None:
                identity.mark_proved(tx.conn, parse_address(address), conv.customer_id,
                                     tx.now, how=check.grant.method)
                text = (f"caller verified: {by} entered the code sent to {address} "
                        f"({check.grant.method})")
            else:
                text = f"{by} entered a code read back by the caller: {outcome}"
            conversations.append(
                tx, customer_id=conv.customer_id, conversation_id=conv.id, leg_id=leg.id,
                channel=leg.channel, direction="event", kind="system", author="gateway",
                text=text, data={"event": "step-up", "outcome": outcome,
                                 "challenge_id": challenge_id})
            grant = check.grant
            return CodeChecked(
                outcome, challenge_id, leg.id, check.attempts_left,
                address=grant.address if grant else None,
                method=grant.method if grant else None,
                verified_at=grant.verified_at if grant else None,
                expires_at=grant.expires_at if grant else None)

        return await self._writes.run(write)

    async def escalate(self, agent_id: str | None, conversation_id: str, mode: str
                       ) -> EscalationIssued:
        """Hand the customer to a call: a PIN to dial in with, or a callback we place."""
        if mode not in ("callback", "dial-in"):
            raise Conflict("mode must be \"callback\" or \"dial-in\"")

        def write(tx: Tx) -> EscalationIssued:
            conv = _conversation(tx, conversation_id)
            if conv.status != "open":
                raise Conflict("the conversation is closed")
            grant = verification.read_latest_grant(tx.conn, conv.customer_id)
            if grant is not None and grant.expires_at <= tx.now:
                grant = None
            leg = conversations.latest_leg(tx.conn, conversation_id, MESSAGING_CHANNELS)
            target: str | None = None
            if mode == "callback":
                number = grant.address if grant is not None else (leg.address if leg else None)
                if number is None or not parse_address(number).is_phone:
                    raise Conflict("no phone number to call back: verify a number first")
                target = str(parse_address(number).on("voice"))
            elif leg is None:
                raise Conflict("no messaging leg to send the dial-in PIN on")
            issued = verification.issue_escalation(
                tx.conn, conversation_id=conversation_id, customer_id=conv.customer_id,
                source_leg_id=leg.id if leg is not None else None,
                grant_id=grant.id if grant is not None else None, channel="voice", mode=mode,
                target_address=target, now=tx.now, ttl=self._policy.escalation_ttl,
                pins=self._pins,
            )
            if mode == "dial-in":
                assert leg is not None and issued.pin is not None
                number = self._policy.dial_in_number or "our support number"
                minutes = int(self._policy.escalation_ttl.total_seconds() // 60)
                text = (f"To continue by phone, call {number} and enter PIN {issued.pin}. "
                        f"It works once, for {minutes} minutes.")
                message_id = outbound.text_on_leg(tx, leg, conv.customer_id, text, "gateway",
                                                  transcript_text="[dial-in PIN sent]",
                                                  secret=issued.pin)
                return EscalationIssued(issued.id, "voice", mode, issued.expires_at,
                                        grant is not None, message_id, sent_to=leg.address)
            assert target is not None
            message_id = outbound.callback(tx, target, conversation_id, issued.token, issued.id)
            if leg is not None:
                conversations.append(
                    tx, customer_id=conv.customer_id, conversation_id=conversation_id,
                    leg_id=leg.id, channel=leg.channel, direction="event", kind="system",
                    author="gateway", text=f"calling the customer back on {target}")
            return EscalationIssued(issued.id, "voice", mode, issued.expires_at,
                                    grant is not None, message_id, calling=target)

        return await self._writes.run(write)

    async def summary(self, conversation_id: str) -> ConversationSummary:
        """Who, whether verified (or why not), the last messages, and a fresh context link
        for the conversation's newest leg."""

        def write(tx: Tx) -> tuple[ConversationRow, str | None]:
            conv = _conversation(tx, conversation_id)
            leg = conversations.latest_leg(tx.conn, conversation_id)
            if leg is None:
                return conv, None
            token = context.issue_token(tx.conn, leg_id=leg.id, conversation_id=conv.id,
                                        now=tx.now, ttl=self._policy.context_token_ttl)
            return conv, token.token

        conv, token = await self._writes.run(write)
        # The summary goes to an authenticated agent (who may read the whole conversation
        # through the API anyway): read in full. The context link in it is a capability
        # anyone holding it may open: that read applies the disclosure policy.
        bundle = (await self._reader.run(context.bundle_for_token, token, self._clock.now(),
                                         _EVERYTHING)
                  if token else None)
        customer = (bundle or {}).get("customer") or {}
        verification_json = (bundle or {}).get("verification")
        messages = [e for e in (bundle or {}).get("transcript", ()) if e["kind"] == "message"]
        return ConversationSummary(
            conversation_id=conv.id, customer_id=conv.customer_id,
            display_name=customer.get("display_name"),
            addresses=tuple(a["address"] for a in customer.get("addresses", ())),
            verified=verification_json is not None,
            verification=(verification_json["summary"] if verification_json
                          else (bundle or {}).get("verification_explanation") or ""),
            verification_reason=(bundle or {}).get("verification_reason") or "",
            last_messages=tuple(messages[-SUMMARY_MESSAGES:]),
            context_url=self._policy.context_url(token) if token else None,
            agent_id=conv.agent_id,
            disclosure=self._policy.disclosure.level(
                ((bundle or {}).get("leg") or {}).get("binding") or "",
                verification_json is not None).value,
        )

    # ---- customers ---------------------------------------------------------------------------

    async def merge_customers(self, survivor_id: str, merged_id: str, agent: str | None) -> str:
        return await self._writes.run(
            lambda tx: identity.merge(tx.conn, survivor_id, merged_id, agent, tx.now))

    async def undo_merge(self, merge_id: str) -> None:
        await self._writes.run(lambda tx: identity.undo_merge(tx.conn, merge_id, tx.now))


def _assigned(tx: Tx, conv: ConversationRow, agent_id: str | None) -> Assignment:
    tx.publish(ConversationAssigned(conv.id, conv.customer_id, agent_id, conv.agent_id))
    return Assignment(conv.id, conv.customer_id, agent_id, conv.agent_id)

