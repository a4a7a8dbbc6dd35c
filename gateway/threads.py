"""Email threads on the core's side: per-conversation thread tokens and Message-ID anchors.

How an incoming mail finds its conversation (`find_conversation`), strongest first:
1. the gateway's thread token (in the reply address `support+TOKEN@…` or in one of our own
   Message-IDs the mail references): issued by us, 128 random bits, so only someone who
   received our mail can name it. With the conversation's own customer as sender it is what
   the trust rules call "an email reply to the gateway's own thread" (attested);
2. any anchor in the mail's thread references (every Message-ID seen or sent in the
   conversation, and the ancestors those mails named): this survives clients that rewrite
   In-Reply-To or drop our ids from References (Outlook; Chatwoot #10028, Zammad #5716). An
   anchor only picks *which* of the sender's own conversations: a Message-ID is chosen by
   whoever writes the mail, so it never moves anyone onto another customer's conversation;
3. nothing: the caller falls back to the customer's open conversation.

Tokens are stored by value (unique index), not hashed: every mail we send for the
conversation must carry the token again (Reply-To and Message-ID), so the gateway has to be
able to produce it, and it travels in clear in every such mail anyway. A hash would need a
second secret to re-derive it and would protect nothing a database reader could not already
read (the transcript it guards). Functions take an open connection: the caller owns the
transaction, as in gateway/conversations.py.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from gateway import identity
from gateway.addresses import Address
from gateway.conversations import insert_ignore
from gateway.models import BigId, Base, Conversation, Leg

MAX_ANCHOR: Final = 255  # Message-IDs arrive canonical and at most 200 characters
MAX_REFERENCES: Final = 20  # what a reply carries in References: the root and the newest


# ---- tables (migration 0004_email_threads) --------------------------------------------------


class EmailThread(Base):
    """The thread token of one conversation's email."""

    __tablename__ = "email_threads"
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"),
                                                 primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    created_at: Mapped[datetime]


class MailAnchor(Base):
    """A Message-ID seen or sent in a conversation: what later replies may refer to."""

    __tablename__ = "mail_anchors"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(MAX_ANCHOR))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    leg_id: Mapped[str | None] = mapped_column(String(40))
    # in: a mail we received; out: a mail we sent; ref: an ancestor a mail named
    direction: Mapped[str] = mapped_column(String(5))
    subject: Mapped[str | None] = mapped_column(String(300))
    at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("message_id", "conversation_id", name="uq_mail_anchor"),
        Index("ix_mail_anchors_conversation", "conversation_id", "id"),
    )


THREADS = EmailThread.__table__
ANCHORS = MailAnchor.__table__
CONVERSATIONS = Conversation.__table__
LEGS = Leg.__table__


# ---- tokens ---------------------------------------------------------------------------------


def _new_token() -> str:
    """128 random bits, lower-case base32: fits a mail local part that may be case-folded."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def issue_token(conn: Connection, conversation_id: str, now: datetime) -> str:
    """The conversation's thread token, made on first use. Safe under concurrency: the
    primary key decides, and the loser reads the winner's token."""
    existing = token_of(conn, conversation_id)
    if existing is not None:
        return existing
    conn.execute(insert_ignore(conn, THREADS).values(
        conversation_id=conversation_id, token=_new_token(), created_at=now))
    token = token_of(conn, conversation_id)
    assert token is not None
    return token


def token_of(conn: Connection, conversation_id: str) -> str | None:
    return conn.execute(
        select(THREADS.c.token).where(THREADS.c.conversation_id == conversation_id)
    ).scalar()


def conversation_for_token(conn: Connection, token: str) -> str | None:
    """What `InboundSink.check_thread_token` answers: the conversation, or None (unknown or
    forged; a malformed token is never looked up)."""
    if len(token) != 26 or not token.isalnum():
        return None
    return conn.execute(
        select(THREADS.c.conversation_id).where(THREADS.c.token == token.lower())
    ).scalar()


# ---- anchors --------------------------------------------------------------------------------


def record_anchors(
    conn: Connection,
    *,
    conversation_id: str,
    leg_id: str | None,
    message_ids: Sequence[str],
    direction: str,
    now: datetime,
    subject: str | None = None,
) -> int:
    """Remember Message-IDs for this conversation (repeats are ignored). For an inbound
    mail: its own id with direction "in", then its thread refs with "ref"; for a sent mail,
    our Message-ID with "out". Returns how many were new."""
    added = 0
    stmt = insert_ignore(conn, ANCHORS)
    for message_id in dict.fromkeys(message_ids):
        if not message_id or len(message_id) > MAX_ANCHOR:
            continue
        result = conn.execute(stmt.values(
            message_id=message_id, conversation_id=conversation_id, leg_id=leg_id,
            direction=direction, subject=(subject or None) and subject[:300], at=now))
        added += max(0, result.rowcount or 0)
    return added


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    conversation_id: str
    customer_id: str
    leg_id: str | None  # the email leg the token's or anchor's mail belongs to, when known
    via: str  # "token" | "anchor"
    sender_is_customer: bool  # the From address belongs to the conversation's customer
    conversation_open: bool

    @property
    def attested(self) -> bool:
        """A reply with our token from the conversation's own customer (the trust rules)."""
        return self.via == "token" and self.sender_is_customer


