"""The OpenAPI document generated from the pydantic models: a valid OpenAPI 3.1 document,
every served API route described, and real responses valid against their schemas."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from config.settings import load_settings
from gateway import bus
from gateway.api_models import SSE_EVENTS
from gateway.app import build_app
from gateway.event_stream import stream_fields
from gateway.openapi import OPENAPI
from tests.conftest import AGENT_TOKEN
from tests.console.server import ALICE_TOKEN, CHECK_PATH, SseReader, WorkspaceGateway
from tests.helpers import code_from, whatsapp


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(OPENAPI)  # raises with the path of the first problem
    assert OPENAPI["openapi"] == "3.1.0"
    assert OPENAPI["paths"]["/api/v1/contexts/{token}"]["get"]["security"] == []
    events = OPENAPI["paths"]["/api/v1/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {"message", "call"} <= set(events["x-sse-events"])


def test_every_bus_event_has_its_stream_schema_with_the_same_fields() -> None:
    for event in typing.get_args(bus.DomainEvent):
        model = SSE_EVENTS[event.kind]
        assert set(stream_fields(event)) == set(model.model_fields), event.__name__


@pytest.fixture
async def ws(start_ws: Any, sqlite_url: str) -> WorkspaceGateway:
    return await start_ws(sqlite_url)


# Routes of the contract that another branch builds; the console already calls them.
NOT_SERVED_YET: set[tuple[str, str]] = set()  # the check endpoint landed with `trust`


def test_every_route_the_app_serves_is_described_and_nothing_else(tmp_path: Any) -> None:
    """The real app with every channel on (built, not started): the agent API, health,
    metrics and each provider webhook; only the console's page and assets are not API."""
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db", agent_token=AGENT_TOKEN,
        twilio_account_sid="AC" + "0" * 32, twilio_auth_token="twilio-auth-token-0123456789",
        twilio_from_number="+15005550006", twilio_voice_number="+15005550006",
        whatsapp_app_secret="meta-app-secret-0123456789", whatsapp_verify_token="verify-token",
        whatsapp_access_token="meta-access-token-0123456789",
        whatsapp_phone_number_id="100200300")
    app = build_app(settings)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
        and not route.resource.canonical.startswith("/console")
    }
    assert {path for _, path in served if path.startswith("/webhooks/")} == {
        "/webhooks/twilio/messaging", "/webhooks/twilio/status", "/webhooks/twilio/voice",
        "/webhooks/twilio/voice/status", "/webhooks/whatsapp"}
    described = {(method, path) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert served - described == set(), "routes without a description"
    assert described - served == NOT_SERVED_YET, "described routes the app does not serve"


def checker(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                 "components": OPENAPI["components"]})


def response_schema(method: str, path: str, status: int) -> Draft202012Validator:
    ref = OPENAPI["paths"][path][method]["responses"][str(status)]["content"][
        "application/json"]["schema"]["$ref"]
    return checker(ref.rsplit("/", 1)[1])


async def test_real_responses_match_their_schemas(ws: WorkspaceGateway) -> None:
    number = "+14155550181"
    first = await ws.core.ingest(whatsapp(number, "<b>hi</b> from WhatsApp"))
    cid = first.conversation_id
    calls: list[tuple[str, str, str, int, dict[str, Any]]] = [
        ("get", "/api/v1/customers", f"/api/v1/customers?address=whatsapp:%2B{number[1:]}", 200, {}),
        ("get", "/api/v1/conversations", "/api/v1/conversations?status=all", 200, {}),
        ("get", "/api/v1/conversations/{id}", f"/api/v1/conversations/{cid}", 200, {}),
        ("post", "/api/v1/conversations/{id}/messages", f"/api/v1/conversations/{cid}/messages",
         202, {"json": {"text": "Hello"}}),
        ("post", "/api/v1/conversations/{id}/verifications",
         f"/api/v1/conversations/{cid}/verifications", 202, {"json": {}}),
        ("post", "/api/v1/conversations/{id}/escalations",
         f"/api/v1/conversations/{cid}/escalations", 201,
         {"json": {"channel": "voice", "mode": "dial-in"}}),
        ("get", "/api/v1/me", "/api/v1/me", 200, {}),
        ("get", "/api/v1/reports/journeys", "/api/v1/reports/journeys?period=week", 200, {}),
        ("get", "/api/v1/conversations", "/api/v1/conversations?status=open&limit=x", 400, {}),
    ]
    bodies: dict[str, Any] = {}
    for method, template, path, status, kwargs in calls:
        got, body = await ws.api(method.upper(), path, **kwargs)
        assert got == status, (path, body)
        errors = list(response_schema(method, template, status).iter_errors(body))
        assert not errors, (path, [e.message for e in errors])
        bodies[template] = body
    assert ws.memory is not None
    pin = code_from((await ws.memory.wait_for(3))[-1].text or "")
    await ws.offer_call("+14155550199", "alice", pin=pin)
    got, view = await ws.api("GET", f"/api/v1/conversations/{cid}/timeline")
    assert got == 200 and not list(
        response_schema("get", "/api/v1/conversations/{id}/timeline", 200).iter_errors(view))
    assert {item["type"] for item in view["timeline"]} >= {"entry", "code", "escalation"}
    outbox_id = bodies["/api/v1/conversations/{id}/messages"]["id"]
    got, message = await ws.api("GET", f"/api/v1/outbox/{outbox_id}")
    assert got == 200 and not list(
        response_schema("get", "/api/v1/outbox/{id}", 200).iter_errors(message))
    got, closed = await ws.api("POST", f"/api/v1/conversations/{cid}/close")
    assert got == 200 and not list(
        response_schema("post", "/api/v1/conversations/{id}/close", 200).iter_errors(closed))


async def test_bundles_and_stream_events_match_their_schemas(ws: WorkspaceGateway) -> None:
    headers = {"Authorization": f"Bearer {ALICE_TOKEN}"}
    async with ws.http.get(ws.url + "/api/v1/events", headers=headers) as resp:
        events = SseReader(resp)
        await ws.core.ingest(whatsapp("+14155550182", "before the call"))
        route = await ws.offer_call("+14155550182", "alice")
        message = await events.until(lambda e: e.event == "message")
        offered = await events.until(lambda e: e.event == "call")
    assert not list(checker("MessageEvent").iter_errors(message.data))
    assert not list(checker("CallEvent").iter_errors(offered.data))
    path = "/api/v1/contexts/" + route.context_url.rsplit("/", 1)[1]
    async with ws.http.get(ws.url + path) as resp:
        bundle = await resp.json()
    assert resp.status == 200
    errors = list(response_schema("get", "/api/v1/contexts/{token}", 200).iter_errors(bundle))
    assert not errors, [e.message for e in errors]
