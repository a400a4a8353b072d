"""The worker tests' database: a fresh SQLite file, or a Postgres database of the worker tests' own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.database import Database
from tests.conftest import _admin


@pytest.fixture(scope="session")
def worker_postgres_url(postgres_url: str) -> Iterator[str]:
    """Not the session database: the services running on that one reap expired leases and claim queued items
    with their own settings, which raced these tests' own leases (postgres_url first: it fails or skips the
    run without Postgres)."""
    name = f"distillery_worker_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = (
        request.getfixturevalue("worker_postgres_url")
        if request.param == "postgres"
        else (f"sqlite+aiosqlite:///{tmp_path / 'lease.db'}")
    )
    db = Database(url)
    await db.upgrade_schema()
    yield db
    await db.dispose()
