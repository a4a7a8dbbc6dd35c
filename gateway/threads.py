"""Threads of provider ids: how a reply finds its conversation, and what our reply names.

Email threads by ids (Message-ID, In-Reply-To, References). An inbound event that says it is
`threaded` is placed here, strongest first (`find_conversation`):
1. the gateway's thread token (in the reply address `support+TOKEN@…` or in one of our own
   Message-IDs the mail references): issued by us per leg (the core's `thread_tokens`, only
   its SHA-256 stored), 128 random bits, so only someone who received our mail can name it.
   With the conversation's own customer as sender it is what the trust rules call "an email
   reply to the gateway's own thread" (attested);
2. any anchor in the mail's thread references (every id seen in the conversation, and the
   ancestors those mails named): this survives clients that rewrite In-Reply-To or drop our
   ids from References (Outlook; Chatwoot #10028, Zammad #5716). An anchor only picks *which*
   of the sender's own conversations: a Message-ID is chosen by whoever writes the mail, so
   it never moves anyone onto another customer's conversation;
3. nothing: the caller falls back to the customer's open conversation.

`reply_thread` is the other direction: what an outbound message on such a leg needs to join
the thread in the customer's client (a fresh token, In-Reply-To, References, the subject).
Functions take an open connection: the caller owns the transaction.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import (
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from gateway.channels import OutboundKind, ReplyThread
from gateway.domain import AddressLink, ConversationId, CustomerId, LegId, NotFound
from gateway.models import (
    BigId,
    Base,
    Conversation,
    Customer,
    Leg,
    OutboxMessage,
    ThreadToken,
    TranscriptEntry,
)
from gateway.store import Prepared
from gateway.verification import hash_token

MAX_ANCHOR: Final = 255  # Message-IDs arrive canonical and at most 200 characters
MAX_REFS_KEPT: Final = 20  # ancestors remembered per mail: the root and the newest
MAX_REFERENCES: Final = 20  # what our reply carries in References: the root and the newest
TOKEN_SHAPE: Final = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


# ---- table (migration 0005_email_threads) ---------------------------------------------------


class MailAnchor(Base):
    """An id seen in a conversation's thread: what later replies may refer to."""

    __tablename__ = "mail_anchors"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(MAX_ANCHOR))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    leg_id: Mapped[str | None] = mapped_column(String(40))
    # in: a message we received; ref: an ancestor a message named
    direction: Mapped[str] = mapped_column(String(5))
    subject: Mapped[str | None] = mapped_column(String(300))
    # For "in": the ids the message named, oldest first (its References): what our reply to
    # it carries before its id (RFC 5322 3.6.4)
    refs: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("message_id", "conversation_id", name="uq_mail_anchor"),
        Index("ix_mail_anchors_conversation", "conversation_id", "id"),
    )


ANCHORS = MailAnchor.__table__
TOKENS = ThreadToken.__table__
CONVERSATIONS = Conversation.__table__
CUSTOMERS = Customer.__table__
LEGS = Leg.__table__
OUTBOX = OutboxMessage.__table__
TRANSCRIPT = TranscriptEntry.__table__

_TOKEN = Prepared(select(TOKENS.c.conversation_id, TOKENS.c.leg_id)
                  .where(TOKENS.c.token_hash == bindparam("hash")))
_INSERT_TOKEN = Prepared(insert(TOKENS).values(
    {c: bindparam(c) for c in ("token_hash", "leg_id", "conversation_id", "created_at")}))


# ---- tokens (the core's thread_tokens) ------------------------------------------------------


def new_token() -> str:
    """128 random bits in lower-case hex: a mail system may fold a local part's case, and a
    folded token must still be the token."""
    return secrets.token_hex(16)


def issue_token(conn: Connection, leg_id: str, conversation_id: str, now: datetime) -> str:
    """A new token for the leg's outbound thread; only its hash is stored. Each mail we send
    carries its own; any of them leads back to the leg."""
    token = new_token()
    _INSERT_TOKEN.execute(conn, {"token_hash": hash_token(token), "leg_id": leg_id,
                                 "conversation_id": conversation_id, "created_at": now})
    return token


