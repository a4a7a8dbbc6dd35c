"""The console page and its assets are served with the headers that keep it safe, and its
script never parses text as HTML."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.console import STATIC
from tests.console.server import WorkspaceGateway


@pytest.fixture
async def ws(start_ws: Any, sqlite_url: str) -> WorkspaceGateway:
    return await start_ws(sqlite_url)


async def test_console_and_assets_carry_the_security_headers(ws: WorkspaceGateway) -> None:
    for path, kind in (("/console", "text/html"), ("/console/assets/console.js", "text/javascript"),
                       ("/console/assets/console.css", "text/css")):
        async with ws.http.get(ws.url + path) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith(kind), path
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
    async with ws.http.get(ws.url + "/console/assets/..%2Fapi.py") as resp:
        assert resp.status == 404
    async with ws.http.get(ws.url + "/console/assets/console.html") as resp:
        assert resp.status == 404


def test_the_page_has_no_inline_script_and_the_script_no_html_sinks() -> None:
    html = (STATIC / "console.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="/console/assets/console.js" defer>']
    assert re.search(r"<[^>]*\son\w+\s*=", html) is None  # no inline on…= handlers
    assert "<style" not in html and "style=" not in html
    script = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink
    assert "localStorage." not in script and "new EventSource" not in script
