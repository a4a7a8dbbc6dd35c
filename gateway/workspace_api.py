"""The agent workspace's HTTP routes: the inbox, a conversation's timeline, "who am I", the
journeys report and the event stream.

Handlers only parse, call a read (`gateway/inbox.py`, `gateway/reports.py`, run by the
store's Reader in one hop) and answer JSON; commands (reply, verify, escalate, close) stay
on the agent API in `gateway/api.py`. `Workspace.mount(app)` adds the routes and the event
stream's shutdown hook; authentication is `gateway/auth.py`'s middleware.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway import inbox, reports
from gateway.api import error, ok
from gateway.auth import principal_of
from gateway.bus import EventBus
from gateway.clock import Clock
from gateway.event_stream import HEARTBEAT_SECONDS, EventStream
from gateway.store import Reader

DEFAULT_REPORT_DAYS = 30


def _time(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            reason=f"{name} must be an ISO 8601 date or time, e.g. 2026-11-01") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Workspace:
    def __init__(self, reader: Reader, clock: Clock, bus: EventBus,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.reader = reader
        self.clock = clock
        self.stream = EventStream(bus, heartbeat)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/me", self.me),
            web.get("/api/v1/conversations", self.conversations),
            web.get("/api/v1/conversations/{id}/timeline", self.timeline),
            web.get("/api/v1/reports/journeys", self.journeys),
            *self.stream.routes(),
        ]

    def mount(self, app: web.Application) -> None:
        app[WORKSPACE] = self
        app.add_routes(self.routes())
        app.on_shutdown.append(self.stream.on_shutdown)

    async def me(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        if principal.is_service:
            return ok({"kind": "service", "agent_id": None, "name": "service token"})
        return ok({"kind": "agent", "agent_id": principal.agent_id,
                   "name": principal.name or principal.agent_id})

    async def conversations(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return error(400, "limit must be a number")
        try:
            query = inbox.InboxQuery(
                status=q.get("status", "open"),  # type: ignore[arg-type]
                limit=limit, cursor=q.get("cursor") or None,
                channel=q.get("channel") or None, agent=q.get("agent") or None)
            return ok(await self.reader.run(inbox.inbox_page, query))
        except inbox.BadQuery as exc:
            return error(400, str(exc))

    async def timeline(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["id"]
        view = await self.reader.run(inbox.timeline, conversation_id, self.clock.now())
        if view is None:
            return error(404, f"no conversation {conversation_id}")
        return ok(view)

    async def journeys(self, request: web.Request) -> web.Response:
        q = request.query
        until = _time("until", q["until"]) if q.get("until") else self.clock.now()
        since = (_time("since", q["since"]) if q.get("since")
                 else until - timedelta(days=DEFAULT_REPORT_DAYS))
        try:
            report = await self.reader.run(reports.journeys, since, until,
                                           q.get("period", "day"))
        except reports.BadReport as exc:
            return error(400, str(exc))
        return ok(report)


WORKSPACE = web.AppKey("workspace", Workspace)  # the mounted workspace (tests reach its stream)
