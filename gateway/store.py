"""The store: one async engine per process, sessions and connections handed out explicitly.

SQLite (aiosqlite, WAL, synchronous=FULL) is the embedded default; PostgreSQL (asyncpg) is
production. Migrations are Alembic's, run by `gateway db upgrade` or at `gateway serve` start.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def new_id(prefix: str) -> str:
    """A random, URL-safe id with a readable kind prefix (`cus_…`, `conv_…`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; FULL makes every commit durable
            # before the edge acknowledges a provider (group commit pays for the fsync).
            # Transactions are opened by SQLAlchemy's BEGIN, so pysqlite's own implicit
            # transaction handling is turned off.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front: two writers never deadlock on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_async_engine(url, **kwargs)


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    command.upgrade(_alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`; Alembic's env runs its own loop, so use a thread."""
    await asyncio.to_thread(upgrade_sync, url, revision)


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    url: str
    revision: str | None
