"""GaugeRefresher: reads queue depth, the oldest queued item's age and jobs by state from the database
every few seconds into the gauges, so a scrape never runs a query. Only the API process runs it: the
figures are the database's, and several workers exporting them would count them several times."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.models import utcnow
from app.observability import metrics, repository
from app.waiting import wait_first

log = logging.getLogger(__name__)
JOB_STATES = ("loading", "queued", "running", "completed", "failed", "cancelled")


class GaugeRefresher:
    def __init__(self, database: Database, teachers: list[str], *, interval_s: float) -> None:
        self.database = database
        self.teachers = teachers
        self.interval_s = interval_s

    async def refresh(self) -> None:
        """One reading of every gauge; teachers and states with nothing are set to 0 (not left stale)."""

        now = utcnow()

        async def read(session: AsyncSession) -> tuple[Any, Any, Any, int]:
            return (
                await repository.items_by_teacher_and_state(session),
                await repository.oldest_queued_job(session),
                await repository.jobs_by_state(session),
                await repository.expired_leases(session, now),
            )

        items, oldest, jobs, expired = await self.database.run(read, readonly=True)
        metrics.LEASES_EXPIRED.set(expired)
        for teacher in {*self.teachers, *(t for t, _ in items)}:
            for state in repository.PENDING_ITEM_STATES:
                metrics.QUEUE_ITEMS.labels(teacher, state).set(items.get((teacher, state), 0))
        for teacher in {*self.teachers, *oldest}:
            created = oldest.get(teacher)
            metrics.QUEUE_OLDEST_AGE.labels(teacher).set(_age_s(now, created) if created else 0.0)
        for state in {*JOB_STATES, *jobs}:
            metrics.JOBS.labels(state).set(jobs.get(state, 0))
        metrics.GAUGES_REFRESHED.set(time.time())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the queue gauges failed")
            await wait_first(stop, timeout=self.interval_s)


def _age_s(now: datetime, then: datetime) -> float:
    if then.tzinfo is None:  # SQLite keeps timestamps naive (in UTC)
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())
