"""The channel interface: what a channel is, and what the core offers every channel.

A channel (`connectors/<name>`) is built from settings (`from_settings`, None when the
channel is not configured), may mount aiohttp routes (webhooks), is started with the core's
`InboundSink` and closed by the composition root (`gateway/app.py`), and sends the outbox's
messages for the address channels it names. Channels never import routing or the store; the
core never imports a channel. Inbound data flows channel -> typed event (`gateway/events.py`)
-> `InboundSink`; outbound flows outbox -> `Channel.send` with a typed `OutboundMessage`.

`connectors/memory.py` is the worked example; docs/architecture.md has the recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from gateway.domain import (
    Assignment,
    CallRoute,
    ConversationId,
    ConversationSummary,
    EscalationIssued,
    IngestResult,
    LegId,
    OutboxId,
    ReplyQueued,
    VerificationStarted,
)

if TYPE_CHECKING:
    from aiohttp import web

    from config.settings import Settings
    from gateway.agents import Agent, AgentDirectory, AgentTarget
    from gateway.bus import EventBus
    from gateway.clock import Clock
    from gateway.events import CallEvent, DeliveryStatus, IncomingCall, InboundMessage
    from gateway.metrics import Metrics

# whatsapp-user: a WhatsApp user known only by Meta's business-scoped user id (no number).
MESSAGING_CHANNELS = frozenset({"sms", "whatsapp", "whatsapp-user", "email", "xmpp", "web"})


# ---- outbound: what the outbox hands a channel ----------------------------------------------


class OutboundKind(StrEnum):
    MESSAGE = "message"  # a text on the customer's leg (an agent's reply, a gateway notice)
    OTP = "otp"  # a one-time code
    CALL = "call"  # a callback to place


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """One outbox row as a channel sees it; always one of the three kinds below."""

    id: OutboxId  # stable across retries: usable as an idempotency key
    channel: str
    to: str  # the customer's address, e.g. "sms:+14155550100"
    from_: str | None = None  # our address on that channel, when the leg knows it
    conversation_id: ConversationId | None = None
    leg_id: LegId | None = None
    thread_key: str | None = None  # the leg's thread (an email thread's root, a chat)
    attempt: int = 1
    kind: ClassVar[OutboundKind]


@dataclass(frozen=True, slots=True, kw_only=True)
class TextMessage(OutboundMessage):
    text: str
    kind: ClassVar[OutboundKind] = OutboundKind.MESSAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeMessage(OutboundMessage):
    """A one-time code; `text` is the whole message the customer reads, code included."""

    text: str
    challenge_id: str | None = None
    kind: ClassVar[OutboundKind] = OutboundKind.OTP


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackRequest(OutboundMessage):
    """A call to place to `to`; answered, it presents `escalation_token` to the core."""

    escalation_token: str
    escalation_id: str
    kind: ClassVar[OutboundKind] = OutboundKind.CALL


Texted = TextMessage | CodeMessage  # what a messaging channel can send


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


class SendInDoubt(SendError):
    """The provider may have taken the message: the connection was lost after it was handed
    over and before the answer (SMTP: during DATA). The outbox marks it `unknown` and never
    resends it by itself; an agent decides."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class ChannelError(Exception):
    """A channel cannot start (a login refused, a port taken); the message says what to fix.
    `gateway serve` prints it as one line and exits."""


@runtime_checkable
class Connector(Protocol):
    """What the outbox worker needs from a channel. A channel whose sends take long (SMTP:
    several commands, each with its own timeout) may say how long the outbox must wait
    for one: an attribute `send_timeout` (seconds) above its own worst case, so the outbox
    never cancels a send halfway through a handover."""

    channels: frozenset[str]

    async def send(self, message: OutboundMessage) -> SendReceipt: ...


# ---- channels -----------------------------------------------------------------------------------


