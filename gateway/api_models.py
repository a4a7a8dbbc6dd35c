"""The agent API's request and response shapes as pydantic models: the source of the OpenAPI
document (`gateway/openapi.py`) and of the checks that responses match it.

Names fixed by CONTRACT.md are required fields; everything else is optional, and every
model allows more fields ("more fields are welcome"). Times are ISO 8601 strings in UTC.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Evidence = Literal["proved", "attested", "same-number", "claimed", "agent"]
Disclosure = Literal["full", "limited"]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(Model):
    error: str = Field(description="what went wrong, for a person")


# ---- customers, conversations, bundles ----------------------------------------------------


class Address(Model):
    address: str = Field(examples=["whatsapp:+14155550100"])
    evidence: Evidence
    detail: str | None = None
    linked_at: Time | None = None


class CustomerConversation(Model):
    id: str
    status: Literal["open", "closed"]
    opened_at: Time | None = None
    last_activity_at: Time | None = None
    closed_at: Time | None = None


class GrantSummary(Model):
    method: str
    address: str
    verified_at: Time
    expires_at: Time


class CustomerRef(Model):
    id: str
    display_name: str | None = None
    created_at: Time | None = None
    merged_into: str | None = None
    addresses: list[Address]


class Customer(CustomerRef):
    conversations: list[CustomerConversation]
    latest_verification: GrantSummary | None = None


class Verification(GrantSummary):
    """A verification the leg carries: the badge an agent sees."""

    age_seconds: int | None = None
    via: str | None = Field(None, description="the trust rule's reason, e.g. verified-via-"
                            "escalation")
    summary: str | None = Field(None, examples=["verified by sms-otp, 4 min ago"])


class TranscriptEntry(Model):
    id: int
    at: Time
    channel: str
    direction: Literal["in", "out", "event"]
    author: str
    text: str | None = Field(description="null when withheld from a limited bundle")
    kind: str | None = Field(None, description="message | call | system")
    leg_id: str | None = None
    provider_at: Time | None = None
    data: dict[str, Any] | None = None
    withheld: bool | None = Field(None, description="true in a limited bundle when the text "
                                  "is withheld")


class Leg(Model):
    id: str
    channel: str
    address: str | None = None
    local_address: str | None = None
    binding: str | None = None
    started_at: Time | None = None
    ended_at: Time | None = None
    agent_id: str | None = None


class Conversation(Model):
    id: str
    customer_id: str
    status: Literal["open", "closed"]
    opened_at: Time | None = None
    last_activity_at: Time | None = None
    closed_at: Time | None = None
    legs: list[Leg]
    transcript: list[TranscriptEntry] = Field(description="oldest first")


class BundleLeg(Model):
    id: str
    channel: str
    address: str | None = None
    binding: str | None = None
    started_at: Time | None = None


class EarlierConversation(Model):
    id: str
    status: str
    opened_at: Time | None = None
    closed_at: Time | None = None
    entries: int | None = None
    channels: list[str] | None = None
    last_message: str | None = None


class ContextBundle(Model):
    conversation_id: str
    customer: CustomerRef
    verification: Verification | None
    verification_reason: str
    disclosure: Disclosure | None = Field(
        None, description="full for a leg that carries a verification, limited otherwise")
    transcript: list[TranscriptEntry]
    legs: list[Leg]
    expires_at: Time | None
    conversation_status: str | None = None
    leg: BundleLeg | None = None
    verification_explanation: str | None = None
    verification_expired_at: Time | None = None
    earlier_conversations: list[EarlierConversation] | None = None


# ---- commands -----------------------------------------------------------------------------


class ReplyRequest(Model):
    text: str = Field(max_length=4096)
    agent: str | None = Field(None, description="the author, for the service token only; "
                              "with an agent's own token the author is that agent")


class Reply(Model):
    id: str = Field(description="the outbox id")
    status: str
    leg_id: str
    channel: str
    to: str


class VerificationRequest(Model):
    address: str | None = Field(None, description="an address of the customer's; default "
                                "the active messaging leg's")


class VerificationStarted(Model):
    challenge_id: str
    address: str
    expires_at: Time
    outbox_id: str


class CodeCheckRequest(Model):
    code: str = Field(description="the code the caller reads out")
    leg_id: str = Field(description="the leg (the call) the code verifies")


class CodeCheck(Model):
    outcome: Literal["passed", "wrong", "locked", "expired"] = Field(
        description="passed | wrong | locked | expired")
    challenge_id: str
    leg_id: str
    verified: bool = Field(description="the leg now carries a verification: its context "
                           "link returns the full bundle")
    attempts_left: int
    verification: GrantSummary | None = Field(None, description="on passed: what was proved")


class EscalationRequest(Model):
    channel: Literal["voice"]
    mode: Literal["callback", "dial-in"]


class Escalation(Model):
    id: str
    channel: str
    mode: str
    expires_at: Time
    carries_verification: bool
    outbox_id: str | None = None
    sent_to: str | None = None
    calling: str | None = None


class Closed(Model):
    id: str
    status: Literal["closed"]


class MergeRequest(Model):
    survivor_id: str
    merged_id: str
    agent: str | None = None


class MergeCreated(Model):
    id: str


class MergeUndone(Model):
    id: str
    undone: bool


class OutboxMessage(Model):
    id: str
    channel: str
    kind: str
    to: str
    status: str
    attempts: int
    provider_id: str | None = None
    last_error: str | None = None
    conversation_id: str | None = None
    leg_id: str | None = None
    created_at: Time | None = None
    updated_at: Time | None = None


# ---- the workspace ------------------------------------------------------------------------


class InboxParams(Model):
    status: Literal["open", "closed", "all"] = "open"
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    channel: str | None = Field(None, description="only conversations with a leg on it")
    agent: str | None = Field(None, description="only conversations assigned to or handled "
                              "by this agent")


class InboxItem(Model):
    id: str
    customer_id: str
    status: Literal["open", "closed"]
    channels: list[str]
    last_at: Time
    last_text: str | None
    last_kind: str | None = None
    last_direction: str | None = None
    last_channel: str | None = None
    customer_name: str | None = None
    customer_address: str | None = None
    assigned_agent_id: str | None = None
    agents: list[str] | None = None
    waiting: int | None = Field(None, description="customer messages since our last one")
    entries: int | None = None
    opened_at: Time | None = None
    closed_at: Time | None = None


class InboxPage(Model):
    items: list[InboxItem] = Field(description="most recent activity first")
    next_cursor: str | None


class Delivery(Model):
    status: str
    error: str | None = None
    kind: str | None = None
    attempts: int | None = None
    updated_at: Time | None = None


class TimelineLeg(Leg):
    verification: Verification | None = None
    verification_reason: str | None = None
    verification_explanation: str | None = None
    verification_expired_at: Time | None = None
    disclosure: Disclosure | None = None


class EntryItem(TranscriptEntry):
    type: Literal["entry", "code"]
    delivery: Delivery | None = None


class EscalationItem(Model):
    type: Literal["escalation"]
    id: str
    at: Time
    channel: str
    mode: str
    target_address: str | None = None
    carries_verification: bool
    expires_at: Time | None = None
    used_at: Time | None = None
    used_by_leg_id: str | None = None


class MergeItem(Model):
    type: Literal["merge"]
    id: str
    at: Time
    survivor_id: str
    merged_id: str
    agent: str | None = None
    undone_at: Time | None = None


class Challenge(Model):
    id: str
    address: str
    method: str
    status: str
    created_at: Time
    expires_at: Time
    attempts: int
    max_attempts: int
    leg_id: str | None = None


class Timeline(Model):
    id: str
    customer_id: str
    status: Literal["open", "closed"]
    opened_at: Time | None = None
    last_activity_at: Time | None = None
    closed_at: Time | None = None
    assigned_agent_id: str | None = None
    customer: CustomerRef
    legs: list[TimelineLeg]
    reply_leg_id: str | None = None
    timeline: list[Annotated[EntryItem | EscalationItem | MergeItem,
                             Field(discriminator="type")]]
    challenges: list[Challenge]


class Me(Model):
    kind: Literal["agent", "service"]
    agent_id: str | None
    name: str


class JourneyParams(Model):
    since: str | None = Field(None, description="ISO date or time; default 30 days before "
                              "until")
    until: str | None = Field(None, description="ISO date or time; default now")
    period: Literal["day", "week", "month"] = "day"


class Switches(Model):
    total: int
    per_conversation: float | None
    distribution: dict[str, int]


class VerificationCounts(Model):
    carried: int = Field(description="legs that carried a verification proved elsewhere")
    repeated: int = Field(description="codes sent while the customer was still verified")
    fresh: int = Field(description="codes sent to a customer without a live verification")


class Resolution(Model):
    resolved: int
    median_seconds: float | None
    p90_seconds: float | None
    single_channel_median_seconds: float | None
    multi_channel_median_seconds: float | None


class JourneySummary(Model):
    conversations: int
    first_channel: dict[str, int]
    last_channel: dict[str, int]
    channel_switches: Switches
    multi_channel: int
    repeat_contacts_7d: int
    verifications: VerificationCounts
    resolution: Resolution


class JourneyPeriod(JourneySummary):
    start: Time
    end: Time


class JourneysReport(Model):
    since: Time
    until: Time
    period: Literal["day", "week", "month"]
    periods: list[JourneyPeriod]
    totals: JourneySummary


# ---- the event stream (one model per SSE event name) ---------------------------------------


class MessageEvent(Model):
    conversation_id: str
    customer_id: str
    leg_id: str
    entry: TranscriptEntry


class CallEvent(Model):
    conversation_id: str
    customer_id: str
    leg_id: str
    agent_id: str
    context_url: str
    call_ref: str


class CallEndedEvent(Model):
    conversation_id: str
    customer_id: str
    leg_id: str
    agent_id: str | None
    call_ref: str


class AssignedEvent(Model):
    conversation_id: str
    customer_id: str
    agent_id: str | None
    previous_agent_id: str | None


class ClosedEvent(Model):
    conversation_id: str
    customer_id: str


class DeliveryEvent(Model):
    conversation_id: str | None
    outbox_id: str
    status: str = Field(examples=["sent", "delivered", "read", "failed", "pending"])
    error: str | None


class PresenceEvent(Model):
    agent_id: str
    presence: Literal["available", "away", "dnd", "offline"]


class ResyncEvent(Model):
    last_event_id: int
    reason: str


SSE_EVENTS: dict[str, type[Model]] = {
    "message": MessageEvent, "call": CallEvent, "call-ended": CallEndedEvent,
    "assigned": AssignedEvent, "closed": ClosedEvent, "delivery": DeliveryEvent,
    "presence": PresenceEvent,
    "resync": ResyncEvent,
}


class OutboxHealth(Model):
    passes: int = Field(description="completed scans for due messages")
    in_flight: int = Field(description="sends on the wire now")


class Health(Model):
    status: str = Field(description="ok, or starting (503)")
    database: str | None = None
    channels: list[str] | None = None
    services: list[str] | None = None
    writes: int | None = None
    commits: int | None = None
    outbox: OutboxHealth | None = None


# ---- the provider webhooks (what the providers send; the gateway reads these fields) --------
# Field names are the providers' own. Each model lists what the gateway uses; providers send
# more, and every field they send is covered by their signature.


class TwilioMessagingForm(Model):
    """Twilio's incoming-message webhook (SMS, MMS, WhatsApp through Twilio)."""

    MessageSid: str = Field(description="deduplicates: the same MessageSid is stored once")
    AccountSid: str
    From: str = Field(examples=["+14155550100", "whatsapp:+14155550100"])
    To: str
    Body: str = ""
    NumMedia: str | None = Field(None, description="how many MediaUrlN / MediaContentTypeN")
    ProfileName: str | None = Field(None, description="WhatsApp: the sender's profile name")
    WaId: str | None = None


