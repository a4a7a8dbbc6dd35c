"""The transport boundary between the core and the connectors.

A connector turns core commands into its protocol (`send`) and its protocol into typed events
handed to an injected sink. Connectors never import routing or the store; the core never
imports a connector (the composition root in `gateway/app.py` wires them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# whatsapp-user: a WhatsApp user known only by Meta's business-scoped user id (no number).
MESSAGING_CHANNELS = frozenset({"sms", "whatsapp", "whatsapp-user", "email", "xmpp", "web"})


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One outbox row as a connector sees it."""

    id: str  # the outbox id: stable across retries, usable as an idempotency key
    channel: str
    kind: str  # "message" | "otp" | "call"
    to: str  # the customer's address, e.g. "sms:+14155550100"
    from_: str | None  # our address on that channel, when the leg knows it
    text: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider: str
    provider_id: str | None
    status: str = "sent"  # the provider's first word: queued, accepted, sent


class SendError(Exception):
    """A send failed. `permanent` errors are not retried (4xx); others are, with back-off."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@runtime_checkable
class Connector(Protocol):
    """What the outbox worker needs from a channel."""

    channels: frozenset[str]

    async def send(self, message: OutboundMessage) -> SendReceipt: ...
