"""Twilio Programmable Messaging connector: sends outbox rows as SMS and Twilio WhatsApp.

Outbox -> this connector -> Twilio's REST API (the `twilio` library's async client, with its
API base taken from GATEWAY_TWILIO_API_URL). Inbound messages come the other way through
`webhooks/twilio_messaging.py`; this module only sends. Retries and back-off are the outbox
worker's: here a failure is classified once, permanent (4xx) or transient (429, 5xx,
timeouts, connection errors).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from gateway.addresses import AddressError, normalise_phone, parse_address
from gateway.channels import OutboundMessage, SendError, SendReceipt, Texted

log = logging.getLogger("gateway.connectors.twilio")

STATUS_CALLBACK_PATH = "/webhooks/twilio/status"


def is_transient_status(status: int) -> bool:
    """Worth retrying: rate limits and Twilio's own trouble. Other 4xx will fail again."""
    return status == 429 or status >= 500


def twilio_client(
    account_sid: str, auth_token: str, api_url: str, timeout: float
) -> tuple[AsyncTwilioHttpClient, Client]:
    """The twilio library's async REST client, aimed at `api_url`; call from the running loop.

    The HTTP session belongs to the running loop, so it is made at start, not in __init__.
    Requests go to GATEWAY_TWILIO_API_URL (Twilio itself, or a loopback stand-in in tests).
    The library composes URLs from the domain's base_url; edge/region would rewrite the host
    (and it reads TWILIO_EDGE / TWILIO_REGION from the environment), so they are cleared: the
    configured URL is the whole truth. The library logs every request and response at INFO
    (ten lines each); ours says what matters per message, so its logger starts at WARNING.
    """
    http_log = logging.getLogger("gateway.connectors.twilio.http")
    if http_log.level == logging.NOTSET:
        http_log.setLevel(logging.WARNING)
    http = AsyncTwilioHttpClient(pool_connections=False, timeout=timeout, logger=http_log)
    http.session = aiohttp.ClientSession()
    client = Client(account_sid, auth_token, http_client=http)
    client.api.base_url = api_url.rstrip("/")
    client.edge = None
    client.region = None
    return http, client


class TwilioRestConnector:
    """What the Twilio connectors share: one account and the library's async client, opened
    by `start()` on the running loop and closed by `aclose()`."""

    def __init__(self, account_sid: str, auth_token: str, api_url: str, timeout: float
                 ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs an account SID and an auth token")
        self._sid = account_sid
        self._token = auth_token
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    async def start(self) -> None:
        self._http, self._client = twilio_client(self._sid, self._token, self._api_url,
                                                 self._timeout)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http, self._client = None, None


class TwilioMessaging(TwilioRestConnector):
    """One Twilio account; `send` creates a Message resource per outbox row.

    Which channels it serves is decided by the Twilio channel (`connectors/twilio_channel.py`):
    `sms`, and `whatsapp` when Meta's Cloud API is not configured (a gateway has one WhatsApp
    sender; see docs/integrators-messaging.md).
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_url: str,
        public_url: str,
        from_number: str | None = None,
        channels: frozenset[str] = frozenset({"sms", "whatsapp"}),
        timeout: float = 15.0,
        default_region: str | None = None,
    ) -> None:
        super().__init__(account_sid, auth_token, api_url, timeout)
        self.channels = channels
        self._status_callback = public_url.rstrip("/") + STATUS_CALLBACK_PATH
        self._from_number = from_number
        self._region = default_region

    def _addresses(self, message: Texted) -> tuple[str, dict[str, str]]:
        """(To, sender fields) in Twilio's spelling: E.164, `whatsapp:` prefixed on WhatsApp."""
        try:
            to = parse_address(message.to, self._region)
        except AddressError as exc:
            raise SendError(f"cannot send to {message.to!r}: {exc}", permanent=True) from None
        if to.channel not in ("sms", "whatsapp"):
            raise SendError(f"Twilio messaging cannot send to {to}", permanent=True)
        prefix = "whatsapp:" if to.channel == "whatsapp" else ""
        sender = message.from_ or self._from_number
        if not sender:
            raise SendError(
                "no sender number: the conversation has no business number and "
                "GATEWAY_TWILIO_FROM_NUMBER is not set", permanent=True)
        sender = sender.strip()
        if sender.startswith("MG") and len(sender) == 34:
            return prefix + to.value, {"messaging_service_sid": sender}
        try:
            number = normalise_phone(sender, self._region)
        except AddressError:
            if prefix:
                raise SendError(f"{sender!r} is not a WhatsApp sender number",
                                permanent=True) from None
            return to.value, {"from_": sender}  # a short code or alphanumeric sender id
        return prefix + to.value, {"from_": prefix + number}

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if self._client is None:
            raise SendError("the Twilio connector is not started", permanent=False)
        if not isinstance(message, Texted):
            raise SendError(f"Twilio messaging sends texts, not a {message.kind}",
                            permanent=True)
        if not message.text:
            raise SendError("nothing to send: the message has no text", permanent=True)
        to, sender = self._addresses(message)
        try:
            # The library passes timeout=None to aiohttp per request (which means "none"),
            # so the deadline is enforced around the call.
            async with asyncio.timeout(self._timeout):
                created = await self._client.messages.create_async(
                    to=to, body=message.text, status_callback=self._status_callback, **sender
                )
        except TwilioRestException as exc:
            detail = f"Twilio answered {exc.status}"
            if exc.code:
                detail += f" (error {exc.code})"
            detail += f": {exc.msg}"
            raise SendError(detail, permanent=not is_transient_status(exc.status)) from None
        except TwilioException as exc:  # RFC 9457 service errors and other library errors
            status = int(getattr(exc, "status", 500) or 500)
            raise SendError(f"Twilio answered {status}: {exc}",
                            permanent=not is_transient_status(status)) from None
        except TimeoutError:
            raise SendError(f"no answer from Twilio in {self._timeout:.0f} s",
                            permanent=False) from None
        except aiohttp.ClientError as exc:
            raise SendError(f"cannot reach Twilio: {exc}", permanent=False) from None
        status = str(created.status or "queued")
        log.debug("twilio: %s created %s (%s)", message.id, created.sid, status)
        return SendReceipt(provider="twilio", provider_id=created.sid,
                           status="accepted" if status == "accepted" else "queued")
