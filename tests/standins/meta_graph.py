"""A loopback stand-in for Meta's WhatsApp Cloud API (Graph
`/{version}/{phone_number_id}/messages`), plus builders for the signed webhooks Meta
sends to the gateway.

The stand-in checks each request as the Graph API does (bearer access token, the
phone number id in the path, `messaging_product`, `to`, `type` and the type's object)
and answers with the documented payloads: 200
`{"messaging_product":"whatsapp","contacts":[{"input","wa_id"}],"messages":[{"id":"wamid..."}]}`,
or a Graph error `{"error":{"message","type","code","fbtrace_id",...}}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from tests.standins.server import StandinServer

__all__ = [
    "GraphRequest",
    "MetaGraphStandin",
    "graph_error",
    "meta_message_payload",
    "meta_status_payload",
    "meta_verification_params",
    "meta_webhook_request",
    "new_wamid",
    "sign_meta",
]

MESSAGE_TYPES = {
    "text",
    "template",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
}
_VERSION = re.compile(r"^v\d+\.\d+$")


def new_wamid(wa_id: str = "") -> str:
    """A WhatsApp message id shaped like Meta's: "wamid." + base64 of an opaque blob."""
    blob = (
        b"\x1c\x18"
        + bytes([len(wa_id)])
        + wa_id.encode()
        + b"\x15\x02\x00\x11\x18\x12"
        + secrets.token_hex(9).upper().encode()
        + b"\x00"
    )
    return "wamid." + base64.b64encode(blob).decode()


def graph_error(
    code: int,
    message: str,
    *,
    type_: str = "OAuthException",
    details: str | None = None,
    subcode: int | None = None,
) -> dict:
    """Graph API error body."""
    error: dict = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    return {"error": error}


_FAULT_ERRORS = {
    400: (100, "(#100) Invalid parameter"),
    401: (190, "Invalid OAuth access token - Cannot parse access token"),
    429: (130429, "(#130429) Rate limit hit"),
    500: (1, "An unknown error has occurred."),
    503: (2, "Service temporarily unavailable"),
}


@dataclass
class GraphRequest:
    """One request the stand-in received, accepted or not."""

    method: str
    path: str
    headers: dict[str, str]
    json: object = None
    status: int = 0
    response: dict = field(default_factory=dict)


class MetaGraphStandin(StandinServer):
    """WhatsApp Cloud API send endpoint on 127.0.0.1 (aiohttp, port 0).

    `base_url` (from start()) replaces https://graph.facebook.com. Accepted sends are
    in `.messages` (request JSON bodies) with their ids in `.message_ids`; "mark as
    read" calls in `.read_receipts`; every request in `.requests`.
    """

    def __init__(self, access_token: str, phone_number_id: str) -> None:
        super().__init__()
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.messages: list[dict] = []
        self.message_ids: list[str] = []
        self.read_receipts: list[str] = []
        self.requests: list[GraphRequest] = []

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{phone_number_id}/messages", self._messages)

    async def __aenter__(self) -> MetaGraphStandin:
        await self.start()
        return self

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[dict]:
        await self._wait_until(lambda: len(self.messages) >= count, timeout)
        return self.messages

    def _answer(self, recorded: GraphRequest, status: int, body: dict) -> web.Response:
        recorded.status, recorded.response = status, body
        return web.json_response(body, status=status)

    def _invalid(
        self, recorded: GraphRequest, message: str, details: str | None = None
    ) -> web.Response:
        return self._answer(recorded, 400, graph_error(100, message, details=details))

    async def _messages(self, request: web.Request) -> web.Response:
        raw = await request.read()
        recorded = GraphRequest(request.method, request.path, dict(request.headers))
        self.requests.append(recorded)
        fault = await self._next_fault()
        if fault and fault.status:
            code, message = _FAULT_ERRORS.get(fault.status, (1, "An unknown error has occurred."))
            return self._answer(
                recorded, fault.status, graph_error(fault.code or code, fault.message or message)
            )

        authorization = request.headers.get("Authorization", "")
        token = authorization[7:] if authorization.startswith("Bearer ") else ""
        if not token:
            return self._answer(
                recorded,
                401,
                graph_error(
                    190,
                    "An active access token must be used to query information about the "
                    "current user.",
                    subcode=None,
                ),
            )
        if not secrets.compare_digest(token, self.access_token):
            return self._answer(
                recorded,
                401,
                graph_error(190, "Invalid OAuth access token - Cannot parse access token"),
            )
        if not _VERSION.match(request.match_info["version"]):
            return self._answer(
                recorded,
                400,
                graph_error(2635, f"(#2635) Unknown version: {request.match_info['version']}"),
            )
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return self._answer(
                recorded,
                400,
                graph_error(
                    100,
                    "Unsupported post request. Object with ID "
                    f"'{request.match_info['phone_number_id']}' "
                    "does not exist, cannot be loaded due to missing permissions, "
                    "or does not support this operation. "
                    "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                    type_="GraphMethodException",
                    subcode=33,
                ),
            )
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded.json = body
        if not isinstance(body, dict):
            return self._invalid(
                recorded, "(#100) Invalid parameter", "Request body must be a JSON object"
            )

        product = body.get("messaging_product")
        if product is None:
            return self._invalid(recorded, "(#100) The parameter messaging_product is required.")
        if product != "whatsapp":
            return self._invalid(
                recorded,
                f'(#100) Param messaging_product must be one of {{WHATSAPP}} - got "{product}".',
            )

        if body.get("status") == "read":  # mark an inbound message as read
            if not isinstance(body.get("message_id"), str) or not body["message_id"].startswith(
                "wamid."
            ):
                return self._invalid(recorded, "(#100) Invalid parameter", "message_id is required")
            self.read_receipts.append(body["message_id"])
            return self._answer(recorded, 200, {"success": True})

        to = body.get("to")
        recipient = body.get("recipient")  # a business-scoped user id instead of a number
        if not isinstance(to, str) and not isinstance(recipient, str):
            return self._invalid(recorded, "(#100) The parameter to is required.")
        kind = body.get("type", "text")
        if kind not in MESSAGE_TYPES:
            return self._invalid(
                recorded,
                f'(#100) Param type must be one of {sorted(MESSAGE_TYPES)} - got "{kind}".',
            )
        content = body.get(kind)
        if not isinstance(content, dict):
            return self._invalid(recorded, f"(#100) The parameter {kind} is required.")
        if kind == "text":
            text = content.get("body")
            if not isinstance(text, str) or not text:
                return self._invalid(recorded, "(#100) The parameter text['body'] is required.")
            if len(text) > 4096:
                return self._invalid(
                    recorded, "(#100) Param text['body'] must be at most 4096 characters long."
                )
        if kind == "template":
            language = content.get("language")
            if (
                not content.get("name")
                or not isinstance(language, dict)
                or not language.get("code")
            ):
                return self._invalid(
                    recorded,
                    "(#100) The parameter template['name'] and template['language']['code'] "
                    "are required.",
                )
        if isinstance(to, str) and not re.fullmatch(r"\+?[\d\s().-]{7,20}", to):
            return self._invalid(
                recorded,
                "(#131009) Parameter value is not valid",
                f"Recipient phone number {to!r} is not a valid phone number",
            )

        wa_id = re.sub(r"\D", "", to) if isinstance(to, str) else ""
        wamid = new_wamid(wa_id)
        contact: dict[str, str] = {"input": to if isinstance(to, str) else recipient}
        if wa_id:
            contact["wa_id"] = wa_id
        if isinstance(recipient, str):
            contact["user_id"] = recipient
        message: dict[str, str] = {"id": wamid}
        if kind == "template":
            message["message_status"] = "accepted"
        self.messages.append(body)
        self.message_ids.append(wamid)
        await self._notify()
        return self._answer(
            recorded,
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [contact],
                "messages": [message],
            },
        )