class Presence(StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    DND = "dnd"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What `gateway serve` prints about a mounted channel: its name and the URLs to paste
    into the provider's console (e.g. "A message comes in: https://…/webhooks/twilio/…")."""

    name: str
    urls: tuple[tuple[str, str], ...] = ()  # (what, url)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextLink:
    """A context token issued for a leg: the capability URL an agent opens."""

    leg_id: LegId
    conversation_id: ConversationId
    token: str
    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ReplyThread:
    """What an outbound message on a threaded leg (email) needs to join the thread in the
    customer's client: `InboundSink.reply_thread`. Ids are canonical (no angle brackets)."""

    token: str | None  # a fresh thread token for the leg (None: the message has no leg)
    in_reply_to: str | None = None  # the newest message received on the leg
    references: tuple[str, ...] = ()  # oldest first: received and sent on the leg
    subject: str | None = None  # the thread's subject, as its first message gave it
    to_name: str | None = None  # the customer's display name
    automated: bool = False  # written by the gateway itself (a code, a notice), not a person


@dataclass(frozen=True, slots=True)
class CallOffer:
    """A call offered to one agent: whom, where their phone is, and what the call carries."""

    agent_id: str
    target: AgentTarget
    route: CallRoute


@dataclass(frozen=True, slots=True)
class ChannelDeps:
    """What a channel may need besides the sink, handed to `from_settings`."""

    clock: Clock
    metrics: Metrics
    router: AgentDirectory  # the core's agent router (SIP registers phones in it)


@runtime_checkable
class Channel(Protocol):
    """One channel, started with the sink and closed by the composition root."""

    name: str  # "twilio", "whatsapp", "sip", "email", "xmpp", "memory"
    channels: frozenset[str]  # the address channels `send` serves; empty when it sends nothing

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        """aiohttp routes to mount (webhooks); () when the channel has none. Called before
        `start`; handlers reach the sink the channel is given there (503 before that)."""
        ...

    def describe(self) -> ChannelInfo: ...

    async def start(self, sink: InboundSink) -> None:
        """Connect, listen, log in. Raise `ChannelError` (or OSError) with a message a user
        can act on when that fails."""
        ...

    async def aclose(self) -> None:
        """Stop: cancel every task this channel owns; safe after a failed or partial start."""
        ...

    async def send(self, message: OutboundMessage) -> SendReceipt: ...


class ChannelFactory(Protocol):
    """A channel class as the registry in `gateway/app.py` lists it."""

    name: str

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> Channel | None:
        """The channel, or None when it is not configured; raises
        `config.settings.ConfigError` naming the key when it is configured wrongly."""
        ...

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        """For the start-up report: what to set to turn the channel on."""
        ...


# ---- what the core offers channels ------------------------------------------------------------


class AgentRouter(Protocol):
    """The core's agent choice: who takes a call or a conversation now.

    Presence comes from the channels (SIP registrations, XMPP presence); load is counted per
    agent; a call that an agent did not take is offered to the next one; a call's end
    releases its agent. The SIP proxy and the Twilio Voice webhook only translate answers.
    """

    def get(self, agent_id: str) -> Agent | None: ...

    def by_xmpp(self, jid: str) -> Agent | None:
        """The agent whose configured bare JID this is (case-insensitive)."""
        ...

    def set_presence(self, agent_id: str, source: str, presence: Presence) -> None:
        """`source` is the channel reporting it ("sip", "xmpp"); an agent is available when
        any source says available."""
        ...

    def presence(self, agent_id: str) -> Presence: ...

    def load(self, agent_id: str) -> int:
        """Calls the agent has now (offered or answered)."""
        ...

    def offer(self, call_ref: str, exclude: Sequence[str] = (),
              agent_id: str | None = None) -> AgentTarget | None:
        """The least busy available agent with a phone for this call, not in `exclude`
        (ties round-robin), or `agent_id`'s phone when given; now counted busy with it; a
        call holds one agent at a time. The core names calls by leg id here."""
        ...

    def release(self, call_ref: str, agent_id: str | None = None) -> str | None:
        """The call no longer holds its agent (only when it is `agent_id`, if given); the
        agent it held, or None."""
        ...

    def holding(self, call_ref: str) -> str | None:
        """The agent a call is offered to (or answered by) now."""
        ...


class AgentDesk(Protocol):
    """Agent commands, for channels where agents work (XMPP now; the HTTP API uses the same
    core commands). `agent_id` is the acting agent, already authenticated by the channel."""

    async def take(self, agent_id: str, conversation_id: str | None) -> Assignment | None:
        """Assign a conversation (None: the next one waiting) to the agent; None when no
        conversation waits. Conflict when another agent has it."""
        ...

    async def release(self, agent_id: str, conversation_id: str) -> Assignment: ...

    async def release_all(self, agent_id: str) -> list[Assignment]:
        """The agent went offline: every conversation they had goes back to the queue."""
        ...

    async def assigned(self, agent_id: str) -> list[ConversationId]:
        """The open conversations the agent has now (read only)."""
        ...

    async def close(self, agent_id: str, conversation_id: str) -> None: ...

    async def reply(self, agent_id: str, conversation_id: str, text: str) -> ReplyQueued: ...

    async def verify(self, agent_id: str, conversation_id: str, address: str | None
                     ) -> VerificationStarted: ...

    async def escalate(self, agent_id: str, conversation_id: str, mode: str
                       ) -> EscalationIssued: ...

    async def summary(self, conversation_id: str) -> ConversationSummary:
        """The bundle summary an agent sees first: customer, verification badge, last
        messages, context link."""
        ...


class InboundSink(Protocol):
    """What the core offers every channel. Each coroutine returns after the commit."""

    bus: EventBus  # committed domain events, for channels that notify agents
    router: AgentRouter
    desk: AgentDesk

    async def ingest(self, event: InboundMessage) -> IngestResult:
        """Store an inbound message once (deduplicated by provider and provider_id)."""
        ...

    async def delivery_status(self, event: DeliveryStatus) -> str | None: ...

    async def open_call(self, call: IncomingCall) -> CallRoute:
        """The call's leg (new, unless a live context token or a provider-signed reference
        names one) with its context token. Raises `gateway.domain.CallRefused` (e.g.
        `PinAttemptsLimited`) when the call must not reach anyone: answer it finally."""
        ...

    async def offer_call(self, route: CallRoute, tried: Sequence[str] = (), *,
                         agent_id: str | None = None, exclude: Sequence[str] = ()
                         ) -> CallOffer | None:
        """Offer the call to the next agent (none of `tried` or `exclude`), or to
        `agent_id` (the caller dialled them); publishes `CallOffered`. None when nobody can
        take it (or enough agents were tried)."""
        ...

    async def call_event(self, event: CallEvent) -> bool:
        """Progress of a call, on the leg `event.leg_id` names (`CallRoute.leg_id`); ended
        or failed releases its agent and publishes `CallEnded`."""
        ...

    async def check_thread_token(self, token: str) -> ConversationId | None:
        """The conversation id a gateway-issued thread token (an email reply address or
        Message-ID) belongs to; None for an unknown or forged one."""
        ...

    async def issue_thread_token(self, leg_id: LegId) -> str:
        """A long-lived token for a messaging leg's outbound thread (an email's reply
        address): a reply that carries it is bound to that leg's customer."""
        ...

    async def reply_thread(self, outbox_id: OutboxId) -> ReplyThread:
        """For an outbound message being sent: a fresh thread token for its leg and the ids
        and subject that make it a reply in the customer's client (`gateway/threads.py`)."""
        ...

    async def issue_context(self, leg_id: LegId) -> ContextLink:
        """A context token for a messaging leg (an XMPP agent's first message carries it)."""
        ...

    async def checkpoint(self, key: str) -> str | None:
        """A channel's stored position (IMAP UIDVALIDITY/UID, an XMPP archive id); written in
        the transaction of the message that advances it (`InboundMessage.checkpoint`)."""
        ...
