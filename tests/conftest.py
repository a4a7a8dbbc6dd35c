"""Shared fixtures: a fresh database per test on SQLite and on a real PostgreSQL, and running
gateways on loopback (`start_gateway`). Peer processes come from tests/peers.py; conditions
are waited for with `tests.helpers.wait_until`, never with fixed sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from sqlalchemy import func, select

from config.settings import AgentConfig, Settings, load_settings
from connectors.memory import MemoryChannel
from gateway.agents import AgentDirectory
from gateway import httpedge
from gateway.app import CHANNELS, GATEWAY, Gateway, build_app, setup_runner
from gateway.batching import WriteBatcher
from gateway.bus import EventBus
from gateway.clock import FrozenClock
from gateway.core import Core, Policy
from gateway.models import ProcessedEvent, TranscriptEntry
from gateway.store import make_engine, upgrade_sync
from tests.helpers import wait_until
from tests.peers import (  # noqa: F401  (fixtures re-exported for every test module)
    PostgresServer,
    postgres_server,
    postgres_url,
    sipp_uas,
)
from tests.standins import MetaGraphStandin, TwilioStandin, meta_webhook_request, twilio_sign
from tests.timeout_tasks import pytest_configure  # noqa: F401  (a timeout shows every task)

AGENT_TOKEN = "test-agent-token-0123456789"
PUBLIC_URL = "https://gw.example.com"  # what Twilio/Meta call; tests reach us via loopback
BUSINESS_SMS = "+15005550006"
BUSINESS_WHATSAPP = "whatsapp:+14155238886"
APP_SECRET = "meta-app-secret-0123456789abcdef"
VERIFY_TOKEN = "verify-token-ÄÖ-42"


@pytest.fixture(scope="session")
def pg_template(postgres_server: PostgresServer) -> str:
    """A migrated database to copy from: each test gets a fresh copy in milliseconds."""
    name = "gw_template"
    url = postgres_server.create_database(name)
    upgrade_sync(url)
    return name


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh, migrated database: SQLite in tmp_path, or a copy on the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
        upgrade_sync(url)
        return url
    server: PostgresServer = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("pg_template")
    return server.create_database(template=template)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    upgrade_sync(url)
    return url


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


CoreFactory = Callable[..., Awaitable[Core]]


@pytest_asyncio.fixture
async def make_core(database_url: str, clock: FrozenClock) -> AsyncIterator[CoreFactory]:
    """Cores on the test's fresh database: `await make_core(agents=[AgentConfig…])`."""
    made: list[Core] = []

    async def make(agents: Sequence[AgentConfig] = ()) -> Core:
        engine = make_engine(database_url)
        bus = EventBus(clock.now)
        core = Core(engine, clock, Policy(public_url="http://gw.test"), WriteBatcher(engine),
                    bus=bus, agents=AgentDirectory(agents, clock, publish=bus.publish))
        await core.batcher.start()
        made.append(core)
        return core

    try:
        yield make
    finally:
        for core in made:
            await core.aclose()
            await core.engine.dispose()


@pytest_asyncio.fixture
async def core(make_core: CoreFactory) -> Core:
    return await make_core()


