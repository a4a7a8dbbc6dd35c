"""Verification: one-time codes, the grants they produce, and escalation PINs and tokens.

Codes and PINs are stored as salted SHA-256 and compared in constant time; a challenge locks
after a number of wrong attempts and expires. A grant proves one address, by one method, at
one time, until it expires. Whether a new leg may carry it is decided in `gateway/trust.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from gateway.conversations import insert_ignore
from gateway.models import Escalation, Leg, OtpChallenge, ServerSecret, VerificationGrant
from gateway.store import Prepared, new_id
from gateway.trust import GrantFacts

CHALLENGES = OtpChallenge.__table__
GRANTS = VerificationGrant.__table__
ESCALATIONS = Escalation.__table__
LEGS = Leg.__table__
SECRETS = ServerSecret.__table__

OTP_DIGITS = 6
PIN_DIGITS = 6
# A code typed on its own, possibly spaced ("123 456") or with a short word around it.
CODE_IN_TEXT = re.compile(r"(?<!\d)(\d{3})[ -]?(\d{3})(?!\d)")

METHOD_BY_CHANNEL = {
    "sms": "sms-otp",
    "whatsapp": "whatsapp-otp",
    "email": "email-otp",
    "voice": "voice-otp",
    "xmpp": "xmpp-otp",
}


class OtpOutcome(StrEnum):
    PASSED = "passed"
    WRONG = "wrong"
    LOCKED = "locked"
    EXPIRED = "expired"
    NONE_PENDING = "none-pending"


def _digest(secret: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A capability: 192 random bits, URL-safe; only its hash is ever stored."""
    return secrets.token_urlsafe(24)


def random_digits(n: int) -> str:
    return "".join(str(secrets.randbelow(10)) for _ in range(n))


# Words that may stand beside a code in a message that answers it ("my code is 123456",
# "Code: 123 456, thanks"). Anything else makes the message a message that contains digits.
_BESIDE_A_CODE = frozenset({
    "code", "codes", "my", "the", "is", "it", "its", "it's", "here", "here's", "verification",
    "otp", "pin", "ok", "okay", "thanks", "thank", "you", "thx", "ty", "please", "pls", "yes",
    "this", "that", "sure", "hi", "hello", "hey", "got", "received", "number",
})
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@dataclass(frozen=True, slots=True)
class CodeInText:
    """Six digits in a customer's message, as the message wrote them."""

    code: str  # the six digits
    written: str  # as they stand in the text ("123456", "123 456", "123-456")


def codes_in_text(text: str) -> tuple[tuple[CodeInText, ...], bool]:
    """The six-digit groups of a message, and whether the message answers a code: it is
    essentially just the code (one group of six digits and at most a few words such as "my
    code is", "thanks"). "My order 482913 is late" holds six digits and answers nothing."""
    found = tuple(CodeInText(m.group(1) + m.group(2), m.group(0))
                  for m in CODE_IN_TEXT.finditer(text))
    if len(found) != 1 or len(text) > 120:
        return found, False
    rest = CODE_IN_TEXT.sub(" ", text, count=1)
    if any(ch.isdigit() for ch in rest):
        return found, False
    words = _WORD.findall(rest.lower())
    return found, len(words) <= 6 and all(word in _BESIDE_A_CODE for word in words)


@dataclass(frozen=True, slots=True)
class IssuedOtp:
    challenge_id: str
    code: str  # handed to the connector once, never stored
    address: str
    expires_at: datetime


def issue_otp(
    conn: Connection,
    *,
    customer_id: str,
    address: str,
    now: datetime,
    ttl: timedelta,
    max_attempts: int,
    conversation_id: str | None,
    leg_id: str | None,
) -> IssuedOtp:
    """A new code for `address`; earlier pending codes for it stop working."""
    conn.execute(
        update(CHALLENGES)
        .where(
            CHALLENGES.c.customer_id == customer_id,
            CHALLENGES.c.status == "pending",
        )
        .values(status="superseded")
    )
    code = random_digits(OTP_DIGITS)
    salt = secrets.token_hex(16)
    challenge_id = new_id("otp")
    channel = address.partition(":")[0]
    conn.execute(
        insert(CHALLENGES).values(
            id=challenge_id, customer_id=customer_id, address=address,
            method=METHOD_BY_CHANNEL.get(channel, f"{channel}-otp"),
            code_hash=_digest(code, salt), salt=salt, created_at=now, expires_at=now + ttl,
            attempts=0, max_attempts=max_attempts, status="pending",
            conversation_id=conversation_id, leg_id=leg_id,
        )
    )
    return IssuedOtp(challenge_id, code, address, now + ttl)


