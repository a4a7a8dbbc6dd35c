"""The agent API over real HTTP: bearer auth, shapes from the contract, clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.helpers import call, code_from, wait_until, whatsapp

NUMBER = "+14155550100"


@pytest.fixture
async def gateway(start_gateway: Any, database_url: str) -> RunningGateway:
    return await start_gateway(database_url=database_url, public_url="https://gw.example.com")


async def test_agent_api_needs_the_bearer_token(gateway: RunningGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        async with gateway.http.get(f"{gateway.url}/api/v1/customers?address=sms:{NUMBER}",
                                    headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]


async def test_customer_and_conversation_shapes(gateway: RunningGateway) -> None:
    core = gateway.gw.core
    first = await core.ingest(whatsapp(NUMBER, "hello ✓ ça va"))
    status, customer = await gateway.api("GET", f"/api/v1/customers?address=whatsapp:{NUMBER}")
    assert status == 200
    assert customer["id"] == first.customer_id
    assert customer["addresses"] == [
        {**customer["addresses"][0], "address": f"whatsapp:{NUMBER}", "evidence": "attested"}]
    assert customer["conversations"][0]["id"] == first.conversation_id
    assert customer["conversations"][0]["status"] == "open"
    status, conv = await gateway.api("GET", f"/api/v1/conversations/{first.conversation_id}")
    assert status == 200
    assert {"id", "customer_id", "status", "legs", "transcript"} <= conv.keys()
    entry = conv["transcript"][0]
    assert {"id", "at", "channel", "direction", "author", "text"} <= entry.keys()
    assert entry["text"] == "hello ✓ ça va" and entry["direction"] == "in"
    assert conv["legs"][0]["channel"] == "whatsapp"


async def test_unknown_things_are_404_with_a_sentence(gateway: RunningGateway) -> None:
    status, body = await gateway.api("GET", f"/api/v1/customers?address=sms:{NUMBER}")
    assert status == 404 and NUMBER in body["error"]
    status, body = await gateway.api("GET", "/api/v1/conversations/conv_nope")
    assert status == 404 and "conv_nope" in body["error"]
    status, body = await gateway.api("GET", "/api/v1/customers?address=fax:123")
    assert status == 400 and "fax" in body["error"]


async def test_bad_json_and_missing_fields_are_400(gateway: RunningGateway) -> None:
    first = await gateway.gw.core.ingest(whatsapp(NUMBER, "hi"))
    path = f"/api/v1/conversations/{first.conversation_id}/messages"
    status, body = await gateway.api("POST", path, data=b"{not json",
                                     headers={**gateway.auth,
                                              "Content-Type": "application/json"})
    assert status == 400 and "JSON" in body["error"]
    status, body = await gateway.api("POST", path, json={"txt": "typo"})
    assert status == 400 and "'text'" in body["error"]
    status, body = await gateway.api("POST", f"/api/v1/conversations/{first.conversation_id}"
                                     "/escalations", json={"channel": "voice", "mode": "fax"})
    assert status == 409 and "mode" in body["error"]


async def test_agent_reply_goes_out_on_the_customers_leg(gateway: RunningGateway) -> None:
    first = await gateway.gw.core.ingest(whatsapp(NUMBER, "is my order late?"))
    status, body = await gateway.api(
        "POST", f"/api/v1/conversations/{first.conversation_id}/messages",
        json={"text": "It ships today.", "agent": "12"})
    assert status == 202 and body["channel"] == "whatsapp" and body["to"] == f"whatsapp:{NUMBER}"
    sent = await gateway.memory.wait_for(1)
    assert sent[0].text == "It ships today." and sent[0].to == f"whatsapp:{NUMBER}"
    async def counted() -> bool:  # the worker counts the outcome right after recording it
        async with gateway.http.get(gateway.url + "/metrics") as resp:
            return 'gateway_outbound_total{channel="whatsapp",outcome="sent"} 1.0' in (
                await resp.text())

    await wait_until(counted, what="the sent reply counted in /metrics")
    _, conv = await gateway.api("GET", f"/api/v1/conversations/{first.conversation_id}")
    assert conv["transcript"][-1]["author"] == "agent:12"
    assert conv["transcript"][-1]["direction"] == "out"


async def test_context_url_works_without_bearer_and_expires_to_404(
    gateway: RunningGateway,
) -> None:
    core = gateway.gw.core
    first = await core.ingest(whatsapp(NUMBER, "please call me"))
    _, body = await gateway.api("POST", f"/api/v1/conversations/{first.conversation_id}"
                                "/verifications")
    sent = await gateway.memory.wait_for(1)
    await core.ingest(whatsapp(NUMBER, code_from(sent[0].text)))
    route = await core.open_call(call(NUMBER))
    assert route.context_url.startswith("https://gw.example.com/api/v1/contexts/")
    path = route.context_url.removeprefix("https://gw.example.com")
    async with gateway.http.get(gateway.url + path) as resp:  # no Authorization header
        assert resp.status == 200
        bundle = await resp.json()
    for key in ("conversation_id", "customer", "verification", "verification_reason",
                "transcript", "legs", "expires_at"):
        assert key in bundle
    assert bundle["verification_reason"] == "caller-id-only"  # caller ID never verifies
    assert bundle["transcript"][0]["text"] == "please call me"
    async with gateway.http.get(gateway.url + "/api/v1/contexts/" + "A" * 32) as resp:
        assert resp.status == 404 and (await resp.json())["error"]


async def test_health_metrics_openapi_and_console(gateway: RunningGateway) -> None:
    async with gateway.http.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    await gateway.gw.core.ingest(whatsapp(NUMBER, "hi"))
    async with gateway.http.get(gateway.url + "/api/v1/contexts/" + "B" * 32) as resp:
        assert resp.status == 404
    async with gateway.http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200
        assert 'gateway_context_bundles_total{result="not-found"} 1.0' in text
    async with gateway.http.get(gateway.url + "/api/v1/openapi.json") as resp:
        spec = await resp.json()
        assert spec["openapi"].startswith("3.")
        assert "/api/v1/conversations/{id}/escalations" in spec["paths"]
    async with gateway.http.get(gateway.url + "/console") as resp:
        assert resp.status == 200 and "Agent console" in await resp.text()


async def test_merge_and_undo_over_http(gateway: RunningGateway) -> None:
    core = gateway.gw.core
    a = await core.ingest(whatsapp(NUMBER, "one"))
    b = await core.ingest(whatsapp("+14155550199", "two"))
    status, body = await gateway.api("POST", "/api/v1/customers/merges",
                                     json={"survivor_id": a.customer_id,
                                           "merged_id": b.customer_id, "agent": "12"})
    assert status == 201
    _, merged = await gateway.api("GET", "/api/v1/customers?address=whatsapp:+14155550199")
    assert merged["id"] == a.customer_id
    status, _ = await gateway.api("DELETE", f"/api/v1/customers/merges/{body['id']}")
    assert status == 200
    _, back = await gateway.api("GET", "/api/v1/customers?address=whatsapp:+14155550199")
    assert back["id"] == b.customer_id
    status, again = await gateway.api("DELETE", f"/api/v1/customers/merges/{body['id']}")
    assert status == 409 and "already undone" in again["error"]
