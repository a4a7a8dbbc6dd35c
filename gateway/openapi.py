"""The gateway's OpenAPI 3.1 description, served at /api/v1/openapi.json, generated from the
pydantic models in `gateway/api_models.py` and the route table below (one row per route):
the agent API, health and metrics, and the provider webhooks (with the fields the gateway
reads from what Twilio and Meta send).

Adding a route means adding a row; tests check that every route the app serves (but the
console's own page and assets) has one and that real responses validate against the schemas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import api_models as m

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    ok: tuple[int, type[BaseModel] | None]  # the success status and its body
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = (400, 401, 404, 409)
    public: bool = False  # no bearer token
    media: str = "application/json"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    body_media: str = "application/json"
    signed_by: str | None = None  # a provider's signature header, instead of the bearer token
    tag: str = "agent API"


EVENTS_DESCRIPTION = (
    "Server-Sent Events fed by the committed-event bus. Each event has `id:` (its sequence "
    "number; send it back as `Last-Event-ID` to resume), `event:` (one of the names in "
    "`x-sse-events`) and `data:` (JSON of that event's schema). Comment lines are "
    "heartbeats. With an agent's token the stream carries every message, assignment, close "
    "and presence change, and only the calls offered to that agent (and their end); the "
    "service token's stream carries everything. `resync` says events were missed: reload.")

SIGNED_TWILIO = ("Twilio signs GATEWAY_PUBLIC_URL + the path and query, and every form "
                 "field; a missing or wrong signature gets 403 and nothing is stored. Answered "
                 "after the commit.")


def _twilio(path: str, summary: str, body: type[BaseModel], query: type[BaseModel] | None = None
            ) -> Route:
    return Route("post", path, summary, (200, None), body=body, query=query,
                 errors=(400, 403, 500, 503), public=True, media="text/xml",
                 body_media="application/x-www-form-urlencoded",
                 signed_by="X-Twilio-Signature", description=SIGNED_TWILIO, tag="webhooks")


WEBHOOKS: tuple[Route, ...] = (
    _twilio("/webhooks/twilio/messaging", "Twilio: an incoming SMS, MMS or WhatsApp message "
            "(the same MessageSid is stored once); answers empty TwiML",
            m.TwilioMessagingForm),
    _twilio("/webhooks/twilio/status", "Twilio: a message status callback (statuses only "
            "move forward)", m.TwilioStatusForm),
    _twilio("/webhooks/twilio/voice", "Twilio Voice: an incoming call; answers TwiML "
            "(<Gather> for an escalation PIN, <Dial><Sip> to an agent with the context "
            "token as an x- header)", m.TwilioVoiceForm, m.TwilioVoiceParams),
    _twilio("/webhooks/twilio/voice/status", "Twilio Voice: call status callbacks",
            m.TwilioVoiceStatusForm, m.TwilioVoiceStatusParams),
    Route("get", "/webhooks/whatsapp", "Meta: the webhook verification handshake (echoes "
          "hub.challenge)", (200, None), query=m.MetaHandshakeParams, errors=(403,),
          public=True, media="text/plain", tag="webhooks"),
    Route("post", "/webhooks/whatsapp", "Meta WhatsApp Cloud API: messages and statuses "
          "(the same message id is stored once)", (200, None), body=m.MetaWebhook,
          errors=(400, 403, 500, 503), public=True, media="text/plain",
          signed_by="X-Hub-Signature-256", tag="webhooks",
          description="Meta signs the raw body with the app secret (HMAC-SHA256); a missing "
          "or wrong signature gets 403 and nothing is stored. 500 when something did not "
          "store: Meta retries the delivery, and what did land is deduplicated."),
)

ROUTES: tuple[Route, ...] = (
    Route("get", "/api/v1/customers", "Find a customer by one of their addresses",
          (200, m.Customer), extra={"parameters": [{
              "name": "address", "in": "query", "required": True, "schema": {"type": "string"},
              "example": "whatsapp:+14155550100"}]}),
    Route("post", "/api/v1/customers/merges",
          "Merge two customers (an agent's decision; can be undone)", (201, m.MergeCreated),
          body=m.MergeRequest),
    Route("delete", "/api/v1/customers/merges/{merge_id}", "Undo a merge", (200, m.MergeUndone)),
    Route("get", "/api/v1/conversations", "The inbox: conversations, most recent activity "
          "first, paged by an opaque cursor", (200, m.InboxPage), query=m.InboxParams),
    Route("get", "/api/v1/conversations/{id}",
          "A conversation with its legs and transcript (oldest first)", (200, m.Conversation)),
    Route("get", "/api/v1/conversations/{id}/timeline",
          "A conversation as the console shows it: one timeline across every channel, "
          "delivery status, each leg's verification badge and disclosure", (200, m.Timeline)),
    Route("post", "/api/v1/conversations/{id}/messages",
          "Reply on the customer's active messaging leg (through the outbox)", (202, m.Reply),
          body=m.ReplyRequest),
    Route("post", "/api/v1/conversations/{id}/verifications",
          "Send the customer a one-time code (to an address of theirs)",
          (202, m.VerificationStarted), body=m.VerificationRequest),
    Route("post", "/api/v1/conversations/{id}/verifications/{challenge_id}/check",
          "Check a code the caller reads out; a right code verifies that leg",
          (200, m.CodeCheck), body=m.CodeCheckRequest),
    Route("post", "/api/v1/conversations/{id}/escalations",
          "Move the customer to a call: a dial-in PIN or a callback", (201, m.Escalation),
          body=m.EscalationRequest),
    Route("post", "/api/v1/conversations/{id}/close", "Close the conversation", (200, m.Closed)),
    Route("get", "/api/v1/outbox/{id}", "The state of an outbound message",
          (200, m.OutboxMessage)),
    Route("get", "/api/v1/contexts/{token}",
          "The context bundle of one leg; the token is the capability",
          (200, m.ContextBundle), errors=(404,), public=True),
    Route("get", "/api/v1/events", "The event stream (Server-Sent Events)", (200, None),
          errors=(400, 401), media="text/event-stream", description=EVENTS_DESCRIPTION,
          extra={"parameters": [{
              "name": "Last-Event-ID", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[0-9]+$"},
              "description": "resume after this event id"}]}),
    Route("get", "/api/v1/me", "Who the bearer token is: an agent or the service",
          (200, m.Me), errors=(401,)),
    Route("get", "/api/v1/reports/journeys",
          "Journeys per period: first/last channel, switches, repeat contacts, "
          "verifications carried vs repeated, time to resolution",
          (200, m.JourneysReport), query=m.JourneyParams, errors=(400, 401)),
    Route("get", "/api/v1/openapi.json", "This document", (200, None), errors=(),
          public=True),
    Route("get", "/healthz", "Health: ok (200) or starting (503)", (200, m.Health), errors=(),
          public=True),
    Route("get", "/metrics", "Prometheus metrics", (200, None), errors=(), public=True,
          media="text/plain"),
    *WEBHOOKS,
)

# Bodies outside the route table that the document still names: the SSE events.
EXTRA_MODELS: tuple[type[BaseModel], ...] = tuple(m.SSE_EVENTS.values())

ERROR_TEXT = {400: "bad request", 401: "missing or wrong bearer token", 403: "forbidden",
              404: "not found", 409: "not possible in the current state",
              500: "not stored; the provider retries", 503: "the gateway is starting"}


def _schemas() -> tuple[dict[tuple[type[BaseModel], str], Any], dict[str, Any]]:
    models: list[type[BaseModel]] = [m.Error, *EXTRA_MODELS]
    for route in ROUTES:
        models += [x for x in (route.ok[1], route.body) if x is not None]
    pairs = [(model, "serialization") for model in dict.fromkeys(models)]
    refs, top = models_json_schema(pairs, ref_template=REF)
    return refs, top.get("$defs", {})


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required,
         "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
         **({"description": prop["description"]} if "description" in prop else {})}
        for name, prop in schema.get("properties", {}).items()
    ]


def build_document() -> dict[str, Any]:
    refs, schemas = _schemas()

    def ref(model: type[BaseModel]) -> Any:
        return refs[(model, "serialization")]

    error = {"application/json": {"schema": ref(m.Error)}}
    plain = {"text/plain": {"schema": {"type": "string"}}}  # what the webhooks answer
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", route.path)]
        if route.query is not None:
            params += _query_parameters(route.query)
        params += route.extra.get("parameters", [])
        if route.signed_by:
            params.append({"name": route.signed_by, "in": "header", "required": True,
                           "schema": {"type": "string"},
                           "description": "the provider's signature (see the description)"})
        status, body = route.ok
        if route.media == "application/json":
            content = {"application/json": {"schema": ref(body) if body else {"type": "object"}}}
        else:
            content = {route.media: {"schema": {"type": "string"}}}
        operation: dict[str, Any] = {
            "tags": [route.tag],
            "summary": route.summary,
            "operationId": f"{route.method}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower())}"
                           .rstrip("_"),
            "responses": {str(status): {"description": route.summary, "content": content},
                          **{str(code): {"description": ERROR_TEXT[code],
                                         "content": plain if route.tag == "webhooks" else error}
                             for code in route.errors}},
        }
        if route.description:
            operation["description"] = route.description
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                route.body_media: {"schema": ref(route.body)}}}
        if route.public:
            operation["security"] = []
        if route.media == "text/event-stream":
            operation["x-sse-events"] = {name: ref(model)
                                         for name, model in m.SSE_EVENTS.items()}
        paths.setdefault(route.path, {})[route.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Continuity gateway: agent API and webhooks", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": schemas},
        "security": [{"bearer": []}],
        "paths": paths,
    }


OPENAPI: dict[str, Any] = build_document()
