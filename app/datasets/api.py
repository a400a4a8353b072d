"""Routes of the datasets API: build from completed jobs, list, read the manifest, download files by range,
delete."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.responses import StreamingResponse

from app.datasets import cleanup, service
from app.datasets.schemas import DatasetCreate, DatasetPage, DatasetRead
from app.datasets.service import StoredFile
from app.datasets.storage import DatasetStorage, LocalStorage
from app.dependencies import DatabaseDep, PrincipalDep, SessionDep, SettingsDep
from app.errors import ApiError, error_responses

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 404, 413, 503))

RANGE_SPEC = re.compile(r"(\d*)-(\d*)")
MEDIA_TYPES = {".parquet": "application/vnd.apache.parquet", ".json": "application/json"}
FILE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/vnd.apache.parquet": {}, "application/json": {}}},
    206: {"description": "The requested byte range (`Range: bytes=a-b`, `a-` or `-n`)."},
    304: {"description": "If-None-Match matched the file's ETag (its sha256)."},
    416: {"description": "The range starts past the end of the file."},
}


def get_storage(settings: SettingsDep) -> DatasetStorage:
    return LocalStorage(settings.resolved_datasets_dir)


StorageDep = Annotated[DatasetStorage, Depends(get_storage)]
FileName = Annotated[str, Path(min_length=1, max_length=128)]
RangeHeader = Annotated[str | None, Header(alias="range")]
IfNoneMatch = Annotated[str | None, Header(alias="if-none-match")]
IfRange = Annotated[str | None, Header(alias="if-range")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetRead)
async def create_dataset(
    body: DatasetCreate, database: DatabaseDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep
) -> DatasetRead:
    """Build a dataset from completed jobs, in this request; it comes back ready (or failed, with its error)."""
    return await service.create_dataset(database, storage, settings, body, principal.project_id)


@router.get("", response_model=DatasetPage)
async def list_datasets(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> DatasetPage:
    return await service.list_datasets(
        session, principal.project_id, limit=min(limit, settings.max_page_size), cursor=cursor
    )


@router.get("/{dataset_id}", response_model=DatasetRead)
async def get_dataset(dataset_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> DatasetRead:
    return service.to_read(await service.get_dataset(session, dataset_id, principal.project_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(409))
async def delete_dataset(
    dataset_id: uuid.UUID, database: DatabaseDep, storage: StorageDep, principal: PrincipalDep
) -> Response:
    """Delete a ready or failed dataset with its files (409 while it builds)."""
    await cleanup.delete_dataset(database, storage, dataset_id, principal.project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{dataset_id}/files/{name}", response_class=StreamingResponse, responses=FILE_RESPONSES)
async def download_file(
    dataset_id: uuid.UUID,
    name: FileName,
    session: SessionDep,
    storage: StorageDep,
    principal: PrincipalDep,
    byte_range: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
    if_range: IfRange = None,
) -> Response:
    """A shard or manifest.json, streamed; single byte ranges, a strong ETag (the sha256) and If-Range."""
    stored = await service.get_file(session, dataset_id, name, principal.project_id)
    return file_response(storage, stored, byte_range, if_none_match, if_range, with_body=True)


@router.head("/{dataset_id}/files/{name}", include_in_schema=False)
async def head_file(
    dataset_id: uuid.UUID,
    name: FileName,
    session: SessionDep,
    storage: StorageDep,
    principal: PrincipalDep,
    byte_range: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
    if_range: IfRange = None,
) -> Response:
    """The download's headers without its body (size, ETag, ranges)."""
    stored = await service.get_file(session, dataset_id, name, principal.project_id)
    return file_response(storage, stored, byte_range, if_none_match, if_range, with_body=False)


def etag_of(stored: StoredFile) -> str:
    return f'"{stored.sha256}"'


def _none_match(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: W/"x" matches "x"; "*" matches any file."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) for one `bytes=` range; None to ignore the header (another unit, several ranges, or
    malformed) and send the whole file; 416 when the range cannot be satisfied."""
    unit, _, spec = header.partition("=")
    match = RANGE_SPEC.fullmatch(spec.strip())
    if unit.strip().lower() != "bytes" or match is None or not any(match.groups()):
        return None
    first, last = match.groups()
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, size if not last else min(int(last) + 1, size)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        f"the range is outside the file's {size} bytes",
        loc=["header", "range"],
        type="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )


def file_response(
    storage: DatasetStorage,
    stored: StoredFile,
    range_header: str | None,
    if_none_match: str | None,
    if_range: str | None,
    *,
    with_body: bool,
) -> Response:
    """200, 206 or 304 for a stored file, per RFC 9110: If-None-Match first, then Range guarded by If-Range
    (strong comparison; a date never matches, since no Last-Modified is sent)."""
    etag = etag_of(stored)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if if_none_match is not None and _none_match(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    start, end, code = 0, stored.size, status.HTTP_200_OK
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        chosen = byte_range(range_header, stored.size)
        if chosen is not None:
            (start, end), code = chosen, status.HTTP_206_PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
    headers["Content-Length"] = str(end - start)
    headers["Content-Disposition"] = f'attachment; filename="{stored.name}"'
    media_type = next((t for ext, t in MEDIA_TYPES.items() if stored.name.endswith(ext)), "application/octet-stream")
    if not with_body:
        return Response(status_code=code, headers=headers, media_type=media_type)
    return StreamingResponse(
        storage.open(stored.key, start, end), status_code=code, headers=headers, media_type=media_type
    )