def lookup_token(conn: Connection, token: str) -> tuple[ConversationId, LegId] | None:
    """The (conversation, leg) a token we issued belongs to; None for an unknown, forged or
    malformed one (never looked up). A case-folded copy of ours is still ours."""
    if not token or not TOKEN_SHAPE.match(token):
        return None
    for candidate in dict.fromkeys((token, token.lower())):
        rows = _TOKEN.execute(conn, {"hash": hash_token(candidate)})
        if rows:
            return ConversationId(rows[0][0]), LegId(rows[0][1])
    return None


# ---- anchors ----------------------------------------------------------------------------------


def _insert_anchor(dialect: str) -> Prepared:
    module = postgresql if dialect == "postgresql" else sqlite
    return Prepared(module.insert(ANCHORS).values(
        {c: bindparam(c) for c in ("message_id", "conversation_id", "leg_id", "direction",
                                   "subject", "refs", "at")}).on_conflict_do_nothing())


# The ingest path's statements, compiled once (gateway/store.py `Prepared`): on the writer
# thread SQLAlchemy's per-statement construction and bookkeeping cost more than SQLite's work.
_INSERT_ANCHOR = {d: _insert_anchor(d) for d in ("sqlite", "postgresql")}
_ANCHORED = Prepared(
    select(ANCHORS.c.conversation_id, ANCHORS.c.leg_id, ANCHORS.c.id, CONVERSATIONS.c.status)
    .join(CONVERSATIONS, CONVERSATIONS.c.id == ANCHORS.c.conversation_id)
    .where(ANCHORS.c.message_id == bindparam("m"),
           CONVERSATIONS.c.customer_id == bindparam("c")))


