"""What the agent reads: the context message that opens a conversation, and the lines after."""

from __future__ import annotations

from connectors.xmpp.agentview import brief_from, context_text, entry_text, result_text

BUNDLE = {
    "conversation_id": "conv_1",
    "customer": {"id": "cus_1", "display_name": "Ann Lee",
                 "addresses": [{"address": "whatsapp:+14155550100"},
                               {"address": "email:ann@example.org"}]},
    "leg": {"id": "leg_9", "address": "whatsapp:+14155550100"},
    "verification": {"method": "otp-sms", "address": "sms:+14155550100",
                     "summary": "verified by otp-sms, 12 min ago"},
    "transcript": [
        {"id": n, "at": f"2026-12-01T10:0{n}:00.000Z", "channel": "whatsapp",
         "direction": "in" if n % 2 else "out", "author": "bob", "text": f"message {n}"}
        for n in range(1, 8)
    ] + [{"id": 8, "at": "2026-12-01T10:08:00Z", "channel": "sms", "direction": "in",
          "text": None, "withheld": True}],
    "context_url": "https://gw.example.com/api/v1/contexts/tok",
}


def test_the_context_message_has_customer_badge_last_messages_and_link():
    text = context_text(brief_from(BUNDLE), 3)
    assert text.startswith("#3 Ann Lee — conversation conv_1")
    assert "whatsapp:+14155550100" in text and "email:ann@example.org" in text
    assert "verification: verified by otp-sms, 12 min ago (sms:+14155550100)" in text
    assert "message 1" not in text and "message 4" in text and "message 7" in text  # last 5
    assert "10:07 whatsapp customer: message 7" in text
    assert "10:06 whatsapp bob: message 6" in text
    assert "(withheld)" in text
    assert "context: https://gw.example.com/api/v1/contexts/tok" in text


def test_why_not_verified_is_said():
    bundle = {**BUNDLE, "verification": None, "verification_reason": "caller-id-only",
              "verification_explanation": "identified by caller ID, not verified"}
    assert "verification: identified by caller ID, not verified" in context_text(
        brief_from(bundle), 1)
    expired = {**bundle, "verification_explanation": "verification expired",
               "verification_expired_at": "2026-12-01T09:00:00Z"}
    assert "verification expired (expired 2026-12-01T09:00:00Z)" in context_text(
        brief_from(expired), 1)


def test_entries_name_the_conversation_and_the_channel():
    entry = {"id": 9, "channel": "email", "direction": "in", "text": "any news?"}
    assert entry_text(entry, 2, "Ann") == "[#2 Ann · email] any news?"
    note = {"id": 10, "channel": "voice", "direction": "out", "kind": "call",
            "author": "gateway", "text": "call ended after 3 min"}
    assert entry_text(note, 2, "Ann") == "[#2 call · gateway · voice] call ended after 3 min"


def test_results_never_show_secrets():
    shown = result_text("done", {"pin": "123456", "code": "654321", "address": "sms:+1"})
    assert shown == "done (address=sms:+1)"
