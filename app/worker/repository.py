"""All SQL of the worker: pick runnable jobs, claim under a lease, renew, release, and the guarded writes."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, case, cast, exists, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import dialect_insert
from app.jobs.repository import PROGRESS_BUCKET_S
from app.models import Item, Job, JobProgress, Project, Result
from app.teachers.schemas import IDENTITY_FIELDS
from app.worker.schemas import ClaimedItem, JobSpec, RunnableJob


async def reap_expired_leases(session: AsyncSession, now: datetime, *, max_attempts: int) -> tuple[int, int]:
    """Items whose lease ran out (their worker died or stalled): each expiry is an attempt (the claim
    counted it), so those out of attempts fail, the rest go back in the queue; a cancelled job's items are
    cancelled instead, so they are never sent again. Returns (re-queued, failed)."""
    expired = (Item.status == "leased", Item.lease_expires_at < now)
    error = (
        literal("gave up after ")
        + cast(Item.attempts, String)
        + literal(" attempts: its lease expired (the worker died or stalled)")
    )
    rows = await session.execute(
        update(Item)
        .where(*expired, Item.attempts >= max_attempts)
        .values(status="failed", lease_owner=None, lease_expires_at=None, error=error)
        .returning(Item.job_id)
        .execution_options(synchronize_session=False)
    )
    failed = Counter(rows.scalars())
    if failed:
        bucket = int(now.timestamp()) // PROGRESS_BUCKET_S
        await add_job_progress(session, done={}, failed=dict(failed), tokens={}, bucket=bucket, now=now)
    requeued = await session.execute(
        update(Item)
        .where(*expired)
        .values(status="queued", lease_owner=None, lease_expires_at=None)
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )
    reaped = list(requeued.scalars())
    await cancel_items_of_cancelled_jobs(session, reaped)
    return len(reaped), sum(failed.values())


async def cancel_items_of_cancelled_jobs(session: AsyncSession, item_ids: Sequence[int]) -> int:
    """Queued items among these whose job is cancelled become cancelled, and their jobs count them."""
    if not item_ids:
        return 0
    rows = await session.execute(
        update(Item)
        .where(
            Item.id.in_(item_ids),
            Item.status == "queued",
            Item.job_id.in_(select(Job.id).where(Job.status == "cancelled")),
        )
        .values(status="cancelled")
        .returning(Item.job_id)
        .execution_options(synchronize_session=False)
    )
    per_job = Counter(rows.scalars())
    for job_id, count in sorted(per_job.items()):
        await session.execute(update(Job).where(Job.id == job_id).values(cancelled_items=Job.cancelled_items + count))
    return sum(per_job.values())


async def runnable_jobs(session: AsyncSession, teacher: str, *, unstarted: bool = False) -> list[RunnableJob]:
    """The teacher's queued or running jobs that have queued items, with what the scheduler weighs;
    `unstarted`: only those never claimed from yet."""
    has_queued = exists().where(Item.job_id == Job.id, Item.status == "queued")
    stmt = (
        select(
            Job.id,
            Job.kind,
            Job.params,
            Job.variants,
            Job.top_logprobs,
            Job.num_samples,
            Job.teacher_info,
            Job.project_id,
            Project.name,
            Job.priority,
            Job.created_at,
            Job.last_claimed_at,
            Job.total_items - Job.done_items - Job.failed_items - Job.cancelled_items,
        )
        .join(Project, Project.id == Job.project_id)
        .where(Job.teacher == teacher, Job.status.in_(("queued", "running")), has_queued)
    )
    if unstarted:
        stmt = stmt.where(Job.last_claimed_at.is_(None))
    rows = await session.execute(stmt)
    jobs = []
    for job_id, kind, params, variants, k, n, info, project_id, project, priority, created, claimed, pending in rows:
        info = info or {}
        spec = JobSpec(
            id=job_id,
            kind=kind,
            params=params,
            k=k,
            n=n,
            max_logprobs=info.get("max_logprobs"),
            reasoning_end_token_id=info.get("reasoning_end_token_id"),
        )
        if variants:
            longest = max(variants, key=lambda v: int(v.get("max_tokens") or 1))
            spec = dataclasses.replace(spec, params=longest, variants=tuple(variants))
        identity = tuple(info.get(f) for f in IDENTITY_FIELDS)
        jobs.append(RunnableJob(spec, project_id, project, priority, created, claimed, identity, int(pending)))
    return jobs


async def inflight_by_project(session: AsyncSession) -> dict[uuid.UUID, int]:
    """Items leased right now per project (on the partial index of leased items: as small as the fleet)."""
    rows = await session.execute(
        select(Job.project_id, func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(Item.status == "leased")
        .group_by(Job.project_id)
    )
    return {project_id: int(count) for project_id, count in rows.all()}


async def claim_job_items(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    owner: str,
    limit: int,
    lease_until: datetime,
    now: datetime,
    by_variant: bool = False,
) -> list[ClaimedItem]:
    """Lease up to `limit` queued items of one job in submission order (FOR UPDATE SKIP LOCKED on
    Postgres), and mark the job running and just served. `by_variant` (a job whose items differ in
    parameters): only items of the first queued item's parameter set, so one teacher request holds one set.
    The job's row is locked first and must still be queued or running: a cancel or delete that committed
    before takes nothing from here on, and one that comes after waits for this claim (whose items are then
    in flight at the cancel)."""
    claimable = await session.execute(
        select(Job.id).where(Job.id == job_id, Job.status.in_(("queued", "running"))).with_for_update(key_share=True)
    )
    if claimable.scalar_one_or_none() is None:
        return []
    queued = [Item.job_id == job_id, Item.status == "queued"]
    if by_variant:
        first = select(Item.variant).where(*queued).order_by(Item.id).limit(1).with_for_update(skip_locked=True)
        variant = (await session.execute(first)).first()
        if variant is None:
            return []
        queued.append(Item.variant.is_(None) if variant[0] is None else Item.variant == variant[0])
    ids = list(
        (
            await session.execute(
                select(Item.id).where(*queued).order_by(Item.id).limit(limit).with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    if not ids:
        return []
    rows = await session.execute(
        update(Item)
        .where(Item.id.in_(ids), Item.status == "queued")
        .values(status="leased", lease_owner=owner, lease_expires_at=lease_until, attempts=Item.attempts + 1)
        .returning(
            Item.id, Item.job_id, Item.seq, Item.prompt, Item.messages, Item.response, Item.attempts, Item.variant
        )
        .execution_options(synchronize_session=False)
    )
    claimed = [ClaimedItem(*row) for row in rows.all()]
    await session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=case((Job.status == "queued", "running"), else_=Job.status),
            started_at=func.coalesce(Job.started_at, now),
            last_claimed_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    claimed.sort(key=lambda c: c.id)
    return claimed


async def renew_leases(session: AsyncSession, *, owner: str, item_ids: Sequence[int], lease_until: datetime) -> int:
    if not item_ids:
        return 0
    result = await session.execute(
        update(Item)
        .where(Item.id.in_(item_ids), Item.lease_owner == owner, Item.status == "leased")
        .values(lease_expires_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def owned_items(session: AsyncSession, *, owner: str, item_ids: Sequence[int]) -> set[int]:
    """The items this worker still holds the lease on, locked until the transaction ends."""
    if not item_ids:
        return set()
    rows = await session.execute(
        select(Item.id)
        .where(Item.id.in_(item_ids), Item.lease_owner == owner, Item.status == "leased")
        .with_for_update()
    )
    return set(rows.scalars())


async def insert_results(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """One multi-row insert; a (item, sample) already stored is left as it is."""
    if not rows:
        return
    stmt = dialect_insert(session)(Result).on_conflict_do_nothing(index_elements=["job_id", "item_id", "sample_index"])
    await session.execute(stmt, list(rows))


async def finish_items(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk update by primary key: each row sets status (done/failed), error and prompt token ids."""
    if rows:
        await session.execute(update(Item).execution_options(synchronize_session=False), list(rows))


