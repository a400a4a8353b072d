"""The worker: a dispatcher per teacher, a lease renewer, a reaper of expired leases, the jobs' sweep (bulk
cancel, retry, purge and retention, app/jobs/sweeping.py), and the wake-up.

Each claimed batch is one unit of work: claim (one transaction, from the job the scheduler picks), teacher
requests, then one transaction that stores the results and marks the items done, guarded by the lease so
a stale worker writes nothing. New jobs wake idle dispatchers at once on Postgres (LISTEN/NOTIFY); on
SQLite an idle worker looks for runnable jobs with a short read-only poll."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.jobs.repository import JOBS_CHANNEL
from app.jobs.sweeping import Sweeper
from app.models import utcnow
from app.observability import metrics
from app.observability.metrics import CLAIM_SECONDS, ITEMS_FINISHED, LEASES_REAPED, STALE_WRITES, STORE_SECONDS
from app.settings import Settings
from app.teachers.service import TeacherRegistry
from app.waiting import wait_first
from app.worker import repository, scheduler
from app.worker.dispatcher import TeacherDispatcher
from app.worker.schemas import Claim, ItemOutcome, JobSpec
from app.worker.store import Stored, build_rows, write_rows

log = logging.getLogger(__name__)
T = TypeVar("T")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs a dispatcher per teacher, a lease renewer and a reaper of expired leases."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        registry: TeacherRegistry | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.registry = registry
        self.id = worker_id or new_worker_id()
        self.inflight: set[int] = set()
        self._subscribers: set[asyncio.Event] = set()
        self.woken_at = 0.0  # monotonic time of the last wake-up (new work announced)
        self._decoder: ThreadPoolExecutor | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Until stop is set; then stop claiming, drain in-flight batches within the grace period, and return."""
        own_registry = self.registry is None
        registry = self.registry = self.registry or TeacherRegistry(self.settings)
        background = [
            asyncio.create_task(self._every(stop, self.settings.worker_lease_s / 3, self.renew_leases)),
            asyncio.create_task(self._every(stop, min(self.settings.worker_lease_s / 2, 30.0), self.reap)),
            asyncio.create_task(self._sweep(stop), name="sweep"),
        ]
        if own_registry:
            background.append(asyncio.create_task(registry.run(stop), name="teacher-probe"))
        if not self.database.is_sqlite:
            background.append(asyncio.create_task(self.database.listen(JOBS_CHANNEL, self.wake, stop)))
        dispatchers = [TeacherDispatcher(self, t, registry) for t in self.settings.teachers]
        collector = metrics.register(
            metrics.DispatchCollector((d.config.name, lo) for d in dispatchers for lo in d.loads)
        )
        log.info("worker %s started for teachers %s", self.id, [t.name for t in self.settings.teachers])
        try:
            await asyncio.gather(*(d.run(stop) for d in dispatchers))
        finally:
            metrics.unregister(collector)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if own_registry:
                await registry.aclose()
            if self._decoder is not None:
                self._decoder.shutdown(wait=False)
                self._decoder = None
        log.info("worker %s stopped", self.id)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (decoding answers, encoding rows) on one helper thread, so the event loop keeps
        claiming and sending while a wave of large answers is digested. One thread: more would only
        contend for the GIL."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, functools.partial(fn, *args))

    def wake(self, _payload: str = "") -> None:
        """New work may be there (a job was created or re-queued): idle dispatchers look at once."""
        self.woken_at = time.monotonic()
        for event in self._subscribers:
            event.set()

    def subscribe(self, event: asyncio.Event) -> None:
        """Have `event` set at every wake-up (a dispatcher's: idle, to claim at once; busy, to start new jobs)."""
        self._subscribers.add(event)

    async def _every(self, stop: asyncio.Event, interval: float, action: Any) -> None:
        while not stop.is_set():
            try:
                await action()
            except Exception:
                log.exception("%s failed", getattr(action, "__name__", action))
            await wait_first(stop, timeout=interval)

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Run the jobs' sweeps (cancel, retry, purge, retention) now and then, and at once when woken."""
        sweeper = Sweeper(self.database, self.settings)
        woken = asyncio.Event()
        self.subscribe(woken)
        while not stop.is_set():
            woken.clear()
            try:
                await sweeper.run_once(stop)
            except Exception:
                log.exception("sweep failed")
            await wait_first(woken, stop, timeout=self.settings.job_sweep_interval_s)

    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.worker_lease_s)

    async def claim(
        self,
        teacher: str,
        identity: tuple[object, ...],
        limit_for: Callable[[JobSpec, int], int],
        *,
        check_first: bool = False,
        unstarted: bool = False,
    ) -> Claim:
        """Lease a batch from the job the scheduler puts first among those whose recorded teacher identity
        is `identity` (`unstarted`: among jobs never claimed from), of the size `limit_for(spec, pending)`
        allows, `pending` being the items those jobs have left. `check_first` looks read-only before taking
        the write transaction (idle polling)."""
        if check_first:
            runnable = await self.database.run(
                lambda s: repository.runnable_jobs(s, teacher, unstarted=unstarted), readonly=True
            )
            if not any(j.identity == identity for j in runnable):
                return Claim(items=[], jobs={})

        async def work(session: AsyncSession) -> Claim:
            runnable = await repository.runnable_jobs(session, teacher, unstarted=unstarted)
            jobs = [j for j in runnable if j.identity == identity]
            if not jobs:
                return Claim(items=[], jobs={})
            capped = (
                self.settings.project_max_inflight_items is not None or self.settings.project_max_inflight_overrides
            )
            inflight = await repository.inflight_by_project(session) if capped else {}
            now = utcnow()
            pending = sum(j.pending for j in jobs)
            for job in scheduler.order_jobs(jobs):
                limit = limit_for(job.spec, pending)
                room = scheduler.room_under_cap(job, inflight, self.settings.project_inflight_cap)
                if room is not None:
                    limit = min(limit, room)
                if limit <= 0:
                    continue
                items = await repository.claim_job_items(
                    session,
                    job_id=job.spec.id,
                    owner=self.id,
                    limit=limit,
                    lease_until=self._lease_until(),
                    now=now,
                    by_variant=job.spec.variants is not None,
                )
                if items:
                    return Claim(items=items, jobs={job.spec.id: job.spec.for_variant(items[0].variant)})
            return Claim(items=[], jobs={})

        started = time.perf_counter()
        claim = await self.database.run(work)
        CLAIM_SECONDS.observe(time.perf_counter() - started)
        return claim

    async def renew_leases(self) -> None:
        ids = sorted(self.inflight)
        if ids:
            until = self._lease_until()
            await self.database.run(
                lambda s: repository.renew_leases(s, owner=self.id, item_ids=ids, lease_until=until)
            )

    async def reap(self) -> None:
        limit = self.settings.worker_max_attempts
        reaped, failed = await self.database.run(
            lambda s: repository.reap_expired_leases(s, utcnow(), max_attempts=limit)
        )
        LEASES_REAPED.labels("requeued").inc(reaped)
        LEASES_REAPED.labels("failed").inc(failed)
        if reaped or failed:
            log.info("items whose lease expired: %d re-queued, %d failed (out of attempts)", reaped, failed)

    async def release(self, item_ids: list[int], *, refund: bool = False) -> None:
        if item_ids:
            await self.database.run(
                lambda s: repository.release_items(s, owner=self.id, item_ids=item_ids, refund=refund),
                retry_for_s=self.settings.worker_db_retry_s,
            )

    async def store(self, outcomes: list[ItemOutcome]) -> Stored:
        """One transaction: results in, items done or failed, job counters, all only for items we still own.
        Repeatable: after a commit the items are no longer leased, so a rerun stores nothing twice."""
        if not outcomes:
            return Stored()
        started = time.perf_counter()
        built = await self.off_loop(build_rows, outcomes, self.settings.fidelity_sample_items)
        stored = await self.database.run(
            lambda s: write_rows(s, self.id, built), retry_for_s=self.settings.worker_db_retry_s
        )
        STORE_SECONDS.observe(time.perf_counter() - started)
        STALE_WRITES.inc(stored.stale)
        ITEMS_FINISHED.labels("done").inc(stored.done)
        ITEMS_FINISHED.labels("failed").inc(stored.failed)
        return stored

    async def retry_later(self, outcomes: list[ItemOutcome], *, refund: bool = False) -> None:
        """Items to try again later go back to the queue; once out of attempts they fail, with the reason of
        their last one. During a teacher outage (refund) the attempt is given back, so waiting out the
        outage costs nothing. An item sent again alone in this claim (`resent`) spent one more attempt."""
        limit = self.settings.worker_max_attempts
        exhausted = [] if refund else [o for o in outcomes if o.item.attempts >= limit]
        again = [o for o in outcomes if refund or o.item.attempts < limit]
        if exhausted:
            await self.store([ItemOutcome(o.item, error=gave_up(o.item.attempts, o.reason)) for o in exhausted])
        if again:
            resent = [o.item.id for o in again if o.resent]
            await self.database.run(
                lambda s: repository.release_items(
                    s, owner=self.id, item_ids=[o.item.id for o in again], refund=refund, resent=resent
                ),
                retry_for_s=self.settings.worker_db_retry_s,
            )


def gave_up(attempts: int, reason: str | None) -> str:
    return f"gave up after {attempts} attempts: {reason or 'teacher errors'}"