@dataclass(frozen=True, slots=True)
class OtpCheck:
    outcome: OtpOutcome
    grant: GrantFacts | None = None
    attempts_left: int = 0


def check_otp(
    conn: Connection,
    *,
    customer_id: str,
    code: str,
    now: datetime,
    grant_ttl: timedelta,
    leg_id: str | None,
    conversation_id: str | None,
) -> OtpCheck:
    """Check a code typed by the customer against their pending challenge."""
    row = _pending(conn, customer_id)
    if row is None:
        return OtpCheck(OtpOutcome.NONE_PENDING)
    return _check(conn, row, code, now, grant_ttl, leg_id, conversation_id)


def _pending(conn: Connection, customer_id: str) -> Any:
    return (
        conn.execute(
            select(CHALLENGES)
            .where(CHALLENGES.c.customer_id == customer_id, CHALLENGES.c.status == "pending")
            .order_by(CHALLENGES.c.created_at.desc())
            .limit(1)
        )
    ).mappings().first()


# The pending code's check values only: read for every stored message holding six digits
# (order and phone numbers are common in mail), so compiled once (gateway.store.Prepared).
_PENDING_CODE = Prepared(
    select(CHALLENGES.c.expires_at, CHALLENGES.c.salt, CHALLENGES.c.code_hash)
    .where(CHALLENGES.c.customer_id == bindparam("customer"),
           CHALLENGES.c.status == "pending")
    .order_by(CHALLENGES.c.created_at.desc())
    .limit(1)
)


def pending_codes_among(conn: Connection, customer_id: str, codes: Iterable[str],
                        now: datetime) -> frozenset[str]:
    """Which of `codes` is the customer's pending, unexpired code (one read, whatever the
    number of codes). Counts no attempt and changes nothing: for keeping a code out of a
    stored text that was no attempt to answer it (the sender sees no difference either way,
    so it tells a guesser nothing)."""
    rows = _PENDING_CODE.execute(conn, {"customer": customer_id})
    if not rows or rows[0][0] <= now:
        return frozenset()
    _expires, salt, code_hash = rows[0]
    return frozenset(code for code in set(codes)
                     if hmac.compare_digest(_digest(code, salt), code_hash))


def challenge_address(conn: Connection, challenge_id: str, conversation_id: str) -> str | None:
    """The address a challenge of this conversation sent its code to; None for none."""
    return conn.execute(
        select(CHALLENGES.c.address).where(CHALLENGES.c.id == challenge_id,
                                           CHALLENGES.c.conversation_id == conversation_id)
    ).scalar()


class ChallengeUsed(Exception):
    """The code of this challenge was answered already."""


def check_challenge(
    conn: Connection,
    *,
    challenge_id: str,
    conversation_id: str,
    code: str,
    now: datetime,
    grant_ttl: timedelta,
    leg_id: str,
) -> OtpCheck | None:
    """Check a code an agent entered (the caller read it out) against one challenge of the
    conversation; a right one proves the challenge's address on `leg_id`. None when the
    conversation has no such challenge. Attempts count as the customer's own do."""
    row = conn.execute(
        select(CHALLENGES).where(CHALLENGES.c.id == challenge_id,
                                 CHALLENGES.c.conversation_id == conversation_id)
    ).mappings().first()
    if row is None:
        return None
    status = row["status"]
    if status == "passed":
        raise ChallengeUsed("this code was answered already; send a new one")
    if status == "locked":
        return OtpCheck(OtpOutcome.LOCKED)
    if status != "pending":  # expired, or superseded by a newer code
        return OtpCheck(OtpOutcome.EXPIRED)
    return _check(conn, row, code, now, grant_ttl, leg_id, conversation_id)


def _check(conn: Connection, row: Any, code: str, now: datetime, grant_ttl: timedelta,
           leg_id: str | None, conversation_id: str | None) -> OtpCheck:
    if row["expires_at"] <= now:
        _set_status(conn, row["id"], "expired")
        return OtpCheck(OtpOutcome.EXPIRED)
    attempts = row["attempts"] + 1
    ok = hmac.compare_digest(_digest(code, row["salt"]), row["code_hash"])
    if ok:
        conn.execute(
            update(CHALLENGES)
            .where(CHALLENGES.c.id == row["id"])
            .values(attempts=attempts, status="passed")
        )
        grant = create_grant(
            conn, customer_id=row["customer_id"], address=row["address"],
            method=row["method"], level="possession", now=now, ttl=grant_ttl,
            conversation_id=conversation_id or row["conversation_id"], leg_id=leg_id,
        )
        return OtpCheck(OtpOutcome.PASSED, grant)
    locked = attempts >= row["max_attempts"]
    conn.execute(
        update(CHALLENGES)
        .where(CHALLENGES.c.id == row["id"])
        .values(attempts=attempts, status="locked" if locked else "pending")
    )
    if locked:
        return OtpCheck(OtpOutcome.LOCKED)
    return OtpCheck(OtpOutcome.WRONG, attempts_left=row["max_attempts"] - attempts)


