"""Fixtures of the XMPP channel's tests: one real Prosody per session, fresh accounts per
test, the channel under test on the real core (SQLite, its bus, router, desk and outbox
worker), and real slixmpp clients as customers and agents.

The channel gets the core through a thin recording sink (`Sink`): every call goes to the real
core, and what came back is kept so tests can wait on it (a message stored, a duplicate, a
delivery status). A test may make the next stores fail, as a database outage would.
End-to-end tests through the whole running gateway are in test_gateway_*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from config.settings import Settings
from connectors.xmpp import XmppChannel
from gateway.agents import AgentDirectory
from gateway.app import policy_from
from gateway.batching import WriteBatcher
from gateway.bus import EventBus
from gateway.clock import SystemClock
from gateway.core import Core
from gateway.domain import IngestResult, OutboxState
from gateway.events import DeliveryStatus, InboundMessage
from gateway.models import TranscriptEntry
from gateway.outbox import OutboxWorker
from gateway.store import make_engine
from tests.helpers import wait_until, whatsapp
from tests.prosody import PASSWORD, Prosody, XmppClient

FAST = {  # short timers for tests; production keeps the defaults
    "xmpp_reconnect_min_seconds": 0.05,
    "xmpp_reconnect_max_seconds": 0.5,
    "xmpp_connect_timeout_seconds": 10.0,
    "xmpp_send_timeout_seconds": 5.0,
    "xmpp_agent_release_after_seconds": 0.0,
}


@pytest.fixture(scope="session")
def prosody() -> Iterator[Prosody]:
    """One Prosody for the session (skips, or fails under GATEWAY_REQUIRE_PEERS=1, without)."""
    server = Prosody()
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


class RecordingDesk:
    """The core's desk; each command and its result (or error) kept in `calls`."""

    def __init__(self, desk: Any) -> None:
        self._desk = desk
        self.calls: list[tuple[Any, ...]] = []
        self.results: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        command = getattr(self._desk, name)

        async def recorded(*args: Any) -> Any:
            self.calls.append((name, *args))
            try:
                result = await command(*args)
            except Exception as exc:
                self.results.append((name, exc))
                raise
            self.results.append((name, result))
            return result

        return recorded


@dataclass(eq=False)
class Sink:
    """The real core as the channel's InboundSink, keeping what it answered."""

    core: Core
    desk: RecordingDesk = field(init=False)
    stored: list[InboundMessage] = field(default_factory=list)  # new, in commit order
    duplicates: list[InboundMessage] = field(default_factory=list)
    statuses: list[tuple[DeliveryStatus, str | None]] = field(default_factory=list)
    fail_next_ingests: int = 0  # the next stores fail before reaching the database
    hold: asyncio.Event | None = None  # while set and not yet fired, stores wait for it

    def __post_init__(self) -> None:
        self.desk = RecordingDesk(self.core.desk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)  # bus, router, checkpoint, issue_context, …

    async def ingest(self, event: InboundMessage) -> IngestResult:
        if self.fail_next_ingests:
            self.fail_next_ingests -= 1
            raise ConnectionError("database unavailable (injected)")
        if self.hold is not None:
            await self.hold.wait()  # a slow database
        result = await self.core.ingest(event)
        (self.duplicates if result.duplicate else self.stored).append(event)
        return result

    async def delivery_status(self, event: DeliveryStatus) -> str | None:
        applied = await self.core.delivery_status(event)
        self.statuses.append((event, applied))
        return applied


