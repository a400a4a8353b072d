"""Which database errors the units of work retry: SQLite's busy lock is worth waiting for, a missing table is
not (retrying it would answer 503 "retry shortly" forever). Real errors from real databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.database import is_transient_db_error


async def _error_of(url: str, sql: str) -> DBAPIError:
    engine = create_async_engine(url, connect_args={"timeout": 0} if url.startswith("sqlite") else {})
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    except DBAPIError as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


async def test_sqlite_busy_lock_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        exc = await _error_of(f"sqlite+aiosqlite:///{path}", "SELECT * FROM t")
    finally:
        holder.close()
    assert "locked" in str(exc.orig)
    assert is_transient_db_error(exc)


@pytest.mark.parametrize("sql", ["SELECT * FROM no_such_table", "SELEC 1"])
async def test_sqlite_faults_no_retry_mends_are_not_transient(tmp_path: Path, sql: str) -> None:
    exc = await _error_of(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}", sql)
    assert type(exc).__name__ == "OperationalError"  # the class SQLite shares with its busy lock
    assert not is_transient_db_error(exc)


async def test_postgres_missing_table_is_not_transient(postgres_url: str) -> None:
    exc = await _error_of(postgres_url, "SELECT * FROM no_such_table")
    assert not is_transient_db_error(exc)