TokenLookup = Callable[[Connection, str], "tuple[str, str | None] | None"]


def _lookup_token(conn: Connection, token: str) -> tuple[str, str | None] | None:
    conversation_id = conversation_for_token(conn, token)
    return (conversation_id, None) if conversation_id is not None else None


def find_conversation(
    conn: Connection,
    *,
    token: str | None,
    refs: Sequence[str],
    sender: Address | None,
    lookup_token: TokenLookup = _lookup_token,
) -> ThreadMatch | None:
    """The conversation an incoming mail belongs to (see the module docstring), or None.

    A valid token is returned even when the sender is someone else (a colleague in Cc, a
    forward): `sender_is_customer` then says False and the caller must not attest it.
    `lookup_token` resolves a token to (conversation, leg or None); a core that issues its
    own tokens passes its lookup here."""
    owner = identity.find_customer(conn, sender) if sender is not None else None
    customer = owner[0] if owner else None
    hit = lookup_token(conn, token) if token else None
    if hit is not None:
        conversation_id, token_leg = hit
        row = conn.execute(
            select(CONVERSATIONS.c.customer_id, CONVERSATIONS.c.status)
            .where(CONVERSATIONS.c.id == conversation_id)
        ).one()
        return ThreadMatch(conversation_id, row[0],
                           token_leg or _email_leg(conn, conversation_id), "token",
                           customer == row[0], row[1] == "open")
    if customer is None or not refs:
        return None
    wanted = [r for r in dict.fromkeys(refs) if r and len(r) <= MAX_ANCHOR][:50]
    rows = conn.execute(
        select(ANCHORS.c.message_id, ANCHORS.c.conversation_id, ANCHORS.c.leg_id,
               ANCHORS.c.id, CONVERSATIONS.c.status)
        .join(CONVERSATIONS, CONVERSATIONS.c.id == ANCHORS.c.conversation_id)
        .where(ANCHORS.c.message_id.in_(wanted), CONVERSATIONS.c.customer_id == customer)
    ).all()
    if not rows:
        return None
    rank = {message_id: i for i, message_id in enumerate(wanted)}
    # The newest reference wins; for one id in several conversations, the latest anchor.
    best = min(rows, key=lambda r: (rank[r[0]], -r[3]))
    leg_id = best[2] or _email_leg(conn, best[1])
    return ThreadMatch(best[1], customer, leg_id, "anchor", True, best[4] == "open")


def _email_leg(conn: Connection, conversation_id: str) -> str | None:
    return conn.execute(
        select(LEGS.c.id).where(LEGS.c.conversation_id == conversation_id,
                                LEGS.c.channel == "email")
        .order_by(LEGS.c.started_at.desc(), LEGS.c.id.desc()).limit(1)
    ).scalar()


# ---- what a reply carries --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyHeaders:
    """The outbox payload an email reply needs (connectors/email/channel.py `send`)."""

    thread_token: str
    in_reply_to: str | None  # the newest mail we received in the thread
    references: tuple[str, ...]  # oldest first: the root and the newest ids
    subject: str | None  # the thread's subject, as the customer's first mail gave it

    def payload(self) -> dict[str, object]:
        out: dict[str, object] = {"thread_token": self.thread_token,
                                  "references": list(self.references)}
        if self.in_reply_to:
            out["in_reply_to"] = self.in_reply_to
        if self.subject:
            out["subject"] = self.subject
        return out


def reply_headers(conn: Connection, conversation_id: str, now: datetime,
                  leg_id: str | None = None) -> ReplyHeaders:
    """Token (issued if needed), In-Reply-To, References and subject for a reply in this
    conversation (on `leg_id`'s thread when given)."""
    token = issue_token(conn, conversation_id, now)
    query = select(ANCHORS.c.message_id, ANCHORS.c.direction, ANCHORS.c.subject).where(
        ANCHORS.c.conversation_id == conversation_id).order_by(ANCHORS.c.id)
    if leg_id is not None:
        query = query.where(ANCHORS.c.leg_id == leg_id)
    rows = conn.execute(query).all()
    seen = [r for r in rows if r[1] in ("in", "out")]
    in_reply_to = next((r[0] for r in reversed(rows) if r[1] == "in"), None)
    subject = next((r[2] for r in rows if r[1] == "in" and r[2]), None)  # the thread's name
    chain = [r[0] for r in seen]
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1):]]
    return ReplyHeaders(token, in_reply_to, tuple(chain), subject)
