"""Fixtures of the agent workspace tests: a running gateway with the workspace agents (see
tests/console/server.py, on the conftest's `start_gateway`), and for the browser tests a
headless Chromium (`chromium`, from tests/browser.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from tests.browser import chromium  # noqa: F401  (the session browser, re-exported)
from tests.conftest import Gateways
from tests.console.server import WorkspaceGateway, start_workspace
from tests.standins import TwilioStandin, new_twilio_sid


@pytest_asyncio.fixture
async def start_ws(start_gateway: Gateways) -> Callable[..., Any]:
    """`await start_ws(database_url, twilio=…, clock=…, heartbeat=…)`; stopped with the
    `start_gateway` pool."""

    async def start(database_url: str, **kwargs: Any) -> WorkspaceGateway:
        return await start_workspace(start_gateway, database_url=database_url, **kwargs)

    return start


@pytest_asyncio.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with TwilioStandin(new_twilio_sid("AC"), secrets.token_hex(16)) as standin:
        yield standin
