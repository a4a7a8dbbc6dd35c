"""The channel interface: what a channel is, and what the core offers every channel.

A channel (`connectors/<name>`) is built from settings (`from_settings`, None when the
channel is not configured), may mount aiohttp routes (webhooks), is started with the core's
`InboundSink` and closed by the composition root (`gateway/app.py`), and sends the outbox's
messages for the address channels it names. Channels never import routing or the store; the
core never imports a channel. Inbound data flows channel -> typed event (`gateway/events.py`)
-> `InboundSink`; outbound flows outbox -> `Channel.send`.

Status: `OutboundMessage`, `SendReceipt`, `SendError` and `Connector` are what the landed
outbox uses. `Channel`, `InboundSink`, `AgentRouter` and `AgentDesk` are the target of the
channel-interface issue (#8); email (#9), XMPP (#10) and the console (#11) are built on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.bus import EventBus
    from gateway.events import CallEvent, DeliveryStatus, IncomingCall, InboundMessage

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


# ---- the target interface (#8) ------------------------------------------------------------


class Presence(StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    DND = "dnd"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What `make run` prints about a mounted channel: its name and the URLs to paste into
    the provider's console (e.g. "Twilio messaging webhook: https://…/webhooks/twilio/…")."""

    name: str
    urls: tuple[tuple[str, str], ...] = ()  # (what, url)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextLink:
    """A context token issued for a leg: the capability URL an agent opens."""

    leg_id: str
    conversation_id: str
    token: str
    url: str
    expires_at: datetime


@runtime_checkable
class Channel(Protocol):
    """One channel. Built by a `from_settings(settings, deps)` classmethod that returns None
    when the channel is not configured (and raises `config.settings.ConfigError` naming the
    key when it is configured wrongly)."""

    name: str  # "twilio", "whatsapp", "sip", "email", "xmpp", "memory"
    channels: frozenset[str]  # the address channels `send` serves; empty when it sends nothing

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        """aiohttp routes to mount (webhooks); () when the channel has none."""
        ...

    def describe(self) -> ChannelInfo: ...

    async def start(self, sink: InboundSink) -> None:
        """Connect, listen, log in. Raise with a message a user can act on when that fails."""
        ...

    async def aclose(self) -> None:
        """Stop: cancel every task this channel owns; safe after a failed or partial start."""
        ...

    async def send(self, message: OutboundMessage) -> SendReceipt: ...


class AgentRouter(Protocol):
    """The core's agent choice: who takes a call or a conversation now.

    Presence comes from the channels (SIP registrations, XMPP presence); load is counted per
    agent; a call that an agent did not take is offered to the next one; a call's end
    releases its agent. The SIP proxy and the Twilio Voice webhook only translate answers.
    """

    def set_presence(self, agent_id: str, source: str, presence: Presence) -> None:
        """`source` is the channel reporting it ("sip", "xmpp"); an agent is available when
        any source says available."""
        ...


class AgentDesk(Protocol):
    """Agent commands, for channels where agents work (XMPP now; the HTTP API uses the same
    core commands). `agent_id` is the acting agent, already authenticated by the channel."""

    async def take(self, agent_id: str, conversation_id: str | None) -> Any:
        """Assign a conversation (None: the next one waiting) to the agent."""
        ...

    async def release(self, agent_id: str, conversation_id: str) -> None: ...

    async def close(self, agent_id: str, conversation_id: str) -> None: ...

    async def reply(self, agent_id: str, conversation_id: str, text: str) -> Any: ...

    async def verify(self, agent_id: str, conversation_id: str, address: str | None) -> Any: ...

    async def escalate(self, agent_id: str, conversation_id: str, mode: str) -> Any: ...

    async def summary(self, conversation_id: str) -> Any:
        """The bundle summary an agent sees first: customer, verification badge, last
        messages, context link."""
        ...


class InboundSink(Protocol):
    """What the core offers every channel. Each coroutine returns after the commit."""

    bus: EventBus  # committed domain events, for channels that notify agents
    router: AgentRouter
    desk: AgentDesk

    async def ingest(self, event: InboundMessage) -> Any:
        """Store an inbound message once (deduplicated by provider and provider_id)."""
        ...

    async def delivery_status(self, event: DeliveryStatus) -> str | None: ...

    async def open_call(self, call: IncomingCall) -> Any: ...

    async def call_event(self, event: CallEvent) -> bool: ...

    async def check_thread_token(self, token: str) -> str | None:
        """The conversation id a gateway-issued thread token (an email reply address or
        Message-ID) belongs to; None for an unknown or forged one."""
        ...

    async def issue_context(self, leg_id: str) -> ContextLink:
        """A context token for a messaging leg (an XMPP agent's first message carries it)."""
        ...

    async def checkpoint(self, key: str) -> str | None:
        """A channel's stored position (IMAP UIDVALIDITY/UID, an XMPP archive id); written in
        the transaction of the message that advances it (`InboundMessage.checkpoint`)."""
        ...
