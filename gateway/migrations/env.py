"""Alembic environment: runs migrations over the gateway's async engine.

Several gateways may start (`gateway serve` migrates at start) or run `gateway db upgrade` at
once on one PostgreSQL: the whole upgrade runs under one transaction-scoped advisory lock, so
the second waits, then finds the schema current and does nothing. On SQLite (one host) the
same is an exclusive lock on a file beside the database (`<database>.migrate-lock`): Alembic
runs SQLite's DDL outside one transaction (its `transactional_ddl` is False), so BEGIN
IMMEDIATE alone let a second upgrade read the revision between the first one's steps and
apply a step twice ("duplicate column name", seen with two `serve`s on an empty file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import make_url
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


@contextlib.contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Held for the whole upgrade when `url` is an SQLite file; nothing otherwise."""
    parsed = make_url(url)
    database = parsed.database or ""
    if not parsed.get_backend_name() == "sqlite" or database in ("", ":memory:") \
            or database.startswith("file:"):
        yield
        return
    with open(Path(database).with_name(Path(database).name + ".migrate-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


async def _main() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    with _sqlite_lock(url):
        await _migrate(url)


async def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `gateway db upgrade`")
asyncio.run(_main())
