"""Console pages for jobs: the list (with a live fragment), a job's page, cancel and retry, exports, and the
completion viewer. Thin: the view models come from app.ui.service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from app.dependencies import DatabaseDep, RegistryDep, SessionDep, SettingsDep, WakeWorkersDep
from app.errors import ApiError
from app.jobs import service as jobs_service
from app.records import service as records_service
from app.records.schemas import ExportFormat
from app.ui import service
from app.ui.auth import CsrfChecked, UiPrincipal
from app.ui.render import error_page, page
from app.ui.tokens import TokenStrings

router = APIRouter(prefix="/ui", include_in_schema=False)
StatusFilter = Annotated[str | None, Query(max_length=16)]
TeacherFilter = Annotated[str | None, Query(max_length=64)]


def token_strings(request: Request) -> TokenStrings:
    """The app's one token-string cache (made on first use)."""
    strings: TokenStrings | None = getattr(request.app.state, "token_strings", None)
    if strings is None:
        strings = request.app.state.token_strings = TokenStrings()
    return strings


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    session: SessionDep,
    principal: UiPrincipal,
    status: StatusFilter = None,
    teacher: TeacherFilter = None,
) -> Response:
    view = await service.jobs_view(session, principal.project_id, status=status, teacher=teacher)
    return page(request, "jobs.html", view=view, statuses=service.JOB_STATUSES, percent=service.progress_percent)


@router.get("/jobs/rows", response_class=HTMLResponse)
async def jobs_rows(
    request: Request,
    session: SessionDep,
    principal: UiPrincipal,
    status: StatusFilter = None,
    teacher: TeacherFilter = None,
) -> Response:
    """The list's rows alone, polled by the page while any job is live."""
    view = await service.jobs_view(session, principal.project_id, status=status, teacher=teacher)
    return page(request, "job_rows.html", view=view, percent=service.progress_percent)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: UiPrincipal,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    try:
        view = await service.job_view(
            session, principal.project_id, job_id, cursor=cursor, max_bytes=settings.chunk_bytes
        )
    except ApiError as exc:
        return error_page(request, exc)
    return page(request, "job.html", view=view, job=view.job, percent=service.progress_percent)


@router.get("/jobs/{job_id}/summary", response_class=HTMLResponse)
async def job_summary(request: Request, job_id: uuid.UUID, session: SessionDep, principal: UiPrincipal) -> Response:
    """The job page's counts and progress alone, polled while the job is live."""
    try:
        job = await service.job_summary(session, principal.project_id, job_id)
    except ApiError as exc:
        return error_page(request, exc)
    return page(request, "job_summary.html", job=job, percent=service.progress_percent)


@router.post("/jobs/{job_id}/cancel", dependencies=[CsrfChecked])
async def cancel_job(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: UiPrincipal,
    wake_workers: WakeWorkersDep,
) -> Response:
    try:
        await jobs_service.cancel_job(session, job_id, principal.project_id, batch_rows=settings.job_sweep_batch_rows)
    except ApiError as exc:
        return error_page(request, exc)
    wake_workers()
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/retry", dependencies=[CsrfChecked])
async def retry_job(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: UiPrincipal,
    wake_workers: WakeWorkersDep,
) -> Response:
    try:
        await jobs_service.retry_failed(session, job_id, principal.project_id, batch_rows=settings.job_sweep_batch_rows)
    except ApiError as exc:
        return error_page(request, exc)
    wake_workers()
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/export")
async def export_job(
    request: Request,
    job_id: uuid.UUID,
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: UiPrincipal,
    format: Annotated[ExportFormat, Query()] = ExportFormat.parquet,
) -> Response:
    """The job's export, as /v1/jobs/{id}/export streams it, for a signed-in browser."""
    try:
        job = await jobs_service.get_job(session, job_id, principal.project_id)
    except ApiError as exc:
        return error_page(request, exc)
    exporter = records_service.exporter_for(format, job)
    return StreamingResponse(
        records_service.stream_export(
            database, job.id, exporter, chunk_rows=settings.export_chunk_rows, chunk_bytes=settings.chunk_bytes
        ),
        media_type=exporter.media_type,
        headers={
            "content-disposition": f'attachment; filename="job-{job.id}.{exporter.extension}"',
            **records_service.export_headers(job),
        },
    )


@router.get("/jobs/{job_id}/records/{item_id}/{sample_index}", response_class=HTMLResponse)
async def record_page(
    request: Request,
    job_id: uuid.UUID,
    item_id: int,
    sample_index: int,
    session: SessionDep,
    registry: RegistryDep,
    principal: UiPrincipal,
) -> Response:
    """The completion viewer: one record's tokens shaded by the teacher's confidence."""
    try:
        view = await service.record_view(
            session, registry, token_strings(request), principal.project_id, job_id, item_id, sample_index
        )
    except ApiError as exc:
        return error_page(request, exc)
    tokens_json = [t.as_json() for t in view.tokens]
    return page(request, "viewer.html", view=view, job=view.job, tokens_json=tokens_json)
