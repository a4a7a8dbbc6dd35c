"""What an agent reads in their XMPP chat with the gateway: the context message that opens a
conversation, the customer's messages after it, queue notices, what a command did.

Pure text formatting over the core's typed results (`ConversationSummary`, the transcript
entries of `EntryAdded.entry`, `EscalationIssued`, `VerificationStarted`). The data stays in
the gateway; the chat carries a summary and the capability link (DESIGN.md, flow 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gateway.domain import ConversationSummary, EscalationIssued, VerificationStarted

__all__ = [
    "Brief", "brief_from", "call_text", "context_text", "entry_text", "escalation_text",
    "queue_text", "verification_text",
]

LAST_MESSAGES: Final = 5
_TEXT_CUT: Final = 500


@dataclass(frozen=True, slots=True)
class Brief:
    """The part of a conversation's context an agent's chat shows."""

    conversation_id: str
    customer_label: str  # a name, else the first address, else the customer id
    addresses: tuple[str, ...]
    badge: str  # "verified by xmpp-otp, 12 min ago" / why not
    last: tuple[Mapping[str, Any], ...]
    context_url: str | None


def brief_from(summary: ConversationSummary) -> Brief:
    label = summary.display_name or (summary.addresses[0] if summary.addresses else None) \
        or summary.customer_id
    return Brief(
        conversation_id=summary.conversation_id, customer_label=label,
        addresses=summary.addresses,
        badge=summary.verification or summary.verification_reason or "not verified",
        last=summary.last_messages[-LAST_MESSAGES:], context_url=summary.context_url,
    )


def _clock(at: Any) -> str:
    if isinstance(at, datetime):
        return at.strftime("%H:%M")
    text = str(at or "")
    return text[11:16] if len(text) >= 16 else text


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT_CUT else text[:_TEXT_CUT] + "…"


def _line(entry: Mapping[str, Any]) -> str:
    text = entry.get("text")
    if entry.get("withheld") or text is None:
        text = "(withheld)"
    who = "customer" if entry.get("direction") == "in" else (entry.get("author") or "us")
    return f"  {_clock(entry.get('at'))} {entry.get('channel') or ''} {who}: {_cut(str(text))}"


def context_text(brief: Brief, handle: int) -> str:
    """The first message of a conversation in the agent's chat."""
    lines = [f"#{handle} {brief.customer_label} — conversation {brief.conversation_id}"]
    others = [a for a in brief.addresses if a != brief.customer_label]
    if others:
        lines.append("addresses: " + ", ".join(others[:4]))
    lines.append(f"verification: {brief.badge}")
    if brief.last:
        lines.append(f"last {len(brief.last)} messages:")
        lines.extend(_line(entry) for entry in brief.last)
    else:
        lines.append("no messages yet")
    if brief.context_url:
        lines.append(f"context: {brief.context_url}")
    lines.append("Write here to answer; /help for commands.")
    return "\n".join(lines)


def entry_text(entry: Mapping[str, Any], handle: int, label: str) -> str:
    """A transcript entry of a conversation the agent has, as it is added."""
    text = entry.get("text")
    if entry.get("withheld") or text is None:
        text = "(withheld)"
    channel = entry.get("channel") or ""
    kind = entry.get("kind") or "message"
    if entry.get("direction") == "in" and kind == "message":
        return f"[#{handle} {label} · {channel}] {_cut(str(text))}"
    author = entry.get("author") or "gateway"
    return f"[#{handle} {kind} · {author} · {channel}] {_cut(str(text))}"


def queue_text(handle: int, label: str, previous_agent: str | None) -> str:
    was = f" (was with {previous_agent})" if previous_agent else ""
    return f"#{handle} {label} is waiting in the queue{was}. /take {handle} to take it."


def call_text(handle: int, label: str, context_url: str) -> str:
    return f"[#{handle} {label}] a call is being put through to your phone. context: {context_url}"


def _until(at: datetime) -> str:
    return at.strftime("%H:%M UTC")


def escalation_text(handle: int, issued: EscalationIssued) -> str:
    """What /call did. Never the PIN: it is the customer's, sent on their own leg."""
    carries = ("the call will carry the customer's verification" if issued.carries_verification
               else "the customer is not verified: the call will not be either")
    if issued.mode == "dial-in":
        return (f"#{handle}: the dial-in PIN went to {issued.sent_to}; it works once, until "
                f"{_until(issued.expires_at)}. {carries[0].upper()}{carries[1:]}.")
    return (f"#{handle}: calling the customer back on {issued.calling}. "
            f"{carries[0].upper()}{carries[1:]}.")


def verification_text(handle: int, started: VerificationStarted) -> str:
    """What /verify did. Never the code."""
    return (f"#{handle}: a one-time code went to {started.address}, valid until "
            f"{_until(started.expires_at)}. When the customer writes it back, they are "
            "verified.")