class TwilioStatusForm(Model):
    """Twilio's message status callback."""

    MessageSid: str
    MessageStatus: str = Field(examples=["sent", "delivered", "read", "undelivered", "failed"])
    ErrorCode: str | None = None
    ErrorMessage: str | None = None


class TwilioVoiceForm(Model):
    """Twilio Voice: an incoming call, the PIN it typed (`Digits`), or how `<Dial>` ended."""

    CallSid: str
    AccountSid: str | None = None
    From: str | None = None
    To: str | None = None
    CallStatus: str | None = None
    Direction: str | None = Field(None, examples=["inbound", "outbound-api"])
    Digits: str | None = Field(None, description="the escalation PIN (step=pin)")
    DialCallStatus: str | None = Field(None, description="step=dial: how the agent leg ended")
    DialCallDuration: str | None = None


class TwilioVoiceParams(Model):
    step: Literal["pin", "route", "dial"] | None = Field(
        None, description="set by the gateway's own TwiML: none for a new call")
    escalation: str | None = Field(None, description="a callback's escalation token (the "
                                   "gateway placed the call)")
    agent: str | None = Field(None, description="step=dial: the agent that was dialled")
    tried: str | None = Field(None, description="step=dial: agents tried, comma-separated")


class TwilioVoiceStatusForm(Model):
    """Twilio Voice status callback (the caller's call, or an agent leg with ParentCallSid)."""

    CallSid: str
    CallStatus: str
    CallDuration: str | None = None
    ParentCallSid: str | None = None
    Direction: str | None = None


class TwilioVoiceStatusParams(Model):
    agent: str | None = Field(None, description="the agent a <Dial> leg rang")


class MetaHandshakeParams(Model):
    hub_mode: Literal["subscribe"] = Field(alias="hub.mode")
    hub_verify_token: str = Field(alias="hub.verify_token",
                                  description="must equal GATEWAY_WHATSAPP_VERIFY_TOKEN")
    hub_challenge: str = Field(alias="hub.challenge", description="echoed back on success")


class MetaChange(Model):
    field: str = Field(examples=["messages"])
    value: dict[str, Any] = Field(description="messaging_product, metadata, contacts, "
                                  "messages (deduplicated by id) and statuses")


class MetaEntry(Model):
    id: str
    changes: list[MetaChange]


class MetaWebhook(Model):
    """Meta WhatsApp Cloud API webhook delivery (several events per delivery)."""

    object: Literal["whatsapp_business_account"]
    entry: list[MetaEntry]
