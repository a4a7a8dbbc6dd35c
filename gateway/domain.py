"""The core's vocabulary: typed ids, the rows repositories return, the results commands return.

Everything here is a frozen dataclass (or a NewType over str): repositories in `gateway/`
turn store rows into these, commands (`gateway/inbound.py`, `calls.py`, `desk.py`) return
them, and `gateway/api.py` turns them into the JSON the contract fixes. Nothing here touches
the store or a channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NewType

CustomerId = NewType("CustomerId", str)
ConversationId = NewType("ConversationId", str)
LegId = NewType("LegId", str)
OutboxId = NewType("OutboxId", str)
EntryId = NewType("EntryId", int)


class NotFound(Exception):
    """The thing asked for does not exist (an API 404)."""


class Conflict(Exception):
    """The request cannot be done in the current state (an API 409); says why."""


class CallRefused(Exception):
    """The core will not route this call. The edge gives the caller a final answer that
    says why: SIP `status` with `sip_reason` as the reason phrase (no agent rings), Twilio
    `<Say>spoken</Say><Hangup/>`."""

    status = 403
    sip_reason = "Forbidden"
    spoken = "Sorry, we cannot take your call."


class PinAttemptsLimited(CallRefused):
    """Too many wrong escalation PINs: from this source, or from everybody together."""

    def __init__(self, limit: str) -> None:
        self.limit = limit  # "source" | "global" (gateway.throttle.Limited)
        if limit == "source":
            self.sip_reason = "Too Many Wrong PINs"
            self.spoken = ("Too many wrong PINs were entered from your line. Please try again "
                           "later, or call without a PIN and ask the agent to verify you.")
        else:
            self.sip_reason = "PIN Checks Paused, Too Many Wrong PINs"
            self.spoken = ("We cannot check PINs right now. Please try again in a few "
                           "minutes, or call without a PIN and ask the agent to verify you.")
        super().__init__(f"escalation PIN attempts limited ({limit})")


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds, the one time format of the API."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressLink:
    """Whom an address belongs to, and on what evidence (`gateway/identity.py`)."""

    customer_id: CustomerId
    evidence: str


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    """One query's answer for an inbound message: the sender's customer, their open
    conversation (if any) and the leg of this thread in it (if any)."""

    customer_id: CustomerId
    evidence: str
    conversation_id: ConversationId | None
    last_activity_at: datetime | None
    leg_id: LegId | None


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: ConversationId
    customer_id: CustomerId
    status: str  # open | closed
    opened_at: datetime
    last_activity_at: datetime
    closed_at: datetime | None
    agent_id: str | None  # the agent who took it; None while it waits in the queue


@dataclass(frozen=True, slots=True)
class LegRow:
    id: LegId
    conversation_id: ConversationId
    channel: str
    thread_key: str
    address: str  # the customer's address on this leg
    local_address: str | None  # our number / mailbox / JID
    binding: str
    escalation_id: str | None
    started_at: datetime
    ended_at: datetime | None
    agent_id: str | None


@dataclass(frozen=True, slots=True)
class CallLeg:
    """A call's leg as call set-up finds it (by call reference or by a live context token)."""

    leg_id: LegId
    conversation_id: ConversationId
    customer_id: CustomerId
    binding: str
    escalation_id: str | None
    started_at: datetime
    ended_at: datetime | None
    agent_id: str | None
    token_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One transcript entry as it was committed."""

    id: EntryId
    conversation_id: ConversationId
    leg_id: LegId
    at: datetime
    channel: str
    direction: str  # in | out | event
    kind: str  # message | call | system | auto-reply | bounce
    author: str
    text: str
    provider_at: datetime | None = None
    data: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The API's transcript entry (`GET /api/v1/conversations/{id}`)."""
        return {"id": self.id, "at": iso(self.at), "channel": self.channel,
                "direction": self.direction, "author": self.author, "text": self.text,
                "kind": self.kind, "leg_id": self.leg_id, "provider_at": iso(self.provider_at),
                "data": self.data}


# ---- command results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    customer_id: CustomerId | None = None
    conversation_id: ConversationId | None = None
    leg_id: LegId | None = None
    entry_id: EntryId | None = None
    new_leg: bool = False
    otp: str | None = None  # outcome when the message answered a code


@dataclass(frozen=True, slots=True)
class CallRoute:
    """Where a call goes and what it carries: the token, never the data."""

    customer_id: CustomerId
    conversation_id: ConversationId
    leg_id: LegId
    context_token: str
    context_url: str
    expires_at: datetime
    binding: str
    escalation_id: str | None
    call_ref: str = ""


@dataclass(frozen=True, slots=True)
class CodeChecked:
    """An agent entered the code a caller read out (`POST …/verifications/{id}/check`)."""

    outcome: str  # passed | wrong | locked | expired
    challenge_id: str
    leg_id: LegId
    attempts_left: int = 0
    address: str | None = None  # passed: the address the code proved
    method: str | None = None
    verified_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReplyQueued:
    """An outbound message written to the outbox (`POST …/messages`)."""

    id: OutboxId
    leg_id: LegId
    channel: str
    to: str
    status: str = "pending"


@dataclass(frozen=True, slots=True)
class VerificationStarted:
    """A one-time code on its way (`POST …/verifications`)."""

    challenge_id: str
    address: str
    expires_at: datetime
    outbox_id: OutboxId


@dataclass(frozen=True, slots=True)
class EscalationIssued:
    """A hand-off to a call (`POST …/escalations`): a PIN sent, or a callback queued."""

    id: str
    channel: str
    mode: str  # dial-in | callback
    expires_at: datetime
    carries_verification: bool
    outbox_id: OutboxId
    sent_to: str | None = None  # dial-in: the address the PIN went to
    calling: str | None = None  # callback: the number being called


@dataclass(frozen=True, slots=True)
class OutboxState:
    """An outbound message as an agent may check it (`GET /api/v1/outbox/{id}`)."""

    id: OutboxId
    channel: str
    kind: str
    to: str
    status: str
    attempts: int
    provider_id: str | None
    last_error: str | None
    conversation_id: ConversationId | None
    leg_id: LegId | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Assignment:
    """Who has a conversation now (the agent desk's take / release)."""

    conversation_id: ConversationId
    customer_id: CustomerId
    agent_id: str | None
    previous_agent_id: str | None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """What an agent sees first when they take a conversation in a chat client: who, whether
    verified (or why not), the last messages, and the context link for the whole bundle."""

    conversation_id: ConversationId
    customer_id: CustomerId
    display_name: str | None
    addresses: tuple[str, ...]
    verified: bool
    verification: str  # "verified by sms-otp, 3 min ago" or the reason it is not
    verification_reason: str
    last_messages: tuple[dict[str, Any], ...]  # transcript entries as the bundle shows them
    context_url: str | None
    agent_id: str | None
    # "full" or "limited" (gateway/disclosure.py): in a limited summary a message whose text
    # is withheld has "withheld": True and "text": None, as in the bundle.
    disclosure: str = "full"
