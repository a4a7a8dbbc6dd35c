"""The agent console's page and assets (`/console`, `/console/assets/{name}`), with the
headers that keep it safe: a Content-Security-Policy without inline script, no framing, no
MIME sniffing, no referrer (so a context link never leaks through one).

The page is plain HTML, CSS and JavaScript in `gateway/static/`; nothing is built.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def console_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "console.html", headers={
        **SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"})


async def console_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text="no such console asset\n", headers=SECURITY_HEADERS)
    return web.FileResponse(STATIC / name, headers={**SECURITY_HEADERS,
                                                    "Content-Type": content_type})


def console_routes() -> list[web.RouteDef]:
    return [web.get("/console", console_page),
            web.get("/console/assets/{name}", console_asset)]
