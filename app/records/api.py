"""Routes of the records API: cursor-paged results, and streamed exports."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.dependencies import DatabaseDep, PrincipalDep, SessionDep, SettingsDep
from app.errors import error_responses
from app.jobs.service import get_job
from app.records import service
from app.records.schemas import ExportFormat, RecordPage

router = APIRouter(prefix="/v1/jobs", tags=["records"], responses=error_responses(401, 404, 503))


@router.get("/{job_id}/records", response_model=RecordPage)
async def list_records(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many records; fewer if large.")] = 100,
) -> RecordPage:
    job = await get_job(session, job_id, principal.project_id)
    return await service.record_page(session, job, cursor=cursor, limit=limit, max_bytes=settings.chunk_bytes)


@router.get(
    "/{job_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/vnd.apache.parquet": {}, "application/x-ndjson": {}}}},
)
async def export_job(
    job_id: uuid.UUID,
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    format: Annotated[ExportFormat, Query()] = ExportFormat.parquet,
) -> StreamingResponse:
    """The job's results as one file, streamed. A job still running (or retried later) gains rows after
    this export: the headers say the job's state when the export started."""
    job = await get_job(session, job_id, principal.project_id)
    exporter = service.exporter_for(format, job)
    return StreamingResponse(
        service.stream_export(
            database, job.id, exporter, chunk_rows=settings.export_chunk_rows, chunk_bytes=settings.chunk_bytes
        ),
        media_type=exporter.media_type,
        headers={
            "content-disposition": f'attachment; filename="job-{job.id}.{exporter.extension}"',
            **service.export_headers(job),
        },
    )
