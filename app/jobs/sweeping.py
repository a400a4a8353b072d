"""The sweep: the row-by-row part of cancelling, retrying and deleting jobs, in bounded batches.

A cancel, retry or delete changes the job's row at once (in the request) and leaves a `sweep` on it; workers
then do the items (and, for a purge, the results and progress rows) a batch per committed transaction, so
no request and no other job waits behind one long transaction. The sweep also marks for purging the loads
whose request died and, with `retention_days`, finished jobs past retention."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.jobs import repository
from app.models import utcnow
from app.settings import Settings

log = logging.getLogger(__name__)
JOBS_PER_ROUND = 16  # jobs taken in turn, a batch each, per round
STALE_PER_ROUND = 100


async def let_writers_in(database: Database, held_s: float) -> None:
    """After a batch, on SQLite (one writer at a time), wait as long as the batch held the write lock, so
    writers queued behind it get their turn instead of losing the lock to our next batch."""
    await asyncio.sleep(held_s if database.is_sqlite else 0)


async def sweep_batch(session: AsyncSession, job_id: uuid.UUID, sweep: str, limit: int) -> bool:
    """One batch of the job's sweep; False when the sweep was through (then it is ended here)."""
    if sweep == "purge":
        return await repository.purge_batch(session, job_id, limit)
    if await repository.sweep_of(session, job_id, lock=True) != sweep:
        return False  # changed meanwhile (a cancel after a retry, a delete): the new sweep takes over
    if sweep == "cancel":
        done = await repository.cancel_queued_batch(session, job_id, limit, skip_locked=False)
    elif sweep == "retry":
        done = await repository.requeue_failed_batch(session, job_id, limit, skip_locked=False)
    else:
        raise ValueError(f"unknown sweep {sweep!r}")
    if not done:
        await repository.end_sweep(session, job_id, sweep)
    return bool(done)


async def purge_now(database: Database, settings: Settings, job_id: uuid.UUID) -> None:
    """Delete a job and purge its rows batch by batch before returning (a failed load cleans up after
    itself); whatever is left if this is interrupted, the sweep purges."""
    await database.run(lambda s: repository.mark_deleted(s, [job_id]))
    limit = settings.job_sweep_batch_rows
    while True:
        started = time.monotonic()
        if not await database.run(lambda s: repository.purge_batch(s, job_id, limit)):
            return
        await let_writers_in(database, time.monotonic() - started)


class Sweeper:
    """Runs the sweeps due, a batch per job in turn, until none is left (called by each worker)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Mark dead loads and expired jobs for purging, then sweep until nothing is due (or `stop` is set);
        returns the batches run."""
        await self.mark_stale()
        batches = 0
        while stop is None or not stop.is_set():
            due = await self.database.run(lambda s: repository.jobs_to_sweep(s, JOBS_PER_ROUND), readonly=True)
            ran = 0
            for job_id, sweep in due:
                ran += await self._batch(job_id, sweep)
            batches += ran
            if not ran:
                break  # nothing due, or every batch failed: the next round tries again
        return batches

    async def _batch(self, job_id: uuid.UUID, sweep: str) -> bool:
        """One batch in its own transaction; False if it failed."""
        limit = self.settings.job_sweep_batch_rows
        started = time.monotonic()
        try:
            await self.database.run(
                lambda s: sweep_batch(s, job_id, sweep, limit), retry_for_s=self.settings.worker_db_retry_s
            )
        except Exception:
            log.exception("sweep %s of job %s failed; it is tried again next round", sweep, job_id)
            return False
        await let_writers_in(self.database, time.monotonic() - started)
        return True

    async def mark_stale(self) -> int:
        """Loads silent for idempotency_pending_ttl_s (their request died) and finished jobs older than
        retention_days become deleted, for the sweep to purge. Looks read-only first."""
        now = utcnow()
        silent_since = now - timedelta(seconds=self.settings.idempotency_pending_ttl_s)
        days = self.settings.retention_days
        finished_before = now - timedelta(days=days) if days is not None else None

        async def find(session: AsyncSession) -> list[uuid.UUID]:
            found = await repository.loading_abandoned(session, silent_since, STALE_PER_ROUND)
            if finished_before is not None:
                found += await repository.expired_jobs(session, finished_before, STALE_PER_ROUND)
            return found

        stale = await self.database.run(find, readonly=True)
        if not stale:
            return 0
        marked = await self.database.run(
            lambda s: repository.delete_stale(s, stale, silent_since=silent_since, finished_before=finished_before)
        )
        if marked:
            log.info("%d jobs past retention or abandoned while loading: purging them", marked)
        return marked
