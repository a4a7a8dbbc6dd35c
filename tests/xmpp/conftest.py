"""Fixtures of the XMPP channel's tests: one real Prosody per session, fresh accounts per
test, the channel under test on a fake in-memory core (tests/xmpp/fakes.py), and real
slixmpp clients as customers and agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from config.settings import Settings
from connectors.xmpp import XmppChannel
from tests.prosody import PASSWORD, Prosody, XmppClient
from tests.xmpp.fakes import FakeCore

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


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


def channel_settings(prosody: Prosody, jid: str, agents: dict[str, str] | None = None,
                     **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "xmpp_jid": jid, "xmpp_password": PASSWORD, "xmpp_host": "127.0.0.1",
        "xmpp_port": prosody.port, "xmpp_security": "none", **FAST,
        "agents": [{"id": agent_id, "name": agent_id.title(), "xmpp": agent_jid}
                   for agent_id, agent_jid in (agents or {}).items()],
    }
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture
async def start_channel(prosody: Prosody) -> AsyncIterator[Any]:
    """`await start_channel(core, jid, agents={"alice": jid}, **settings)`: a started channel,
    closed at the end of the test."""
    started: list[XmppChannel] = []

    async def start(core: FakeCore, jid: str, agents: dict[str, str] | None = None,
                    **overrides: Any) -> XmppChannel:
        channel = XmppChannel.from_settings(channel_settings(prosody, jid, agents, **overrides))
        assert channel is not None
        started.append(channel)
        core.sender = channel
        await channel.start(core)
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
