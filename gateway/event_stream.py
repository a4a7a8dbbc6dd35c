"""`GET /api/v1/events`: the committed-event bus as Server-Sent Events, per principal.

Each record of `gateway.bus.EventBus` becomes one SSE event: `id:` its sequence number,
`event:` its kind (`message`, `call`, `call-ended`, `assigned`, `closed`, `delivery`,
`presence`), `data:` its fields as JSON. A client resumes with `Last-Event-ID` from what the bus still
holds; when it cannot (the gateway restarted, or the gap is older than the replay window) it
first gets a `resync` event and should reload what it shows. Comment lines keep idle
connections alive. A subscriber that falls too far behind is dropped by the bus: the stream
ends and the client reconnects with its Last-Event-ID.

What each principal sees (`visible`): the service token sees everything. An agent sees every
`message`, `assigned`, `closed`, `delivery` and `presence` event (the inbox is shared: every
agent may open every conversation, as `GET /api/v1/conversations` lists them), only the
`call` offers made to them, and `call-ended` for the calls offered to or taken by them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.auth import Principal, principal_of
from gateway.bus import (
    CallEnded,
    CallOffered,
    DomainEvent,
    EntryAdded,
    EventBus,
    Published,
    SubscriptionLost,
)

log = logging.getLogger("gateway.events")

HEARTBEAT_SECONDS = 15.0
RETRY_MS = 2000  # the reconnect delay SSE clients are told to use
PATH = "/api/v1/events"


# Events that hold their committed values compactly show derived fields instead.
_SHOWN: dict[type[Any], tuple[str, ...]] = {
    EntryAdded: ("conversation_id", "customer_id", "leg_id", "entry")}


def stream_fields(event_type: type[Any]) -> tuple[str, ...]:
    """The fields an event of this type shows on the stream (`gateway/api_models.py` has
    their schemas); a transcript entry as the API shows it."""
    shown = _SHOWN.get(event_type)
    return shown if shown is not None else tuple(f.name for f in dataclasses.fields(event_type))


def event_data(event: DomainEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in stream_fields(type(event))}


def encode(record: Published) -> bytes:
    """One SSE event. JSON never holds a raw newline, so `data:` is one line."""
    data = event_data(record.event)
    data["published_at"] = record.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=dict)
    return f"id: {record.seq}\nevent: {record.event.kind}\ndata: {body}\n\n".encode()


class Visibility:
    """One stream's filter; remembers the calls it showed so their end follows them."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self._calls: set[str] = set()

    def __call__(self, event: DomainEvent) -> bool:
        me = self.principal.agent_id
        if me is None:
            return True
        if isinstance(event, CallOffered):
            if event.agent_id == me:
                self._calls.add(event.leg_id)  # not call_ref: a caller picks a Call-ID
                return True
            return False
        if isinstance(event, CallEnded):
            mine = event.agent_id == me or event.leg_id in self._calls
            self._calls.discard(event.leg_id)
            return mine
        return True


class EventStream:
    """The SSE route. `on_shutdown` ends open streams, so the server stops without waiting
    for clients to hang up."""

    def __init__(self, bus: EventBus, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.bus = bus
        self.heartbeat = heartbeat
        self._streams = 0
        self._stopping = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.events)]

    async def on_shutdown(self, app: web.Application) -> None:
        self._stopping.set()  # each stream ends its body cleanly; clients reconnect

    @property
    def open_streams(self) -> int:
        return self._streams

    async def events(self, request: web.Request) -> web.StreamResponse:
        since = _last_event_id(request)
        visible = Visibility(principal_of(request))
        subscription = self.bus.subscribe(since=since)
        stopping = asyncio.ensure_future(self._stopping.wait())
        self._streams += 1
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store", "X-Accel-Buffering": "no",
        })
        try:
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\n: connected\n\n".encode())
            pending = await self._check_resume(subscription, since, response)
            await self._pump(subscription, visible, response, pending, stopping)
        except SubscriptionLost:
            log.warning("event stream of %s fell behind and was dropped; the client resumes "
                        "with Last-Event-ID", visible.principal.agent_id or "the service")
        except ConnectionResetError:
            pass  # the client went away
        finally:  # also when cancelled
            stopping.cancel()
            subscription.close()
            self._streams -= 1
        return response

    async def _check_resume(self, subscription: Any, since: int | None,
                            response: web.StreamResponse) -> Published | None:
        """Say `resync` when the records after `since` are not all held any more."""
        if since is None or since == self.bus.last_seq:
            return None
        first: Published | None = None
        if since < self.bus.last_seq:
            # The replay is already queued: this does not wait.
            first = await subscription.get(timeout=1.0)
        if first is None or first.seq != since + 1:
            reason = ("the gateway restarted" if since > self.bus.last_seq
                      else "events after that id are no longer held")
            body = json.dumps({"last_event_id": since, "reason": reason})
            await response.write(f"event: resync\ndata: {body}\n\n".encode())
        return first

    async def _pump(self, subscription: Any, visible: Callable[[DomainEvent], bool],
                    response: web.StreamResponse, pending: Published | None,
                    stopping: asyncio.Future[Any]) -> None:
        record = pending
        while True:
            if record is None:
                getter = asyncio.ensure_future(subscription.get(timeout=self.heartbeat))
                await asyncio.wait((getter, stopping), return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    getter.cancel()
                    return
                record = getter.result()
            if record is None:
                await response.write(b": heartbeat\n\n")
            elif visible(record.event):
                await response.write(encode(record))
            record = None


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(reason="Last-Event-ID must be an event id this stream sent")
    return int(raw)
