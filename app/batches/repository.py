"""All SQL of the batches domain: batch rows, and the items and results their output files are made of."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Batch, Item, Job, Result, utcnow

DELETED = "deleted"
OUTPUT_COLUMNS: tuple[Any, ...] = (
    Item.id,
    Item.seq,
    Item.custom_id,
    Item.status,
    Item.error,
    Item.variant,
    Item.prompt.is_(None).label("chat"),  # a chat item has messages instead (JSON: NULL or "null")
    Result.text,
    Result.finish_reason,
    Result.num_tokens,
    Result.prompt_tokens,
    Result.codec,
    Result.k,
    Result.token_ids,
    Result.token_logprobs,
    Result.topk_ids,
    Result.topk_logprobs,
)


async def insert_batch(session: AsyncSession, batch: Batch) -> None:
    session.add(batch)
    await session.flush()


async def get_batch(session: AsyncSession, batch_id: uuid.UUID, project_id: uuid.UUID) -> Batch | None:
    stmt = select(Batch).where(Batch.id == batch_id, Batch.project_id == project_id)
    return (await session.scalars(stmt)).first()


async def list_batches(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Batch]:
    """The project's batches, newest first, keyset-paged on (created_at, id)."""
    stmt = select(Batch).where(Batch.project_id == project_id)
    if after is not None:
        stmt = stmt.where(tuple_(Batch.created_at, Batch.id) < tuple_(after[0], after[1]))
    stmt = stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    return list((await session.scalars(stmt)).all())


async def jobs_of(session: AsyncSession, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Job]:
    """The batches' jobs that are not deleted."""
    if not job_ids:
        return {}
    rows = await session.scalars(select(Job).where(Job.id.in_(job_ids), Job.status != DELETED))
    return {job.id: job for job in rows}


async def set_batch(session: AsyncSession, batch_id: uuid.UUID, **values: Any) -> None:
    await session.execute(update(Batch).where(Batch.id == batch_id).values(**values))


async def validating_batches(session: AsyncSession, limit: int) -> list[uuid.UUID]:
    rows = await session.scalars(select(Batch.id).where(Batch.status == "validating").order_by(Batch.id).limit(limit))
    return list(rows)


async def fail_if_validating(session: AsyncSession, batch_id: uuid.UUID, error: dict[str, Any]) -> bool:
    """Fail the batch if it is still validating; whether it was."""
    result = await session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "validating")
        .values(status="failed", errors=[error], failed_at=utcnow())
        .returning(Batch.id)
    )
    return result.first() is not None


async def batches_to_expire(session: AsyncSession, now: datetime, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(batch, job) of running batches past their completion window, their rows locked."""
    stmt = (
        select(Batch.id, Job.id)
        .join(Job, Job.id == Batch.job_id)
        .where(Batch.status.is_(None), Batch.expires_at < now, Job.status.in_(("queued", "running")))
        .limit(limit)
        .with_for_update(of=Batch, skip_locked=True)
    )
    return [(batch_id, job_id) for batch_id, job_id in (await session.execute(stmt)).all()]


async def input_tokens(session: AsyncSession, job_id: uuid.UUID) -> int:
    """Prompt tokens over the job's stored completions."""
    stmt = select(func.coalesce(func.sum(Result.prompt_tokens), 0)).where(Result.job_id == job_id)
    return int((await session.execute(stmt)).scalar_one())


async def output_page(
    session: AsyncSession, job_id: uuid.UUID, statuses: Sequence[str], *, after: int, limit: int
) -> list[Row[Any]]:
    """Up to `limit` of the job's items in these statuses past position `after` (seq), in submission order,
    each with its first completion if it has one."""
    stmt = (
        select(*OUTPUT_COLUMNS)
        .outerjoin(Result, and_(Result.job_id == Item.job_id, Result.item_id == Item.id, Result.sample_index == 0))
        .where(Item.job_id == job_id, Item.status.in_(statuses), Item.seq > after)
        .order_by(Item.seq)
        .limit(limit)
    )
    return list((await session.execute(stmt)).all())
