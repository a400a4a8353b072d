"""Removing datasets (on request and past retention) and failing builds whose process died.

A deletion first hides the dataset (status `deleting`, committed), then removes its files, then its rows in
bounded batches. A crash part-way leaves a hidden row that the next maintenance pass finishes: never a row
that looks ready while its files are gone, and never files no row leads to.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import Database
from app.datasets import repository
from app.datasets.build_locks import BuildLocks
from app.datasets.storage import DatasetStorage
from app.errors import ApiError, not_found
from app.models import utcnow
from app.settings import Settings

BATCH = 500  # rows, or datasets, per transaction
INTERRUPTED = "the build was interrupted: the process building it stopped before it finished; build it again"
log = logging.getLogger(__name__)


def _prefix(project_id: uuid.UUID, dataset_id: uuid.UUID) -> str:
    return f"{project_id}/{dataset_id}"


async def delete_dataset(
    database: Database, storage: DatasetStorage, dataset_id: uuid.UUID, project_id: uuid.UUID
) -> None:
    """Delete a ready or failed dataset of the project with its files; 404 when missing, 409 while building."""

    async def hide(session: AsyncSession) -> None:
        if await repository.mark_deleting(session, dataset_id, project_id):
            return
        if await repository.status_of(session, dataset_id, project_id) == "building":
            msg = "the dataset is still building; delete it once it is ready or failed"
            raise ApiError(409, msg, loc=["path", "dataset_id"], type="conflict")
        raise not_found("dataset", ["path", "dataset_id"])

    await database.run(hide)
    await _remove_hidden(database, storage, dataset_id, project_id)


async def _remove_hidden(
    database: Database, storage: DatasetStorage, dataset_id: uuid.UUID, project_id: uuid.UUID
) -> None:
    """Files, then file rows in batches, then the dataset row, of a dataset already marked deleting."""
    await asyncio.to_thread(storage.delete_prefix, _prefix(project_id, dataset_id))
    delete_files = functools.partial(repository.delete_file_rows, dataset_id=dataset_id, limit=BATCH)
    while await database.run(delete_files) >= BATCH:
        pass
    await database.run(functools.partial(repository.delete_dataset_row, dataset_id=dataset_id))


async def purge_datasets(database: Database, storage: DatasetStorage, settings: Settings) -> int:
    """Hide the finished datasets older than `retention_days` (if set), then remove every hidden dataset,
    those a crashed deletion left included. Returns how many were removed."""
    if settings.retention_days is not None:
        cutoff = utcnow() - timedelta(days=settings.retention_days)
        hide = functools.partial(repository.mark_expired_deleting, finished_before=cutoff, limit=BATCH)
        while await database.run(hide) >= BATCH:
            pass
    removed = 0
    while True:
        hidden = await database.run(
            functools.partial(repository.datasets_in, status=repository.DELETING, limit=BATCH), readonly=True
        )
        for dataset_id, project_id in hidden:
            await _remove_hidden(database, storage, dataset_id, project_id)
        removed += len(hidden)
        if len(hidden) < BATCH:
            return removed


async def fail_orphaned_builds(database: Database, storage: DatasetStorage, settings: Settings) -> int:
    """Mark failed, and clear the files of, every building dataset no live process builds (see build_locks).
    Returns how many."""
    locks = BuildLocks(settings.resolved_datasets_dir)
    failed, after = 0, None
    while True:
        building = await database.run(
            functools.partial(repository.datasets_in, status="building", limit=BATCH, after=after), readonly=True
        )
        for dataset_id, project_id in building:
            with locks.orphaned(dataset_id) as orphan:
                mark = functools.partial(repository.fail_if_building, dataset_id=dataset_id, error=INTERRUPTED)
                if orphan and await database.run(mark):
                    log.warning("dataset %s: its build was interrupted; marked failed", dataset_id)
                    await asyncio.to_thread(storage.delete_prefix, _prefix(project_id, dataset_id))
                    failed += 1
        if len(building) < BATCH:
            return failed
        after = building[-1][0]
