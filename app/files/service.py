"""Files logic: store an upload on disk in chunks, read files and pages of them, delete."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.datasets.storage import LocalStorage
from app.errors import ApiError, not_found
from app.files import repository
from app.files.schemas import FILE_PREFIX, FileObject, FilePage
from app.models import StoredFile, utcnow

UPLOAD_CHUNK = 1 << 20
PURPOSES = ("batch",)  # what /v1/files takes; batch output files are made by batches, never uploaded


class ChunkReader(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def file_storage(root: Path) -> LocalStorage:
    return LocalStorage(root)


def public_id(file_id: uuid.UUID) -> str:
    return FILE_PREFIX + file_id.hex


def parse_id(public: str) -> uuid.UUID | None:
    """The stored file's id from its public form "file-<hex>", or None when it is not of that form."""
    if not public.startswith(FILE_PREFIX):
        return None
    try:
        return uuid.UUID(hex=public[len(FILE_PREFIX) :])
    except ValueError:
        return None


def to_object(row: StoredFile) -> FileObject:
    return FileObject(
        id=public_id(row.id),
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
    )


async def store_upload(
    session: AsyncSession,
    storage: LocalStorage,
    project_id: uuid.UUID,
    upload: ChunkReader,
    filename: str,
    purpose: str,
) -> StoredFile:
    """Copy the upload to storage chunk by chunk, then record it; the bytes go if the record cannot be made."""
    if purpose not in PURPOSES:
        raise ApiError(
            422, f"purpose {purpose!r} is not taken here; use one of: {', '.join(PURPOSES)}", loc=["body", "purpose"]
        )
    file_id = uuid.uuid4()
    key = f"{project_id}/{file_id.hex}"
    writer = storage.create(key)
    size = 0
    try:
        while chunk := await upload.read(UPLOAD_CHUNK):
            size += len(chunk)
            await asyncio.to_thread(writer.write, chunk)
        await asyncio.to_thread(writer.commit)
    except BaseException:
        writer.abort()
        raise
    row = StoredFile(
        id=file_id,
        project_id=project_id,
        filename=filename[:255] or "upload.jsonl",
        purpose=purpose,
        bytes=size,
        storage_key=key,
        created_at=utcnow(),
    )
    try:
        await repository.insert_file(session, row)
    except BaseException:
        storage.path(key).unlink(missing_ok=True)
        raise
    return row


async def get_file(session: AsyncSession, public: str, project_id: uuid.UUID) -> StoredFile:
    file_id = parse_id(public)
    row = None if file_id is None else await repository.get_file(session, file_id, project_id)
    if row is None:
        raise not_found("file", ["path", "file_id"])
    return row


async def list_files(
    session: AsyncSession, project_id: uuid.UUID, *, after: str | None, limit: int, order: str, purpose: str | None
) -> FilePage:
    """A page of the project's uploaded files; `after` is the last id of the previous page."""
    cursor = None
    if after is not None:
        last = await get_file(session, after, project_id)
        cursor = (last.created_at, last.id)
    rows = await repository.list_files(
        session, project_id, limit=limit + 1, after=cursor, newest_first=order == "desc", purpose=purpose
    )
    data = [to_object(r) for r in rows[:limit]]
    return FilePage(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


async def delete_file(session: AsyncSession, storage: LocalStorage, public: str, project_id: uuid.UUID) -> str:
    """Forget the file and remove its bytes (a batch made from it already holds its lines as a job)."""
    row = await get_file(session, public, project_id)
    await repository.delete_file(session, row.id)
    storage.path(row.storage_key).unlink(missing_ok=True)
    return public_id(row.id)


async def aread_chunks(storage: LocalStorage, row: StoredFile) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, read off the event loop."""
    chunks = storage.open(row.storage_key)
    while chunk := await asyncio.to_thread(next, chunks, b""):
        yield chunk
