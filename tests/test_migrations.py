"""One set of migrations serves both databases, and head matches the models exactly."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app.database import Database
from app.models import Base


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_head_matches_models(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/m.db"
    db = Database(url)
    try:
        await db.upgrade_schema()
        await db.upgrade_schema()  # idempotent: a second start-up finds the schema at head
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.dispose()
