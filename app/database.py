"""Owns the database engine and sessions, and brings the schema to head with Alembic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.observability.metrics import DATABASE_RETRIES
from app.waiting import wait_first

# The migrations: beside the package in a source checkout, under <prefix>/share/distillery in an install.
MIGRATION_DIRS = (
    Path(__file__).resolve().parent.parent / "migrations",
    Path(sysconfig.get_paths()["data"]) / "share" / "distillery" / "migrations",
)
MIGRATION_LOCK = 0x6469_7374_696C  # pg_advisory_xact_lock key: one process migrates at a time
T = TypeVar("T")
# Deadlock detected, serialization failure: the transaction lost a race and can simply run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
# SQLite raises OperationalError for a busy lock and for faults no retry mends (a missing table, a full or
# read-only disk, an I/O error); only the lock is worth waiting for.
SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED")
log = logging.getLogger(__name__)


def is_transient_db_error(exc: BaseException) -> bool:
    """A lost or refused connection, a restarting server, a lock timeout: worth running the unit again."""
    if isinstance(exc, DBAPIError):
        sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
        if sqlite_error is not None and not exc.connection_invalidated:
            return str(sqlite_error).startswith(SQLITE_TRANSIENT)
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return (
            exc.connection_invalidated
            or isinstance(exc, (OperationalError, InterfaceError))
            or sqlstate in RETRYABLE_SQLSTATES
        )
    return isinstance(exc, (ConnectionError, OSError, TimeoutError))


class Database:
    """One engine and its session factory. Transactions are opened and committed only at the edges."""

    def __init__(self, url: str, *, echo: bool = False, application_name: str = "distillery") -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_recycle=1800)
            if self.url.get_driver_name() == "asyncpg":
                # Names the service's sessions in pg_stat_activity.
                kwargs["connect_args"] = {"server_settings": {"application_name": application_name}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # SQLite: writers take the lock up front (BEGIN IMMEDIATE) and queue on it; readers get their
        # own engine with plain deferred transactions, which WAL never blocks.
        self.read_engine: AsyncEngine = self.engine
        if self.is_sqlite:
            _configure_sqlite(self.engine, immediate=True)
            self.read_engine = create_async_engine(url, **kwargs)
            _configure_sqlite(self.read_engine, immediate=False)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self.read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        factory = self.read_sessions if readonly else self.sessions
        async with factory() as session, session.begin():
            yield session

    async def run(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, readonly: bool = False, retry_for_s: float = 0.0
    ) -> T:
        """One unit of work in one transaction, run again (from scratch) on transient database errors
        for up to retry_for_s seconds. The unit must be safe to repeat."""
        deadline = time.monotonic() + retry_for_s
        delay = 0.2
        while True:
            try:
                async with self.transaction(readonly=readonly) as session:
                    return await work(session)
            except Exception as exc:
                if not is_transient_db_error(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable (%s); running the unit again in %.1fs", type(exc).__name__, delay)
                DATABASE_RETRIES.inc()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def listen(self, channel: str, callback: Callable[[str], None], stop: asyncio.Event) -> None:
        """Postgres only: call `callback(payload)` for each NOTIFY on `channel` until stop is set, on a
        connection of its own, reconnecting after losing it."""
        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.5
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot LISTEN on %s (%s); retrying", channel, type(exc).__name__)
            else:
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                try:
                    await conn.add_listener(channel, lambda _c, _pid, _ch, payload: callback(payload))
                    callback("")  # anything created while we were not listening
                    delay = 0.5
                    await wait_first(stop, lost)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await wait_first(stop, timeout=delay)
            delay = min(delay * 2, 10.0)

    async def upgrade_schema(self) -> None:
        """Run Alembic migrations up to head on this database. On Postgres under an advisory lock held to
        the end of the migrating transaction: processes starting together migrate one after the other (the
        later ones find the schema at head and do nothing)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await conn.run_sync(_upgrade, str(self.url.render_as_string(hide_password=False)))

    async def schema_revision(self) -> tuple[str | None, str | None]:
        """(the database's schema revision, the head revision of the migrations this code carries)."""
        async with self.engine.connect() as conn:
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        head = ScriptDirectory.from_config(alembic_config(str(self.url))).get_current_head()
        return current, head

    async def prepare_schema(self, *, migrate: bool) -> None:
        """Migrate to head, or (when a separate step migrates) refuse to start on a schema not at head."""
        if migrate:
            await self.upgrade_schema()
            return
        current, head = await self.schema_revision()
        if current != head:
            raise RuntimeError(f"the database schema is at {current}, not {head}: run `distillery db upgrade` first")

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def dialect_insert(session: AsyncSession) -> Any:
    """The INSERT construct of the session's dialect, which has ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def migrations_dir() -> Path:
    for path in MIGRATION_DIRS:
        if (path / "env.py").is_file():
            return path
    raise RuntimeError(f"no migrations found (looked in {', '.join(map(str, MIGRATION_DIRS))})")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, url: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    """WAL for concurrent readers; BEGIN IMMEDIATE so writers queue on the lock instead of failing."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
