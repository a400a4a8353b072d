"""All SQL of the jobs domain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import dialect_insert
from app.models import IdempotencyKey, Item, Job, JobProgress, utcnow

PROGRESS_BUCKET_S = 10
JOBS_CHANNEL = "distillery_jobs"


async def insert_job(session: AsyncSession, job: Job) -> Job:
    session.add(job)
    await session.flush()
    return job


async def notify_workers(session: AsyncSession, teacher: str) -> None:
    """Postgres: wake idle workers when this transaction commits (NOTIFY is delivered on commit)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(JOBS_CHANNEL, teacher)))


async def insert_items(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert item rows (executemany): one statement per chunk, not one per item."""
    if rows:
        await session.execute(insert(Item), list(rows))


async def get_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job | None:
    """The job if it belongs to the project; another project's job is as good as missing."""
    stmt = select(Job).where(Job.id == job_id, Job.project_id == project_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_jobs(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Job]:
    """The project's jobs, newest first, keyset-paged on (created_at, id)."""
    stmt = select(Job).where(Job.project_id == project_id).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if after is not None:
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(after[0], after[1]))
    return list((await session.execute(stmt)).scalars())


async def cancel_queued_items(session: AsyncSession, job_id: uuid.UUID) -> int:
    """Mark the job's not-yet-sent items cancelled; items already leased finish as they are."""
    result = await session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status == "queued")
        .values(status="cancelled", lease_owner=None, lease_expires_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def mark_job_cancelled(session: AsyncSession, job_id: uuid.UUID, cancelled: int) -> None:
    await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status="cancelled", cancelled_items=Job.cancelled_items + cancelled, finished_at=utcnow())
    )


async def recent_tokens(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], *, since_bucket: int
) -> dict[uuid.UUID, int]:
    """Tokens stored per job in progress buckets from since_bucket on."""
    if not job_ids:
        return {}
    rows = await session.execute(
        select(JobProgress.job_id, func.sum(JobProgress.tokens))
        .where(JobProgress.job_id.in_(job_ids), JobProgress.bucket >= since_bucket)
        .group_by(JobProgress.job_id)
    )
    return {job_id: int(total or 0) for job_id, total in rows.all()}


async def requeue_failed_items(session: AsyncSession, job_id: uuid.UUID) -> int:
    """Failed items back to the queue with fresh attempts; the job counts them as pending again."""
    result = await session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status == "failed")
        .values(status="queued", attempts=0, error=None, lease_owner=None, lease_expires_at=None)
    )
    requeued = int(result.rowcount)  # type: ignore[attr-defined]
    if requeued:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(failed_items=Job.failed_items - requeued, status="running", finished_at=None)
        )
    return requeued


async def insert_idempotency_key(
    session: AsyncSession, project_id: uuid.UUID, key: str, request_hash: str, now: datetime
) -> bool:
    """Record the key as pending; False when the project already has it."""
    result = await session.execute(
        dialect_insert(session)(IdempotencyKey)
        .values(project_id=project_id, key=key, request_hash=request_hash, created_at=now)
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def get_idempotency_key(session: AsyncSession, project_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    return await session.get(IdempotencyKey, (project_id, key))


async def take_over_idempotency_key(
    session: AsyncSession, project_id: uuid.UUID, key: str, now: datetime, stale_before: datetime
) -> bool:
    """Claim a pending key whose request died before finishing."""
    result = await session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.project_id == project_id,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id.is_(None),
            IdempotencyKey.created_at < stale_before,
        )
        .values(created_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def complete_idempotency_key(session: AsyncSession, project_id: uuid.UUID, key: str, job_id: uuid.UUID) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
        .values(job_id=job_id)
    )


async def delete_pending_idempotency_key(session: AsyncSession, project_id: uuid.UUID, key: str) -> None:
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.project_id == project_id, IdempotencyKey.key == key, IdempotencyKey.job_id.is_(None)
        )
    )


async def failed_items(session: AsyncSession, job_id: uuid.UUID, *, after: int | None, limit: int) -> list[Item]:
    stmt = select(Item).where(Item.job_id == job_id, Item.status == "failed").order_by(Item.id).limit(limit)
    if after is not None:
        stmt = stmt.where(Item.id > after)
    return list((await session.execute(stmt)).scalars())


async def delete_idempotency_keys_before(session: AsyncSession, before: datetime, limit: int) -> int:
    """Forget up to `limit` idempotency keys first used before the cutoff; the count deleted."""
    expired = (
        select(IdempotencyKey.project_id, IdempotencyKey.key).where(IdempotencyKey.created_at < before).limit(limit)
    )
    result = await session.execute(
        delete(IdempotencyKey).where(tuple_(IdempotencyKey.project_id, IdempotencyKey.key).in_(expired))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_progress_before(session: AsyncSession, before_bucket: int, limit: int) -> int:
    """Delete up to `limit` progress buckets older than `before_bucket`; the count deleted."""
    old = select(JobProgress.job_id, JobProgress.bucket).where(JobProgress.bucket < before_bucket).limit(limit)
    result = await session.execute(delete(JobProgress).where(tuple_(JobProgress.job_id, JobProgress.bucket).in_(old)))
    return int(result.rowcount)  # type: ignore[attr-defined]
