"""The worker tests' database: a fresh SQLite file, or the session's Postgres database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.database import Database


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = (
        request.getfixturevalue("postgres_url")
        if request.param == "postgres"
        else (f"sqlite+aiosqlite:///{tmp_path / 'lease.db'}")
    )
    db = Database(url)
    await db.upgrade_schema()
    yield db
    await db.dispose()