class Harness:
    """The real core on the test's own SQLite file, made when the first channel starts (the
    router needs the agents of the channel's settings); it outlives channel restarts, as a
    database and a running core would."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.sink: Sink | None = None
        self.outbox: OutboxWorker | None = None

    async def build(self, settings: Settings) -> Sink:
        if self.sink is None:
            engine = make_engine(self.database_url)
            clock = SystemClock()
            bus = EventBus(clock.now)
            self.outbox = OutboxWorker(engine, {}, clock, poll_interval=0.5)
            core = Core(engine, clock, policy_from(settings), WriteBatcher(engine),
                        on_outbox=self.outbox.wake, bus=bus,
                        agents=AgentDirectory(settings.agents, clock, publish=bus.publish))
            await core.batcher.start()
            await self.outbox.start()
            self.sink = Sink(core)
        return self.sink

    async def aclose(self) -> None:
        if self.sink is not None:
            assert self.outbox is not None
            await self.outbox.aclose()
            await self.sink.core.aclose()
            await self.sink.core.engine.dispose()

    # ---- what the tests read ---------------------------------------------------------------

    @property
    def core(self) -> Core:
        assert self.sink is not None, "start a channel first"
        return self.sink.core

    @property
    def stored(self) -> list[InboundMessage]:
        return self.sink.stored if self.sink else []

    @property
    def duplicates(self) -> list[InboundMessage]:
        return self.sink.duplicates if self.sink else []

    @property
    def statuses(self) -> list[tuple[DeliveryStatus, str | None]]:
        return self.sink.statuses if self.sink else []

    @property
    def fail_next_ingests(self) -> int:
        return self.sink.fail_next_ingests if self.sink else 0

    @fail_next_ingests.setter
    def fail_next_ingests(self, count: int) -> None:
        assert self.sink is not None, "start a channel first"
        self.sink.fail_next_ingests = count

    @property
    def desk(self) -> RecordingDesk:
        assert self.sink is not None, "start a channel first"
        return self.sink.desk

    def texts(self, address: str | None = None) -> list[str]:
        """What the core stored as new messages, in the order its commits answered."""
        return [m.text for m in self.stored if address is None or str(m.sender) == address]

    async def transcript_texts(self, address: str | None = None) -> list[str]:
        """Inbound message texts as the database holds them, in transcript order."""
        table = TranscriptEntry.__table__
        query = (select(table.c.text).where(table.c.direction == "in", table.c.kind == "message")
                 .order_by(table.c.id))
        if address is not None:
            query = query.where(table.c.author == address)
        async with self.core.engine.connect() as conn:
            return [row[0] for row in await conn.execute(query)]

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        return await self.core.conversation(conversation_id)

    async def customer_writes(self, address: str, text: str, name: str | None = None
                              ) -> IngestResult:
        """A customer on WhatsApp writes (straight to the core, as its webhook would)."""
        event = whatsapp(address.removeprefix("whatsapp:"), text)
        if name is not None:
            event = replace(event, profile_name=name)
        result = await self.core.ingest(event)
        assert result.conversation_id is not None
        return result

    async def outbox_when(self, message_id: str, predicate: Any, timeout: float = 10.0
                          ) -> OutboxState:
        """The outbox row once `predicate(row)` holds (fails the test after `timeout`)."""
        row: OutboxState | None = None

        async def ready() -> bool:
            nonlocal row
            row = await self.core.outbox_message(message_id)
            return bool(predicate(row))

        await wait_until(ready, timeout=timeout, what=f"outbox {message_id}")
        assert row is not None
        return row

    def presence(self, agent_id: str) -> Any:
        return self.core.router.presence(agent_id)


@pytest_asyncio.fixture
async def core(sqlite_url: str) -> AsyncIterator[Harness]:
    harness = Harness(sqlite_url)
    try:
        yield harness
    finally:
        await harness.aclose()


def xmpp_values(prosody: Any, jid: str, agents: dict[str, str] | None = None,
                **overrides: Any) -> dict[str, Any]:
    """Settings for a gateway whose XMPP account `jid` is on the test Prosody (plain text on
    loopback), with `agents` (agent id -> JID) as XMPP agents."""
    values: dict[str, Any] = {
        "xmpp_jid": jid, "xmpp_password": PASSWORD, "xmpp_host": "127.0.0.1",
        "xmpp_port": prosody.port, "xmpp_security": "none", **FAST,
        "agents": [{"id": agent_id, "name": agent_id.title(), "xmpp": agent_jid}
                   for agent_id, agent_jid in (agents or {}).items()],
    }
    values.update(overrides)
    return values


def channel_settings(prosody: Any, jid: str, agents: dict[str, str] | None = None,
                     **overrides: Any) -> Settings:
    return Settings(**xmpp_values(prosody, jid, agents, **overrides))


@pytest_asyncio.fixture
async def start_channel(prosody: Prosody) -> AsyncIterator[Any]:
    """`await start_channel(core, jid, agents={"alice": jid}, **settings)`: a channel on the
    real core, sending the core's outbox, closed at the end of the test. `nameservers=`
    ("host:port", …) makes it find the server through those DNS servers; `options=` sets
    XmppOptions fields that are not settings."""
    started: list[XmppChannel] = []

    async def start(core: Harness, jid: str, agents: dict[str, str] | None = None,
                    nameservers: tuple[str, ...] = (), options: dict[str, Any] | None = None,
                    **overrides: Any) -> XmppChannel:
        settings = channel_settings(prosody, jid, agents, **overrides)
        channel = XmppChannel.from_settings(settings)
        assert channel is not None
        if nameservers:
            channel.options = replace(channel.options, session=replace(
                channel.options.session, nameservers=nameservers))
        if options:  # XmppOptions that are not settings (high_water, pipeline, …)
            channel.options = replace(channel.options, **options)
        started.append(channel)
        sink = await core.build(settings)
        assert core.outbox is not None
        core.outbox.add_connector(channel)
        await channel.start(sink)
        return channel

    try:
        yield start
    finally:
        for channel in reversed(started):
            await channel.aclose()


@pytest_asyncio.fixture
async def client(prosody: Prosody) -> AsyncIterator[Any]:
    """`await client(jid, show=None, resource="phone")`: a connected slixmpp client."""
    clients: list[XmppClient] = []

    async def connect(jid: str, show: str | None = None, resource: str = "phone",
                      presence: bool = True) -> XmppClient:
        xmpp = XmppClient(jid, prosody.port, resource=resource)
        clients.append(xmpp)
        return await xmpp.connect(show=show, presence=presence)

    try:
        yield connect
    finally:
        for xmpp in clients:
            await xmpp.disconnect()
