"""The HTTP edge's own defences (issue 7, finding 8): time limits on a request's head and on
its body, and the security headers of the console's pages.

aiohttp reads a request with no deadline of its own; its keep-alive timer, armed when a
connection opens and again after every response, closes a connection that is still waiting
for a complete request head when it fires. `runner` arms it with
GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS instead of aiohttp's hour, so a client that trickles
headers (slowloris) holds a connection that long at most. Once the head is in, aiohttp waits
for the body as long as the client likes; `body_deadline` reads it whole within
GATEWAY_HTTP_BODY_TIMEOUT_SECONDS (before authentication, so a stranger is cut off too) and
answers 408 and closes the connection when it is late. `console_headers` adds
Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and Referrer-Policy to the
console's responses where the page did not set its own (its own are stricter and win).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Only added where a response has none: the console page may set a stricter policy itself.
# Inline script and style are allowed here because the single-file page uses them.
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def console_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.path.startswith("/console"):
            _add(exc.headers)
        raise
    if request.path.startswith("/console"):
        _add(response.headers)
    return response


def body_deadline(timeout: float) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Middleware: a request with a body has it read in full within `timeout` seconds, or is
    answered 408 and its connection closed. The body is read into the request's own cache
    (bounded by client_max_size), so handlers' read(), post(), json() take it from there."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.can_read_body:
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                peer = request.remote or "?"
                log.warning("closed %s %s from %s: the body did not arrive within %.3g s",
                            request.method, request.path, peer, timeout)
                response = web.json_response(
                    {"error": f"the request body did not arrive within {timeout:g} seconds"},
                    status=408)
                response.force_close()
                return response
        return await handler(request)

    return middleware


def _add(headers: Any) -> None:
    for name, value in CONSOLE_HEADERS.items():
        headers.setdefault(name, value)


def runner(app: web.Application, header_timeout: float, **kwargs: Any) -> web.AppRunner:
    """The app's runner with the head-of-request deadline (`keepalive_timeout`): an idle
    kept-alive connection is closed after the same time."""
    kwargs.setdefault("access_log", None)
    return web.AppRunner(app, keepalive_timeout=header_timeout, **kwargs)