def _set_status(conn: Connection, challenge_id: str, status: str) -> None:
    conn.execute(
        update(CHALLENGES).where(CHALLENGES.c.id == challenge_id).values(status=status)
    )


def create_grant(
    conn: Connection,
    *,
    customer_id: str,
    address: str,
    method: str,
    level: str,
    now: datetime,
    ttl: timedelta,
    conversation_id: str | None,
    leg_id: str | None,
) -> GrantFacts:
    grant_id = new_id("grant")
    conn.execute(
        insert(GRANTS).values(
            id=grant_id, customer_id=customer_id, address=address, method=method, level=level,
            verified_at=now, expires_at=now + ttl, conversation_id=conversation_id,
            leg_id=leg_id,
        )
    )
    return GrantFacts(grant_id, customer_id, address, method, now, now + ttl, leg_id)


def _grant_facts(row: Any) -> GrantFacts | None:
    if row is None:
        return None
    m = row._mapping
    return GrantFacts(
        m["id"], m["customer_id"], m["address"], m["method"], m["verified_at"],
        m["expires_at"], m["leg_id"],
    )


def read_latest_grant(conn: Connection, customer_id: str) -> GrantFacts | None:
    """The customer's most recent grant, expired or not (expiry is the trust rule's call)."""
    return _grant_facts(conn.execute(
        select(GRANTS).where(GRANTS.c.customer_id == customer_id)
        .order_by(GRANTS.c.verified_at.desc()).limit(1)
    ).first())


def read_leg_grant(conn: Connection, customer_id: str, leg_id: str) -> GrantFacts | None:
    """The newest grant proved on this leg (a step-up on a call), expired or not."""
    return _grant_facts(conn.execute(
        select(GRANTS).where(GRANTS.c.customer_id == customer_id, GRANTS.c.leg_id == leg_id)
        .order_by(GRANTS.c.verified_at.desc()).limit(1)
    ).first())


def first_grant_since(conn: Connection, customer_id: str, since: datetime) -> datetime | None:
    """When the customer was first verified at or after `since` (a conversation's start)."""
    return conn.execute(
        select(GRANTS.c.verified_at).where(GRANTS.c.customer_id == customer_id,
                                           GRANTS.c.verified_at >= since)
        .order_by(GRANTS.c.verified_at).limit(1)
    ).scalar()


def read_grant(conn: Connection, grant_id: str) -> GrantFacts | None:
    return _grant_facts(conn.execute(select(GRANTS).where(GRANTS.c.id == grant_id)).first())


