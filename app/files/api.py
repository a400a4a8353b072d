"""Routes of the OpenAI-compatible files API: upload, list, read, content, delete. A finished batch's
output and error files are read here too (rendered from its job, see app/batches/output.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from app.batches import output as batch_output
from app.batches import service as batches_service
from app.datasets.storage import LocalStorage
from app.dependencies import DatabaseDep, PrincipalDep, SessionDep, SettingsDep
from app.errors import error_responses
from app.files import service
from app.files.schemas import FileDeleted, FileObject, FilePage
from app.models import Batch, Job

router = APIRouter(prefix="/v1/files", tags=["files"], responses=error_responses(401, 404))


def get_storage(settings: SettingsDep) -> LocalStorage:
    return service.file_storage(settings.resolved_files_dir)


StorageDep = Annotated[LocalStorage, Depends(get_storage)]


@router.post("", response_model=FileObject, responses=error_responses(413))
async def upload_file(
    session: SessionDep,
    storage: StorageDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="A JSONL file of batch requests.")],
    purpose: Annotated[str, Form(max_length=32, description='"batch".')],
) -> FileObject:
    row = await service.store_upload(session, storage, principal.project_id, file, file.filename or "", purpose)
    return service.to_object(row)


@router.get("", response_model=FilePage)
async def list_files(
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FilePage:
    """The project's uploaded files (a batch's output files are reached from the batch)."""
    return await service.list_files(
        session, principal.project_id, after=after, limit=limit, order=order, purpose=purpose
    )


def _stream(database: DatabaseDep, batch: Batch, job: Job, errors: bool) -> AsyncIterator[bytes]:
    return batch_output.stream_lines(
        database,
        job.id,
        model=job.teacher,
        created=int(job.created_at.timestamp()),
        variant_logprobs=batch.variant_logprobs,
        errors=errors,
        unrun="batch_expired" if batch.status == "expired" else "batch_cancelled",
    )


@router.get("/{file_id}", response_model=FileObject)
async def get_file(file_id: str, session: SessionDep, database: DatabaseDep, principal: PrincipalDep) -> FileObject:
    made = await batches_service.batch_file(session, file_id, principal.project_id)
    if made is not None:
        batch, job, errors = made
        size = 0
        async for chunk in _stream(database, batch, job, errors):
            size += len(chunk)
        return FileObject(
            id=file_id,
            bytes=size,
            created_at=int((job.finished_at or job.created_at).timestamp()),
            filename=f"{batches_service.public_id(batch.id)}_{'error' if errors else 'output'}.jsonl",
            purpose="batch_output",
        )
    return service.to_object(await service.get_file(session, file_id, principal.project_id))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}, "application/jsonl": {}}}},
)
async def file_content(
    file_id: str, session: SessionDep, database: DatabaseDep, storage: StorageDep, principal: PrincipalDep
) -> StreamingResponse:
    """The file's bytes as uploaded; a batch's output or error file as JSONL lines read from its job."""
    made = await batches_service.batch_file(session, file_id, principal.project_id)
    if made is not None:
        return StreamingResponse(_stream(database, *made), media_type="application/jsonl")
    row = await service.get_file(session, file_id, principal.project_id)
    return StreamingResponse(service.aread_chunks(storage, row), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> FileDeleted:
    """Delete an uploaded file (batches made from it keep running: their lines are their job's items)."""
    return FileDeleted(id=await service.delete_file(session, storage, file_id, principal.project_id))
