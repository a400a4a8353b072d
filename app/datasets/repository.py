"""All SQL of the datasets domain: dataset and file rows, the jobs they read, and the build's prompt ledger."""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Dataset, DatasetFile, Job, utcnow

LEDGER_BATCH = 500


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
    """The dataset if it belongs to the project; another project's dataset is as good as missing."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_datasets(
    session: AsyncSession, project_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Dataset]:
    """The project's datasets, newest first, keyset-paged on (created_at, id)."""
    stmt = (
        select(Dataset)
        .where(Dataset.project_id == project_id)
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
