"""The console's own reads: jobs filtered by status and teacher, and a job's progress buckets."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs.repository import DELETED
from app.models import Job, JobProgress


async def filtered_jobs(
    session: AsyncSession, project_id: uuid.UUID, *, status: str | None, teacher: str | None, limit: int
) -> list[Job]:
    """The project's newest jobs, optionally of one status and one teacher."""
    stmt = select(Job).where(Job.project_id == project_id, Job.status != DELETED)
    if status:
        stmt = stmt.where(Job.status == status)
    if teacher:
        stmt = stmt.where(Job.teacher == teacher)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def teachers_of(session: AsyncSession, project_id: uuid.UUID) -> list[str]:
    """The teachers the project's jobs name (for the filter)."""
    stmt = select(Job.teacher).where(Job.project_id == project_id, Job.status != DELETED).distinct()
    return sorted((await session.execute(stmt)).scalars())


async def progress_buckets(session: AsyncSession, job_id: uuid.UUID) -> list[tuple[int, int]]:
    """(bucket, tokens) the service still holds for the job (recent ones only: older buckets are pruned)."""
    stmt = (
        select(JobProgress.bucket, JobProgress.tokens).where(JobProgress.job_id == job_id).order_by(JobProgress.bucket)
    )
    return [(int(b), int(t)) for b, t in (await session.execute(stmt)).all()]
