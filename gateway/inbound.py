"""Flow 1: inbound messages and delivery statuses, each stored once in one transaction.

An edge hands a typed event (`gateway/events.py`); here it is deduplicated by provider id,
the sender resolved to a customer, the conversation and leg found or opened, the message
appended (a one-time code answered, never stored in clear), any reaction queued in the
outbox and the channel's checkpoint advanced, all in one group-committed write. The edge
answers the provider after that commit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway import conversations, identity, threads, verification
from gateway.addresses import parse_address
from gateway.bus import DeliveryUpdated
from gateway.channels import MESSAGING_CHANNELS, ReplyThread
from gateway.conversations import insert_ignore
from gateway.domain import (
    AddressLink,
    ConversationId,
    CustomerId,
    IngestResult,
    LegId,
    NotFound,
    OutboxId,
)
from gateway.events import DeliveryStatus, InboundMessage
from gateway.identity import Evidence, IdentityError
from gateway.models import Checkpoint, ProcessedEvent
from gateway.outbound import text_on_leg
from gateway.outbox import apply_status
from gateway.policy import Policy
from gateway.store import Prepared, Reader
from gateway.trust import Binding
from gateway.writes import Tx, Writes

log = logging.getLogger("gateway.core")
CHECKPOINTS = Checkpoint.__table__
PROCESSED = ProcessedEvent.__table__

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

    def ingest_batch(self, events: Sequence[InboundMessage],
                     checkpoint: tuple[str, str] | None = None
                     ) -> Awaitable[list[IngestResult]]:
        """Store a batch of inbound messages (a mailbox's FETCH) in one write, with the
        channel's checkpoint: one transaction, so a crash keeps all of it or none.

        Each message is placed exactly as `ingest` places it, in order (the second mail of a
        new customer finds the customer and conversation the first one made); dedupe by
        provider id is one statement for the batch, and a provider id twice in the batch is
        stored once (the first). A message that makes the write fail fails the whole batch:
        the caller then hands the messages over one by one (`ingest`), as before."""
        return self._writes.run(lambda tx: self._ingest_batch(tx, events, checkpoint))

    def _ingest_batch(self, tx: Tx, events: Sequence[InboundMessage],
                      checkpoint: tuple[str, str] | None) -> list[IngestResult]:
        if checkpoint is not None:
            _store_checkpoint(tx, *checkpoint)
        fresh = _claim_events(tx, [(e.provider, e.provider_id) for e in events])
        return [self._ingest_claimed(tx, event) if first else IngestResult(duplicate=True)
                for event, first in zip(events, fresh, strict=True)]

    def _ingest(self, tx: Tx, event: InboundMessage) -> IngestResult:
        conn, now = tx.conn, tx.now
        if event.checkpoint is not None:
            _store_checkpoint(tx, *event.checkpoint)
        if not conversations.claim_event(conn, event.provider, event.provider_id, now):
            return IngestResult(duplicate=True)
        return self._ingest_claimed(tx, event)

    def _ingest_claimed(self, tx: Tx, event: InboundMessage) -> IngestResult:
        """A message seen for the first time: placed and stored."""
        conn, now = tx.conn, tx.now
        if event.threaded:
            placed = self._place_threaded(tx, event)
            if placed is None:
                log.info("ingest: %s from %s (%s) belongs to no conversation; not stored",
                         event.kind, event.sender, event.provider_id)
                return IngestResult(duplicate=False)
            customer_id, conversation_id, leg_id, new_leg = placed
            return self._store(tx, event, customer_id, conversation_id, leg_id, new_leg)
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
        return self._store(tx, event, customer_id, conversation_id, leg_id, new_leg)

    def _store(self, tx: Tx, event: InboundMessage, customer_id: CustomerId,
               conversation_id: ConversationId, leg_id: LegId, new_leg: bool
               ) -> IngestResult:
        """Append the placed message (a code answered, never stored in clear); every text a
        channel hands in reaches the transcript through here and `conversations.append`."""
        conn, now = tx.conn, tx.now
        otp, codes = self._codes(tx, event, customer_id, conversation_id, leg_id)
        data: dict[str, Any] = {}
        if event.attachments:
            data["attachments"] = [
                {"url": a.url, "content_type": a.content_type, "name": a.name,
                 **({"size": a.size} if a.size is not None else {})}
                for a in event.attachments
            ]
        if event.extra:
            data["extra"] = dict(event.extra)
        if event.threaded and event.kind == "message":  # in this transaction: replies find it
            threads.remember(conn, conversation_id=conversation_id, leg_id=leg_id,
                             provider_id=event.provider_id, refs=event.thread_refs,
                             subject=event.extra.get("subject"), now=now)
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
        pending = verification.pending_codes_among(conn, customer_id,
                                                   (c.code for c in found), now)
        return None, tuple(c.written for c in found if c.code in pending)

    def _place(
        self, tx: Tx, event: InboundMessage, evidence: Evidence, attested: bool,
        known: AddressLink | None = None,
    ) -> tuple[CustomerId, ConversationId, LegId, bool]:
        """Find or create the customer, conversation and leg of a message. `known`: the
        sender's address link, when the caller read it in this transaction already."""
        conn, now = tx.conn, tx.now
        customer_id = self._known_by_alias(tx, event, evidence)
        if (customer_id is None and known is not None and not event.also_known_as
                and identity.STRENGTH[evidence] <= identity.STRENGTH[Evidence(known.evidence)]):
            customer_id = CustomerId(known.customer_id)  # what `resolve` would find and keep
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

    def _place_threaded(self, tx: Tx, event: InboundMessage
                        ) -> tuple[CustomerId, ConversationId, LegId, bool] | None:
        """A message of a channel that threads by ids (email), placed by `threads`: our
        token, then anchors among the sender's own conversations, else the customer's open
        conversation. Attested only by a valid token from the conversation's own customer;
        the sender's address alone is a claim. Robots (auto-replies, bounces) join only a
        conversation that exists; they never create a customer or open a conversation."""
        conn, now = tx.conn, tx.now
        robot = event.kind != "message"
        sender = None if event.kind == "bounce" else event.sender
        owner = identity.find_customer(conn, sender) if sender is not None else None
        match = threads.find_conversation(
            conn, token=event.thread_token, refs=event.thread_refs, owner=owner)
        if robot:
            return self._place_robot(tx, event, match)
        if match is None or not match.sender_is_customer:
            # Nothing of ours, or our token in someone else's hands (a forward, a Cc): the
            # sender's own customer and conversation, on their address's word alone.
            attested = event.attested or event.thread_token_ok
            return self._place(tx, event, Evidence.ATTESTED if attested else Evidence.CLAIMED,
                               attested, known=owner)
        attested = event.attested or event.thread_token_ok or match.attested
        customer_id = match.customer_id
        if attested:  # the address's link is upgraded, never downgraded
            identity.resolve(conn, event.sender, Evidence.ATTESTED, now,
                             detail=f"{event.provider} reply with our thread token")
        conversation_id, _ = conversations.open_conversation(
            tx, customer_id, self._policy.conversation_idle)
        if conversation_id == match.conversation_id and match.leg_id is not None:
            leg_id, new_leg = match.leg_id, False
            if attested:
                conversations.attest_leg(conn, leg_id)
        else:  # the matched conversation is closed (or idle): the thread goes on in a new one
            leg_id, new_leg = conversations.open_leg(
                conn, conversation_id, event.channel, event.thread_key, str(event.sender),
                Binding.ATTESTED if attested else Binding.ADDRESS, now,
                local_address=event.recipient)
        return customer_id, conversation_id, leg_id, new_leg

    def _place_robot(self, tx: Tx, event: InboundMessage, match: threads.ThreadMatch | None
                     ) -> tuple[CustomerId, ConversationId, LegId, bool] | None:
        """An auto-reply or a bounce: recorded in the thread it answers (found by our token,
        or by anchors of its sender's conversations), else beside its sender's open
        conversation; otherwise nowhere (it stays in the mailbox, and the log says so)."""
        conn, now = tx.conn, tx.now
        if match is not None:
            customer_id, conversation_id = match.customer_id, match.conversation_id
        else:
            owner = identity.find_customer(conn, event.sender)
            if owner is None or event.kind == "bounce":
                return None
            open_now = conversations.open_conversation_of(
                conn, owner.customer_id, now, self._policy.conversation_idle)
            if open_now is None:
                return None
            customer_id, conversation_id = owner.customer_id, open_now
        if match is not None and match.leg_id is not None:
            return customer_id, conversation_id, match.leg_id, False
        leg_id, new_leg = conversations.open_leg(
            conn, conversation_id, event.channel, event.thread_key, str(event.sender),
            Binding.ADDRESS, now, local_address=event.recipient)
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
        found = threads.lookup_token(tx.conn, event.thread_token)
        if found is None:
            return False
        owner = identity.find_customer(tx.conn, event.sender)
        conversation = conversations.read_conversation(tx.conn, found[0])
        return (owner is not None and conversation is not None
                and owner.customer_id == conversation.customer_id)

    def _after_otp(
        self, tx: Tx, outcome: verification.OtpOutcome, customer_id: CustomerId,
        conversation_id: ConversationId, leg_id: LegId, event: InboundMessage,
    ) -> None:
        if outcome is verification.OtpOutcome.PASSED:
            grant = verification.read_latest_grant(tx.conn, customer_id)
            assert grant is not None
            try:  # an address nobody had yet (a code sent to it) is linked here, proved
                identity.mark_proved(tx.conn, parse_address(grant.address), customer_id,
                                     tx.now, how=grant.method)
            except IdentityError as exc:  # taken by another customer meanwhile: an agent merges
                log.warning("ingest: %s proved but not linked: %s", grant.address, exc)
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
            return threads.issue_token(tx.conn, leg.id, leg.conversation_id, tx.now)

        return await self._writes.run(write)

    async def check_thread_token(self, token: str) -> ConversationId | None:
        found = await self._reader.run(threads.lookup_token, token)
        return found[0] if found is not None else None

    async def reply_thread(self, outbox_id: OutboxId) -> ReplyThread:
        return await self._writes.run(
            lambda tx: threads.reply_thread(tx.conn, outbox_id, tx.now))

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


_CLAIM_ROWS = 100  # rows per multi-row claim (3 binds each: far below SQLite's limit)


@functools.lru_cache(maxsize=2 * _CLAIM_ROWS)
def _claim_rows(postgres: bool, rows: int) -> Prepared:
    """INSERT … VALUES (…) × rows ON CONFLICT DO NOTHING RETURNING, compiled once per
    size (compiling a multi-row statement per batch cost more than running it)."""
    dialect_insert = postgresql.insert if postgres else sqlite.insert
    return Prepared(dialect_insert(PROCESSED).values([
        {"provider": bindparam(f"p{i}"), "event_id": bindparam(f"e{i}"),
         "received_at": bindparam(f"n{i}")} for i in range(rows)
    ]).on_conflict_do_nothing().returning(PROCESSED.c.provider, PROCESSED.c.event_id))


def _claim_events(tx: Tx, keys: Sequence[tuple[str, str]]) -> list[bool]:
    """`conversations.claim_event` for many events in one INSERT … ON CONFLICT DO NOTHING
    RETURNING per hundred: for each key, True if this is its first occurrence ever
    (neither stored before nor earlier in `keys`). Race-safe as the one-row claim: the
    primary key decides."""
    claimed: set[tuple[str, str]] = set()
    unique = list(dict.fromkeys(keys))
    postgres = tx.conn.dialect.name == "postgresql"
    for start in range(0, len(unique), _CLAIM_ROWS):
        chunk = unique[start:start + _CLAIM_ROWS]
        params: dict[str, Any] = {}
        for i, (provider, event_id) in enumerate(chunk):
            params[f"p{i}"], params[f"e{i}"], params[f"n{i}"] = provider, event_id, tx.now
        claimed.update((p, e) for p, e in _claim_rows(postgres, len(chunk)).execute(
            tx.conn, params))
    out = []
    for key in keys:
        out.append(key in claimed)
        claimed.discard(key)  # a second occurrence in the batch is a duplicate
    return out


def _store_checkpoint(tx: Tx, key: str, value: str) -> None:
    changed = tx.conn.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.key == key)
                              .values(value=value, updated_at=tx.now))
    if changed.rowcount == 0:
        tx.conn.execute(insert_ignore(tx.conn, CHECKPOINTS).values(
            key=key, value=value, updated_at=tx.now))
