"""The Twilio channel: one account for SMS, WhatsApp through Twilio, and Voice.

In: the messaging and voice webhooks (`webhooks/twilio_messaging.py`,
`webhooks/twilio_voice.py`), one signature check for both. Out: messages through
`connectors/twilio.py`, callbacks through `connectors/twilio_voice.py`. On when
GATEWAY_TWILIO_ACCOUNT_SID is set (settings refuse it without its auth token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from connectors.twilio import TwilioMessaging
from connectors.twilio_voice import VOICE_PATH, TwilioVoice
from gateway.channels import (
    CallbackRequest,
    ChannelDeps,
    ChannelInfo,
    InboundSink,
    OutboundMessage,
    SendReceipt,
)
from webhooks.signatures import TwilioSignature
from webhooks.twilio_messaging import MESSAGING_PATH, TwilioMessagingWebhooks
from webhooks.twilio_voice import TwilioVoiceWebhooks, VoiceRouting

if TYPE_CHECKING:
    from config.settings import Settings


class TwilioChannel:
    name = "twilio"

    def __init__(self, messaging: TwilioMessaging, voice: TwilioVoice,
                 messaging_hooks: TwilioMessagingWebhooks, voice_hooks: TwilioVoiceWebhooks,
                 public_url: str, dial_in_number: str | None) -> None:
        self._messaging = messaging
        self._voice = voice
        self._messaging_hooks = messaging_hooks
        self._voice_hooks = voice_hooks
        self._public_url = public_url
        self._dial_in_number = dial_in_number
        self.channels = messaging.channels | voice.channels

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> TwilioChannel | None:
        if not settings.twilio_account_sid:
            return None
        # Settings refuse a SID without a (non-empty) token: signature checks never fail open.
        assert settings.twilio_auth_token is not None
        sid, token = settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value()
        shared_key = settings.twilio_webhook_shared_key
        signature = TwilioSignature(token, settings.public_url,
                                    shared_key.get_secret_value() if shared_key else None)
        region = settings.default_region
        messaging_hooks = TwilioMessagingWebhooks(None, deps.metrics, signature, region)
        voice_hooks = TwilioVoiceWebhooks(
            None, deps.metrics, deps.router, signature,
            VoiceRouting(public_url=settings.public_url,
                         sip_host=settings.sip_domain or settings.sip_host,
                         sip_port=settings.sip_port),
            region)
        # One WhatsApp sender per gateway: Meta's Cloud API when configured, else Twilio.
        messaging = TwilioMessaging(
            sid, token, api_url=settings.twilio_api_url, public_url=settings.public_url,
            from_number=settings.twilio_from_number,
            channels=frozenset({"sms"} if settings.whatsapp_enabled else {"sms", "whatsapp"}),
            default_region=region)
        # Callbacks the core decides (outbox `voice`/`call` rows) are placed through Twilio.
        voice = TwilioVoice(sid, token, api_url=settings.twilio_api_url,
                            public_url=settings.public_url,
                            from_number=settings.twilio_voice_number, default_region=region)
        return cls(messaging, voice, messaging_hooks, voice_hooks, settings.public_url,
                   settings.twilio_voice_number)

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return "set GATEWAY_TWILIO_ACCOUNT_SID and GATEWAY_TWILIO_AUTH_TOKEN"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [*self._messaging_hooks.routes(), *self._voice_hooks.routes()]

    def describe(self) -> ChannelInfo:
        base = self._public_url
        notes = [f"sends {', '.join(sorted(self._messaging.channels))}"
                 + (" and places callbacks" if self._dial_in_number else "")]
        if not self._dial_in_number:
            notes.append("GATEWAY_TWILIO_VOICE_NUMBER is not set: no callbacks, and dial-in "
                         "PIN messages name no number")
        # Status callbacks need no pasting: the gateway names them in each API request.
        return ChannelInfo(self.name, (
            ("Twilio number, Messaging: A message comes in (POST)", base + MESSAGING_PATH),
            ("Twilio number, Voice: A call comes in (POST)", base + VOICE_PATH),
        ), tuple(notes))

    async def start(self, sink: InboundSink) -> None:
        await self._messaging.start()
        await self._voice.start()
        self._messaging_hooks.sink = sink
        self._voice_hooks.sink = sink

    async def aclose(self) -> None:
        self._messaging_hooks.sink = None
        self._voice_hooks.sink = None
        await self._voice.aclose()
        await self._messaging.aclose()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if isinstance(message, CallbackRequest):
            return await self._voice.send(message)
        return await self._messaging.send(message)
