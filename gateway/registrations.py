"""Agents' SIP registrations shared by several gateways through the database.

Behind Kamailio (docs/scale-out.md, point 4) a phone's REGISTER reaches one gateway, a call
may enter through another. With `GATEWAY_SIP_SHARED_REGISTRATIONS` each gateway writes the
bindings its registrar accepts to `sip_registrations` (at once, off the SIP path) and reads
the others' every `GATEWAY_SIP_REGISTRATION_SYNC_SECONDS` into the agent router
(`Agent.shared`). A call routed from such a binding goes where the REGISTER came from: the
Kamailio that relayed it, which relays the INVITE on to the phone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.agents import Agent, AgentDirectory, Contact
from gateway.clock import Clock
from gateway.models import SipRegistration
from gateway.tasks import cancel_and_wait, wait_event

log = logging.getLogger("gateway.registrations")
TABLE = SipRegistration.__table__
# What one local change asks of the database: (agent id, contact URI or "*", the binding or
# None for a removal).
Change = tuple[str, str, Contact | None]


def instance_name() -> str:
    """Who holds a binding: host and process (a restarted gateway is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SharedRegistrations:
    """Writes this gateway's registrar changes and reads the other gateways' bindings."""

    def __init__(self, engine: AsyncEngine, agents: AgentDirectory, clock: Clock, *,
                 interval: float = 1.0, holder: str | None = None) -> None:
        self._engine = engine
        self._agents = agents
        self._clock = clock
        self.interval = interval
        self.holder = holder or instance_name()
        self._pending: list[Change] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.syncs = 0  # completed read passes (tests wait on it)

    def changed(self, agent: Agent, contact_uri: str, contact: Contact | None) -> None:
        """`AgentDirectory.on_registration`: queue the write, wake the writer."""
        self._pending.append((agent.id, contact_uri, contact))
        self._wake.set()

    async def start(self) -> None:
        self._agents.on_registration = self.changed
        await self.sync()
        self._task = asyncio.create_task(self._run(), name="shared-registrations")

    async def aclose(self) -> None:
        self._agents.on_registration = None
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self._write()  # what the registrar accepted last still reaches the others
        except Exception:
            log.exception("writing the last SIP registrations failed; they lapse on their own")

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval)  # never wait_for: gateway/tasks.py
            try:
                await self.sync()
            except Exception:  # the database is down: keep what we know, try again
                log.exception("syncing SIP registrations with the database failed")

    async def sync(self) -> None:
        """Write what changed here, then read every live binding held elsewhere."""
        await self._write()
        now = self._clock.now()
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(TABLE).where(
                TABLE.c.expires_at > now, TABLE.c.holder != self.holder))).all()
        seen: dict[str, dict[str, Contact]] = {}
        for row in rows:
            source = (row.source_host, row.source_port) if row.source_host else None
            seen.setdefault(row.agent_id, {})[row.contact] = Contact(
                row.contact, row.expires_at, source, row.transport)
        for agent in self._agents:
            self._agents.set_shared(agent, seen.get(agent.id, {}))
        self.syncs += 1

    async def _write(self) -> None:
        self._wake.clear()
        if not self._pending:
            return
        changes, self._pending = self._pending, []
        try:
            async with self._engine.begin() as conn:
                for agent_id, uri, contact in changes:
                    await self._apply(conn, agent_id, uri, contact)
                # Lapsed bindings are nobody's: whoever writes next sweeps them.
                await conn.execute(delete(TABLE).where(TABLE.c.expires_at <= self._clock.now()))
        except BaseException:
            self._pending[:0] = changes  # try again on the next pass
            raise

    async def _apply(self, conn: AsyncConnection, agent_id: str, uri: str,
                     contact: Contact | None) -> None:
        execute = conn.execute
        if contact is None:
            where = [TABLE.c.agent_id == agent_id]
            if uri != "*":
                where.append(TABLE.c.contact == uri)
            await execute(delete(TABLE).where(*where))
            return
        values = {"agent_id": agent_id, "contact": uri,
                  "source_host": contact.source[0] if contact.source else None,
                  "source_port": contact.source[1] if contact.source else None,
                  "transport": contact.transport, "expires_at": contact.expires_at,
                  "holder": self.holder}
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(TABLE).values(values)
        await execute(statement.on_conflict_do_update(
            index_elements=[TABLE.c.agent_id, TABLE.c.contact],
            set_={k: statement.excluded[k] for k in values if k not in ("agent_id", "contact")}))
