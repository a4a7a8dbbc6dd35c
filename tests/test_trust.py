"""The trust rule as a table: every row of DESIGN.md "What a new leg may carry", and forgeries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.trust import Binding, GrantFacts, LegFacts, Reason, decide_carry

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GRANT = GrantFacts(
    id="grant_1", customer_id="cus_ann", address="whatsapp:+14155550100", method="sms-otp",
    verified_at=NOW - timedelta(minutes=4), expires_at=NOW + timedelta(minutes=56),
    leg_id="leg_chat",
)


def leg(binding: Binding, address: str = "whatsapp:+14155550100", customer: str = "cus_ann",
        escalation_grant_id: str | None = None, escalation_valid: bool = False,
        leg_id: str = "leg_new") -> LegFacts:
    return LegFacts(leg_id, customer, address, binding, escalation_grant_id, escalation_valid)


@pytest.mark.parametrize(
    ("facts", "carries", "reason"),
    [
        (leg(Binding.ATTESTED), True, Reason.VERIFIED),
        (leg(Binding.ESCALATION, "voice:+442071838750", escalation_grant_id="grant_1",
             escalation_valid=True), True, Reason.VERIFIED_VIA_ESCALATION),
        (leg(Binding.CALLBACK, "voice:+14155550100", escalation_grant_id="grant_1",
             escalation_valid=True), True, Reason.VERIFIED_VIA_CALLBACK),
        (leg(Binding.CALLER_ID, "voice:+14155550100"), False, Reason.CALLER_ID_ONLY),
        (leg(Binding.ADDRESS, "email:ann@example.org"), False, Reason.ADDRESS_NOT_ATTESTED),
        (leg(Binding.ATTESTED, "whatsapp:+14155550199"), False, Reason.OTHER_ADDRESS),
        (leg(Binding.ADDRESS, "sms:+14155550100"), False, Reason.ADDRESS_NOT_ATTESTED),
        (leg(Binding.ATTESTED, leg_id="leg_chat"), True, Reason.VERIFIED),
    ],
    ids=["attested-same-address", "escalation-pin", "callback", "caller-id-equal-number",
         "email-without-thread-token", "attested-other-address", "same-number-sms",
         "the-verified-leg-itself"],
)
def test_table_of_what_a_new_leg_may_carry(facts: LegFacts, carries: bool, reason: Reason) -> None:
    decision = decide_carry(facts, GRANT, NOW)
    assert (decision.carries, decision.reason) == (carries, reason)
    assert decision.explanation


@pytest.mark.parametrize("binding", list(Binding))
def test_no_binding_carries_an_expired_grant(binding: Binding) -> None:
    expired = GrantFacts(GRANT.id, GRANT.customer_id, GRANT.address, GRANT.method,
                         GRANT.verified_at, NOW, GRANT.leg_id)
    facts = leg(binding, escalation_grant_id="grant_1", escalation_valid=True)
    decision = decide_carry(facts, expired, NOW)
    assert not decision.carries
    assert decision.reason is Reason.GRANT_EXPIRED


@pytest.mark.parametrize("binding", list(Binding))
def test_no_binding_carries_another_customers_grant(binding: Binding) -> None:
    facts = leg(binding, customer="cus_mallory", escalation_grant_id="grant_1",
                escalation_valid=True)
    decision = decide_carry(facts, GRANT, NOW)
    assert not decision.carries


def test_caller_id_never_verifies_whatever_the_number() -> None:
    for number in ("voice:+14155550100", "sms:+14155550100", "whatsapp:+14155550100"):
        decision = decide_carry(leg(Binding.CALLER_ID, number), GRANT, NOW)
        assert not decision.carries and decision.reason is Reason.CALLER_ID_ONLY


def test_used_or_unknown_escalation_carries_nothing() -> None:
    forged = leg(Binding.ESCALATION, escalation_grant_id=None, escalation_valid=False)
    assert decide_carry(forged, GRANT, NOW).reason is Reason.ESCALATION_INVALID
    other_grant = leg(Binding.ESCALATION, escalation_grant_id="grant_2", escalation_valid=True)
    assert not decide_carry(other_grant, GRANT, NOW).carries


def test_callback_to_another_number_does_not_carry() -> None:
    facts = leg(Binding.CALLBACK, "voice:+14155550199", escalation_grant_id="grant_1",
                escalation_valid=True)
    decision = decide_carry(facts, GRANT, NOW)
    assert not decision.carries and decision.reason is Reason.OTHER_ADDRESS


def test_no_grant_says_so() -> None:
    decision = decide_carry(leg(Binding.ATTESTED), None, NOW)
    assert not decision.carries and decision.reason is Reason.NO_VERIFICATION
