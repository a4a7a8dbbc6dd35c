"""The store: one async engine per process, sessions and connections handed out explicitly.

SQLite (aiosqlite, WAL, synchronous=FULL) is the embedded default; PostgreSQL (asyncpg) is
production. Migrations are Alembic's, run by `gateway db upgrade` or at `gateway serve` start.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from collections.abc import Callable

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def new_id(prefix: str) -> str:
    """A random, URL-safe id with a readable kind prefix (`cus_…`, `conv_…`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_durability(sync_engine: Engine) -> None:
    """Pragmas every SQLite connection of ours gets, async or not."""

    @event.listens_for(sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside the writer; FULL makes every commit durable before
        # the edge acknowledges a provider (group commit pays for the fsync). Transactions
        # are opened by SQLAlchemy's BEGIN, so pysqlite's implicit ones are turned off.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: two writers never deadlock on upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_durability(engine.sync_engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_async_engine(url, **kwargs)


def make_sqlite_sync_engine(url: str, *, writer: bool) -> Engine:
    """A plain sqlite3 engine on the same file, for work done in one thread hop."""
    engine = create_engine(
        url.replace("sqlite+aiosqlite", "sqlite", 1),
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=1 if writer else 4, max_overflow=0 if writer else 4,
    )
    if writer:
        _sqlite_durability(engine)
    else:
        @event.listens_for(engine, "connect")
        def _reader(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=30000")
            dbapi_conn.execute("PRAGMA query_only=ON")

    return engine


class Prepared:
    """A hot statement, compiled once per dialect; run on the DB-API connection itself
    (SQLite's cursor, asyncpg's prepared statement through SQLAlchemy's adapter).

    Measured on the webhook path: SQLAlchemy's execution machinery (context, events, result
    set-up) costs ~50 µs a statement against ~8 µs of SQLite work, and the writer thread is
    the bottleneck of group commit. On PostgreSQL, a SIP call's writes under load (profiled,
    docs/scale-out.md) spent more in that machinery than in asyncpg and the socket together.
    The SQL, the bind types and the result types are still SQLAlchemy's (compiled from the
    Core statement with the types' own processors); only the per-call bookkeeping is
    skipped. asyncpg's errors are raised as SQLAlchemy's (`IntegrityError` with the driver's
    error and its sqlstate as `.orig`), as `conn.execute` would. Other dialects go through
    `conn.execute`. Rows come back as plain tuples.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._sqlite: tuple[str, list[tuple[str, Any, Any]], list[tuple[int, Any]]] | None = None
        self._asyncpg: tuple[str, list[tuple[str, Any, Any]], list[tuple[int, Any]]] | None = None

    def _compile(
        self, dialect: Any
    ) -> tuple[str, list[tuple[str, Any, Any]], list[tuple[int, Any]]]:
        compiled = self.statement.compile(dialect=dialect)
        binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            binds.append((name, bind.effective_value if bind.callable is None else None,
                          bind.type.dialect_impl(dialect).bind_processor(dialect)))
        columns = list(getattr(self.statement, "selected_columns", None) or
                       getattr(self.statement, "_returning", ()) or ())
        results = [c.type.dialect_impl(dialect).result_processor(dialect, None)
                   for c in columns]
        converters = [(i, p) for i, p in enumerate(results) if p is not None]
        return compiled.string, binds, converters

    def execute(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = conn.dialect
        if dialect.name == "sqlite":
            if self._sqlite is None:
                self._sqlite = self._compile(dialect)
            sql, binds, converters = self._sqlite
        elif dialect.driver == "asyncpg":
            if self._asyncpg is None:
                self._asyncpg = self._compile(dialect)  # $n placeholders
            sql, binds, converters = self._asyncpg
        else:
            result = conn.execute(self.statement, params)
            return [tuple(row) for row in result] if result.returns_rows else []
        args = []
        for name, default, process in binds:
            value = params[name] if name in params else default
            args.append(process(value) if process is not None else value)
        if dialect.name == "sqlite":
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, args)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        else:
            rows = _run_asyncpg(conn, sql, args)
        if not rows or not converters:
            return rows
        out = []
        for row in rows:
            values = list(row)
            for i, convert in converters:
                values[i] = convert(values[i])
            out.append(tuple(values))
        return out


def _run_asyncpg(conn: Connection, sql: str, args: list[Any]) -> list[Any]:
    """`sql` on the connection's asyncpg connection, in its transaction (begun here if it
    was not yet, as SQLAlchemy's adapter does on its first statement), from run_sync's
    greenlet."""
    from sqlalchemy import exc
    from sqlalchemy.util import await_only

    adapter: Any = conn.connection.dbapi_connection

    async def run() -> list[Any]:
        async with adapter._execute_mutex:
            if adapter._transaction is None:
                await adapter._start_transaction()
            try:
                statement, _ = await adapter._prepare(sql, 0)
                return [tuple(row) for row in await statement.fetch(*args)]
            except Exception as error:
                adapter._handle_exception(error)  # raises the DB-API error, sqlstate kept
                raise

    try:
        return await_only(run())  # type: ignore[no-any-return]
    except conn.dialect.loaded_dbapi.Error as error:
        raise exc.DBAPIError.instance(sql, args, error, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect) from error


class Reader:
    """Runs a synchronous read (a function of a sync Connection) with one hop off the loop.

    aiosqlite pays a thread hand-off for every cursor call (a 1,000-entry bundle made of
    ten queries costs ~60 of them); a plain sqlite3 connection in one worker thread pays
    one. asyncpg is natively async, so there the same function runs through run_sync.
    """

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self._engine = engine
        self._sync: Engine | None = (
            make_sqlite_sync_engine(url, writer=False) if is_sqlite(url) else None
        )

    async def run(self, read: Callable[..., T], *args: Any) -> T:
        if self._sync is not None:
            return await asyncio.to_thread(self._run_sync, read, *args)
        async with self._engine.connect() as conn:
            return await conn.run_sync(read, *args)

    def _run_sync(self, read: Callable[..., T], *args: Any) -> T:
        assert self._sync is not None
        with self._sync.connect() as conn:
            return read(conn, *args)

    def dispose(self) -> None:
        if self._sync is not None:
            self._sync.dispose()


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
