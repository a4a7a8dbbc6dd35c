"""What an agent reads in their XMPP chat with the gateway: the context message that opens a
conversation, the customer's messages after it, queue notices.

Pure text formatting over what the core's `AgentDesk.summary` returns (the context bundle's
fields: customer, verification and its reason, transcript, a context link), read tolerantly:
a mapping or an object with those attributes. The data stays in the gateway; the chat carries
a summary and the capability link (DESIGN.md, flow 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

__all__ = [
    "Brief", "brief_from", "call_text", "context_text", "entry_text", "queue_text",
    "result_text",
]

LAST_MESSAGES: Final = 5
_TEXT_CUT: Final = 500
_SECRET_KEYS: Final = frozenset({"pin", "code", "token", "escalation_token", "otp", "secret"})


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass(frozen=True, slots=True)
class Brief:
    """The part of a conversation's context bundle an agent's chat shows."""

    conversation_id: str
    customer_label: str  # a name, else the first address, else the customer id
    addresses: tuple[str, ...]
    badge: str  # "verified by otp-sms, 12 min ago" / why not
    last: tuple[Mapping[str, Any], ...]
    context_url: str | None
    leg_id: str | None = None
    customer_address: str | None = None  # the address of the leg the summary is for
    extra: Mapping[str, Any] = field(default_factory=dict)


def _badge(summary: Any) -> str:
    verification = _get(summary, "verification")
    if verification:
        text = _get(verification, "summary") or f"verified by {_get(verification, 'method')}"
        address = _get(verification, "address")
        return f"{text} ({address})" if address else str(text)
    why = (_get(summary, "verification_explanation") or _get(summary, "verification_reason")
           or "not verified")
    expired = _get(summary, "verification_expired_at")
    return f"{why} (expired {expired})" if expired else str(why)


def brief_from(summary: Any, conversation_id: str | None = None) -> Brief:
    customer = _get(summary, "customer") or {}
    addresses = tuple(
        str(_get(a, "address")) for a in (_get(customer, "addresses") or ())
        if _get(a, "address")
    )
    leg = _get(summary, "leg") or {}
    label = (_get(customer, "display_name") or _get(customer, "name")
             or (addresses[0] if addresses else None) or _get(customer, "id") or "customer")
    transcript = _get(summary, "last_messages") or _get(summary, "transcript") or ()
    context = _get(summary, "context")
    url = (_get(summary, "context_url") or _get(summary, "url") or _get(context, "url"))
    return Brief(
        conversation_id=str(_get(summary, "conversation_id") or conversation_id or "?"),
        customer_label=str(label), addresses=addresses, badge=_badge(summary),
        last=tuple(transcript[-LAST_MESSAGES:]), context_url=url,
        leg_id=_get(leg, "id") or _get(context, "leg_id"),
        customer_address=_get(leg, "address"),
    )


def _clock(at: Any) -> str:
    if isinstance(at, datetime):
        return at.strftime("%H:%M")
    text = str(at or "")
    return text[11:16] if len(text) >= 16 else text


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT_CUT else text[:_TEXT_CUT] + "…"


def _line(entry: Mapping[str, Any]) -> str:
    text = _get(entry, "text")
    if _get(entry, "withheld") or text is None:
        text = "(withheld)"
    who = "customer" if _get(entry, "direction") == "in" else (_get(entry, "author") or "us")
    return f"  {_clock(_get(entry, 'at'))} {_get(entry, 'channel') or ''} {who}: {_cut(str(text))}"


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
    text = _get(entry, "text")
    if _get(entry, "withheld") or text is None:
        text = "(withheld)"
    channel = _get(entry, "channel") or ""
    kind = _get(entry, "kind") or "message"
    if _get(entry, "direction") == "in" and kind == "message":
        return f"[#{handle} {label} · {channel}] {_cut(str(text))}"
    author = _get(entry, "author") or "gateway"
    return f"[#{handle} {kind} · {author} · {channel}] {_cut(str(text))}"


def queue_text(handle: int, label: str, previous_agent: str | None) -> str:
    was = f" (was with {previous_agent})" if previous_agent else ""
    return f"#{handle} {label} is waiting in the queue{was}. /take {handle} to take it."


def call_text(handle: int, label: str, context_url: str) -> str:
    return f"[#{handle} {label}] a call is being put through to your phone. context: {context_url}"


def result_text(what: str, result: Any) -> str:
    """A desk command's result for the agent, without secrets (a PIN is the customer's)."""
    if result is None or isinstance(result, (bool, int, float)):
        return what
    if isinstance(result, str):
        return f"{what}: {result}"
    items: Sequence[tuple[str, Any]]
    if isinstance(result, Mapping):
        items = list(result.items())
    else:
        slots = getattr(result, "__slots__", None) or getattr(result, "__dict__", {}).keys()
        items = [(k, getattr(result, k, None)) for k in slots]
    shown = [f"{k}={v}" for k, v in items
             if v not in (None, "", [], {}) and k.lower() not in _SECRET_KEYS
             and isinstance(v, (str, int, float))]
    return f"{what} ({', '.join(shown[:6])})" if shown else what
