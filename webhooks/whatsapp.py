"""Meta WhatsApp Cloud API webhooks: the verification handshake (`GET /webhooks/whatsapp`)
and events (`POST /webhooks/whatsapp`: incoming messages and delivery statuses).

Verify `X-Hub-Signature-256` over the raw bytes, parse `entry[].changes[].value`, hand typed
events to the core (all events of one delivery share a group commit), answer 200 after the
commit. A delivery that fails to store gets a 500, so Meta retries it; wamids dedupe the retry.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.addresses import Address, AddressError, make_address
from gateway.channels import InboundSink
from gateway.events import Attachment, DeliveryStatus, InboundMessage
from gateway.metrics import Metrics
from webhooks.signatures import META_SIGNATURE, MetaSignature, Verdict

log = logging.getLogger("gateway.webhooks.whatsapp")

PATH = "/webhooks/whatsapp"
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


class BadPayload(ValueError):
    """A signed delivery whose content we cannot read."""


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _contact_for(message: Mapping[str, Any], contacts: list[Any]) -> dict[str, Any]:
    """The `contacts[]` entry describing this message's sender."""
    frm, frm_user = message.get("from"), message.get("from_user_id")
    for contact in contacts:
        contact = _as_dict(contact)
        if (frm and contact.get("wa_id") == frm) or (
            frm_user and contact.get("user_id") == frm_user
        ):
            return contact
    return _as_dict(contacts[0]) if len(contacts) == 1 else {}


def _sender(message: Mapping[str, Any], contact: Mapping[str, Any]
            ) -> tuple[Address, tuple[Address, ...]]:
    """(sender, also_known_as): the phone number when Meta shares it, the BSUID beside it.

    From 2026 users who adopt a username may arrive with only a business-scoped user id
    (`user_id` / `from_user_id`); that id is then the sender, an address of its own kind.
    """
    wa_id = contact.get("wa_id") or message.get("from")
    user_id = contact.get("user_id") or message.get("from_user_id")
    try:
        phone = make_address("whatsapp", str(wa_id)) if wa_id else None
        bsuid = make_address("whatsapp-user", str(user_id)) if user_id else None
    except AddressError as exc:
        raise BadPayload(f"sender is not an address: {exc}") from None
    if phone is not None:
        return phone, (bsuid,) if bsuid is not None else ()
    if bsuid is not None:
        return bsuid, ()
    raise BadPayload("message without a sender (no from, wa_id or user_id)")


def _content(message: Mapping[str, Any], api_url: str
             ) -> tuple[str, tuple[Attachment, ...], dict[str, str]]:
    """Text, attachment references and extra fields for any message type."""
    kind = str(message.get("type") or "")
    body = _as_dict(message.get(kind))
    extra: dict[str, str] = {"type": kind} if kind and kind != "text" else {}
    context = _as_dict(message.get("context"))
    if context.get("id"):
        extra["reply_to"] = str(context["id"])
    if kind == "text":
        return str(body.get("body") or ""), (), extra
    if kind in MEDIA_TYPES:
        media_id = str(body.get("id") or "")
        attachment = Attachment(
            url=f"{api_url}/{media_id}" if media_id else "",
            content_type=body.get("mime_type"), name=body.get("filename"),
        )
        if media_id:
            extra["media_id"] = media_id
        text = str(body.get("caption") or "")
        return text, (attachment,) if media_id else (), extra
    if kind == "location":
        for key in ("latitude", "longitude", "name", "address"):
            if body.get(key) is not None:
                extra[key] = str(body[key])
        where = ", ".join(str(body[k]) for k in ("name", "address") if body.get(k))
        return f"[location {body.get('latitude')},{body.get('longitude')}" + (
            f" {where}]" if where else "]"), (), extra
    if kind == "interactive":
        reply = _as_dict(body.get(str(body.get("type") or "")))
        if reply.get("id"):
            extra["reply_id"] = str(reply["id"])
        return str(reply.get("title") or ""), (), extra
    if kind == "button":
        if body.get("payload"):
            extra["button_payload"] = str(body["payload"])
        return str(body.get("text") or ""), (), extra
    if kind == "reaction":
        if body.get("message_id"):
            extra["reply_to"] = str(body["message_id"])
        return f"[reaction {body.get('emoji') or 'removed'}]", (), extra
    if kind == "system":
        return str(body.get("body") or "[system message]"), (), extra
    errors = _as_list(message.get("errors"))
    if errors:
        extra["error"] = str(_as_dict(errors[0]).get("title") or "")
    return f"[{kind or 'unknown'} message]", (), extra


