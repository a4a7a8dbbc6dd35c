"""`gateway send sms|whatsapp`: play the provider against a running gateway.

Builds the inbound-message webhook Twilio (SMS, WhatsApp via Twilio) or Meta (WhatsApp when
the gateway is configured for the Cloud API) would send, signs it with the configured secret
for GATEWAY_PUBLIC_URL + path (what the gateway checks), posts it to the gateway (--url, by
default the public URL) and prints the answer. So the console can be tried without a
provider account; the signature is real, so a wrong secret is refused as it would be.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

from webhooks.twilio_messaging import MESSAGING_PATH
from webhooks.whatsapp import PATH as WHATSAPP_PATH

DEFAULT_BUSINESS_NUMBER = "+15005550006"  # Twilio's magic test number: a stand-in "To"
TIMEOUT = aiohttp.ClientTimeout(total=15)


class SendProblem(Exception):
    """Cannot build or deliver the webhook; the message says what to set or check."""


@dataclass(frozen=True, slots=True)
class SignedWebhook:
    path: str
    body: bytes
    headers: dict[str, str]
    provider: str
    message_id: str


def add_parser(sub: Any) -> None:
    send = sub.add_parser(
        "send", help="post a signed inbound SMS/WhatsApp webhook to a running gateway "
        "(try the console without a provider account)")
    send.add_argument("channel", choices=("sms", "whatsapp"))
    send.add_argument("text", help="the message text")
    send.add_argument("--from", dest="sender", required=True, metavar="+1…",
                      help="the customer's number (E.164)")
    send.add_argument("--to", metavar="+1…", help="our number (default "
                      "GATEWAY_TWILIO_FROM_NUMBER, or Meta's phone number id)")
    send.add_argument("--name", default="Customer", help="the WhatsApp profile name")
    send.add_argument("--url", help="where the gateway listens (default GATEWAY_PUBLIC_URL); "
                      "the signature is always for GATEWAY_PUBLIC_URL")


def twilio_webhook(settings: Any, channel: str, sender: str, to: str | None, text: str,
                   name: str) -> SignedWebhook:
    if settings.twilio_auth_token is None or not settings.twilio_account_sid:
        raise SendProblem("GATEWAY_TWILIO_ACCOUNT_SID and GATEWAY_TWILIO_AUTH_TOKEN are not "
                          "set: the gateway has no Twilio webhook to post to")
    prefix = "whatsapp:" if channel == "whatsapp" else ""
    sid = "SM" + secrets.token_hex(16)
    form = {
        "MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid,
        "AccountSid": settings.twilio_account_sid,
        "From": prefix + sender,
        "To": prefix + (to or settings.twilio_from_number or DEFAULT_BUSINESS_NUMBER),
        "Body": text, "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    if channel == "whatsapp":
        form.update(ProfileName=name, WaId=sender.lstrip("+"), MessageType="text")
    signature = RequestValidator(settings.twilio_auth_token.get_secret_value()) \
        .compute_signature(settings.public_url + MESSAGING_PATH, form)
    return SignedWebhook(MESSAGING_PATH, urlencode(form).encode(), {
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature,
        "User-Agent": "gateway-send (TwilioProxy/1.1 stand-in)",
    }, "twilio", sid)


def meta_webhook(settings: Any, sender: str, to: str | None, text: str,
                 name: str) -> SignedWebhook:
    assert settings.whatsapp_app_secret is not None
    wa_id = sender.lstrip("+")
    wamid = "wamid.gw" + secrets.token_urlsafe(24)
    phone_number_id = to or settings.whatsapp_phone_number_id or "100000000000000"
    payload = {"object": "whatsapp_business_account", "entry": [{
        "id": "0", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": (settings.twilio_from_number or "").lstrip("+"),
                         "phone_number_id": phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": wamid, "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": text}}],
        }}],
    }]}
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    digest = hmac.new(settings.whatsapp_app_secret.get_secret_value().encode(), body,
                      hashlib.sha256).hexdigest()
    return SignedWebhook(WHATSAPP_PATH, body, {
        "Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}",
        "User-Agent": "gateway-send (facebookexternalua stand-in)",
    }, "meta", wamid)


def build(settings: Any, args: argparse.Namespace) -> SignedWebhook:
    """WhatsApp goes the way the gateway sends it: Meta when configured, else Twilio."""
    if args.channel == "whatsapp" and settings.whatsapp_enabled:
        return meta_webhook(settings, args.sender, args.to, args.text, args.name)
    return twilio_webhook(settings, args.channel, args.sender, args.to, args.text, args.name)


async def run(settings: Any, args: argparse.Namespace) -> int:
    """Post the webhook and print the outcome: 0 when the gateway took it."""
    try:
        webhook = build(settings, args)
    except SendProblem as exc:
        print(f"gateway send: {exc}")
        return 2
    base = (args.url or settings.public_url).rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.post(
                base + webhook.path, data=webhook.body, headers=webhook.headers) as resp:
            answer = (await resp.text()).strip()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        print(f"gateway send: could not reach the gateway at {base}: {exc or type(exc).__name__}"
              " (is `gateway serve` running? pass --url)")
        return 1
    print(f"{webhook.provider} {args.channel} {webhook.message_id} from {args.sender} -> "
          f"{base}{webhook.path}: HTTP {status}")
    if status >= 300:
        print(f"gateway answered: {answer[:300]}")
        if status == 403:
            print(f"signed for {settings.public_url}{webhook.path}: the gateway checks against "
                  "its own GATEWAY_PUBLIC_URL and secret; both must match this shell's")
        return 1
    print("stored: open /console to see it")
    return 0
