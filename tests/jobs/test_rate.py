"""The tokens/s a job reports is its real rate: tokens over the part of the window it was running, not over
the whole 30-40 s window (which showed a job running at ~1,200 tok/s as ~94 in its first seconds)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.auth.service import create_key
from app.database import Database
from app.jobs import repository
from app.jobs.schemas import GenerationParams
from app.jobs.service import new_job, to_reads, tokens_per_second
from app.models import JobProgress, Project


def test_a_young_job_is_divided_by_its_running_time() -> None:
    now = 1_000_000.0
    started = datetime.fromtimestamp(now - 5, UTC)
    assert tokens_per_second(6000, now - 35, now, started, None) == pytest.approx(1200.0)


def test_an_old_job_is_divided_by_the_window() -> None:
    now = 1_000_000.0
    started = datetime.fromtimestamp(now - 600, UTC)
    assert tokens_per_second(7000, now - 35, now, started, None) == pytest.approx(200.0)


def test_a_finished_job_ends_its_running_time() -> None:
    now = 1_000_000.0
    started, finished = datetime.fromtimestamp(now - 20, UTC), datetime.fromtimestamp(now - 10, UTC)
    assert tokens_per_second(5000, now - 35, now, started, finished) == pytest.approx(500.0)


def test_no_tokens_no_rate() -> None:
    assert tokens_per_second(0, 0.0, 10.0, None, None) == 0.0


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'rate.db'}"
    url: str = request.getfixturevalue("empty_postgres")
    return url


async def test_job_read_shows_the_rate_of_a_job_started_seconds_ago(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.prepare_schema(migrate=True)
        async with db.transaction() as session:
            key = await create_key(session, "rate")
            project_id = (await session.execute(select(Project.id).where(Project.name == key.project))).scalar_one()
            job = new_job(project_id, "tiny", GenerationParams(), {})
            job.status = "running"
            job.started_at = datetime.now(UTC) - timedelta(seconds=4)
            await repository.insert_job(session, job)
            bucket = int(time.time()) // repository.PROGRESS_BUCKET_S
            session.add(JobProgress(job_id=job.id, bucket=bucket, tokens=4800))
        async with db.transaction(readonly=True) as session:
            stored = await repository.get_job(session, job.id, project_id)
            assert stored is not None
            (read,) = await to_reads(session, [stored])
        # 4,800 tokens in the 4 s it ran: ~1,200 tok/s (a little less as the test itself takes time);
        # the old divisor (30-40 s) gave 120-160.
        assert 900 < read.tokens_per_second <= 1200, read.tokens_per_second
    finally:
        await db.dispose()