async def release_items(
    session: AsyncSession, *, owner: str, item_ids: Sequence[int], refund: bool = False, resent: Sequence[int] = ()
) -> int:
    """Give leased items back to the queue (a transient failure, or a shutdown); `refund` returns the
    attempt their claim counted; `resent` items were sent twice in this claim and count one attempt more.
    Items of a cancelled job are cancelled instead."""
    if not item_ids:
        return 0
    if resent:
        await session.execute(
            update(Item)
            .where(Item.id.in_(resent), Item.lease_owner == owner, Item.status == "leased")
            .values(attempts=Item.attempts + 1)
            .execution_options(synchronize_session=False)
        )
    attempts = Item.attempts - 1 if refund else Item.attempts
    rows = await session.execute(
        update(Item)
        .where(Item.id.in_(item_ids), Item.lease_owner == owner, Item.status == "leased")
        .values(status="queued", lease_owner=None, lease_expires_at=None, attempts=attempts)
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )
    released = list(rows.scalars())
    await cancel_items_of_cancelled_jobs(session, released)
    return len(released)


async def add_job_progress(
    session: AsyncSession,
    *,
    done: dict[uuid.UUID, int],
    failed: dict[uuid.UUID, int],
    tokens: dict[uuid.UUID, int],
    bucket: int,
    now: datetime,
) -> None:
    """Add to the jobs' counters and rate buckets, then complete the jobs that have nothing pending."""
    job_ids = sorted(set(done) | set(failed))
    for job_id in job_ids:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                done_items=Job.done_items + done.get(job_id, 0),
                failed_items=Job.failed_items + failed.get(job_id, 0),
                tokens_generated=Job.tokens_generated + tokens.get(job_id, 0),
            )
        )
    progress = [{"job_id": j, "bucket": bucket, "tokens": t} for j, t in tokens.items() if t]
    if progress:
        stmt = dialect_insert(session)(JobProgress)
        stmt = stmt.on_conflict_do_update(
            index_elements=["job_id", "bucket"], set_={"tokens": JobProgress.tokens + stmt.excluded.tokens}
        )
        for row in progress:
            await session.execute(stmt, row)
    if job_ids:
        await session.execute(
            update(Job)
            .where(
                Job.id.in_(job_ids),
                Job.status == "running",
                Job.sweep.is_(None),  # a retry still re-queueing: its sweep completes the job when through
                Job.done_items + Job.failed_items + Job.cancelled_items >= Job.total_items,
            )
            .values(
                status=case((Job.done_items == 0, "failed"), else_="completed"),
                finished_at=now,
            )
            .execution_options(synchronize_session=False)
        )
