"""The other gateways on one PostgreSQL: this instance's name, its liveness, and NOTIFY.

Every gateway process has an instance id (`GATEWAY_INSTANCE_ID`, or one made per process).
While its outbox runs, it holds a session advisory lock named by that id (`liveness_key`):
a peer whose lock is free has no live database session, so the sends it leased are in doubt
(`owner_gone`). `PeerLink` carries what one process tells the others, after its commits:
a compact NOTIFY for each committed domain event (republished on every other instance's
bus, so an agent's event stream on A shows what arrived at B) and a wake-up when a reply was
queued (so another gateway's outbox sends it at once). SQLite has one host and no NOTIFY:
none of this runs there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.bus import (
    AgentPresenceChanged,
    CallEnded,
    CallOffered,
    ConversationAssigned,
    ConversationClosed,
    DeliveryUpdated,
    DomainEvent,
    EntryAdded,
    EventBus,
)
from gateway.domain import Entry
from gateway.models import TranscriptEntry
from gateway.tasks import cancel_and_wait

log = logging.getLogger("gateway.instances")

LIVENESS_CLASS: Final = 0x67776F62  # advisory locks pg_advisory_lock(class, key): "gwob"
EVENTS_CHANNEL: Final = "gateway_events"
OUTBOX_CHANNEL: Final = "gateway_outbox"
MAX_PAYLOAD: Final = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more
OUTGOING_LIMIT: Final = 10_000  # events waiting for the link before the oldest are dropped
RECONNECT_SECONDS: Final = 1.0
WATCH_SECONDS: Final = 5.0  # how often the origins of counted calls are checked for liveness

_KINDS: dict[str, type[Any]] = {cls.kind: cls for cls in (
    EntryAdded, CallOffered, CallEnded, ConversationAssigned, ConversationClosed,
    DeliveryUpdated, AgentPresenceChanged)}
_ENTRY_FIELDS = [f.name for f in dataclasses.fields(Entry)]
_ENTRY_TIMES = frozenset({"at", "provider_at"})
TRANSCRIPT = TranscriptEntry.__table__


def new_instance_id() -> str:
    """A name for this process that no other gateway on the database has: host-pid-random."""
    host = socket.gethostname().split(".")[0][:40] or "gateway"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def liveness_key(instance_id: str) -> int:
    """The advisory lock key of an instance (32 bits of its SHA-256; a collision can only
    make a dead peer look alive, and then its leases expire by time)."""
    return int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:4], "big", signed=True)


async def hold_liveness(conn: AsyncConnection, instance_id: str) -> bool:
    """Take this instance's liveness lock on `conn` (an AUTOCOMMIT connection kept for the
    process's life); False when a live gateway already holds it (the id is in use)."""
    got = await conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"),
                             {"c": LIVENESS_CLASS, "k": liveness_key(instance_id)})
    return bool(got.scalar())


async def owner_gone(conn: AsyncConnection, instance_id: str) -> bool:
    """True when no live session holds `instance_id`'s liveness lock. Run inside a
    transaction: the probe's own lock goes with it."""
    got = await conn.execute(text("SELECT pg_try_advisory_xact_lock(:c, :k)"),
                             {"c": LIVENESS_CLASS, "k": liveness_key(instance_id)})
    return bool(got.scalar())


# ---- events <-> NOTIFY payloads -----------------------------------------------------------


def encode_event(origin: str, n: int, event: DomainEvent,
                 relays: Sequence[str] = ()) -> str | None:
    """The NOTIFY payload of `event`: the event itself, or for a transcript entry too large
    for one payload, its id (the receiver reads it back). None: cannot be carried.
    `relays`: the agent relays the origin runs (`EventBus.relays`), which told their agents."""
    head: dict[str, Any] = {"o": origin, "n": n, "k": event.kind}
    if relays:
        head["r"] = list(relays)
    if isinstance(event, EntryAdded):
        values = [v.isoformat() if isinstance(v, datetime) else v for v in event.values]
        body: dict[str, Any] = {"customer_id": event.customer_id, "values": values}
    else:
        body = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    payload = json.dumps({**head, "e": body}, separators=(",", ":"), default=str)
    if len(payload) <= MAX_PAYLOAD:  # ensure_ascii: characters are bytes
        return payload
    if isinstance(event, EntryAdded):
        ref = {**head, "ref": event.item.id, "customer_id": event.customer_id}
        return json.dumps(ref, separators=(",", ":"))
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Heard:
    """One decoded payload: its origin, and the event (or the transcript entry to read)."""

    origin: str
    event: DomainEvent | None
    entry_ref: tuple[int, str] | None = None  # (entry id, customer id)
    relays: frozenset[str] = frozenset()


def decode_event(payload: str) -> Heard | None:
    """A payload from `encode_event`, or None when it is not one (logged by the caller)."""
    try:
        data = json.loads(payload)
        origin, kind = str(data["o"]), str(data["k"])
        relays = frozenset(str(r) for r in data.get("r", ()))
        if "ref" in data:
            return Heard(origin, None, (int(data["ref"]), str(data["customer_id"])), relays)
        body = data["e"]
        if kind == EntryAdded.kind:
            values = [datetime.fromisoformat(v) if name in _ENTRY_TIMES and v else v
                      for name, v in zip(_ENTRY_FIELDS, body["values"], strict=True)]
            return Heard(origin, EntryAdded(body["customer_id"], tuple(values)), None, relays)
        return Heard(origin, _KINDS[kind](**body), None, relays)
    except (KeyError, TypeError, ValueError):
        return None


