"""Per-agent tokens: principal resolution, the middleware over real HTTP, authorship that the
body cannot override, and `gateway agent-token`."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from config.settings import load_settings
from gateway.agents import AgentDirectory
from gateway.auth import Authenticator, new_agent_token, token_sha256
from gateway.cli import main
from gateway.clock import FrozenClock
from tests.conftest import AGENT_TOKEN
from tests.console.server import AGENTS, ALICE_TOKEN, BOB_TOKEN, WorkspaceGateway
from tests.helpers import whatsapp

# The agents as the gateway reads them (GATEWAY_AGENTS) into the router, which holds the hashes.
AUTH = Authenticator(AGENT_TOKEN, AgentDirectory(load_settings(agents=AGENTS).agents,
                                                 FrozenClock()))


def test_tokens_resolve_to_the_service_or_their_agent() -> None:
    assert AUTH.resolve(f"Bearer {AGENT_TOKEN}").is_service  # type: ignore[union-attr]
    alice = AUTH.resolve(f"Bearer {ALICE_TOKEN}")
    assert alice is not None and alice.agent_id == "alice" and alice.name == "Alice Agent"
    assert AUTH.resolve(f"bearer  {BOB_TOKEN} ").agent_id == "bob"  # type: ignore[union-attr]
    for header in (None, "", "Bearer", "Bearer ", f"Basic {ALICE_TOKEN}", ALICE_TOKEN,
                   f"Bearer {ALICE_TOKEN}x", f"Bearer {token_sha256(ALICE_TOKEN)}",
                   "Bearer \udcff\u00e9", f"Bearer {AGENT_TOKEN[:-1]}"):
        assert AUTH.resolve(header) is None, header


def test_an_agent_always_acts_as_themself_the_service_as_anyone() -> None:
    alice = AUTH.resolve(f"Bearer {ALICE_TOKEN}")
    service = AUTH.resolve(f"Bearer {AGENT_TOKEN}")
    assert alice is not None and service is not None
    assert alice.acting_agent("bob") == "alice" and alice.acting_agent(None) == "alice"
    assert service.acting_agent("bob") == "bob" and service.acting_agent(None) is None


def test_only_agents_with_a_token_hash_can_sign_in() -> None:
    agents = [{**AGENTS[0], "token_sha256": token_sha256(ALICE_TOKEN).upper()},
              {"id": "dave", "name": "Dave", "contact": "sip:dave@127.0.0.1:5072"}]
    auth = Authenticator(AGENT_TOKEN, AgentDirectory(load_settings(agents=agents).agents,
                                                     FrozenClock()))
    assert auth.resolve(f"Bearer {ALICE_TOKEN}").agent_id == "alice"  # type: ignore[union-attr]
    assert auth.resolve(f"Bearer {BOB_TOKEN}") is None
    with pytest.raises(ValueError, match="service token"):
        Authenticator("", auth._agents)


def test_agent_token_command_prints_a_token_and_its_hash(capsys: Any) -> None:
    assert main(["agent-token"]) == 0
    out = capsys.readouterr().out
    token = out.split("token:", 1)[1].split()[0]
    digest = out.split("token_sha256:", 1)[1].split()[0]
    assert len(token) >= 40 and hashlib.sha256(token.encode()).hexdigest() == digest
    assert new_agent_token()[0] != token


@pytest.fixture
async def ws(start_ws: Any, sqlite_url: str) -> WorkspaceGateway:
    return await start_ws(sqlite_url)


async def test_who_am_i(ws: WorkspaceGateway) -> None:
    assert await ws.api("GET", "/api/v1/me", token=ALICE_TOKEN) == (
        200, {"kind": "agent", "agent_id": "alice", "name": "Alice Agent"})
    status, me = await ws.api("GET", "/api/v1/me")
    assert status == 200 and me["kind"] == "service" and me["agent_id"] is None
    status, body = await ws.api("GET", "/api/v1/me", token="wrong-token-0123456789")
    assert status == 401 and body["error"]


async def test_a_reply_with_an_agents_token_is_that_agents_whatever_the_body_says(
    ws: WorkspaceGateway
) -> None:
    first = await ws.core.ingest(whatsapp("+14155550151", "hello?"))
    path = f"/api/v1/conversations/{first.conversation_id}/messages"
    assert (await ws.api("POST", path, token=ALICE_TOKEN,
                         json={"text": "Alice here", "agent": "bob"}))[0] == 202
    assert (await ws.api("POST", path, token=BOB_TOKEN, json={"text": "Bob here"}))[0] == 202
    assert (await ws.api("POST", path, json={"text": "via integration", "agent": "bob"}))[0] == 202
    status, conv = await ws.api("GET", f"/api/v1/conversations/{first.conversation_id}",
                                token=BOB_TOKEN)
    assert status == 200
    authors = {e["text"]: e["author"] for e in conv["transcript"] if e["direction"] == "out"}
    assert authors == {"Alice here": "agent:alice", "Bob here": "agent:bob",
                       "via integration": "agent:bob"}


async def test_every_api_route_but_the_capability_and_the_description_needs_a_token(
    ws: WorkspaceGateway
) -> None:
    first = await ws.core.ingest(whatsapp("+14155550152", "hi"))
    cid = first.conversation_id
    for method, path in (("GET", "/api/v1/conversations"), ("GET", f"/api/v1/conversations/{cid}"),
                         ("GET", f"/api/v1/conversations/{cid}/timeline"),
                         ("POST", f"/api/v1/conversations/{cid}/messages"),
                         ("GET", "/api/v1/customers?address=whatsapp:%2B14155550152"),
                         ("GET", "/api/v1/reports/journeys"), ("GET", "/api/v1/events"),
                         ("GET", "/api/v1/me")):
        async with ws.http.request(method, ws.url + path, json={"text": "x"}) as resp:
            assert resp.status == 401, (method, path)
    async with ws.http.get(ws.url + "/api/v1/openapi.json") as resp:
        assert resp.status == 200
    async with ws.http.get(ws.url + "/api/v1/contexts/" + "C" * 32) as resp:
        assert resp.status == 404  # no token needed: the context token is the capability
