"""Typed events: what an edge hands the core after it has checked a provider's request.

Edges (webhooks, connectors) build these; the core never sees a provider's raw payload.
Values are checked here once, so the core can trust their shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gateway.addresses import Address

CallEventKind = Literal["ringing", "answered", "ended", "failed", "transferred"]


class Event:
    """Base of every event an edge hands to the core."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Attachment:
    url: str
    content_type: str | None = None
    name: str | None = None
    size: int | None = None  # bytes, when the channel knows (email parts stored by reference)


@dataclass(frozen=True, slots=True)
class InboundMessage(Event):
    """A customer wrote to us on a messaging channel (SMS, WhatsApp, email, XMPP, web)."""

    sender: Address
    recipient: str  # our number / mailbox / JID, as the channel names it
    text: str
    provider: str  # "twilio", "meta", "imap", "xmpp", "memory"
    provider_id: str  # MessageSid, wamid, Message-ID, stanza id: the dedupe key
    thread_key: str  # one leg per thread: see DESIGN.md "Conversations and legs"
    attested: bool  # the channel authenticates the sender (WhatsApp wa_id, XMPP JID…)
    provider_at: datetime | None = None
    attachments: tuple[Attachment, ...] = ()
    profile_name: str | None = None
    also_known_as: tuple[Address, ...] = ()  # e.g. a WhatsApp user_id beside the wa_id
    thread_token_ok: bool = False  # an email reply that carried our own thread token
    extra: dict[str, str] = field(default_factory=dict)
    # What kind of message: auto-replies (out-of-office, Auto-Submitted) and bounces are
    # recorded as such, never as the customer speaking, and never answered.
    kind: Literal["message", "auto-reply", "bounce"] = "message"
    # The provider ids this message answers (email In-Reply-To then References, newest
    # first): how a reply finds its thread when no thread token is present.
    thread_refs: tuple[str, ...] = ()
    # A gateway-issued thread token found in the message (an email reply address
    # support+<token>@…, or one embedded in our own Message-ID); the core checks it.
    thread_token: str | None = None
    # A channel position (key, value), e.g. ("imap:INBOX", "<uidvalidity>:<uid>"), stored in
    # the same transaction as the message, so a crash can neither skip nor double it.
    checkpoint: tuple[str, str] | None = None
    # The channel threads replies by provider ids (email: Message-ID, In-Reply-To,
    # References): the core places the message by `thread_token` and `thread_refs` and
    # remembers its id and refs as anchors of the conversation (gateway/threads.py).
    threaded: bool = False

    def __post_init__(self) -> None:
        if not self.provider_id:
            raise ValueError("provider_id is required: it is how duplicates are found")
        if not self.thread_key:
            raise ValueError("thread_key is required")

    @property
    def channel(self) -> str:
        return self.sender.channel


@dataclass(frozen=True, slots=True)
class DeliveryStatus(Event):
    """A provider's word on an outbound message (queued, sent, delivered, read, failed…)."""

    provider: str
    provider_message_id: str
    status: str
    at: datetime | None = None
    error: str | None = None
    event_id: str | None = None  # for dedupe when the provider gives one


@dataclass(frozen=True, slots=True)
class IncomingCall(Event):
    """A call is being set up towards an agent (SIP INVITE, Twilio Voice webhook)."""

    caller: Address | None  # voice:+E164 from caller ID, sip:user@host; None when withheld
    callee: str
    call_ref: str  # SIP Call-ID or Twilio CallSid: names the call, never binds it
    provider: str  # "sip" | "twilio"
    pin: str | None = None  # escalation PIN typed or dialled by the caller
    escalation_token: str | None = None  # carried by a callback the gateway placed
    caller_authenticated: bool = False  # e.g. a SIP REGISTERed, digest-authenticated caller
    # A context token an upstream edge already issued for this call (Twilio's `<Dial><Sip>`
    # to a registered agent arrives at the SIP edge with `X-Context`): that leg, not a new one.
    context_token: str | None = None
    # Where the attempt came from, for guess limits (PINs): a SIP peer's IP address; for
    # Twilio Voice the caller's number. Never an identity.
    source: str | None = None
    # Caller-ID attestation (STIR/SHAKEN) where the network gives it: "A", "B" or "C" from a
    # trusted trunk's verstat, or Twilio's StirVerstat value. Evidence, never verification.
    attestation: str | None = None
    # The provider signed `call_ref` (a CallSid in a signed Twilio webhook): a retried or
    # next webhook of the same call finds its live leg by it. False for references the
    # caller chooses (a SIP Call-ID): such a call always gets a new leg.
    call_ref_signed: bool = False


@dataclass(frozen=True, slots=True)
class CallEvent(Event):
    """Progress of a call. `leg_id` is the leg the core returned for it (`CallRoute.leg_id`):
    how an edge names its call; without one only a provider-signed `call_ref` (a Twilio
    CallSid) finds that provider's leg."""

    call_ref: str
    provider: str
    kind: CallEventKind
    agent_id: str | None = None
    at: datetime | None = None
    duration_seconds: float | None = None
    detail: str | None = None
    event_id: str | None = None
    leg_id: str | None = None


_VERSTAT_PASSED = ("TN-VALIDATION-PASSED-A", "TN-VALIDATION-PASSED-B", "TN-VALIDATION-PASSED-C")


def attestation_of(verstat: str | None) -> str | None:
    """A STIR/SHAKEN verification status as the gateway records it: "A", "B" or "C" for
    TN-Validation-Passed-A/B/C, else the value as given (TN-Validation-Failed,
    No-TN-Validation), None for nothing. Twilio's `StirVerstat` and a trunk's `verstat`
    use these names (ATIS-1000074, 3GPP TS 24.229)."""
    if not verstat or not verstat.strip():
        return None
    value = verstat.strip()[:40]
    if value.upper() in _VERSTAT_PASSED:
        return value[-1].upper()
    return value