class PinIndex:
    """The keyed hash a PIN is found by: HMAC-SHA256(key, PIN), stored indexed.

    A PIN is six digits: any hash of it, salted or not, falls to a million guesses by
    whoever reads the table, so the look-up key is what protects a stolen database. It is
    GATEWAY_PIN_LOOKUP_SECRET when set (kept outside the database: recommended); else a
    random key the gateway made on first use and stored in `server_secrets` (every process
    on the database shares it; a stolen database then reveals live PINs by brute force, as
    the per-row salted hashes before it did). One look-up per PIN either way, instead of
    an HMAC per live escalation.
    """

    NAME = "pin-lookup"

    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret

    def _load(self, conn: Connection) -> bytes:
        if self._key is None:
            stored = conn.execute(select(SECRETS.c.value).where(SECRETS.c.name == self.NAME)
                                  ).scalar()
            if stored is None:
                conn.execute(insert_ignore(conn, SECRETS).values(
                    name=self.NAME, value=secrets.token_hex(32),
                    created_at=datetime.now(UTC)))
                stored = conn.execute(select(SECRETS.c.value)
                                      .where(SECRETS.c.name == self.NAME)).scalar_one()
            self._key = bytes.fromhex(stored)
        return self._key

    def lookup(self, conn: Connection, pin: str) -> str:
        return hmac.new(self._load(conn), pin.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedEscalation:
    id: str
    token: str
    pin: str | None
    expires_at: datetime


def issue_escalation(
    conn: Connection,
    *,
    conversation_id: str,
    customer_id: str,
    source_leg_id: str | None,
    grant_id: str | None,
    channel: str,
    mode: str,
    target_address: str | None,
    now: datetime,
    ttl: timedelta,
    pins: PinIndex,
) -> IssuedEscalation:
    token = new_token()
    pin = lookup = None
    if mode == "dial-in":
        for _ in range(20):  # no two live escalations share a PIN: the look-up finds one
            pin = random_digits(PIN_DIGITS)
            lookup = pins.lookup(conn, pin)
            if not conn.execute(select(ESCALATIONS.c.id).where(
                    ESCALATIONS.c.pin_lookup == lookup, ESCALATIONS.c.used_at.is_(None),
                    ESCALATIONS.c.expires_at > now).limit(1)).first():
                break
        else:
            raise RuntimeError("no free escalation PIN after 20 tries")
    escalation_id = new_id("esc")
    conn.execute(
        insert(ESCALATIONS).values(
            id=escalation_id, conversation_id=conversation_id, customer_id=customer_id,
            source_leg_id=source_leg_id, grant_id=grant_id, channel=channel, mode=mode,
            target_address=target_address, token_hash=hash_token(token),
            pin_hash=None, pin_salt=None, pin_lookup=lookup,
            created_at=now, expires_at=now + ttl, used_at=None, used_by_leg_id=None,
        )
    )
    return IssuedEscalation(escalation_id, token, pin, now + ttl)


@dataclass(frozen=True, slots=True)
class RedeemedEscalation:
    id: str
    customer_id: str
    conversation_id: str
    grant_id: str | None
    mode: str
    target_address: str | None


# A call that holds an escalation and was neither answered nor ended after this long is
# gone (its end was never reported): another call may take the escalation.
HOLD = timedelta(minutes=5)


def claim_escalation(
    conn: Connection, *, token: str | None, pin: str | None, leg_id: str, now: datetime,
    pins: PinIndex,
) -> RedeemedEscalation | None:
    """The unexpired, unused escalation for a token or PIN, now held by the call `leg_id`.

    None when nothing matches: a wrong, used or expired PIN binds nothing, and neither does
    one that another live call holds. The call's answer uses it (`use_escalation`); a call
    that ends unanswered gives it back (`give_back_escalation`): a caller whose call reached
    no agent can call again with the same PIN.
    """
    if token:
        where = ESCALATIONS.c.token_hash == hash_token(token)
    elif pin and pin.isdigit() and len(pin) == PIN_DIGITS:
        where = ESCALATIONS.c.pin_lookup == pins.lookup(conn, pin)
    else:
        return None
    row = conn.execute(
        select(ESCALATIONS, LEGS.c.ended_at.label("holder_ended_at"),
               LEGS.c.started_at.label("holder_started_at"))
        .outerjoin(LEGS, LEGS.c.id == ESCALATIONS.c.used_by_leg_id)
        .where(where, ESCALATIONS.c.used_at.is_(None), ESCALATIONS.c.expires_at > now)
        .order_by(ESCALATIONS.c.created_at).limit(1)
    ).mappings().first()
    if row is None:
        return None
    holder = row["used_by_leg_id"]
    if holder is not None and row["holder_ended_at"] is None and (
            row["holder_started_at"] is None or row["holder_started_at"] > now - HOLD):
        return None  # another live call has it
    held = ESCALATIONS.c.used_by_leg_id.is_(None) if holder is None \
        else ESCALATIONS.c.used_by_leg_id == holder
    claimed = conn.execute(
        update(ESCALATIONS)
        .where(ESCALATIONS.c.id == row["id"], ESCALATIONS.c.used_at.is_(None), held)
        .values(used_by_leg_id=leg_id)
    )
    if claimed.rowcount != 1:
        return None
    return RedeemedEscalation(
        row["id"], row["customer_id"], row["conversation_id"], row["grant_id"], row["mode"],
        row["target_address"],
    )


def use_escalation(conn: Connection, escalation_id: str, leg_id: str, now: datetime) -> None:
    """The call holding the escalation was answered: it is used, for good."""
    conn.execute(
        update(ESCALATIONS)
        .where(ESCALATIONS.c.id == escalation_id, ESCALATIONS.c.used_by_leg_id == leg_id,
               ESCALATIONS.c.used_at.is_(None))
        .values(used_at=now)
    )


def give_back_escalation(conn: Connection, escalation_id: str, leg_id: str) -> None:
    """The call holding the escalation ended before anyone answered: it works again."""
    conn.execute(
        update(ESCALATIONS)
        .where(ESCALATIONS.c.id == escalation_id, ESCALATIONS.c.used_by_leg_id == leg_id,
               ESCALATIONS.c.used_at.is_(None))
        .values(used_by_leg_id=None)
    )
