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
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from gateway.models import Escalation, OtpChallenge, VerificationGrant
from gateway.store import new_id
from gateway.trust import GrantFacts

CHALLENGES = OtpChallenge.__table__
GRANTS = VerificationGrant.__table__
ESCALATIONS = Escalation.__table__

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


def code_in_text(text: str) -> str | None:
    match = CODE_IN_TEXT.search(text.strip())
    if match is None or len(text.strip()) > 40:
        return None
    return match.group(1) + match.group(2)


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
    row = (
        conn.execute(
            select(CHALLENGES)
            .where(CHALLENGES.c.customer_id == customer_id, CHALLENGES.c.status == "pending")
            .order_by(CHALLENGES.c.created_at.desc())
            .limit(1)
        )
    ).mappings().first()
    if row is None:
        return OtpCheck(OtpOutcome.NONE_PENDING)
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
            conn, customer_id=customer_id, address=row["address"], method=row["method"],
            level="possession", now=now, ttl=grant_ttl,
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


def read_grant(conn: Connection, grant_id: str) -> GrantFacts | None:
    return _grant_facts(conn.execute(select(GRANTS).where(GRANTS.c.id == grant_id)).first())


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
) -> IssuedEscalation:
    token = new_token()
    pin = random_digits(PIN_DIGITS) if mode == "dial-in" else None
    salt = secrets.token_hex(16) if pin else None
    escalation_id = new_id("esc")
    conn.execute(
        insert(ESCALATIONS).values(
            id=escalation_id, conversation_id=conversation_id, customer_id=customer_id,
            source_leg_id=source_leg_id, grant_id=grant_id, channel=channel, mode=mode,
            target_address=target_address, token_hash=hash_token(token),
            pin_hash=_digest(pin, salt) if pin and salt else None, pin_salt=salt,
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


def redeem_escalation(
    conn: Connection, *, token: str | None, pin: str | None, now: datetime
) -> RedeemedEscalation | None:
    """Find the unexpired, unused escalation for a token or PIN and mark it used.

    None when nothing matches: a wrong, reused or expired PIN binds nothing.
    """
    base = select(ESCALATIONS).where(
        ESCALATIONS.c.used_at.is_(None), ESCALATIONS.c.expires_at > now
    )
    row = None
    if token:
        row = (
            conn.execute(base.where(ESCALATIONS.c.token_hash == hash_token(token)))
        ).mappings().first()
    elif pin and pin.isdigit() and len(pin) == PIN_DIGITS:
        candidates = (
            conn.execute(base.where(ESCALATIONS.c.pin_hash.is_not(None)).limit(10000))
        ).mappings().all()
        for cand in candidates:
            if hmac.compare_digest(_digest(pin, cand["pin_salt"]), cand["pin_hash"]):
                row = cand
                break
    if row is None:
        return None
    claimed = conn.execute(
        update(ESCALATIONS)
        .where(ESCALATIONS.c.id == row["id"], ESCALATIONS.c.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:
        return None
    return RedeemedEscalation(
        row["id"], row["customer_id"], row["conversation_id"], row["grant_id"], row["mode"],
        row["target_address"],
    )


def mark_escalation_leg(conn: Connection, escalation_id: str, leg_id: str) -> None:
    conn.execute(
        update(ESCALATIONS)
        .where(ESCALATIONS.c.id == escalation_id)
        .values(used_by_leg_id=leg_id)
    )
