"""All SQL of the datasets domain: dataset and file rows, the jobs they read, and the build's prompt ledger."""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Dataset, DatasetFile, Job, utcnow

LEDGER_BATCH = 500
DELETING = "deleting"  # a status no API answer shows: the dataset is gone for its project, its files going
FINISHED = ("ready", "failed")


async def jobs_by_id(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], project_id: uuid.UUID
) -> dict[uuid.UUID, Job]:
    """The project's jobs among the given ids; others' jobs are left out as if missing."""
    stmt = select(Job).where(Job.id.in_(list(job_ids)), Job.project_id == project_id)
    return {job.id: job for job in (await session.execute(stmt)).scalars()}


async def insert_dataset(session: AsyncSession, dataset: Dataset) -> Dataset:
    session.add(dataset)
    await session.flush()
    return dataset


async def get_dataset(session: AsyncSession, dataset_id: uuid.UUID, project_id: uuid.UUID) -> Dataset | None:
    """The dataset if it belongs to the project; another project's dataset, or one being deleted, is as good
    as missing."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project_id, Dataset.status != DELETING)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_datasets(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Dataset]:
    """The project's datasets, newest first, keyset-paged on (created_at, id)."""
    stmt = (
        select(Dataset)
        .where(Dataset.project_id == project_id, Dataset.status != DELETING)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(Dataset.created_at, Dataset.id) < tuple_(after[0], after[1]))
    return list((await session.execute(stmt)).scalars())


async def mark_ready(
    session: AsyncSession,
    dataset_id: uuid.UUID,
    *,
    manifest: dict[str, Any],
    rows: int,
    tokens: int,
    files: Sequence[dict[str, Any]],
) -> None:
    """Record the built files and the manifest, and make the dataset ready, in one statement batch."""
    if files:
        await session.execute(insert(DatasetFile), [{"dataset_id": dataset_id, **f} for f in files])
    await session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(status="ready", manifest=manifest, rows=rows, tokens=tokens, finished_at=utcnow())
    )


async def mark_failed(session: AsyncSession, dataset_id: uuid.UUID, error: str) -> None:
    await session.execute(
        update(Dataset).where(Dataset.id == dataset_id).values(status="failed", error=error, finished_at=utcnow())
    )


async def get_file(session: AsyncSession, dataset_id: uuid.UUID, name: str) -> DatasetFile | None:
    return await session.get(DatasetFile, (dataset_id, name))


async def mark_deleting(session: AsyncSession, dataset_id: uuid.UUID, project_id: uuid.UUID) -> bool:
    """Hide a finished dataset of the project before its files go; False when it is missing or not finished."""
    result = await session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.project_id == project_id, Dataset.status.in_(FINISHED))
        .values(status=DELETING)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def status_of(session: AsyncSession, dataset_id: uuid.UUID, project_id: uuid.UUID) -> str | None:
    stmt = select(Dataset.status).where(Dataset.id == dataset_id, Dataset.project_id == project_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def mark_expired_deleting(session: AsyncSession, finished_before: datetime, limit: int) -> int:
    """Hide up to `limit` finished datasets older than the cutoff, for deletion."""
    expired = (
        select(Dataset.id)
        .where(Dataset.status.in_(FINISHED), Dataset.finished_at < finished_before)
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(
        update(Dataset).where(Dataset.id.in_(expired), Dataset.status.in_(FINISHED)).values(status=DELETING)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def datasets_in(
    session: AsyncSession, status: str, *, limit: int, after: uuid.UUID | None = None
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(id, project id) of up to `limit` datasets in a status, by id."""
    stmt = select(Dataset.id, Dataset.project_id).where(Dataset.status == status).order_by(Dataset.id).limit(limit)
    if after is not None:
        stmt = stmt.where(Dataset.id > after)
    return [(row.id, row.project_id) for row in (await session.execute(stmt)).all()]


async def delete_file_rows(session: AsyncSession, dataset_id: uuid.UUID, limit: int) -> int:
    """Delete up to `limit` of the dataset's file rows; the count deleted."""
    batch = select(DatasetFile.name).where(DatasetFile.dataset_id == dataset_id).limit(limit).scalar_subquery()
    result = await session.execute(
        delete(DatasetFile).where(DatasetFile.dataset_id == dataset_id, DatasetFile.name.in_(batch))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_dataset_row(session: AsyncSession, dataset_id: uuid.UUID) -> None:
    await session.execute(delete(Dataset).where(Dataset.id == dataset_id, Dataset.status == DELETING))


async def fail_if_building(session: AsyncSession, dataset_id: uuid.UUID, error: str) -> bool:
    """Mark a dataset failed only if it is still building; False when its build ended meanwhile."""
    result = await session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == "building")
        .values(status="failed", error=error, finished_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


class PromptLedger:
    """Which item first claimed each prompt digest, kept in a temporary SQLite file so that memory does not
    grow with the number of prompts. Used from one thread at a time."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="distillery-ledger-")
        self._db = sqlite3.connect(Path(self._dir.name) / "ledger.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID")

    def owners(self, digests: Sequence[bytes]) -> dict[bytes, str]:
        """The recorded owner of each digest that has one."""
        found: dict[bytes, str] = {}
        unique = list(dict.fromkeys(digests))
        for start in range(0, len(unique), LEDGER_BATCH):
            batch = unique[start : start + LEDGER_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(self._db.execute(f"SELECT digest, owner FROM seen WHERE digest IN ({marks})", batch))
        return found

    def claim(self, claims: Sequence[tuple[bytes, str]]) -> None:
        """Record new (digest, owner) pairs; a digest already claimed keeps its first owner."""
        self._db.executemany("INSERT OR IGNORE INTO seen (digest, owner) VALUES (?, ?)", claims)

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()
