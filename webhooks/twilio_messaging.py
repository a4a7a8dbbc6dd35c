"""Twilio Messaging webhooks: inbound SMS / WhatsApp (`/webhooks/twilio/messaging`) and
delivery status callbacks (`/webhooks/twilio/status`).

The hot path is parse, verify, one durable write, answer: the raw body is parsed once
(`signatures.parse_form`), the signature computed once, the event handed to the core's
`ingest`
(group commit; it returns after the commit that holds it), and the answer is constant TwiML
bytes built at start-up. Nothing slow runs inside Twilio's 15-second window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import lru_cache

from aiohttp import web
from twilio.twiml.messaging_response import MessagingResponse

from gateway.addresses import Address, AddressError, make_address
from gateway.channels import InboundSink
from gateway.events import Attachment, DeliveryStatus, InboundMessage
from gateway.metrics import Metrics
from webhooks.signatures import TwilioSignature, verified_twilio_form

log = logging.getLogger("gateway.webhooks.twilio")

MESSAGING_PATH = "/webhooks/twilio/messaging"
STATUS_PATH = "/webhooks/twilio/status"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MAX_MEDIA = 10  # Twilio's own limit on media per message

# An empty <Response/>: we store the message and answer later through the REST API (the
# outbox), so the webhook never waits for an agent. Built once with Twilio's TwiML classes.
EMPTY_TWIML = str(MessagingResponse()).encode()
_TWIML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}

# Twilio's message states onto the outbox's (gateway/outbox.py RANK). "sending" (handed to
# the carrier) ranks with queued; "canceled" is a final failure as far as the customer goes.
STATUS_MAP = {
    "accepted": "accepted", "scheduled": "accepted", "queued": "queued", "sending": "queued",
    "sent": "sent", "delivered": "delivered", "undelivered": "undelivered", "failed": "failed",
    "read": "read", "canceled": "failed", "partially_delivered": "delivered",
}
# Optional fields worth keeping beside the text (WhatsApp locations, quick-reply buttons).
_EXTRA_FIELDS = {
    "WaId": "wa_id", "Latitude": "latitude", "Longitude": "longitude", "Address": "address",
    "Label": "label", "ButtonText": "button_text", "ButtonPayload": "button_payload",
    "MessagingServiceSid": "messaging_service_sid", "OriginalRepliedMessageSid": "reply_to",
}


class BadWebhook(ValueError):
    """A correctly signed request we cannot turn into an event (Twilio gets a 400)."""


def message_event(params: Mapping[str, str], idempotency_token: str | None = None,
                  default_region: str | None = None,
                  address: Callable[[str, str, str | None], Address] = make_address,
                  ) -> InboundMessage:
    """The typed event for one inbound Twilio message (SMS, MMS or WhatsApp)."""
    sid = params.get("MessageSid") or params.get("SmsMessageSid") or params.get("SmsSid")
    from_ = params.get("From", "")
    to = params.get("To", "").strip()
    if not sid:
        raise BadWebhook("MessageSid is missing")
    if not from_ or not to:
        raise BadWebhook("From and To are required")
    whatsapp = from_.lower().startswith("whatsapp:")
    try:
        # SMS sender ids can be spoofed on the way in; WhatsApp authenticates its users.
        sender = address("whatsapp" if whatsapp else "sms", from_, default_region)
    except AddressError as exc:
        raise BadWebhook(f"From {from_!r} is not a number we can answer: {exc}") from None
    attachments = []
    try:
        num_media = min(int(params.get("NumMedia", "0") or 0), MAX_MEDIA)
    except ValueError:
        raise BadWebhook(f"NumMedia {params.get('NumMedia')!r} is not a number") from None
    for i in range(num_media):
        url = params.get(f"MediaUrl{i}")
        if url:
            attachments.append(Attachment(url=url, content_type=params.get(f"MediaContentType{i}")))
    extra = {name: params[key] for key, name in _EXTRA_FIELDS.items() if params.get(key)}
    if idempotency_token:
        extra["twilio_idempotency_token"] = idempotency_token
    return InboundMessage(
        sender=sender,
        recipient=to,
        text=params.get("Body", ""),
        provider="twilio",
        provider_id=sid,
        thread_key=f"twilio:{to}:{sender}",
        attested=whatsapp,
        attachments=tuple(attachments),
        profile_name=params.get("ProfileName") or None,
        extra=extra,
    )


def status_event(params: Mapping[str, str], idempotency_token: str | None) -> DeliveryStatus:
    sid = params.get("MessageSid") or params.get("SmsSid")
    raw_status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not sid or not raw_status:
        raise BadWebhook("MessageSid and MessageStatus are required")
    error = None
    if params.get("ErrorCode"):
        error = f"Twilio error {params['ErrorCode']}"
        if params.get("ErrorMessage"):
            error += f": {params['ErrorMessage']}"
        error += f" (https://www.twilio.com/docs/api/errors/{params['ErrorCode']})"
    elif raw_status == "canceled":
        error = "canceled at Twilio"
    return DeliveryStatus(
        provider="twilio", provider_message_id=sid,
        status=STATUS_MAP.get(raw_status, raw_status), error=error,
        event_id=f"status:{idempotency_token}" if idempotency_token else None,
    )


class TwilioMessagingWebhooks:
    """The two routes Twilio calls for messaging; one instance per app, given the sink when
    its channel starts (`connectors/twilio_channel.py`)."""

    def __init__(self, sink: InboundSink | None, metrics: Metrics, signature: TwilioSignature,
                 default_region: str | None = None) -> None:
        self.sink = sink
        self.metrics = metrics
        self.signature = signature
        self.default_region = default_region
        # Bound metric children: label lookups are not free on a hot path.
        self._latency = metrics.http_latency.labels("twilio-messaging")
        self._stored = {ch: metrics.inbound.labels(ch, "stored") for ch in ("sms", "whatsapp")}
        self._duplicate = {ch: metrics.inbound.labels(ch, "duplicate")
                           for ch in ("sms", "whatsapp")}
        # Phone number parsing is the dearest step after the HMAC; customers write again
        # and again from the same few numbers, and an Address is immutable.
        self._address = lru_cache(maxsize=65_536)(make_address)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(MESSAGING_PATH, self.messaging), web.post(STATUS_PATH, self.status)]

    async def _verified(self, request: web.Request, route: str
                        ) -> tuple[Mapping[str, str] | None, web.Response | None]:
        return await verified_twilio_form(
            request, self.signature,
            lambda r, why: self.metrics.webhook_rejected.labels(r, why).inc(), route, log)

    async def messaging(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        params, refusal = await self._verified(request, "twilio-messaging")
        if refusal is not None:
            return refusal
        assert params is not None
        try:
            event = message_event(params, request.headers.get(IDEMPOTENCY_HEADER),
                                  self.default_region, self._address)
        except BadWebhook as exc:
            self.metrics.webhook_rejected.labels("twilio-messaging", "unparseable").inc()
            log.warning("twilio-messaging: signed request refused, nothing stored: %s", exc)
            return web.Response(status=400, text=f"{exc}\n")
        sink = self.sink
        if sink is None:
            return web.Response(status=503, text="starting\n")
        result = await sink.ingest(event)
        channel = event.channel
        (self._duplicate if result.duplicate else self._stored)[channel].inc()
        self._latency.observe(time.perf_counter() - started)
        return web.Response(body=EMPTY_TWIML, headers=_TWIML_HEADERS)

    async def status(self, request: web.Request) -> web.Response:
        params, refusal = await self._verified(request, "twilio-status")
        if refusal is not None:
            return refusal
        assert params is not None
        try:
            event = status_event(params, request.headers.get(IDEMPOTENCY_HEADER))
        except BadWebhook as exc:
            log.warning("twilio-status: signed request refused: %s", exc)
            return web.Response(status=400, text=f"{exc}\n")
        if self.sink is None:
            return web.Response(status=503, text="starting\n")
        state = await self.sink.delivery_status(event)
        if state is None:
            log.info("twilio-status: %s for %s: no outbound message has that id (yet) or a "
                     "repeated callback", event.status, event.provider_message_id)
        return web.Response(body=EMPTY_TWIML, headers=_TWIML_HEADERS)
