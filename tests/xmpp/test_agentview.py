"""What the agent reads: the context message that opens a conversation, the lines after, and
what a command did (never a code or a PIN)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from connectors.xmpp.agentview import (
    brief_from,
    context_text,
    entry_text,
    escalation_text,
    verification_text,
)
from gateway.domain import (
    ConversationId,
    ConversationSummary,
    CustomerId,
    EscalationIssued,
    OutboxId,
    VerificationStarted,
)

SUMMARY = ConversationSummary(
    conversation_id=ConversationId("conv_1"), customer_id=CustomerId("cus_1"),
    display_name="Ann Lee", addresses=("whatsapp:+14155550100", "email:ann@example.org"),
    verified=True, verification="verified by sms-otp, 12 min ago",
    verification_reason="verified",
    last_messages=tuple(
        {"id": n, "at": f"2026-12-01T10:0{n}:00.000Z", "channel": "whatsapp",
         "direction": "in" if n % 2 else "out", "author": "agent:bob", "text": f"message {n}",
         "kind": "message"}
        for n in range(1, 8)
    ) + ({"id": 8, "at": "2026-12-01T10:08:00Z", "channel": "sms", "direction": "in",
          "text": None, "withheld": True},),
    context_url="https://gw.example.com/api/v1/contexts/tok", agent_id="bob",
)


def test_the_context_message_has_customer_badge_last_messages_and_link():
    text = context_text(brief_from(SUMMARY), 3)
    assert text.startswith("#3 Ann Lee — conversation conv_1")
    assert "whatsapp:+14155550100" in text and "email:ann@example.org" in text
    assert "verification: verified by sms-otp, 12 min ago" in text
    assert "message 3" not in text and "message 4" in text and "message 7" in text  # last 5
    assert "10:07 whatsapp customer: message 7" in text
    assert "10:06 whatsapp agent:bob: message 6" in text
    assert "(withheld)" in text
    assert "context: https://gw.example.com/api/v1/contexts/tok" in text


def test_why_not_verified_is_said_and_a_nameless_customer_is_their_address():
    summary = replace(SUMMARY, display_name=None, verified=False,
                      verification="identified by caller ID, not verified",
                      verification_reason="caller-id-only", last_messages=(),
                      context_url=None)
    text = context_text(brief_from(summary), 1)
    assert text.startswith("#1 whatsapp:+14155550100 — conversation conv_1")
    assert "verification: identified by caller ID, not verified" in text
    assert "no messages yet" in text and "context:" not in text


def test_entries_name_the_conversation_and_the_channel():
    entry = {"id": 9, "channel": "email", "direction": "in", "text": "any news?"}
    assert entry_text(entry, 2, "Ann") == "[#2 Ann · email] any news?"
    note = {"id": 10, "channel": "voice", "direction": "out", "kind": "call",
            "author": "gateway", "text": "call ended after 3 min"}
    assert entry_text(note, 2, "Ann") == "[#2 call · gateway · voice] call ended after 3 min"


def test_command_results_never_show_secrets():
    until = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
    dial_in = EscalationIssued("esc_1", "voice", "dial-in", until, True, OutboxId("out_1"),
                               sent_to="xmpp:ann@example.org")
    assert escalation_text(4, dial_in) == (
        "#4: the dial-in PIN went to xmpp:ann@example.org; it works once, until 10:15 UTC. "
        "The call will carry the customer's verification.")
    callback = replace(dial_in, mode="callback", sent_to=None, calling="voice:+14155550100",
                       carries_verification=False)
    assert escalation_text(4, callback) == (
        "#4: calling the customer back on voice:+14155550100. The customer is not verified: "
        "the call will not be either.")
    code = VerificationStarted("chl_1", "xmpp:ann@example.org", until, OutboxId("out_2"))
    assert "#4: a one-time code went to xmpp:ann@example.org, valid until 10:15 UTC" in \
        verification_text(4, code)