@dataclass
class RunningGateway:
    """A gateway app served on 127.0.0.1, an HTTP client pointed at it, and what tests ask."""

    url: str
    app: web.Application
    http: ClientSession
    runner: web.AppRunner
    memory: MemoryChannel | None
    stopped: bool = False

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {AGENT_TOKEN}"}

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers,
                                     **kwargs) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]
                   ) -> tuple[int, bytes, str]:
        async with self.http.post(self.url + path, data=body, headers=dict(headers)) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def twilio(self, path: str, form: Mapping[str, str], auth_token: str,
                     *, extra_headers: Mapping[str, str] | None = None,
                     idempotency_token: str | None = None) -> tuple[int, bytes, str]:
        """POST `form` as Twilio does: signed for the public URL + path, sent to loopback."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_sign(auth_token, self.gw.settings.public_url + path,
                                              form),
            "User-Agent": "TwilioProxy/1.1",
        }
        if idempotency_token:
            headers["I-Twilio-Idempotency-Token"] = idempotency_token
        headers.update(extra_headers or {})
        return await self.post(path, urlencode(form).encode(), headers)

    async def meta(self, payload: Mapping[str, Any], secret: str = APP_SECRET
                   ) -> tuple[int, bytes, str]:
        body, headers = meta_webhook_request(secret, payload)
        return await self.post("/webhooks/whatsapp", body, headers)

    async def counts(self) -> tuple[int, int]:
        """(transcript entries, processed provider events) in the database."""
        async with self.gw.core.engine.connect() as conn:
            entries = (await conn.execute(select(func.count()).select_from(TranscriptEntry))
                       ).scalar_one()
            events = (await conn.execute(select(func.count()).select_from(ProcessedEvent))
                      ).scalar_one()
        return int(entries), int(events)

    async def customer(self, address: str) -> dict[str, Any]:
        status, body = await self.api("GET", "/api/v1/customers", params={"address": address})
        assert status == 200, body
        return body

    async def transcript(self, address: str) -> list[dict[str, Any]]:
        customer = await self.customer(address)
        status, conv = await self.api("GET",
                                      f"/api/v1/conversations/{customer['conversations'][0]['id']}")
        assert status == 200, conv
        return conv["transcript"]

    async def conversation_texts(self, conversation_id: str, until: str | None = None,
                                 timeout: float = 10.0) -> list[str]:
        """The conversation's transcript texts; with `until`, once one of them contains it
        (or, after `timeout`, as they are then)."""
        texts: list[str] = []

        async def read() -> bool:
            nonlocal texts
            status, conv = await self.api("GET", f"/api/v1/conversations/{conversation_id}")
            assert status == 200, conv
            texts = [e["text"] for e in conv["transcript"]]
            return until is None or any(until in t for t in texts)

        await wait_until(read, timeout=timeout, fail=False)
        return texts

    async def outbox(self, message_id: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/outbox/{message_id}")
        assert status == 200, body
        return body

    async def wait_outbox(self, message_id: str, predicate: Callable[[dict[str, Any]], Any],
                          timeout: float = 5.0) -> dict[str, Any]:
        """The outbox row once `predicate` holds (or as it is after `timeout`)."""
        row: dict[str, Any] = {}

        async def ready() -> bool:
            nonlocal row
            row = await self.outbox(message_id)
            return bool(predicate(row))

        await wait_until(ready, timeout=timeout, fail=False)
        return row

    async def settle(self) -> None:
        """Let the outbox send everything that is due and record it: after this, "nothing
        else was sent" can be asserted without sleeping."""
        await self.gw.outbox.drain()

    async def stop_server(self) -> None:
        """Stop serving, keep the client (to read what open responses still hold)."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    async def stop(self) -> None:
        await self.http.close()  # idempotent
        await self.stop_server()


@dataclass
class Gateways:
    """Starts gateways on loopback (`await start_gateway(**settings)`); the fixture stops
    whatever is still running. Each one can also be stopped on its own (restart tests)."""

    database_url: str
    running: list[RunningGateway] = field(default_factory=list)

    async def __call__(self, *, clock: Any = None, memory: MemoryChannel | None | bool = True,
                       twilio: TwilioStandin | None = None,
                       meta: MetaGraphStandin | None = None, sip: bool = True,
                       **overrides: Any) -> RunningGateway:
        """A gateway with `overrides` as settings. `twilio=` / `meta=` aim it at the provider
        stand-ins (then every send goes to them over real HTTP: no in-memory channel unless
        `memory=` says so); `sip=False` leaves the SIP edge out."""
        overrides.setdefault("database_url", self.database_url)
        overrides.setdefault("agent_token", AGENT_TOKEN)
        overrides.setdefault("log_format", "text")
        overrides.setdefault("sip_port", 0)  # an ephemeral UDP+TCP port: parallel runs never clash
        if twilio is not None or meta is not None:
            overrides.setdefault("public_url", PUBLIC_URL)
            if memory is True:
                memory = None
        if twilio is not None:
            overrides.setdefault("twilio_account_sid", twilio.account_sid)
            overrides.setdefault("twilio_auth_token", twilio.auth_token)
            overrides.setdefault("twilio_api_url", twilio.base_url)
            overrides.setdefault("twilio_from_number", BUSINESS_SMS)
        if meta is not None:
            overrides.setdefault("whatsapp_app_secret", APP_SECRET)
            overrides.setdefault("whatsapp_verify_token", VERIFY_TOKEN)
            overrides.setdefault("whatsapp_access_token", meta.access_token)
            overrides.setdefault("whatsapp_api_url", meta.base_url + "/v21.0")
            overrides.setdefault("whatsapp_phone_number_id", meta.phone_number_id)
        channel = MemoryChannel() if memory is True else (memory or None)
        registry: Sequence[Any] = CHANNELS if sip else [c for c in CHANNELS if c.name != "sip"]
        app = build_app(load_settings(**overrides), clock=clock,
                        extra_channels=[channel] if channel is not None else [],
                        registry=registry)
        runner = httpedge.runner(app, app[GATEWAY].settings.http_header_timeout_seconds,
                                 shutdown_timeout=1.0)
        await setup_runner(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        gateway = RunningGateway(f"http://127.0.0.1:{port}", app, ClientSession(), runner,
                                 channel)
        self.running.append(gateway)
        return gateway

    start = __call__


@pytest_asyncio.fixture
async def start_gateway(tmp_path: Any) -> AsyncIterator[Gateways]:
    """Start gateways on loopback: `await start_gateway(database_url=…, **settings)`; a
    fresh SQLite file unless `database_url` says otherwise."""
    pool = Gateways(f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
    try:
        yield pool
    finally:
        for gateway in reversed(pool.running):
            await gateway.stop()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean GATEWAY_* environment for settings tests."""
    import os

    for key in list(os.environ):
        if key.startswith("GATEWAY_") and key != "GATEWAY_REQUIRE_PEERS":
            monkeypatch.delenv(key)
    yield monkeypatch


__all__ = ["AGENT_TOKEN", "CoreFactory", "Gateways", "RunningGateway", "Settings"]
