"""The service's periodic upkeep: fail dataset builds whose process died, purge datasets past retention (and
finish interrupted deletions), forget expired idempotency keys and progress buckets no figure reads, and
expire batches past their completion window.

Every step works in bounded batches, one transaction each, and is safe to run from several processes at
once. The first pass runs when the service starts."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import service as batches_service
from app.database import Database
from app.datasets import cleanup
from app.datasets.storage import LocalStorage
from app.jobs import repository as jobs_repository
from app.jobs.service import progress_horizon
from app.models import utcnow
from app.settings import Settings
from app.waiting import wait_first

BATCH = 1000
log = logging.getLogger(__name__)


async def _in_batches(database: Database, delete: Callable[[AsyncSession], Awaitable[int]]) -> int:
    """Run a bounded delete until it deletes less than a full batch; the total deleted."""
    total = 0
    while True:
        deleted = await database.run(delete)
        total += deleted
        if deleted < BATCH:
            return total


async def maintain_once(database: Database, settings: Settings) -> None:
    storage = LocalStorage(settings.resolved_datasets_dir)
    interrupted = await cleanup.fail_orphaned_builds(database, storage, settings)
    purged = await cleanup.purge_datasets(database, storage, settings)
    key_cutoff = utcnow() - timedelta(hours=settings.idempotency_ttl_hours)
    keys = await _in_batches(
        database, functools.partial(jobs_repository.delete_idempotency_keys_before, before=key_cutoff, limit=BATCH)
    )
    now = utcnow()
    expired = await _in_batches(database, lambda s: batches_service.expire_batches(s, now, BATCH))
    stalled = await batches_service.fail_orphaned_validations(database, settings, BATCH)
    buckets = await _in_batches(
        database,
        functools.partial(jobs_repository.delete_progress_before, before_bucket=progress_horizon(), limit=BATCH),
    )
    if interrupted or purged or keys or buckets or expired or stalled:
        log.info(
            "maintenance: %d interrupted builds failed, %d datasets purged, %d idempotency keys and %d progress "
            "buckets expired, %d batches past their window expired, %d interrupted batch validations failed",
            interrupted,
            purged,
            keys,
            buckets,
            expired,
            stalled,
        )


async def run_maintenance(database: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Every `maintenance_interval_s` until stop is set; a failed pass is logged and tried again next time."""
    while not stop.is_set():
        try:
            await maintain_once(database, settings)
        except Exception:
            log.exception("maintenance pass failed")
        await wait_first(stop, timeout=settings.maintenance_interval_s)
