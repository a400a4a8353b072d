"""The queries behind the queue and job gauges (read-only; run by the refresher, never per scrape)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Item, Job

PENDING_ITEM_STATES = ("queued", "leased")


async def items_by_teacher_and_state(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Queued and leased items per (teacher, state): each state's count reads its own partial index."""
    counts: dict[tuple[str, str], int] = {}
    for state in PENDING_ITEM_STATES:
        stmt = select(Item.teacher, func.count()).where(Item.status == state).group_by(Item.teacher)
        for teacher, count in (await session.execute(stmt)).all():
            counts[(teacher, state)] = int(count)
    return counts


async def oldest_queued_job(session: AsyncSession) -> dict[str, datetime]:
    """Per teacher, the creation time of the oldest unfinished job that still has queued items."""
    has_queued = exists().where(Item.job_id == Job.id, Item.status == "queued")
    stmt = (
        select(Job.teacher, func.min(Job.created_at))
        .where(Job.status.in_(("queued", "running")), has_queued)
        .group_by(Job.teacher)
    )
    return {teacher: created for teacher, created in (await session.execute(stmt)).all() if created is not None}


async def jobs_by_state(session: AsyncSession) -> dict[str, int]:
    stmt = select(Job.status, func.count()).group_by(Job.status)
    return {status: int(count) for status, count in (await session.execute(stmt)).all()}


async def expired_leases(session: AsyncSession, now: datetime) -> int:
    """Leased items past their lease (the leased partial index is on lease_expires_at)."""
    stmt = select(func.count()).select_from(Item).where(Item.status == "leased", Item.lease_expires_at < now)
    return int((await session.execute(stmt)).scalar_one())