async def read_entry(engine: AsyncEngine, entry_id: int, customer_id: str) -> EntryAdded | None:
    columns = [TRANSCRIPT.c[name] for name in _ENTRY_FIELDS]
    async with engine.connect() as conn:
        row = (await conn.execute(select(*columns).where(TRANSCRIPT.c.id == entry_id))).first()
    return EntryAdded(customer_id, tuple(row)) if row is not None else None


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq URL of a `postgresql+asyncpg://` one (asyncpg.connect reads it)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


class PeerLink:
    """LISTEN/NOTIFY between the gateways on one PostgreSQL, on one dedicated connection.

    Out: every event this instance's bus publishes (after its commit), and a wake-up when a
    reply was queued. In: the others' events, republished on the local bus (marked with
    their origin, never sent out again), and their wake-ups, handed to `wake_outbox`. A lost
    connection is reopened; what was published meanwhile is not carried (logged)."""

    def __init__(self, database_url: str, instance_id: str, bus: EventBus, engine: AsyncEngine,
                 wake_outbox: Any) -> None:
        self.instance_id = instance_id
        self._dsn = asyncpg_dsn(database_url)
        self._bus = bus
        self._engine = engine
        self._wake_outbox = wake_outbox
        self._conn: asyncpg.Connection | None = None
        self._outgoing: list[DomainEvent] = []
        self._outbox_queued = False
        self._ready = asyncio.Event()  # something to send
        self._incoming: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0
        # Who holds state here on behalf of other instances (the agent router's calls they
        # offered), and what to call when one of them is gone: `watch`.
        self._watched: list[tuple[Any, Any]] = []
        self.sent = 0  # events carried out (health and tests)
        self.heard = 0  # events of other instances republished here
        self.dropped = 0

    async def start(self) -> None:
        await self._connect()
        self._bus.forward_to(self.forward)
        self._tasks = [asyncio.create_task(self._send_loop(), name="peer-link-send"),
                       asyncio.create_task(self._receive_loop(), name="peer-link-receive"),
                       asyncio.create_task(self._watch_loop(), name="peer-link-watch")]

    def watch(self, origins: Any, gone: Any) -> None:
        """Every WATCH_SECONDS, `gone(origin)` for each of `origins()` whose liveness lock is
        free: that gateway's database session ended, so what it would have told (a call's end)
        never comes."""
        self._watched.append((origins, gone))

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                for origins, gone in self._watched:
                    for origin in sorted(origins()):
                        async with self._engine.begin() as conn:
                            if await owner_gone(conn, origin):
                                gone(origin)
            except Exception as exc:  # the database is away: try again next round
                log.warning("peer link: liveness of other gateways not checked: %s", exc)

    async def aclose(self) -> None:
        self._bus.forward_to(None)
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self._conn is not None:
            await self._conn.close(timeout=5)
            self._conn = None

    # ---- out ------------------------------------------------------------------------------

    def forward(self, events: Sequence[DomainEvent]) -> None:
        """The bus's hook: events just committed here (called after the commit)."""
        self._outgoing.extend(events)
        if len(self._outgoing) > OUTGOING_LIMIT:
            over = len(self._outgoing) - OUTGOING_LIMIT
            del self._outgoing[:over]
            self.dropped += over
            log.warning("peer link: %d event(s) not carried to the other gateways (the link "
                        "is behind); their event streams miss them", over)
        self._ready.set()

    def outbox_queued(self) -> None:
        """A reply was committed to the outbox here: wake the other gateways' workers."""
        self._outbox_queued = True
        self._ready.set()

    async def _send_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            events, self._outgoing = self._outgoing, []
            wake, self._outbox_queued = self._outbox_queued, False
            payloads = []
            relays = sorted(self._bus.relays)
            for event in events:
                self._n += 1
                payload = encode_event(self.instance_id, self._n, event, relays)
                if payload is None:
                    log.warning("peer link: a %s event is too large to carry; dropped",
                                event.kind)
                else:
                    payloads.append(payload)
            try:
                conn = await self._connection()
                if payloads:
                    # One statement, one transaction: delivered together, in order.
                    await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                                       EVENTS_CHANNEL, payloads)
                    self.sent += len(payloads)
                if wake:
                    await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL,
                                       self.instance_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.dropped += len(payloads)
                log.warning("peer link: %d event(s)%s not carried to the other gateways: %s",
                            len(payloads), " and an outbox wake-up" if wake else "", exc)
                await self._reset()

    # ---- in -------------------------------------------------------------------------------

    def _heard(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == OUTBOX_CHANNEL:
            if payload != self.instance_id:
                self._wake_outbox()
            return
        self._incoming.put_nowait(payload)

    async def _receive_loop(self) -> None:
        while True:
            payload = await self._incoming.get()
            heard = decode_event(payload)
            if heard is None:
                log.warning("peer link: ignored a payload that is not a gateway event: %.80r",
                            payload)
                continue
            if heard.origin == self.instance_id:
                continue  # our own, already on our bus
            event = heard.event
            if heard.entry_ref is not None:
                try:
                    event = await read_entry(self._engine, *heard.entry_ref)
                except Exception as exc:
                    log.warning("peer link: transcript entry %s of %s not read: %s",
                                heard.entry_ref[0], heard.origin, exc)
                    continue
            if event is not None:
                self.heard += 1
                self._bus.publish_remote([event], heard.origin, heard.relays)

    # ---- the connection ---------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        await conn.add_listener(EVENTS_CHANNEL, self._heard)
        await conn.add_listener(OUTBOX_CHANNEL, self._heard)
        conn.add_termination_listener(lambda _c: self._ready.set())  # reconnect at once
        self._conn = conn
        return conn

    async def _connection(self) -> asyncpg.Connection:
        while self._conn is None or self._conn.is_closed():
            try:
                await self._connect()
                log.info("peer link: connected again")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("peer link: cannot reach PostgreSQL (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_SECONDS)
        return self._conn

    async def _reset(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
