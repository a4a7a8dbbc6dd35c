"""Twilio Voice connector: places the callbacks the core decided (outbox rows `voice`/`call`).

Outbox -> this connector -> Twilio's Calls API (the `twilio` library's async client, API base
from GATEWAY_TWILIO_API_URL). When the customer answers, Twilio requests
`/webhooks/twilio/voice?escalation=<token>` (webhooks/twilio_voice.py), which routes the call
to an agent with the verification it carries. Retries are the outbox worker's; here a failure
is classified once: permanent (4xx but 429) or transient (429, 5xx, timeouts, network).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException

from connectors.twilio import TwilioRestConnector, is_transient_status
from gateway.addresses import AddressError, normalise_phone, parse_address
from gateway.channels import CallbackRequest, OutboundMessage, SendError, SendReceipt

log = logging.getLogger("gateway.connectors.twilio_voice")

VOICE_PATH = "/webhooks/twilio/voice"
VOICE_STATUS_PATH = "/webhooks/twilio/voice/status"


class TwilioVoice(TwilioRestConnector):
    """One Twilio account; `send` creates a Call resource per callback row."""

    channels = frozenset({"voice"})

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_url: str,
        public_url: str,
        from_number: str | None,
        timeout: float = 15.0,
        ring_seconds: int = 30,
        default_region: str | None = None,
    ) -> None:
        super().__init__(account_sid, auth_token, api_url, timeout)
        self._public_url = public_url.rstrip("/")
        self._from_number = from_number
        self._ring_seconds = ring_seconds
        self._region = default_region

    def _numbers(self, message: OutboundMessage) -> tuple[str, str]:
        try:
            to = parse_address(message.to, self._region)
        except AddressError as exc:
            raise SendError(f"cannot call {message.to!r}: {exc}", permanent=True) from None
        if not to.is_phone:
            raise SendError(f"Twilio Voice cannot call {to}", permanent=True)
        if not self._from_number:
            raise SendError("no number to call from: set GATEWAY_TWILIO_VOICE_NUMBER",
                            permanent=True)
        try:
            from_ = normalise_phone(self._from_number, self._region)
        except AddressError as exc:
            raise SendError(f"GATEWAY_TWILIO_VOICE_NUMBER: {exc}", permanent=True) from None
        return to.value, from_

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if self._client is None:
            raise SendError("the Twilio Voice connector is not started", permanent=False)
        if not isinstance(message, CallbackRequest):
            raise SendError(f"Twilio Voice places calls, not {str(message.kind)!r}",
                            permanent=True)
        token = message.escalation_token
        if not token:
            raise SendError("the callback has no escalation token", permanent=True)
        to, from_ = self._numbers(message)
        url = f"{self._public_url}{VOICE_PATH}?{urlencode({'escalation': token})}"
        try:
            # twilio's async client passes timeout=None to aiohttp per request: the deadline
            # is enforced around the call.
            async with asyncio.timeout(self._timeout):
                call = await self._client.calls.create_async(
                    to=to, from_=from_, url=url, method="POST",
                    status_callback=self._public_url + VOICE_STATUS_PATH,
                    status_callback_method="POST", timeout=self._ring_seconds,
                )
        except TwilioRestException as exc:
            detail = f"Twilio answered {exc.status}"
            if exc.code:
                detail += f" (error {exc.code})"
            detail += f": {exc.msg}"
            raise SendError(detail, permanent=not is_transient_status(exc.status)) from None
        except TwilioException as exc:
            status = int(getattr(exc, "status", 500) or 500)
            raise SendError(f"Twilio answered {status}: {exc}",
                            permanent=not is_transient_status(status)) from None
        except TimeoutError:
            raise SendError(f"no answer from Twilio in {self._timeout:.0f} s",
                            permanent=False) from None
        except aiohttp.ClientError as exc:
            raise SendError(f"cannot reach Twilio: {exc}", permanent=False) from None
        log.info("twilio-voice: callback %s placed as %s", message.id, call.sid)
        return SendReceipt(provider="twilio", provider_id=call.sid, status="queued")
