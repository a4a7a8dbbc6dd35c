"""The store's schema: SQLAlchemy 2 typed models. Alembic migrations are generated from these.

Rows never leave the store layer: repositories in `gateway/` turn them into the frozen domain
objects of `gateway/domain.py`. Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite forgets the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC time (Clock.now())")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON(none_as_null=True)}


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    merged_into: Mapped[str | None] = mapped_column(ForeignKey("customers.id"))
    # The number (`tel:+E164`) or address the customer was created for: unique, so two
    # gateways meeting one new number at once make one customer (gateway/identity.py).
    identity_key: Mapped[str | None] = mapped_column(String(330))
    __table_args__ = (Index("uq_customers_identity_key", "identity_key", unique=True),)


class CustomerAddress(Base):
    """The current link of one address to one customer, with the evidence for it."""

    __tablename__ = "addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    channel: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(300))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    evidence: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(String(300))
    linked_at: Mapped[datetime]
    __table_args__ = (Index("ix_addresses_value", "value"),)


class IdentityLink(Base):
    """History of every link made or moved: nothing about identity is ever overwritten."""

    __tablename__ = "identity_links"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(320), index=True)
    customer_id: Mapped[str] = mapped_column(String(40), index=True)
    evidence: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(String(300))
    at: Mapped[datetime]
    merge_id: Mapped[str | None] = mapped_column(String(40))


class Merge(Base):
    __tablename__ = "merges"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    survivor_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    merged_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    agent: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime]
    undone_at: Mapped[datetime | None]
    # what moved, so undo restores exactly: {"addresses": [...], "conversations": [...],
    # "evidence": {address: evidence}}
    moved: Mapped[dict[str, Any]]


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(10))  # open | closed
    opened_at: Mapped[datetime]
    last_activity_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    agent_id: Mapped[str | None] = mapped_column(String(100))  # who took it; None: queued
    __table_args__ = (
        Index("ix_conversations_customer_status", "customer_id", "status"),
        Index("ix_conversations_agent", "agent_id", "status"),
        # the agent inbox's keyset order (workspace, #11; migration 0004)
        Index("ix_conversations_status_activity", "status", "last_activity_at", "id"),
        Index("ix_conversations_activity", "last_activity_at", "id"),
        # One open conversation per customer, whichever gateway opens it (the
        # scale_unique migration).
        Index("uq_conversations_one_open", "customer_id", unique=True,
              postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")),
    )


class Leg(Base):
    __tablename__ = "legs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(20))
    thread_key: Mapped[str] = mapped_column(String(400))
    address: Mapped[str] = mapped_column(String(320))  # the customer's address on this leg
    local_address: Mapped[str | None] = mapped_column(String(320))  # our number / mailbox
    binding: Mapped[str] = mapped_column(String(20))  # how the leg is bound, see trust.py
    escalation_id: Mapped[str | None] = mapped_column(String(40))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    agent_id: Mapped[str | None] = mapped_column(String(100))
    # A call's caller-ID attestation (STIR/SHAKEN: "A", "B", "C" or the verstat as written)
    # from a trusted trunk or Twilio: evidence shown to the agent, never a verification.
    attestation: Mapped[str | None] = mapped_column(String(40))
    __table_args__ = (
        UniqueConstraint("conversation_id", "channel", "thread_key", name="uq_leg_thread"),
        Index("ix_legs_thread", "channel", "thread_key"),
    )


class TranscriptEntry(Base):
    __tablename__ = "transcript_entries"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    leg_id: Mapped[str] = mapped_column(ForeignKey("legs.id"))
    at: Mapped[datetime]  # the gateway's receive time: the order of the transcript
    provider_at: Mapped[datetime | None]
    channel: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str] = mapped_column(String(10))  # in | out | event
    kind: Mapped[str] = mapped_column(String(20))  # message | call | system
    author: Mapped[str] = mapped_column(String(320))
    text: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
    provider: Mapped[str | None] = mapped_column(String(20))
    provider_id: Mapped[str | None] = mapped_column(String(200))
    __table_args__ = (
        Index("ix_transcript_conversation", "conversation_id", "id"),
        UniqueConstraint("provider", "provider_id", name="uq_transcript_provider_id"),
    )


class ProcessedEvent(Base):
    """Provider events already taken: the same MessageSid/wamid/Message-ID is stored once."""

    __tablename__ = "processed_events"
    provider: Mapped[str] = mapped_column(String(20), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    received_at: Mapped[datetime]
    result: Mapped[str | None] = mapped_column(String(80))  # e.g. the transcript entry id


class VerificationGrant(Base):
    __tablename__ = "verification_grants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    method: Mapped[str] = mapped_column(String(30))  # sms-otp | email-otp | whatsapp-otp | …
    level: Mapped[str] = mapped_column(String(20))  # possession | knowledge | agent
    verified_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    conversation_id: Mapped[str | None] = mapped_column(String(40))
    leg_id: Mapped[str | None] = mapped_column(String(40))


class OtpChallenge(Base):
    __tablename__ = "otp_challenges"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    method: Mapped[str] = mapped_column(String(30))
    code_hash: Mapped[str] = mapped_column(String(128))
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12))  # pending | passed | locked | expired
    conversation_id: Mapped[str | None] = mapped_column(String(40))
    leg_id: Mapped[str | None] = mapped_column(String(40))


class Escalation(Base):
    """A hand-off from a verified leg to a new one: a PIN to dial in with, or a callback."""

    __tablename__ = "escalations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    source_leg_id: Mapped[str | None] = mapped_column(String(40))
    grant_id: Mapped[str | None] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(20))
    mode: Mapped[str] = mapped_column(String(10))  # callback | dial-in
    target_address: Mapped[str | None] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    pin_hash: Mapped[str | None] = mapped_column(String(64))  # before 0007; no longer written
    pin_salt: Mapped[str | None] = mapped_column(String(64))  # before 0007; no longer written
    # HMAC-SHA256 of the PIN under the server's PIN key (`verification.PinIndex`): a PIN is
    # found with one indexed look-up; live escalations never share one.
    pin_lookup: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # used_by_leg_id set, used_at None: the call that presented it holds it (until it is
    # answered, then used_at is set; a call that reached nobody gives it back).
    used_at: Mapped[datetime | None]
    used_by_leg_id: Mapped[str | None] = mapped_column(String(40))


class ServerSecret(Base):
    """A secret the gateway made itself when none was configured (the PIN look-up key when
    GATEWAY_PIN_LOOKUP_SECRET is unset), shared by every process on the database."""

    __tablename__ = "server_secrets"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class ContextToken(Base):
    """A capability for one leg's bundle. Only the token's SHA-256 is stored."""

    __tablename__ = "context_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    leg_id: Mapped[str] = mapped_column(ForeignKey("legs.id"))
    conversation_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class OutboxMessage(Base):
    __tablename__ = "outbox"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str | None] = mapped_column(String(40))
    leg_id: Mapped[str | None] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))  # message | otp | call
    to_address: Mapped[str] = mapped_column(String(320))
    from_address: Mapped[str | None] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(15))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(100))  # the sending instance
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[str | None] = mapped_column(String(200), index=True)
    transcript_entry_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)


class EarlyStatus(Base):
    """A delivery status that arrived before the send that it reports was recorded.

    Providers can call back within milliseconds of accepting a message, before the worker
    has stored the provider's id; the status waits here and is applied when it has.
    """

    __tablename__ = "early_statuses"
    provider_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    status: Mapped[str] = mapped_column(String(15), primary_key=True)
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class ThreadToken(Base):
    """A long-lived token for a messaging leg's thread (an email reply address): a reply
    that carries it is bound to that leg. Only the token's SHA-256 is stored."""

    __tablename__ = "thread_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    leg_id: Mapped[str] = mapped_column(ForeignKey("legs.id"), index=True)
    conversation_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime]