def parse_delivery(payload: Any, api_url: str
                   ) -> tuple[list[InboundMessage], list[DeliveryStatus]]:
    """All events in one webhook delivery (a batch of entries, changes, messages, statuses)."""
    if not isinstance(payload, dict):
        raise BadPayload("the body is not a JSON object")
    if payload.get("object") != "whatsapp_business_account":
        raise BadPayload(f"object {payload.get('object')!r} is not whatsapp_business_account")
    messages: list[InboundMessage] = []
    statuses: list[DeliveryStatus] = []
    for value in _values(payload):
        metadata = _as_dict(value.get("metadata"))
        phone_number_id = str(metadata.get("phone_number_id") or "")
        display = str(metadata.get("display_phone_number") or "")
        contacts = _as_list(value.get("contacts"))
        for raw in _as_list(value.get("messages")):
            message = _as_dict(raw)
            wamid = message.get("id")
            if not wamid:
                raise BadPayload("a message without an id")
            contact = _contact_for(message, contacts)
            sender, aliases = _sender(message, contact)
            text, attachments, extra = _content(message, api_url)
            if display:
                extra["business_number"] = display
            profile = _as_dict(contact.get("profile"))
            if profile.get("username"):
                extra["username"] = str(profile["username"])
            messages.append(InboundMessage(
                sender=sender,
                recipient=phone_number_id or display,
                text=text,
                provider="meta",
                provider_id=str(wamid),
                thread_key=f"meta:{phone_number_id or display}:{sender}",
                attested=True,  # WhatsApp authenticates the account behind wa_id / user_id
                provider_at=_timestamp(message.get("timestamp")),
                attachments=attachments,
                profile_name=profile.get("name") or None,
                also_known_as=aliases,
                extra=extra,
            ))
        for raw in _as_list(value.get("statuses")):
            status = _as_dict(raw)
            wamid, state = status.get("id"), status.get("status")
            if not wamid or not state:
                raise BadPayload("a status without id or status")
            error = None
            errors = _as_list(status.get("errors"))
            if errors:
                first = _as_dict(errors[0])
                detail = _as_dict(first.get("error_data")).get("details")
                error = f"WhatsApp error {first.get('code')}: {first.get('title') or ''}".strip()
                if detail and detail != first.get("title"):
                    error += f" ({detail})"
            statuses.append(DeliveryStatus(
                provider="meta", provider_message_id=str(wamid), status=str(state),
                at=_timestamp(status.get("timestamp")), error=error,
                event_id=f"status:{wamid}:{state}",
            ))
    return messages, statuses


def _values(payload: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in _as_list(payload.get("entry")):
        for change in _as_list(_as_dict(entry).get("changes")):
            change = _as_dict(change)
            if change.get("field", "messages") != "messages":
                continue  # template, quality and account updates: not a conversation
            yield _as_dict(change.get("value"))


class WhatsAppWebhooks:
    """GET handshake and POST events for Meta's Cloud API; one instance per app, given the
    sink when its channel starts (`connectors/whatsapp.py`)."""

    def __init__(self, sink: InboundSink | None, metrics: Metrics, signature: MetaSignature,
                 verify_token: str | None, api_url: str) -> None:
        self.sink = sink
        self.metrics = metrics
        self.signature = signature
        self.verify_token = verify_token
        self.api_url = api_url.rstrip("/")
        self._latency = metrics.http_latency.labels("whatsapp")

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handshake, allow_head=False), web.post(PATH, self.events)]

    async def handshake(self, request: web.Request) -> web.Response:
        """Meta's subscription check: echo hub.challenge when hub.verify_token is ours."""
        query = request.query
        given = query.get("hub.verify_token", "")
        ok = (
            self.verify_token is not None
            and query.get("hub.mode") == "subscribe"
            and hmac.compare_digest(given.encode(), self.verify_token.encode())
        )
        if not ok:
            self.metrics.webhook_rejected.labels("whatsapp-verify", "wrong-token").inc()
            if self.verify_token is None:
                log.warning("whatsapp: verification handshake refused: "
                            "GATEWAY_WHATSAPP_VERIFY_TOKEN is not set")
            return web.Response(status=403, text="verification failed\n")
        return web.Response(text=query.get("hub.challenge", ""))

    async def events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.read()
        verdict = self.signature.check(body, request.headers.get(META_SIGNATURE))
        if verdict is not Verdict.OK:
            self.metrics.webhook_rejected.labels("whatsapp", verdict.value).inc()
            log.warning("whatsapp: %s X-Hub-Signature-256 from %s; nothing stored (Meta "
                        "signs with the app secret: check GATEWAY_WHATSAPP_APP_SECRET)",
                        verdict.value, request.remote)
            return web.Response(status=403, text="invalid signature\n")
        try:
            messages, statuses = parse_delivery(json.loads(body), self.api_url)
        # JSONDecodeError is a ValueError; RecursionError: nested deeper than json parses.
        except (ValueError, BadPayload, RecursionError) as exc:
            self.metrics.webhook_rejected.labels("whatsapp", "unparseable").inc()
            log.warning("whatsapp: signed delivery refused, nothing stored: %s", exc)
            return web.Response(status=400, text="unreadable payload\n")
        sink = self.sink
        if sink is None:
            return web.Response(status=503, text="starting\n")
        # Together, so one delivery's events share one group commit.
        results = await asyncio.gather(
            *(sink.ingest(m) for m in messages),
            *(sink.delivery_status(s) for s in statuses),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for message, result in zip(messages, results, strict=False):
            if not isinstance(result, BaseException):
                self.metrics.inbound.labels(
                    message.channel, "duplicate" if result.duplicate else "stored").inc()
        self._latency.observe(time.perf_counter() - started)
        if failed:
            # What did land is deduplicated when Meta retries the whole delivery.
            log.error("whatsapp: %d of %d events failed to store; answering 500 so Meta "
                      "retries", len(failed), len(results), exc_info=failed[0])
            return web.Response(status=500, text="not stored; retry\n")
        return web.Response(text="ok\n")
