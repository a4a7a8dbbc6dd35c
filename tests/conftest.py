"""Shared fixtures: a fresh database per test on SQLite and on a real PostgreSQL, and a
running gateway app on loopback. Peer processes come from tests/peers.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web

from config.settings import Settings, load_settings
from connectors.memory import MemoryChannel
from gateway.app import GATEWAY, Gateway, build_app
from gateway.batching import WriteBatcher
from gateway.clock import FrozenClock
from gateway.core import Core, Policy
from gateway.store import make_engine, upgrade_sync
from tests.peers import (  # noqa: F401  (fixtures re-exported for every test module)
    PostgresServer,
    postgres_server,
    postgres_url,
    sipp_uas,
)

AGENT_TOKEN = "test-agent-token-0123456789"


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


@pytest_asyncio.fixture
async def core(database_url: str, clock: FrozenClock) -> AsyncIterator[Core]:
    engine = make_engine(database_url)
    core = Core(engine, clock, Policy(public_url="http://gw.test"), WriteBatcher(engine))
    await core.batcher.start()
    try:
        yield core
    finally:
        await core.aclose()
        await engine.dispose()


@dataclass
class RunningGateway:
    """A gateway app served on 127.0.0.1 with an HTTP client pointed at it."""

    url: str
    app: web.Application
    http: ClientSession
    memory: MemoryChannel

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


GatewayFactory = Callable[..., "asyncio.Future[RunningGateway]"]


@pytest_asyncio.fixture
async def start_gateway(tmp_path: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start gateways on loopback: `await start_gateway(database_url=…, **settings)`."""
    runners: list[web.AppRunner] = []
    sessions: list[ClientSession] = []

    async def start(*, clock: Any = None, memory: MemoryChannel | None = None,
                    **overrides: Any) -> RunningGateway:
        overrides.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path}/gateway.db")
        overrides.setdefault("agent_token", AGENT_TOKEN)
        overrides.setdefault("log_format", "text")
        overrides.setdefault("sip_port", 0)  # an ephemeral UDP+TCP port: parallel runs never clash
        memory = memory if memory is not None else MemoryChannel()
        settings = load_settings(**overrides)
        app = build_app(settings, clock=clock, extra_connectors=[memory])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        session = ClientSession()
        sessions.append(session)
        return RunningGateway(f"http://127.0.0.1:{port}", app, session, memory)

    try:
        yield start
    finally:
        for session in sessions:
            await session.close()
        for runner in reversed(runners):
            await runner.cleanup()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean GATEWAY_* environment for settings tests."""
    import os

    for key in list(os.environ):
        if key.startswith("GATEWAY_") and key != "GATEWAY_REQUIRE_PEERS":
            monkeypatch.delenv(key)
    yield monkeypatch


__all__ = ["AGENT_TOKEN", "RunningGateway", "Settings"]
