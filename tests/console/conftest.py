"""Fixtures of the agent workspace tests: a running gateway with the workspace mounted (see
tests/console/server.py), and for the browser tests a headless Chromium (`chromium`, from
tests/browser.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from tests.browser import chromium  # noqa: F401  (the session browser, re-exported)
from tests.console.server import WorkspaceGateway, start_workspace
from tests.standins import TwilioStandin, new_twilio_sid


@pytest_asyncio.fixture
async def start_ws() -> AsyncIterator[Callable[..., Any]]:
    """`await start_ws(database_url, twilio=…, clock=…, heartbeat=…)`; all stopped after."""
    running: list[WorkspaceGateway] = []

    async def start(database_url: str, **kwargs: Any) -> WorkspaceGateway:
        server = await start_workspace(database_url, **kwargs)
        running.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(running):
            await server.stop()


@pytest_asyncio.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with TwilioStandin(new_twilio_sid("AC"), secrets.token_hex(16)) as standin:
        yield standin
