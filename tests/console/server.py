"""A running gateway with the agent workspace mounted, for the workspace's API and browser tests.

Phase-1 assembly (until the wiring phase mounts these in gateway/app.py): `build_app` as it
is, plus the workspace routes, the event stream on an `EventBus`, and the per-agent auth
middleware in place of the service-token check. The core does not publish committed events
yet, so `BusFeed` does it for the tests: after each core command it publishes the transcript
entries that command committed (`message`), and `close` (`closed`). `offer_call` publishes
what the SIP path will: a `call` offered to an agent, with a real context token.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import ClientSession, web
from sqlalchemy import select

from config.settings import load_settings
from connectors.memory import MemoryChannel
from gateway import context
from gateway.app import GATEWAY, Gateway, build_app
from gateway.auth import AgentCredential, Authenticator, auth_middleware, token_sha256
from gateway.bus import CallOffered, ConversationClosed, EntryAdded, EventBus
from gateway.core import CallRoute, Core
from gateway.models import Conversation, TranscriptEntry
from gateway.workspace_api import Workspace
from tests.conftest import AGENT_TOKEN
from tests.helpers import call
from tests.standins import TwilioStandin, twilio_sign, twilio_sms_form

PUBLIC_URL = "https://gw.example.com"  # what providers sign for; tests reach us on loopback
BUSINESS_SMS = "+15005550006"
ALICE_TOKEN = "alice-token-0123456789abcdefghij"
BOB_TOKEN = "bob-token-0123456789abcdefghijkl"
AGENTS = [
    {"id": "alice", "name": "Alice Agent", "contact": "sip:alice@127.0.0.1:5070"},
    {"id": "bob", "name": "Bob Agent", "contact": "sip:bob@127.0.0.1:5071"},
]
CREDENTIALS = [AgentCredential("alice", "Alice Agent", token_sha256(ALICE_TOKEN)),
               AgentCredential("bob", "Bob Agent", token_sha256(BOB_TOKEN))]
TRANSCRIPT = TranscriptEntry.__table__
CONVERSATIONS = Conversation.__table__


class BusFeed:
    """Publishes what core commands committed, as the refactored core will itself."""

    def __init__(self, core: Core, bus: EventBus) -> None:
        self.core = core
        self.bus = bus
        self._last = 0
        self._lock = asyncio.Lock()
        for name in ("ingest", "reply", "start_verification", "escalate", "open_call",
                     "call_event", "close_conversation"):
            setattr(core, name, self._wrap(name, getattr(core, name)))

    def _wrap(self, name: str, command: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        @functools.wraps(command)
        async def run(*args: Any, **kwargs: Any) -> Any:
            result = await command(*args, **kwargs)
            await self.publish_new()
            if name == "close_conversation":
                customer = await self.core.reader.run(lambda conn: conn.execute(
                    select(CONVERSATIONS.c.customer_id)
                    .where(CONVERSATIONS.c.id == args[0])).scalar())
                self.bus.publish([ConversationClosed(args[0], customer)])
            return result

        return run

    async def publish_new(self) -> None:
        async with self._lock:
            last = self._last

            def read(conn: Any) -> list[Any]:
                return conn.execute(
                    select(TRANSCRIPT, CONVERSATIONS.c.customer_id)
                    .join(CONVERSATIONS, CONVERSATIONS.c.id == TRANSCRIPT.c.conversation_id)
                    .where(TRANSCRIPT.c.id > last).order_by(TRANSCRIPT.c.id)).mappings().all()

            rows = await self.core.reader.run(read)
            events = []
            for r in rows:
                entry = {"id": r["id"], "at": context.iso(r["at"]), "channel": r["channel"],
                         "direction": r["direction"], "author": r["author"], "text": r["text"],
                         "kind": r["kind"], "leg_id": r["leg_id"],
                         "provider_at": context.iso(r["provider_at"]), "data": r["data"]}
                events.append(EntryAdded(r["conversation_id"], r["customer_id"], r["leg_id"],
                                         entry))
                self._last = max(self._last, r["id"])
            self.bus.publish(events)


@dataclass
class WorkspaceGateway:
    url: str
    app: web.Application
    runner: web.AppRunner
    http: ClientSession
    bus: EventBus
    workspace: Workspace
    twilio: TwilioStandin | None
    memory: MemoryChannel | None
    check_requests: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def core(self) -> Core:
        return self.gw.core

    async def api(self, method: str, path: str, token: str | None = AGENT_TOKEN,
                  **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, self.url + path, headers=headers,
                                     **kwargs) as resp:
            return resp.status, await resp.json()

    async def sms(self, number: str, body: str, *, whatsapp: bool = False,
                  profile_name: str | None = None) -> int:
        """A customer message as Twilio posts it: signed for PUBLIC_URL, sent to loopback."""
        assert self.twilio is not None
        prefix = "whatsapp:" if whatsapp else ""
        form = twilio_sms_form(account_sid=self.twilio.account_sid, from_=prefix + number,
                               to=prefix + BUSINESS_SMS, body=body, profile_name=profile_name)
        path = "/webhooks/twilio/messaging"
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": twilio_sign(self.twilio.auth_token,
                                                     PUBLIC_URL + path, form)}
        async with self.http.post(self.url + path, data=urlencode(form).encode(),
                                  headers=headers) as resp:
            return resp.status

    async def offer_call(self, number: str | None, agent_id: str, **kwargs: Any) -> CallRoute:
        """A call routed to `agent_id`, announced on the bus as the SIP edge will."""
        incoming = call(number, **kwargs)
        route = await self.core.open_call(incoming)
        self.bus.publish([CallOffered(route.conversation_id, route.customer_id, route.leg_id,
                                      agent_id, route.context_url, incoming.call_ref)])
        return route

    async def stop_server(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    async def stop(self) -> None:
        await self.stop_server()
        await self.http.close()


async def _check_standin(server: WorkspaceGateway, request: web.Request) -> web.Response:
    """Stands in for POST …/verifications/{challenge_id}/check (another phase builds it):
    records what the console sent, answers as the contract describes."""
    body = await request.json()
    server.check_requests.append({"conversation_id": request.match_info["id"],
                                  "challenge_id": request.match_info["challenge_id"], **body})
    return web.json_response({"outcome": "passed" if body.get("code") == "123456" else "wrong"})


async def start_workspace(
    database_url: str,
    *,
    twilio: TwilioStandin | None = None,
    clock: Any = None,
    heartbeat: float = 15.0,
    bus: EventBus | None = None,
    credentials: Sequence[AgentCredential] = CREDENTIALS,
    **overrides: Any,
) -> WorkspaceGateway:
    overrides.setdefault("database_url", database_url)
    overrides.setdefault("agent_token", AGENT_TOKEN)
    overrides.setdefault("log_format", "text")
    overrides.setdefault("public_url", PUBLIC_URL)
    overrides.setdefault("agents", json.loads(json.dumps(AGENTS)))
    memory = None
    extra: list[Any] = []
    if twilio is not None:
        overrides.setdefault("twilio_account_sid", twilio.account_sid)
        overrides.setdefault("twilio_auth_token", twilio.auth_token)
        overrides.setdefault("twilio_api_url", twilio.base_url)
        overrides.setdefault("twilio_from_number", BUSINESS_SMS)
    else:
        memory = MemoryChannel()
        extra.append(memory)
    settings = load_settings(**overrides)
    app = build_app(settings, clock=clock, extra_connectors=extra, enable_sip=False)
    core = app[GATEWAY].core
    bus = bus or EventBus(clock.now if clock is not None else lambda: datetime.now(UTC))
    BusFeed(core, bus)
    workspace = Workspace(core.reader, core.clock, bus, heartbeat=heartbeat)
    workspace.mount(app)
    # The wiring phase swaps this in gateway/app.py; here the built app's check is replaced.
    app.middlewares[1] = auth_middleware(Authenticator(AGENT_TOKEN, credentials))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    server: WorkspaceGateway

    async def check(request: web.Request) -> web.Response:
        return await _check_standin(server, request)

    app.router.add_post("/api/v1/conversations/{id}/verifications/{challenge_id}/check", check)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = WorkspaceGateway(f"http://127.0.0.1:{port}", app, runner, ClientSession(), bus,
                              workspace, twilio, memory)
    return server


# ---- reading an event stream as a client does ----------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any


class SseReader:
    """Reads `text/event-stream` from an aiohttp response: events and comment lines."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> SseEvent | None:
        """The next event, or None when the stream ended."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return SseEvent(fields.get("id"), fields.get("event", "message"),
                                    json.loads("\n".join(data)))
                fields.clear()
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def until(self, predicate: Callable[[SseEvent], bool],
                    timeout: float = 5.0) -> SseEvent:
        async def find() -> SseEvent:
            while True:
                event = await self._next()
                assert event is not None, "the stream ended"
                if predicate(event):
                    return event

        return await asyncio.wait_for(find(), timeout)