def record_anchors(
    conn: Connection,
    *,
    conversation_id: str,
    leg_id: str | None,
    message_ids: Sequence[str],
    direction: str,
    now: datetime,
    subject: str | None = None,
    refs: str | None = None,
) -> None:
    """Remember ids for this conversation (repeats are ignored). For an inbound message: its
    own id with direction "in", then its thread refs with "ref"."""
    statement = _INSERT_ANCHOR["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    subject = (subject or None) and subject[:300]
    for m in dict.fromkeys(message_ids):
        if m and len(m) <= MAX_ANCHOR:
            statement.execute(conn, {"message_id": m, "conversation_id": conversation_id,
                                     "leg_id": leg_id, "direction": direction,
                                     "subject": subject, "refs": refs, "at": now})


def remember(conn: Connection, *, conversation_id: str, leg_id: str, provider_id: str,
             refs: Sequence[str], subject: str | None, now: datetime) -> None:
    """What an inbound threaded message leaves behind: its id, and (bounded) its ancestors:
    the root (oldest) and the newest, which is what later replies carry."""
    kept = [r for r in refs if r and len(r) <= MAX_ANCHOR]
    if len(kept) > MAX_REFS_KEPT:  # newest first: keep the newest and the root
        kept = [*kept[:MAX_REFS_KEPT - 1], kept[-1]]
    record_anchors(conn, conversation_id=conversation_id, leg_id=leg_id,
                   message_ids=[provider_id], direction="in", now=now, subject=subject,
                   refs=" ".join(reversed(kept)) or None)
    record_anchors(conn, conversation_id=conversation_id, leg_id=leg_id, message_ids=kept,
                   direction="ref", now=now)


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    conversation_id: ConversationId
    customer_id: CustomerId
    leg_id: LegId | None  # the leg the token's or anchor's message belongs to, when known
    via: str  # "token" | "anchor"
    sender_is_customer: bool  # the sender's address belongs to the conversation's customer
    conversation_open: bool

    @property
    def attested(self) -> bool:
        """A reply with our token from the conversation's own customer (the trust rules)."""
        return self.via == "token" and self.sender_is_customer


def find_conversation(
    conn: Connection,
    *,
    token: str | None,
    refs: Sequence[str],
    owner: AddressLink | None,
) -> ThreadMatch | None:
    """The conversation an incoming message belongs to (see the module docstring), or None.

    A valid token is returned even when the sender is someone else (a colleague in Cc, a
    forward): `sender_is_customer` then says False and the caller must not attest it, nor
    place the message in that conversation. `owner=None` for a bounce (its sender is a mail
    server) uses the token alone.

    `owner` is the sender's address link (`identity.find_customer`, read by the caller, who
    needs it again), None for an unknown sender or a bounce."""
    customer = owner.customer_id if owner is not None else None
    hit = lookup_token(conn, token) if token else None
    if hit is not None:
        conversation_id, leg_id = hit
        row = conn.execute(
            select(CONVERSATIONS.c.customer_id, CONVERSATIONS.c.status)
            .where(CONVERSATIONS.c.id == conversation_id)
        ).one()
        return ThreadMatch(conversation_id, row[0], leg_id, "token", customer == row[0],
                           row[1] == "open")
    if customer is None or not refs:
        return None
    # The newest reference wins; for one id in several conversations, the latest anchor.
    for ref in [r for r in dict.fromkeys(refs) if r and len(r) <= MAX_ANCHOR][:50]:
        rows = _ANCHORED.execute(conn, {"m": ref, "c": customer})
        if rows:
            conversation_id, leg_id, _id, status = max(rows, key=lambda r: r[2])
            return ThreadMatch(ConversationId(conversation_id), customer,
                               LegId(leg_id) if leg_id else None, "anchor", True,
                               status == "open")
    return None


# ---- what a reply carries ------------------------------------------------------------------------


def reply_thread(conn: Connection, outbox_id: str, now: datetime) -> ReplyThread:
    """For the outbound message `outbox_id`: a fresh token for its leg (when it has one),
    In-Reply-To (the newest message received on the leg), References (that message's own
    References, then its id: RFC 5322 3.6.4), the thread's subject (as its first message
    gave it), the customer's name, and whether the gateway wrote it by itself."""
    row = conn.execute(
        select(OUTBOX.c.leg_id, OUTBOX.c.conversation_id, OUTBOX.c.kind,
               OUTBOX.c.transcript_entry_id).where(OUTBOX.c.id == outbox_id)
    ).first()
    if row is None:
        raise NotFound(f"no outbound message {outbox_id}")
    leg_id, conversation_id, kind, entry_id = row
    author = conn.execute(select(TRANSCRIPT.c.author).where(TRANSCRIPT.c.id == entry_id)
                          ).scalar() if entry_id is not None else None
    automated = kind != OutboundKind.MESSAGE or author in (None, "gateway")
    name = conn.execute(
        select(CUSTOMERS.c.display_name)
        .join(CONVERSATIONS, CONVERSATIONS.c.customer_id == CUSTOMERS.c.id)
        .where(CONVERSATIONS.c.id == conversation_id)
    ).scalar() if conversation_id else None
    if leg_id is None:
        return ReplyThread(token=None, to_name=name, automated=automated)
    leg_conversation = conn.execute(
        select(LEGS.c.conversation_id).where(LEGS.c.id == leg_id)).scalar()
    token = issue_token(conn, leg_id, leg_conversation or conversation_id, now)
    received = conn.execute(
        select(ANCHORS.c.message_id, ANCHORS.c.subject, ANCHORS.c.refs)
        .where(ANCHORS.c.conversation_id == leg_conversation, ANCHORS.c.leg_id == leg_id,
               ANCHORS.c.direction == "in")
        .order_by(ANCHORS.c.id)
    ).all()
    if not received:
        return ReplyThread(token=token, to_name=name, automated=automated)
    parent, _subject, parent_refs = received[-1]
    chain = [r for r in dict.fromkeys([*(parent_refs or "").split(), parent]) if r]
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1):]]
    return ReplyThread(
        token=token,
        in_reply_to=parent,
        references=tuple(chain),
        subject=next((r[1] for r in received if r[1]), None),
        to_name=name,
        automated=automated,
    )