# ---------------------------------------------------------------------------
# What Meta sends to the gateway


def sign_meta(app_secret: str, raw_body: bytes) -> str:
    """X-Hub-Signature-256 for a webhook body: "sha256=" + HMAC-SHA256 hex with the app secret."""
    return "sha256=" + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def meta_webhook_request(app_secret: str, payload: Mapping) -> tuple[bytes, dict[str, str]]:
    """Body and headers of Meta's signed webhook POST of `payload`."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign_meta(app_secret, raw),
        "X-Hub-Signature": "sha1=" + hmac.new(app_secret.encode(), raw, hashlib.sha1).hexdigest(),
        "User-Agent": "facebookexternalua",
    }
    return raw, headers


def meta_verification_params(verify_token: str, challenge: str | None = None) -> dict[str, str]:
    """Query of Meta's GET verification handshake; the endpoint must echo hub.challenge."""
    return {
        "hub.mode": "subscribe",
        "hub.verify_token": verify_token,
        "hub.challenge": challenge or str(secrets.randbelow(10**9)),
    }


def _envelope(waba_id: str, phone_number_id: str, display_phone_number: str, value: dict) -> dict:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def meta_message_payload(
    phone_number_id: str,
    display_phone_number: str,
    wa_id: str | None,
    text: str,
    wamid: str | None = None,
    timestamp: int | None = None,
    profile_name: str = "Customer",
    user_id: str | None = None,
    *,
    waba_id: str = "102290129340398",
) -> dict:
    """An incoming text message webhook as the Cloud API sends it.

    `wa_id` is the sender's number without "+" ("14155550100"); None for a user known
    only by a business-scoped user id (`user_id`, e.g. "US.13491208655302741918"),
    which is then the only identifier, as for users who adopted a username.
    """
    contact: dict = {"profile": {"name": profile_name}}
    message: dict = {
        "id": wamid or new_wamid(wa_id or ""),
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    if wa_id is not None:
        contact["wa_id"] = wa_id
        message["from"] = wa_id
    if user_id is not None:
        contact["user_id"] = user_id
        message["from_user_id"] = user_id
    message = {
        key: message[key]
        for key in ("from", "from_user_id", "id", "timestamp", "type", "text")
        if key in message
    }
    return _envelope(
        waba_id,
        phone_number_id,
        display_phone_number,
        {"contacts": [contact], "messages": [message]},
    )


def meta_status_payload(
    phone_number_id: str,
    display_phone_number: str,
    wamid: str,
    status: str,
    recipient_id: str,
    timestamp: int | None = None,
    *,
    waba_id: str = "102290129340398",
    error_code: int | None = None,
    error_title: str = "Message undeliverable",
    recipient_user_id: str | None = None,
) -> dict:
    """A status webhook (sent, delivered, read, failed) for a message the business sent."""
    entry: dict = {
        "id": wamid,
        "status": status,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "recipient_id": recipient_id,
    }
    if recipient_user_id is not None:
        entry["recipient_user_id"] = recipient_user_id
    if status in ("sent", "delivered"):
        conversation: dict = {"id": secrets.token_hex(16), "origin": {"type": "service"}}
        if status == "sent":
            conversation["expiration_timestamp"] = str(int(entry["timestamp"]) + 86400)
        entry["conversation"] = conversation
        entry["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "category": "service",
            "type": "regular",
        }
    if status == "failed":
        code = error_code or 131026
        entry["errors"] = [
            {
                "code": code,
                "title": error_title,
                "message": error_title,
                "error_data": {"details": error_title},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ]
    return _envelope(waba_id, phone_number_id, display_phone_number, {"statuses": [entry]})
