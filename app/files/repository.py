"""All SQL of the files domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import StoredFile


async def insert_file(session: AsyncSession, row: StoredFile) -> None:
    session.add(row)
    await session.flush()


async def get_file(session: AsyncSession, file_id: uuid.UUID, project_id: uuid.UUID) -> StoredFile | None:
    stmt = select(StoredFile).where(StoredFile.id == file_id, StoredFile.project_id == project_id)
    return (await session.scalars(stmt)).first()


async def list_files(
    session: AsyncSession,
    project_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    newest_first: bool,
    purpose: str | None,
) -> list[StoredFile]:
    """Up to `limit` files past the cursor (created_at, id), newest or oldest first."""
    stmt = select(StoredFile).where(StoredFile.project_id == project_id)
    if purpose is not None:
        stmt = stmt.where(StoredFile.purpose == purpose)
    key = tuple_(StoredFile.created_at, StoredFile.id)
    if after is not None:
        bound = tuple_(after[0], after[1])
        stmt = stmt.where(key < bound if newest_first else key > bound)
    if newest_first:
        stmt = stmt.order_by(StoredFile.created_at.desc(), StoredFile.id.desc())
    else:
        stmt = stmt.order_by(StoredFile.created_at, StoredFile.id)
    return list((await session.scalars(stmt.limit(limit))).all())


async def delete_file(session: AsyncSession, file_id: uuid.UUID) -> None:
    await session.execute(delete(StoredFile).where(StoredFile.id == file_id))
