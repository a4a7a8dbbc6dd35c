"""The trust rules: may a new leg carry a verification? One function decides, and says why.

This is the table "What a new leg may carry" in DESIGN.md, and the "Trust rules" of the
contract, as code. Everything that decides whether an agent sees "verified" calls
`decide_carry`; nothing else does. Invariant: caller ID (or any sender address a stranger can
forge) identifies a customer but never verifies one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Binding(StrEnum):
    """How a leg is tied to its customer, strongest first."""

    VERIFIED_LEG = "verified-leg"  # the grant was proved on this very leg
    ESCALATION = "escalation"  # a PIN or token the gateway issued on a verified leg
    CALLBACK = "callback"  # a call the gateway itself placed to an address
    ATTESTED = "attested"  # the channel authenticates the sender (wa_id, thread token, JID)
    CALLER_ID = "caller-id"  # a phone number the caller's network claims
    ADDRESS = "address"  # an address a stranger could forge (email From, SMS sender)


class Reason(StrEnum):
    VERIFIED = "verified"
    VERIFIED_VIA_ESCALATION = "verified-via-escalation"
    VERIFIED_VIA_CALLBACK = "verified-via-callback"
    NO_VERIFICATION = "no-verification"
    CALLER_ID_ONLY = "caller-id-only"
    ADDRESS_NOT_ATTESTED = "address-not-attested"
    GRANT_EXPIRED = "verification-expired"
    OTHER_ADDRESS = "other-address"
    OTHER_CUSTOMER = "other-customer"
    ESCALATION_INVALID = "escalation-invalid"


EXPLANATION: dict[Reason, str] = {
    Reason.VERIFIED: "verified",
    Reason.VERIFIED_VIA_ESCALATION: "verified, via an escalation PIN/token from the verified leg",
    Reason.VERIFIED_VIA_CALLBACK: "verified, via a callback the gateway placed to that number",
    Reason.NO_VERIFICATION: "not verified: the customer has not completed a verification",
    Reason.CALLER_ID_ONLY: "identified by caller ID, not verified",
    Reason.ADDRESS_NOT_ATTESTED: "identified by address, not verified",
    Reason.GRANT_EXPIRED: "verification expired",
    Reason.OTHER_ADDRESS: "same customer, not verified on this address",
    Reason.OTHER_CUSTOMER: "the verification belongs to another customer",
    Reason.ESCALATION_INVALID: "escalation PIN/token unknown, used or expired: not verified",
}


@dataclass(frozen=True, slots=True)
class GrantFacts:
    """What the rule needs to know about a verification grant."""

    id: str
    customer_id: str
    address: str
    method: str
    verified_at: datetime
    expires_at: datetime
    leg_id: str | None


@dataclass(frozen=True, slots=True)
class LegFacts:
    """What the rule needs to know about the new leg."""

    id: str
    customer_id: str
    address: str  # the customer's address on this leg
    binding: Binding
    escalation_grant_id: str | None = None  # the grant an escalation/callback was issued for
    escalation_valid: bool = False  # the escalation was unexpired and unused when bound


@dataclass(frozen=True, slots=True)
class CarryDecision:
    carries: bool
    reason: Reason
    grant: GrantFacts | None

    @property
    def explanation(self) -> str:
        return EXPLANATION[self.reason]


def decide_carry(leg: LegFacts, grant: GrantFacts | None, now: datetime) -> CarryDecision:
    """Decide whether `leg` carries `grant` (the customer's latest grant, or the one proved
    on this leg) and why."""
    if (grant is not None and grant.leg_id is not None and grant.leg_id == leg.id
            and grant.customer_id == leg.customer_id and grant.expires_at > now):
        # Proved on this very leg (a code answered here, or read back on this call): however
        # the leg was bound, it is verified now.
        return CarryDecision(True, Reason.VERIFIED, grant)
    if leg.binding in (Binding.ESCALATION, Binding.CALLBACK) and not leg.escalation_valid:
        return CarryDecision(False, Reason.ESCALATION_INVALID, None)
    if grant is None:
        return CarryDecision(False, Reason.NO_VERIFICATION, None)
    if grant.customer_id != leg.customer_id:
        return CarryDecision(False, Reason.OTHER_CUSTOMER, None)
    if grant.expires_at <= now:
        return CarryDecision(False, Reason.GRANT_EXPIRED, grant)
    if grant.leg_id is not None and grant.leg_id == leg.id:
        return CarryDecision(True, Reason.VERIFIED, grant)
    match leg.binding:
        case Binding.ESCALATION:
            if leg.escalation_grant_id == grant.id:
                return CarryDecision(True, Reason.VERIFIED_VIA_ESCALATION, grant)
            return CarryDecision(False, Reason.ESCALATION_INVALID, None)
        case Binding.CALLBACK:
            # The gateway dialled this number itself; it carries only the grant that
            # proved exactly that number.
            if leg.escalation_grant_id == grant.id and _same_number(leg.address, grant.address):
                return CarryDecision(True, Reason.VERIFIED_VIA_CALLBACK, grant)
            return CarryDecision(False, Reason.OTHER_ADDRESS, None)
        case Binding.ATTESTED | Binding.VERIFIED_LEG:
            if leg.address == grant.address:
                return CarryDecision(True, Reason.VERIFIED, grant)
            return CarryDecision(False, Reason.OTHER_ADDRESS, None)
        case Binding.CALLER_ID:
            return CarryDecision(False, Reason.CALLER_ID_ONLY, None)
        case Binding.ADDRESS:
            return CarryDecision(False, Reason.ADDRESS_NOT_ATTESTED, None)
    raise AssertionError(f"unhandled binding {leg.binding!r}")  # pragma: no cover


def _same_number(a: str, b: str) -> bool:
    """`voice:+1…` and `sms:+1…` are the same number: a callback to it reaches its owner."""
    return a.partition(":")[2] == b.partition(":")[2] and a.partition(":")[2].startswith("+")
