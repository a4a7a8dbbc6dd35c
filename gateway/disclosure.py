"""Disclosure: how much of the history a leg's bundle shows (CONTRACT.md "Disclosure").

Carrying a verification (`gateway/trust.py`) and seeing the history are two decisions; this
module makes the second, in one place, for every reader of a bundle: the context URL, the
XMPP summary, the console. A leg that carries a verification sees the `full` bundle. A leg
that does not (caller ID only, an email From without our thread token, an invalid PIN) is
probably the customer, but a stranger can forge those, so by default it sees a `limited`
one: which channels and when, the customer's own messages before any verification, and no
agent or gateway replies (they hold what the business disclosed) and nothing said after a
verification. An operator can give an unverified binding the full bundle instead
(GATEWAY_DISCLOSURE_UNVERIFIED, e.g. `{"attested": "full"}`); a verified leg is always full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


# How a leg can be bound to its customer (gateway/trust.py Binding), the keys of the policy.
BINDINGS = ("verified-leg", "escalation", "callback", "attested", "caller-id", "address")


class Level(StrEnum):
    FULL = "full"
    LIMITED = "limited"


EXPLANATION = {
    Level.FULL: "full history",
    Level.LIMITED: "limited: this leg carries no verification, so agent and gateway "
                   "messages and everything after a verification are withheld; verify the "
                   "caller (send a code, enter what they read back) to see them",
}


@dataclass(frozen=True, slots=True)
class Disclosure:
    """The policy: what an unverified leg of each binding sees (default: limited)."""

    unverified: Mapping[str, Level] = field(default_factory=dict)

    def level(self, binding: str, carries_verification: bool) -> Level:
        if carries_verification:
            return Level.FULL
        return self.unverified.get(binding, Level.LIMITED)


def entry_shown(entry: Mapping[str, Any], cutoff: str | None) -> bool:
    """Whether a limited bundle shows this transcript entry's text: the call events
    (channels and when) always, the customer's own messages before `cutoff` (the ISO time of
    the conversation's first verification, None when there was none)."""
    if entry["kind"] == "call":
        return True
    if cutoff is not None and entry["at"] >= cutoff:
        return False
    return entry["direction"] == "in" and entry["kind"] == "message"


def _call_event(entry: dict[str, Any], own: str | None) -> dict[str, Any]:
    """A call event as a limited bundle shows it: another number of the customer's that it
    names is masked, as their addresses are."""
    author = entry.get("author") or ""
    if author != own and ":" in author and not author.startswith(("agent:", "gateway")) \
            and entry.get("text"):
        return {**entry, "text": entry["text"].replace(author, mask_address(author)),
                "author": mask_address(author), "data": None}
    return entry


def withheld(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as a limited bundle lists it: when, where, who; no text, no data."""
    return {**entry, "text": None, "data": None, "withheld": True}


def limit_transcript(entries: list[dict[str, Any]], cutoff: str | None,
                     own: str | None = None) -> list[dict[str, Any]]:
    """The transcript as a limited bundle of the leg whose address is `own` shows it."""
    return [(_call_event(e, own) if e["kind"] == "call" else e) if entry_shown(e, cutoff)
            else withheld(e) for e in entries]


def mask_address(address: str) -> str:
    """An address as a limited bundle shows the customer's other addresses: its kind and
    enough to tell them apart ("email:a…@example.org", "sms:…0100"), not enough to use."""
    channel, _, value = address.partition(":")
    local, at, domain = value.partition("@")
    if at:
        return f"{channel}:{local[:1]}…@{domain}"
    return f"{channel}:…{value[-4:]}" if len(value) > 4 else f"{channel}:…"
