"""Alembic environment: runs migrations over the gateway's async engine.

Several gateways may start (`gateway serve` migrates at start) or run `gateway db upgrade` at
once on one PostgreSQL: the whole upgrade runs under one transaction-scoped advisory lock, so
the second waits, then finds the schema current and does nothing. SQLite needs no lock: our
BEGIN IMMEDIATE (gateway/store.py) already makes the second upgrade wait for the first.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

import gateway.threads  # noqa: F401  (its table: mail_anchors)
from gateway.models import Base
from gateway.store import make_engine

target_metadata = Base.metadata
# The advisory lock's key: any bigint no other tool on the database uses ("gw-migr" in ASCII).
MIGRATION_LOCK = 0x67772D6D696772


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction commits; Alembic reads the current revision after
            # it, so a gateway that waited sees what the first one applied.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _main() -> None:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `gateway db upgrade`")
asyncio.run(_main())
