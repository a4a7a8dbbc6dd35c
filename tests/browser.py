"""Headless Chromium for browser tests: Debian's /usr/bin/chromium driven by Playwright from
PyPI (no browser download). One browser per test session, a fresh context (its own
storage, viewport and time zone) per page. Missing Chromium or Playwright skips the test,
or fails it when GATEWAY_REQUIRE_PEERS=1 (tests/peers.py `peer_missing`).

Re-export `chromium` from a conftest (`from tests.browser import chromium`) and mark the
tests `pytest.mark.asyncio(loop_scope="session")` (the browser lives in the session loop).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from tests.peers import peer_missing

CHROMIUM = Path(os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium"))
# PEERS.md: these flags run Debian's Chromium headless here. Playwright's launch() gives the
# browser a new, empty user-data-dir of its own and removes it on close.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"


def screenshot_path(name: str, fallback: Path) -> Path:
    """docs/img/<name> when GATEWAY_SAVE_SCREENSHOTS=1 (to refresh the README's images),
    else the test's own tmp_path, so a test run leaves the tree as it was."""
    if os.environ.get("GATEWAY_SAVE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS / name
    return fallback / name


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Any]:
    """A launched Playwright Browser (Chromium)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        peer_missing("playwright", "the Python package is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        peer_missing("chromium", f"no executable at {CHROMIUM}")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
