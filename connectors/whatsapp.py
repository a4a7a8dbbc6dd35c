"""Meta WhatsApp Cloud API channel: sends outbox rows through the Graph API messages endpoint.

Outbox -> this connector -> `POST {GATEWAY_WHATSAPP_API_URL}/{phone_number_id}/messages`
(aiohttp, bearer token). Inbound events come through `webhooks/whatsapp.py`, mounted by
`WhatsAppChannel` (the channel the composition root registers). The sender
classifies failures once (permanent, or transient for the outbox worker to retry with
back-off); it never retries by itself.

Channels: `whatsapp` (a phone number, sent as `to`) and `whatsapp-user` (Meta's
business-scoped user id, sent as `recipient`, for users who show a username instead of a
number). When Meta is configured it is the gateway's WhatsApp sender, also for customers
who first wrote through Twilio's WhatsApp (see docs/integrators-messaging.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from gateway.addresses import AddressError, parse_address
from gateway.channels import (
    ChannelDeps,
    ChannelInfo,
    InboundSink,
    OutboundMessage,
    SendError,
    SendReceipt,
    Texted,
)
from webhooks.signatures import MetaSignature
from webhooks.whatsapp import PATH as WEBHOOK_PATH
from webhooks.whatsapp import WhatsAppWebhooks

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger("gateway.connectors.whatsapp")

# Graph error codes that mean "later" rather than "never": throttling and Meta's own trouble.
# https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
TRANSIENT_CODES = frozenset({
    1,  # unknown error (API)
    2,  # service temporarily unavailable
    4,  # application request limit reached
    80007,  # WABA rate limit
    130429,  # throughput rate limit hit
    131000,  # something went wrong
    131016,  # service unavailable
    131048,  # spam rate limit hit
    131056,  # pair rate limit (same recipient too often)
    133004,  # server temporarily unavailable
})
# Codes an agent must act on; their text is what the outbox row will show.
EXPLAINED = {
    131047: "more than 24 hours since the customer last wrote: WhatsApp only allows an "
            "approved template now",
    131026: "the message could not be delivered (the number may not use WhatsApp)",
    190: "the access token is invalid or expired: renew GATEWAY_WHATSAPP_ACCESS_TOKEN",
    131062: "this kind of message cannot be sent to a business-scoped user id",
}


class WhatsAppCloud:
    """One WhatsApp Business phone number on the Cloud API."""

    channels = frozenset({"whatsapp", "whatsapp-user"})

    def __init__(
        self,
        *,
        api_url: str,
        access_token: str | None,
        phone_number_id: str | None,
        timeout: float = 15.0,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._token = access_token
        self._phone_number_id = phone_number_id
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    async def start(self) -> None:
        if not self._token:
            log.warning("whatsapp: GATEWAY_WHATSAPP_ACCESS_TOKEN is not set: inbound works, "
                        "every outbound WhatsApp message will fail visibly")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout, connect=min(5.0, self._timeout)),
            headers={"Authorization": f"Bearer {self._token}"} if self._token else None,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _body(self, message: Texted) -> dict[str, Any]:
        try:
            to = parse_address(message.to)
        except AddressError as exc:
            raise SendError(f"cannot send to {message.to!r}: {exc}", permanent=True) from None
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
        if to.channel == "whatsapp":
            body["to"] = to.value  # E.164; the Graph API accepts the leading '+'
        elif to.channel == "whatsapp-user":
            body["recipient"] = to.value
        else:
            raise SendError(f"the WhatsApp Cloud API cannot send to {to}", permanent=True)
        body["type"] = "text"
        body["text"] = {"body": message.text, "preview_url": False}
        return body

    def _sender(self, message: OutboundMessage) -> str:
        # A reply goes out from the number the customer wrote to (the leg's phone number id);
        # a message without a leg (an OTP to a new address) from the configured one.
        sender = message.from_ if message.from_ and message.from_.isdigit() else None
        sender = sender or self._phone_number_id
        if not sender:
            raise SendError("no WhatsApp sender: set GATEWAY_WHATSAPP_PHONE_NUMBER_ID",
                            permanent=True)
        return sender

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if self._session is None:
            raise SendError("the WhatsApp connector is not started", permanent=False)
        if not self._token:
            raise SendError("GATEWAY_WHATSAPP_ACCESS_TOKEN is not set", permanent=True)
        if not isinstance(message, Texted):
            raise SendError(f"WhatsApp sends texts, not a {message.kind}", permanent=True)
        if not message.text:
            raise SendError("nothing to send: the message has no text", permanent=True)
        url = f"{self._api_url}/{self._sender(message)}/messages"
        body = self._body(message)
        try:
            async with self._session.post(url, json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise SendError(f"no answer from the Graph API in {self._timeout:.0f} s",
                            permanent=False) from None
        except aiohttp.ClientError as exc:
            raise SendError(f"cannot reach the Graph API: {exc}", permanent=False) from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if 200 <= status < 300:
            messages = answer.get("messages") if isinstance(answer, dict) else None
            wamid = messages[0].get("id") if messages and isinstance(messages[0], dict) else None
            if not wamid:
                # Meta took it but did not say under which id: status callbacks cannot find
                # it, yet it may be delivered. Not an error to retry (that could send twice).
                log.warning("whatsapp: %s accepted without a message id: %r", message.id, answer)
            return SendReceipt(provider="meta", provider_id=wamid, status="accepted")
        raise _graph_error(status, answer)


def _graph_error(status: int, answer: Any) -> SendError:
    error = answer.get("error") if isinstance(answer, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    text = str(error.get("message") or f"HTTP {status}")
    details = (error.get("error_data") or {}).get("details") if isinstance(
        error.get("error_data"), dict) else None
    explained = EXPLAINED.get(code) if isinstance(code, int) else None
    detail = f"Graph API answered {status}"
    if code is not None:
        detail += f" (error {code})"
    detail += f": {explained or text}"
    if details and details != text:
        detail += f" ({details})"
    transient = status == 429 or status >= 500 or code in TRANSIENT_CODES
    return SendError(detail, permanent=not transient)


class WhatsAppChannel:
    """The WhatsApp Cloud API channel: Meta's webhook in, the Graph API out.

    On when GATEWAY_WHATSAPP_APP_SECRET is set (settings refuse the other keys without it);
    then it is the gateway's WhatsApp sender, also for customers who first wrote through
    Twilio's WhatsApp."""

    name = "whatsapp"
    channels = WhatsAppCloud.channels

    def __init__(self, sender: WhatsAppCloud, webhooks: WhatsAppWebhooks, public_url: str
                 ) -> None:
        self._sender = sender
        self._webhooks = webhooks
        self._public_url = public_url

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> WhatsAppChannel | None:
        if settings.whatsapp_app_secret is None:
            return None
        verify, access = settings.whatsapp_verify_token, settings.whatsapp_access_token
        webhooks = WhatsAppWebhooks(
            None, deps.metrics, MetaSignature(settings.whatsapp_app_secret.get_secret_value()),
            verify.get_secret_value() if verify else None, settings.whatsapp_api_url)
        sender = WhatsAppCloud(
            api_url=settings.whatsapp_api_url,
            access_token=access.get_secret_value() if access else None,
            phone_number_id=settings.whatsapp_phone_number_id)
        return cls(sender, webhooks, settings.public_url)

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return "set GATEWAY_WHATSAPP_APP_SECRET (and the verify and access tokens)"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return self._webhooks.routes()

    def describe(self) -> ChannelInfo:
        notes = []
        if self._webhooks.verify_token is None:
            notes.append("GATEWAY_WHATSAPP_VERIFY_TOKEN is not set: Meta's handshake fails")
        if not self._sender.has_token:
            notes.append("GATEWAY_WHATSAPP_ACCESS_TOKEN is not set: nothing can be sent")
        return ChannelInfo(self.name, (("Meta webhook (callback URL)",
                                        f"{self._public_url}{WEBHOOK_PATH}"),), tuple(notes))

    async def start(self, sink: InboundSink) -> None:
        await self._sender.start()
        self._webhooks.sink = sink

    async def aclose(self) -> None:
        self._webhooks.sink = None
        await self._sender.aclose()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        return await self._sender.send(message)
