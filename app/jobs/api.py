"""Routes of the jobs API: create (JSON or JSONL upload), list, read, cancel."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Query, UploadFile, status
from pydantic import Field

from app.dependencies import PrincipalDep, RegistryDep, SessionDep, SettingsDep
from app.jobs import service
from app.jobs.schemas import GenerationParams, JobCreate, JobPage, JobRead

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobUploadForm(GenerationParams):
    """The upload's multipart form: the JSONL file, the teacher and the generation params, flat."""

    teacher: str = Field(min_length=1, max_length=64)
    file: UploadFile = Field(description="JSONL, one prompt record per line.")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobRead)
async def create_job(body: JobCreate, session: SessionDep, registry: RegistryDep, principal: PrincipalDep) -> JobRead:
    job = await service.create_job(session, registry, body, principal.project_id)
    return (await service.to_reads(session, [job]))[0]


@router.post("/upload", status_code=status.HTTP_201_CREATED, response_model=JobRead)
async def upload_job(
    form: Annotated[JobUploadForm, Form()],
    session: SessionDep,
    registry: RegistryDep,
    principal: PrincipalDep,
) -> JobRead:
    params = GenerationParams.model_validate(form.model_dump(exclude={"teacher", "file"}))
    job = await service.create_job_from_upload(session, registry, form.teacher, params, form.file, principal.project_id)
    return (await service.to_reads(session, [job]))[0]


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


@router.post("/{job_id}/cancel", response_model=JobRead)
async def cancel_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobRead:
    job = await service.cancel_job(session, job_id, principal.project_id)
    return (await service.to_reads(session, [job]))[0]


@router.post("/{job_id}/retry", response_model=JobRead, responses={409: {"description": "The job is cancelled."}})
async def retry_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobRead:
    """Re-queue the job's failed items with fresh attempts."""
    job = await service.retry_failed(session, job_id, principal.project_id)
    return (await service.to_reads(session, [job]))[0]
