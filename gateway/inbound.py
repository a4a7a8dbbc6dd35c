"""Flow 1: inbound messages and delivery statuses, each stored once in one transaction.

An edge hands a typed event (`gateway/events.py`); here it is deduplicated by provider id,
the sender resolved to a customer, the conversation and leg found or opened, the message
appended (a one-time code answered, never stored in clear), any reaction queued in the
outbox and the channel's checkpoint advanced, all in one group-committed write. The edge
answers the provider after that commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from gateway import conversations, identity, verification
from gateway.addresses import parse_address
from gateway.bus import DeliveryUpdated
from gateway.channels import MESSAGING_CHANNELS
from gateway.conversations import insert_ignore
from gateway.domain import ConversationId, CustomerId, IngestResult, LegId, NotFound
from gateway.events import DeliveryStatus, InboundMessage
from gateway.identity import Evidence, IdentityError
from gateway.models import Checkpoint, ThreadToken
from gateway.outbound import text_on_leg
from gateway.outbox import apply_status
from gateway.policy import Policy
from gateway.store import Prepared, Reader
from gateway.trust import Binding
from gateway.writes import Tx, Writes

log = logging.getLogger("gateway.core")
CHECKPOINTS = Checkpoint.__table__
THREAD_TOKENS = ThreadToken.__table__

_THREAD_TOKEN = Prepared(
    select(THREAD_TOKENS.c.conversation_id, THREAD_TOKENS.c.leg_id)
    .where(THREAD_TOKENS.c.token_hash == bindparam("hash")))
_CHECKPOINT = Prepared(select(CHECKPOINTS.c.value).where(CHECKPOINTS.c.key == bindparam("k")))

# What the customer is told after answering a code, by outcome; and the transcript's note.
_OTP_REPLIES = {
    verification.OtpOutcome.WRONG: ("wrong verification code",
                                    "That code is not right; please try again."),
    verification.OtpOutcome.LOCKED: ("verification locked after too many wrong codes",
                                     "Too many wrong codes. An agent can send you a new one."),
    verification.OtpOutcome.EXPIRED: ("verification code expired", "That code has expired."),
}


class Inbound:
    """Inbound messages and delivery statuses (the edges' side of the `InboundSink`)."""

    def __init__(self, writes: Writes, reader: Reader, policy: Policy) -> None:
        self._writes = writes
        self._reader = reader
        self._policy = policy

    def ingest(self, event: InboundMessage) -> Awaitable[IngestResult]:
        """Store an inbound message once; answer only after it is committed."""
        return self._writes.run(lambda tx: self._ingest(tx, event))

    def _ingest(self, tx: Tx, event: InboundMessage) -> IngestResult:
        conn, now = tx.conn, tx.now
        if event.checkpoint is not None:
            _store_checkpoint(tx, *event.checkpoint)
        if not conversations.claim_event(conn, event.provider, event.provider_id, now):
            return IngestResult(duplicate=True)
        attested = (event.attested or event.thread_token_ok
                    or self._thread_token_binds(tx, event))
        evidence = Evidence.ATTESTED if attested else Evidence.CLAIMED
        known = conversations.lookup_thread(conn, str(event.sender), event.channel,
                                            event.thread_key)
        if (known is not None and known.leg_id is not None
                and known.conversation_id is not None and known.last_activity_at is not None
                and now - known.last_activity_at <= self._policy.conversation_idle
                and identity.STRENGTH[Evidence(known.evidence)] >= identity.STRENGTH[evidence]
                and not event.also_known_as):
            # The steady state: a known sender in an open thread. One query found it all.
            customer_id, conversation_id, leg_id = (
                known.customer_id, known.conversation_id, known.leg_id)
            new_leg = False
        else:
            customer_id, conversation_id, leg_id, new_leg = self._place(
                tx, event, evidence, attested)
        otp, codes = self._codes(tx, event, customer_id, conversation_id, leg_id)
        data: dict[str, Any] = {}
        if event.attachments:
            data["attachments"] = [
                {"url": a.url, "content_type": a.content_type, "name": a.name}
                for a in event.attachments
            ]
        if event.extra:
            data["extra"] = dict(event.extra)
        entry_id = conversations.append(
            tx, customer_id=customer_id, conversation_id=conversation_id, leg_id=leg_id,
            channel=event.channel, direction="in", kind=event.kind,
            author=str(event.sender), text=event.text, provider=event.provider,
            provider_id=event.provider_id, provider_at=event.provider_at, data=data or None,
            codes=codes,
        )
        tx.log(logging.INFO, "inbound %s %s from %s: conversation %s, leg %s%s",
               event.channel, event.kind, event.sender, conversation_id, leg_id,
               " (new leg)" if new_leg else "")
        if otp is not None:
            self._after_otp(tx, otp, customer_id, conversation_id, leg_id, event)
        return IngestResult(
            duplicate=False, customer_id=customer_id, conversation_id=conversation_id,
            leg_id=leg_id, entry_id=entry_id, new_leg=new_leg,
            otp=otp.value if otp is not None else None,
        )

    def _codes(
        self, tx: Tx, event: InboundMessage, customer_id: CustomerId,
        conversation_id: ConversationId, leg_id: LegId,
    ) -> tuple[verification.OtpOutcome | None, tuple[str, ...]]:
        """A code the message answers (checked, counted) and the digits never to store.

        Only a message that is essentially just a code answers the pending challenge ("my
        order 482913 is late" does not); its code is replaced in the stored text, the rest
        kept. Six digits in any other message are stored as written, unless they are the
        pending code itself (then replaced too, without counting an attempt or telling the
        sender: a code never enters the transcript, and no one learns whether it matched).
        """
        if event.kind != "message":
            return None, ()
        found, answers = verification.codes_in_text(event.text)
        if not found:
            return None, ()
        conn, now = tx.conn, tx.now
        if answers:
            check = verification.check_otp(
                conn, customer_id=customer_id, code=found[0].code, now=now,
                grant_ttl=self._policy.verification_ttl, leg_id=leg_id,
                conversation_id=conversation_id,
            )
            if check.outcome is verification.OtpOutcome.NONE_PENDING:
                return None, ()
            return check.outcome, (found[0].written,)
        return None, tuple(c.written for c in found
                           if verification.is_pending_code(conn, customer_id, c.code, now))

    def _place(
        self, tx: Tx, event: InboundMessage, evidence: Evidence, attested: bool,
    ) -> tuple[CustomerId, ConversationId, LegId, bool]:
        """Find or create the customer, conversation and leg of a message."""
        conn, now = tx.conn, tx.now
        customer_id = self._known_by_alias(tx, event, evidence)
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
            tx, customer_id, self._policy.conversation_idle)
        leg_id, new_leg = conversations.open_leg(
            conn, conversation_id, event.channel, event.thread_key, str(event.sender),
            Binding.ATTESTED if attested else Binding.ADDRESS, now,
            local_address=event.recipient,
        )
        return customer_id, conversation_id, leg_id, new_leg

    def _known_by_alias(self, tx: Tx, event: InboundMessage, evidence: Evidence
                        ) -> CustomerId | None:
        """A new sender address that arrives beside a known alias joins the alias's customer.

        E.g. a WhatsApp user first known only by a business-scoped user id, later with a number.
        """
        if not event.also_known_as or identity.find_customer(tx.conn, event.sender):
            return None
        for alias in event.also_known_as:
            found = identity.find_customer(tx.conn, alias)
            if found is not None:
                identity.link(tx.conn, event.sender, found.customer_id, evidence, tx.now,
                              detail=f"sent with {alias}")
                return found.customer_id
        return None

    def _thread_token_binds(self, tx: Tx, event: InboundMessage) -> bool:
        """A thread token we issued, carried by a message from that thread's own customer."""
        if not event.thread_token:
            return False
        rows = _THREAD_TOKEN.execute(
            tx.conn, {"hash": verification.hash_token(event.thread_token)})
        if not rows:
            return False
        owner = identity.find_customer(tx.conn, event.sender)
        conversation = conversations.read_conversation(tx.conn, rows[0][0])
        return (owner is not None and conversation is not None
                and owner.customer_id == conversation.customer_id)

    def _after_otp(
        self, tx: Tx, outcome: verification.OtpOutcome, customer_id: CustomerId,
        conversation_id: ConversationId, leg_id: LegId, event: InboundMessage,
    ) -> None:
        if outcome is verification.OtpOutcome.PASSED:
            grant = verification.read_latest_grant(tx.conn, customer_id)
            assert grant is not None
            identity.mark_proved(tx.conn, parse_address(grant.address), customer_id, tx.now,
                                 how=grant.method)
            note = f"verified {grant.address} by {grant.method}"
            reply = "Thank you, you are verified."
        else:
            note, reply = _OTP_REPLIES[outcome]
        conversations.append(
            tx, customer_id=customer_id, conversation_id=conversation_id, leg_id=leg_id,
            channel=event.channel, direction="event", kind="system", author="gateway",
            text=note,
        )
        if event.channel in MESSAGING_CHANNELS:
            leg = conversations.read_leg(tx.conn, leg_id)
            assert leg is not None
            text_on_leg(tx, leg, customer_id, reply, "gateway")

    async def delivery_status(self, event: DeliveryStatus) -> str | None:
        """Move an outbound message's state forward (never back). Returns its state."""

        def write(tx: Tx) -> str | None:
            # Statuses only move forward, so a repeated callback changes nothing: the event
            # id is recorded for the log's sake, never to drop a status not yet applied.
            if event.event_id:
                conversations.claim_event(tx.conn, event.provider, event.event_id, tx.now)
            return apply_status(
                tx.conn, provider_id=event.provider_message_id, status=event.status,
                now=tx.now, error=event.error, moved=lambda moved: _delivery_moved(tx, moved),
            )

        return await self._writes.run(write)

    # ---- what email and XMPP need --------------------------------------------------------

    async def issue_thread_token(self, leg_id: LegId) -> str:
        def write(tx: Tx) -> str:
            leg = conversations.read_leg(tx.conn, leg_id)
            if leg is None:
                raise NotFound(f"no leg {leg_id}")
            token = verification.new_token()
            tx.conn.execute(insert(THREAD_TOKENS).values(
                token_hash=verification.hash_token(token), leg_id=leg.id,
                conversation_id=leg.conversation_id, created_at=tx.now))
            return token

        return await self._writes.run(write)

    async def check_thread_token(self, token: str) -> ConversationId | None:
        if not token or len(token) > 200:
            return None
        rows = await self._reader.run(
            lambda conn: _THREAD_TOKEN.execute(conn, {"hash": verification.hash_token(token)}))
        return ConversationId(rows[0][0]) if rows else None

    async def checkpoint(self, key: str) -> str | None:
        rows = await self._reader.run(lambda conn: _CHECKPOINT.execute(conn, {"k": key}))
        return rows[0][0] if rows else None


def _delivery_moved(tx: Tx, moved: DeliveryUpdated) -> None:
    tx.publish(moved)
    if moved.status in _NOT_DELIVERED:
        tx.log(logging.WARNING, "outbox: %s %s by the provider%s (conversation %s)",
               moved.outbox_id, moved.status, f": {moved.error}" if moved.error else "",
               moved.conversation_id)


_NOT_DELIVERED = frozenset({"failed", "undelivered"})


def _store_checkpoint(tx: Tx, key: str, value: str) -> None:
    changed = tx.conn.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.key == key)
                              .values(value=value, updated_at=tx.now))
    if changed.rowcount == 0:
        tx.conn.execute(insert_ignore(tx.conn, CHECKPOINTS).values(
            key=key, value=value, updated_at=tx.now))
