"""What the bench smoke tests share: Postgres must answer (the benches create their own databases)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import IN_CI, POSTGRES_ADMIN_DSN


@pytest.fixture(scope="module")
def postgres() -> None:
    """Skip without Postgres (fail under CI): the benches create and drop their own databases."""

    async def ping() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"Postgres at {POSTGRES_ADMIN_DSN} is required under CI: {exc}")
        pytest.skip(f"Postgres unavailable: {exc}")