class Checkpoint(Base):
    """A channel's position (an IMAP mailbox's UIDVALIDITY and last UID, an XMPP archive
    id), written in the transaction of the message that advanced it."""

    __tablename__ = "checkpoints"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(String(400))
    updated_at: Mapped[datetime]


class SipRegistration(Base):
    """An agent's phone registered with one gateway, seen by all of them (several gateways
    behind Kamailio, GATEWAY_SIP_SHARED_REGISTRATIONS): where to send its calls, until when,
    and which instance holds the binding."""

    __tablename__ = "sip_registrations"
    agent_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    contact: Mapped[str] = mapped_column(String(500), primary_key=True)
    source_host: Mapped[str | None] = mapped_column(String(100))
    source_port: Mapped[int | None]
    transport: Mapped[str] = mapped_column(String(10))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    holder: Mapped[str] = mapped_column(String(200))


class GuessBucket(Base):
    """A guess limit's token bucket kept in the database (gateway/throttle.py `SharedThrottle`),
    so every gateway on one database counts the same failures: the escalation PIN's bucket per
    source (`pin:source:<host or number>`) and for everybody (`pin:global`). `at` is when
    `tokens` was last computed, in seconds since the epoch."""

    __tablename__ = "guess_buckets"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float]
    at: Mapped[float] = mapped_column(index=True)
