"""All SQL of the jobs domain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Delete, case, delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import dialect_insert
from app.models import Dataset, IdempotencyKey, Item, Job, JobProgress, Result, utcnow

PROGRESS_BUCKET_S = 10
JOBS_CHANNEL = "distillery_jobs"
DELETED = "deleted"  # hidden from the API; the sweeper purges its rows
FINISHED = ("completed", "failed", "cancelled")
INSERT_STATEMENT_ROWS = 250


async def insert_job(session: AsyncSession, job: Job) -> Job:
    session.add(job)
    await session.flush()
    return job


async def notify_workers(session: AsyncSession, teacher: str) -> None:
    """Postgres: wake idle workers when this transaction commits (NOTIFY is delivered on commit)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(JOBS_CHANNEL, teacher)))


async def insert_items(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk-insert item rows (executemany), a statement per INSERT_STATEMENT_ROWS: preparing a statement's
    parameters holds the event loop, so a big chunk goes in several short holds, not one long one."""
    for start in range(0, len(rows), INSERT_STATEMENT_ROWS):
        await session.execute(insert(Item), list(rows[start : start + INSERT_STATEMENT_ROWS]))


async def get_job(session: AsyncSession, job_id: uuid.UUID, project_id: uuid.UUID) -> Job | None:
    """The job if it belongs to the project; another project's job is as good as missing."""
    stmt = select(Job).where(Job.id == job_id, Job.project_id == project_id, Job.status != DELETED)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_jobs(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Job]:
    """The project's jobs, newest first, keyset-paged on (created_at, id)."""
    stmt = (
        select(Job)
        .where(Job.project_id == project_id, Job.status != DELETED)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(after[0], after[1]))
    return list((await session.execute(stmt)).scalars())


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


# --- loading ----------------------------------------------------------------------------------------------


async def extend_loading_job(session: AsyncSession, job_id: uuid.UUID, added: int, now: datetime) -> bool:
    """Count a chunk of items into a loading job (locking its row first); False when it is no longer loading
    (deleted meanwhile), and then the chunk must not be stored."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "loading")
        .values(total_items=Job.total_items + added, loaded_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def finish_loading(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Loaded: the job becomes queued (claimable). False when it is no longer loading."""
    result = await session.execute(
        update(Job).where(Job.id == job_id, Job.status == "loading").values(status="queued", loaded_at=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- cancel, retry, delete: the job row at once, the items in batches ---------------------------------------


async def start_cancel(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Mark a queued or running job cancelled (workers claim nothing more of it from now on) with its queued
    items left for the sweep. False when it was not queued or running."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status="cancelled", finished_at=utcnow(), sweep="cancel", sweep_cursor=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def cancel_queued_batch(session: AsyncSession, job_id: uuid.UUID, limit: int, *, skip_locked: bool) -> int:
    """Up to `limit` of the job's queued items become cancelled, and the job counts them. `skip_locked`
    (Postgres) passes over items another transaction holds, for callers that already hold the job's row.
    One statement: the ids never travel to the service and back."""
    batch = (
        select(Item.id)
        .where(Item.job_id == job_id, Item.status == "queued")
        .order_by(Item.id)
        .limit(limit)
        .with_for_update(skip_locked=skip_locked)
    )
    result = await session.execute(
        update(Item)
        .where(Item.id.in_(batch), Item.status == "queued")
        .values(status="cancelled", lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    cancelled = int(result.rowcount)  # type: ignore[attr-defined]
    if cancelled:
        await session.execute(
            update(Job).where(Job.id == job_id).values(cancelled_items=Job.cancelled_items + cancelled)
        )
    return cancelled


async def start_retry(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """A job with failed items runs again, its failed items left for the sweep to re-queue from the first
    on. False when it has none (or is not in a state to retry)."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("running", "completed", "failed")), Job.failed_items > 0)
        .values(status="running", finished_at=None, sweep="retry", sweep_cursor=0)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def requeue_failed_batch(session: AsyncSession, job_id: uuid.UUID, limit: int, *, skip_locked: bool) -> int:
    """Up to `limit` failed items past the job's sweep cursor go back to the queue with fresh attempts, in id
    order; the cursor moves past them, so an item that fails again is not re-queued by the same retry."""
    cursor = (await session.execute(select(Job.sweep_cursor).where(Job.id == job_id))).scalar_one_or_none() or 0
    batch = (
        select(Item.id)
        .where(Item.job_id == job_id, Item.status == "failed", Item.id > cursor)
        .order_by(Item.id)
        .limit(limit)
        .with_for_update(skip_locked=skip_locked)
    )
    rows = await session.execute(
        update(Item)
        .where(Item.id.in_(batch), Item.status == "failed")
        .values(status="queued", attempts=0, error=None, lease_owner=None, lease_expires_at=None)
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )
    requeued = list(rows.scalars())
    if requeued:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(failed_items=Job.failed_items - len(requeued), sweep_cursor=max(requeued))
        )
    return len(requeued)


async def end_sweep(session: AsyncSession, job_id: uuid.UUID, sweep: str) -> None:
    """The sweep is through; a retried job with nothing pending any more completes (or fails) here, since
    the workers' own completion check leaves a job alone while its retry sweep runs."""
    await session.execute(update(Job).where(Job.id == job_id, Job.sweep == sweep).values(sweep=None, sweep_cursor=None))
    if sweep == "retry":
        await session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == "running",
                Job.sweep.is_(None),
                Job.done_items + Job.failed_items + Job.cancelled_items >= Job.total_items,
            )
            .values(status=case((Job.done_items == 0, "failed"), else_="completed"), finished_at=utcnow())
        )


async def mark_deleted(session: AsyncSession, job_ids: Sequence[uuid.UUID]) -> None:
    """Hide the jobs from the API and stop their dispatch; the sweep purges their rows."""
    if job_ids:
        await session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)))
            .values(status=DELETED, sweep="purge", sweep_cursor=None)
            .execution_options(synchronize_session=False)
        )


async def building_datasets_of(session: AsyncSession, project_id: uuid.UUID, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The project's datasets still being built that read this job."""
    rows = await session.execute(
        select(Dataset.id, Dataset.spec).where(Dataset.project_id == project_id, Dataset.status == "building")
    )
    return [dataset_id for dataset_id, spec in rows.all() if str(job_id) in (spec or {}).get("jobs", [])]


# --- the sweep ---------------------------------------------------------------------------------------------


async def jobs_to_sweep(session: AsyncSession, limit: int) -> list[tuple[uuid.UUID, str]]:
    """(job, sweep) for jobs with a sweep due, oldest first."""
    rows = await session.execute(
        select(Job.id, Job.sweep).where(Job.sweep.is_not(None)).order_by(Job.created_at).limit(limit)
    )
    return [(job_id, str(sweep)) for job_id, sweep in rows.all()]


async def sweep_of(session: AsyncSession, job_id: uuid.UUID, *, lock: bool = False) -> str | None:
    """The job's sweep due (None when none or the job is gone); `lock` holds the job's row (Postgres) until
    the transaction ends, so a cancel or retry of it waits for this batch."""
    stmt = select(Job.sweep).where(Job.id == job_id)
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def purge_batch(session: AsyncSession, job_id: uuid.UUID, limit: int) -> bool:
    """Delete up to `limit` rows of a deleted job: its results first, then its items, then its progress
    buckets, and at last the job row itself (its idempotency key goes with it). False once nothing is left."""
    # the results of up to `limit` items (an item has at most n of them)
    items_with_results = select(Result.item_id).where(Result.job_id == job_id).limit(limit)
    if await _deleted_any(
        session, delete(Result).where(Result.job_id == job_id, Result.item_id.in_(items_with_results))
    ):
        return True
    # deleting an item takes along any result a worker stored for it after the results went
    items = select(Item.id).where(Item.job_id == job_id).limit(limit)
    if await _deleted_any(session, delete(Item).where(Item.id.in_(items))):
        return True
    buckets = select(JobProgress.bucket).where(JobProgress.job_id == job_id).limit(limit)
    if await _deleted_any(
        session, delete(JobProgress).where(JobProgress.job_id == job_id, JobProgress.bucket.in_(buckets))
    ):
        return True
    return await _deleted_any(session, delete(Job).where(Job.id == job_id, Job.status == DELETED))


async def _deleted_any(session: AsyncSession, statement: Delete) -> bool:
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def loading_abandoned(session: AsyncSession, silent_since: datetime, limit: int) -> list[uuid.UUID]:
    """Loading jobs that stored no chunk since `silent_since`: their request died mid-load."""
    rows = await session.execute(
        select(Job.id).where(Job.status == "loading", Job.loaded_at < silent_since).limit(limit)
    )
    return list(rows.scalars())


async def expired_jobs(session: AsyncSession, finished_before: datetime, limit: int) -> list[uuid.UUID]:
    """Finished jobs whose finish is older than `finished_before` (retention)."""
    rows = await session.execute(
        select(Job.id).where(Job.finished_at < finished_before, Job.status.in_(FINISHED)).limit(limit)
    )
    return list(rows.scalars())


async def delete_stale(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], *, silent_since: datetime, finished_before: datetime | None
) -> int:
    """Mark deleted those of the jobs that are still an abandoned load or a finished job past retention (a job
    retried since it was found stays)."""
    stale = (Job.status == "loading") & (Job.loaded_at < silent_since)
    if finished_before is not None:
        stale = stale | (Job.status.in_(FINISHED) & (Job.finished_at < finished_before))
    result = await session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), stale)
        .values(status=DELETED, sweep="purge", sweep_cursor=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
