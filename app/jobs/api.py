"""Routes of the jobs API: create (JSON or JSONL upload), list, read, cancel, retry, delete."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Query, Response, UploadFile, status
from pydantic import Field

from app.dependencies import DatabaseDep, PrincipalDep, RegistryDep, SessionDep, SettingsDep, WakeWorkersDep
from app.errors import error_responses
from app.jobs import loading, service
from app.jobs.schemas import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    CoreParams,
    FailurePage,
    JobCreate,
    JobKind,
    JobPage,
    JobRead,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 404, 503))

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Same key and body: the original job comes back. Same key, other body: 422. Racing: 409.",
    ),
]
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "An earlier request with the same Idempotency-Key created this job."},
    **error_responses(409, 413),
}


class JobUploadForm(CoreParams):
    """The upload's multipart form: the JSONL file, the teacher and the core generation params, flat; any
    other sampling parameter in `sampling`, a JSON object."""

    teacher: str = Field(min_length=1, max_length=64)
    kind: JobKind = "generate"
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher first.")
    sampling: str | None = Field(
        default=None, description='More sampling parameters as a JSON object, e.g. {"top_k": 40, "min_p": 0.05}.'
    )
    file: UploadFile = Field(description="JSONL, one prompt record per line.")


def _replayed(response: Response, replayed: bool) -> None:
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobRead, responses=CREATE_RESPONSES)
async def create_job(
    body: JobCreate,
    response: Response,
    database: DatabaseDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wake_workers: WakeWorkersDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobRead:
    job, replayed = await loading.create_idempotently(
        database,
        settings,
        principal.project_id,
        idempotency_key,
        service.request_digest(body.model_dump_json().encode()),
        lambda key: loading.create_job(database, registry, settings, body, principal.project_id, key),
    )
    _replayed(response, replayed)
    wake_workers()
    return job


@router.post("/upload", status_code=status.HTTP_201_CREATED, response_model=JobRead, responses=CREATE_RESPONSES)
async def upload_job(
    form: Annotated[JobUploadForm, Form(media_type="multipart/form-data")],
    response: Response,
    database: DatabaseDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    wake_workers: WakeWorkersDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobRead:
    params = service.upload_params(
        form.model_dump(exclude={"teacher", "kind", "priority", "file", "sampling"}), form.sampling
    )
    digest = ""
    if idempotency_key is not None:
        fields = f"{form.teacher}\n{form.kind}\n{form.priority}\n{params.model_dump_json()}".encode()
        digest = await service.upload_digest(form.file, fields)
    job, replayed = await loading.create_idempotently(
        database,
        settings,
        principal.project_id,
        idempotency_key,
        digest,
        lambda key: loading.create_job_from_upload(
            database,
            registry,
            settings,
            form.teacher,
            params,
            form.file,
            principal.project_id,
            form.kind,
            form.priority,
            key,
        ),
    )
    _replayed(response, replayed)
    wake_workers()
    return job


@router.get("", response_model=JobPage)
async def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    return await service.list_jobs(
        session, principal.project_id, limit=min(limit, settings.max_page_size), cursor=cursor
    )


@router.get("/{job_id}", response_model=JobRead)
async def get_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobRead:
    job = await service.get_job(session, job_id, principal.project_id)
    return (await service.to_reads(session, [job]))[0]


@router.post("/{job_id}/cancel", response_model=JobRead, responses=error_responses(409))
async def cancel_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, wake_workers: WakeWorkersDep
) -> JobRead:
    """Stop the job: nothing more of it is sent to the teacher once this returns. Its queued items are counted
    as cancelled in the background (pending falls to 0 when through). 409 while it is still loading."""
    job = await service.cancel_job(session, job_id, principal.project_id, batch_rows=settings.job_sweep_batch_rows)
    wake_workers()
    return (await service.to_reads(session, [job]))[0]


@router.post("/{job_id}/retry", response_model=JobRead, responses=error_responses(409))
async def retry_job(
    job_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, wake_workers: WakeWorkersDep
) -> JobRead:
    """Re-queue the job's failed items with fresh attempts (the first batch at once, the rest in the
    background)."""
    job = await service.retry_failed(session, job_id, principal.project_id, batch_rows=settings.job_sweep_batch_rows)
    wake_workers()
    return (await service.to_reads(session, [job]))[0]


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(409))
async def delete_job(
    job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep, wake_workers: WakeWorkersDep
) -> Response:
    """Delete the job, whatever its state: it is gone from the API at once and nothing more of it is sent;
    its items, results and progress are purged in the background. Datasets built from it keep their files;
    409 while a dataset is being built from it."""
    await service.delete_job(session, job_id, principal.project_id)
    wake_workers()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/failures", response_model=FailurePage)
async def list_failures(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FailurePage:
    """The job's failed prompts with the teacher's message for each (retry them with /retry)."""
    return await service.list_failures(session, job_id, principal.project_id, cursor=cursor, limit=limit)
